"""Reference labelling (``piwsl label``): backends, CBS extrapolation, a resumable runner, sampling.

- :mod:`piwsl.labelling.backends` — the backend registry (GFN-xTB via tblite; HF, DFT, MP2,
  CCSD(T) via PySCF; any ASE calculator) and unit conversions
- :mod:`piwsl.labelling.cbs` — two-point HF + X⁻³ correlation CBS extrapolation (energies, forces)
- :mod:`piwsl.labelling.runner` — journaled, resumable labelling to extxyz, in parallel on local
  processes or Dask (:mod:`piwsl.io.executors`)
- :mod:`piwsl.labelling.sampling` — seeded Langevin MD sampling of structures to label
- :mod:`piwsl.labelling.cli` — the ``piwsl label`` / ``piwsl sample`` sub-commands
"""

from piwsl.labelling.backends import (
    BACKENDS,
    Backend,
    BackendCalculator,
    BackendError,
    backend_names,
    gradient_to_forces,
    hartree_to_ev,
    make_backend,
)
from piwsl.labelling.cbs import cardinal_number, corr_weights, extrapolate, hf_weights
from piwsl.labelling.runner import (
    LabelSummary,
    journal_path,
    label_file,
    label_structures,
    structure_hash,
)
from piwsl.labelling.sampling import SamplingConfig, sample_md, write_samples

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendCalculator",
    "BackendError",
    "LabelSummary",
    "SamplingConfig",
    "backend_names",
    "cardinal_number",
    "corr_weights",
    "extrapolate",
    "gradient_to_forces",
    "hartree_to_ev",
    "hf_weights",
    "journal_path",
    "label_file",
    "label_structures",
    "make_backend",
    "sample_md",
    "structure_hash",
    "write_samples",
]
