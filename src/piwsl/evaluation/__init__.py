"""Evaluation: predictions, the metrics accumulator, non-conservativeness, parity plots, reports.

- :mod:`~piwsl.evaluation.predict`: :class:`Predictions` of a model (prior included) or of
  frames that carry another method's labels;
- :mod:`~piwsl.evaluation.metrics`: :class:`ErrorMetrics`, the one streaming, rank-reducible
  accumulator behind validation, :func:`compute_metrics`, the test curve and the benchmarks;
- :mod:`~piwsl.evaluation.nonconservative`: curl and loop work of predicted forces;
- :mod:`~piwsl.evaluation.plots`: parity plots;
- :mod:`~piwsl.evaluation.report`: :func:`evaluate_model`, :func:`evaluate_checkpoint`
  (``piwsl evaluate``), :func:`metrics_table`.

Units: predictions are in eV and eV/Å; every metric carries its unit in its key
(``energy_mae_meV``, ``energy_mae_meV_per_atom``, ``forces_mae_meV_per_A``, …). A model trained on
top of a prior (Δ-learning, :mod:`piwsl.priors`) is scored on its total prediction, prior +
learned part, against the full reference labels.
"""

from piwsl.evaluation.metrics import (
    ErrorMetrics,
    Labels,
    compute_metrics,
    energy_offset,
    offset_note,
)
from piwsl.evaluation.nonconservative import nonconservativeness
from piwsl.evaluation.plots import parity_plot
from piwsl.evaluation.predict import (
    InferenceModel,
    Predictions,
    add_prior,
    as_force_field,
    check_model_knows,
    inference_model,
    model_device,
    model_dtype,
    predict,
)
from piwsl.evaluation.report import evaluate_checkpoint, evaluate_model, metrics_table

__all__ = [
    "ErrorMetrics",
    "InferenceModel",
    "Labels",
    "Predictions",
    "add_prior",
    "as_force_field",
    "check_model_knows",
    "compute_metrics",
    "energy_offset",
    "evaluate_checkpoint",
    "evaluate_model",
    "inference_model",
    "metrics_table",
    "model_device",
    "model_dtype",
    "nonconservativeness",
    "offset_note",
    "parity_plot",
    "predict",
]
