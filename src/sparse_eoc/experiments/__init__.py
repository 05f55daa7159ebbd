"""Experiments: named sweeps of training runs, and the report of their results (table and figures).

The names below are re-exported lazily, so that ``sparse_eoc.experiments.report`` (which
reads JSON files only) does not import torch through the registry's TrainConfig.
"""

import importlib

_EXPORTS = {
    "registry": ("EXPERIMENTS", "Experiment", "ExperimentPreset", "Grid", "RunSpec", "derive_seed",
                 "estimate_seconds", "get_experiment", "parse_overrides", "settings_hash"),
    "sweep": ("BACKENDS", "SweepOutcome", "plan_sweep", "run_one", "run_status", "run_sweep"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
