"""Prior potentials for Δ-learning: a model learns the difference to a cheap physical baseline.

With ``prior.name`` set (``gfn2-xtb``, ``gfn1-xtb``, ``zbl`` or ``ase:module.Class``) a run
learns ``E_θ = E_ref − E_prior`` and ``F_θ = F_ref − F_prior``; the prediction of the saved model
is always the total ``E = E_prior + E_θ``, ``F = F_prior + F_θ``:

- training (:func:`piwsl.training.prepare_data`): the prior's energy and forces are computed once
  per labelled frame (train, validation, test), in parallel with ``prior.workers > 1`` (local
  processes, or a Dask cluster with ``prior.executor: dask`` and ``prior.scheduler``),
  and cached on disk with their provenance (:mod:`piwsl.priors.cache`); the supervised targets
  become the residuals (label masks unchanged) and the E0s and the normalisation are fitted to
  them. The physics terms (PITC/PISC) act on the learned part alone: the prior is a fixed,
  exactly conservative function of the positions, so the consistency its forces and energy must
  satisfy holds for it by construction and the sum satisfies the terms' conditions whenever the
  learned part does — the prior is never evaluated at the displaced positions.
- the model file and the training checkpoints record the prior's spec (method, program and
  version, charge, multiplicity, settings) next to the weights;
- inference (:class:`piwsl.PiwslCalculator`, :func:`piwsl.evaluation.evaluate_model`,
  ``piwsl evaluate``, ``piwsl md``) adds the recorded prior automatically, and refuses to run
  when its program is missing or its installed version/settings differ from the recorded ones
  (opt-out: ``allow_prior_mismatch=True`` / ``--allow-prior-mismatch``).

Modules: :mod:`~piwsl.priors.base` (contract, registry, checks), :mod:`~piwsl.priors.xtb`
(tblite GFN1/GFN2-xTB), :mod:`~piwsl.priors.zbl` (screened nuclear repulsion),
:mod:`~piwsl.priors.ase_prior` (any ASE calculator), :mod:`~piwsl.priors.cache` (disk cache and
parallel evaluation).
"""

from piwsl.priors.base import (
    PRIORS,
    MissingPriorBackendError,
    Prior,
    PriorCalculator,
    PriorUse,
    attach_prior,
    check_prior_name,
    make_prior,
    model_prior,
    prior_from_spec,
    prior_names,
    register_prior,
    spec_differences,
)
from piwsl.priors.cache import PriorValues, cache_path, prior_values, user_cache_dir

__all__ = [
    "PRIORS",
    "MissingPriorBackendError",
    "Prior",
    "PriorCalculator",
    "PriorUse",
    "PriorValues",
    "attach_prior",
    "cache_path",
    "check_prior_name",
    "make_prior",
    "model_prior",
    "prior_from_spec",
    "prior_names",
    "prior_values",
    "register_prior",
    "spec_differences",
    "user_cache_dir",
]
