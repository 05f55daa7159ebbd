"""Training: the loop, the run directory, and its configuration."""

from sparse_eoc.runs.config import TrainConfig
from sparse_eoc.train.loop import Divergence, EpochMetrics, evaluate, fit, train_epoch
from sparse_eoc.runs.presets import PRESETS, get_preset
from sparse_eoc.train.run import load_run, train

__all__ = ["PRESETS", "get_preset", "TrainConfig", "Divergence", "EpochMetrics", "evaluate", "fit", "train_epoch", "load_run", "train"]
