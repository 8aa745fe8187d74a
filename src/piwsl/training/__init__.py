"""Training: the Lightning module (EMA, NaN guard, schedules), data preparation, checkpoints, runs.

``train(load_config(...))`` runs a whole job; see :mod:`piwsl.training.run` for the run directory.
"""

from piwsl.training.data import PreparedData, prepare_data, reference_statistics
from piwsl.training.run import TrainResult, evaluate_checkpoint, metrics_table, train

__all__ = [
    "PreparedData",
    "TrainResult",
    "evaluate_checkpoint",
    "metrics_table",
    "prepare_data",
    "reference_statistics",
    "train",
]
