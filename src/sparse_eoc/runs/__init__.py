"""What a run is, without torch: its settings, the presets, the network it builds, its files.

The floor between the theory (:mod:`sparse_eoc.gp`) and the networks (:mod:`sparse_eoc.nn`):
``train``, ``experiments``, ``infer`` and the CLI read and write runs through it, and
importing it does not import torch.
"""

from sparse_eoc.runs.config import TrainConfig
from sparse_eoc.runs.presets import PRESETS, get_preset

__all__ = ["TrainConfig", "PRESETS", "get_preset"]
