"""Moved to :mod:`sparse_eoc.runs.config` (torch-free); these names stay importable from here."""

from sparse_eoc.runs.config import (  # noqa: F401
    DATASETS,
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    PADDING_MODES,
    WEIGHT_INITS,
    TrainConfig,
)

__all__ = ["TrainConfig", "OPTIMIZERS", "MODELS", "PADDING_MODES", "WEIGHT_INITS", "DATASETS", "LR_SCHEDULES"]
