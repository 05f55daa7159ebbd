"""Moved to :mod:`sparse_eoc.runs.presets` (torch-free); these names stay importable from here."""

from sparse_eoc.runs.presets import PRESETS, get_preset  # noqa: F401

__all__ = ["PRESETS", "get_preset"]
