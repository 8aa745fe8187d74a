"""Training, split by job.

- :mod:`~piwsl.training.data`: read, split and reference the data (E0s, normalisation, priors);
- :mod:`~piwsl.training.builders`: model, objective, loaders, module, callbacks, trainer;
- :mod:`~piwsl.training.finetune`: ``model.init_from`` (element check, E0 re-fit, freezing);
- :mod:`~piwsl.training.rundir`: the run directory, overwrite and ``--resume`` checks;
- :mod:`~piwsl.training.module` / :mod:`~piwsl.training.ema`: the Lightning module (NaN guard,
  schedules, validation) and its EMA subclass; :mod:`~piwsl.training.callbacks`,
  :mod:`~piwsl.training.test_curve`: checkpoint writes, progress bar, the test curve;
- :mod:`~piwsl.training.run`: :func:`train`, the whole run.
"""

from piwsl.training.data import PreparedData, prepare_data, reference_statistics
from piwsl.training.run import TrainResult, train

__all__ = [
    "PreparedData",
    "TrainResult",
    "prepare_data",
    "reference_statistics",
    "train",
]
