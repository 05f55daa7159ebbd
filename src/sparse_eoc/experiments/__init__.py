"""Experiments: named sweeps of training runs, and the report of their results (table and figures).

Importing this package does not import torch: the registry reads the torch-free settings
(:mod:`sparse_eoc.runs`), and a sweep imports the training code only in its workers.
"""

from sparse_eoc.experiments.registry import (
    EXPERIMENTS,
    CellList,
    Experiment,
    ExperimentPreset,
    Grid,
    RunSpec,
    derive_seed,
    estimate_seconds,
    get_experiment,
    parse_overrides,
    settings_hash,
)
from sparse_eoc.experiments.sweep import BACKENDS, SweepOutcome, plan_sweep, run_one, run_status, run_sweep

__all__ = [
    "BACKENDS", "CellList", "EXPERIMENTS", "Experiment", "ExperimentPreset", "Grid", "RunSpec", "SweepOutcome", "derive_seed",
    "estimate_seconds", "get_experiment", "parse_overrides", "plan_sweep", "run_one", "run_status", "run_sweep",
    "settings_hash",
]
