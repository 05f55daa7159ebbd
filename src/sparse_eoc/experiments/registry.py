"""Named experiments: a grid of cells x seeds over a base training preset, per experiment preset.

An *experiment* (``dnn-table``, ``cnn-table``) is the paper's table (Price et al., ICLR 2024,
section 5; docs/theory.md section 5): activations x sparsities s x, for the clipped ones, slopes V'(q*),
each trained with several seeds. An *experiment preset* (``paper``, ``cpu``, ``smoke``) says
at what size: which training preset (:data:`sparse_eoc.train.PRESETS`) the runs start from,
what it changes, which grid, and how many seeds.

A *cell* is one (activation, sparsity, slope): plain ``relu`` has one cell (s = 0.5, no
slope), ``relu_tau``/``st_tau`` one per s, ``crelu``/``cst`` one per (s, V'(q*)). The runs of
an experiment are cells x seed indices 0..seeds-1, each a :class:`RunSpec` whose settings
are, in order of precedence: the overrides (``--set``), the cell, the experiment preset's
changes, the training preset, the TrainConfig defaults; and whose seed is derived from
these settings (:func:`derive_seed`), so a rerun or a resume draws the same seed.

Example::

    from sparse_eoc.experiments import get_experiment
    runs = get_experiment("dnn-table").runs("cpu", data_dir="../shared/data/mnist")
    len(runs)       # 82: (1 + 2 x 5 + 2 x 5 x 3) cells x 2 seeds
    runs[0].name    # 'relu-s0.5-seed0-<8 hex digits>'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sparse_eoc.activations import canonical_name, get_activation
from sparse_eoc.runs.config import (
    NAME_FREE_SETTINGS,
    TrainConfig,
    default_settings,
    name_settings,
    parse_overrides,
)
from sparse_eoc.runs.presets import get_preset

__all__ = [
    "Grid",
    "ExperimentPreset",
    "Experiment",
    "RunSpec",
    "EXPERIMENTS",
    "GRID_SETTINGS",
    "NAME_FREE_SETTINGS",
    "get_experiment",
    "parse_overrides",
    "settings_hash",
    "derive_seed",
    "estimate_seconds",
]

#: Settings the grid chooses per cell; ``--set`` may not change them.
GRID_SETTINGS = ("activation", "sparsity", "slope", "m")


@dataclass(frozen=True)
class Grid:
    """The cells of a table, and how many seeds each.

    Attributes:
        activations: registry names (``relu`` is ReLU, s = 0.5, one cell).
        sparsities: target sparsities s in (0, 1) of every activation but ``relu``.
        slopes: target V'(q*) in (0, 1) of the clipped activations (``crelu``, ``cst``).
        seeds: runs per cell, >= 1.
    """

    activations: tuple[str, ...]
    sparsities: tuple[float, ...]
    slopes: tuple[float, ...]
    seeds: int

    def __post_init__(self):
        for name in self.activations:
            canonical_name(name)  # raises for an unknown name, listing the valid ones
        if self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got seeds={self.seeds!r}")

    def cells(self) -> list[dict[str, Any]]:
        """The cells in table order: one dict of (activation, sparsity[, slope]) each."""
        out: list[dict[str, Any]] = []
        for name in self.activations:
            if name == "relu":
                out.append({"activation": "relu", "sparsity": 0.5})
            elif get_activation(name).clipped:
                out += [{"activation": name, "sparsity": s, "slope": v} for s in self.sparsities for v in self.slopes]
            else:
                out += [{"activation": name, "sparsity": s} for s in self.sparsities]
        return out


@dataclass(frozen=True)
class ExperimentPreset:
    """One size of an experiment.

    Attributes:
        train_preset: the training preset the runs start from (a key of ``sparse_eoc.train.PRESETS``).
        settings: TrainConfig settings changed on top of it.
        grid: the cells and seeds.
        epoch_seconds: wall seconds of one epoch of one run using all cores of the 2-core CPU
            this project is developed on (measured; None: not estimated, e.g. GPU-sized).
        run_seconds: wall seconds of a run's fixed cost (start-up, data loading, the test pass).
        note: what this preset is for and where its numbers come from.
    """

    train_preset: str
    settings: Mapping[str, Any]
    grid: Grid
    epoch_seconds: float | None
    run_seconds: float = 5.0
    note: str = ""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its directory name (``<readable>-<hash>``), settings, seed index and
    cell (``{"activation", "sparsity"[, "slope"]}``, as the grid gives it)."""

    name: str
    config: TrainConfig
    seed_index: int
    cell: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _canonical_settings(settings: Mapping[str, Any], drop: Sequence[str]) -> str:
    return json.dumps({k: v for k, v in sorted(settings.items()) if k not in drop}, sort_keys=True,
                      separators=(",", ":"))


def settings_hash(config: TrainConfig, *, length: int = 8) -> str:
    """A short stable hex digest of a run's settings, seed included, without
    :data:`NAME_FREE_SETTINGS`: equal settings give equal digests on every machine."""
    text = _canonical_settings(name_settings(config), ())
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def derive_seed(config: TrainConfig, index: int) -> int:
    """The seed of the ``index``-th run of a cell: a stable hash of the settings without the
    seed (and without :data:`NAME_FREE_SETTINGS`), of ``config.seed`` (a salt: ``--set seed=K``
    draws another set of seeds) and of ``index``. Returns an int in [0, 2**31)."""
    text = _canonical_settings(name_settings(config), ("seed",))
    text += f"|salt={config.seed}|index={index}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 2**31


def _readable_name(cell: Mapping[str, Any], index: int) -> str:
    parts = [cell["activation"], f"s{cell['sparsity']:g}"]
    if cell.get("slope") is not None:
        parts.append(f"v{cell['slope']:g}")
    return "-".join([*parts, f"seed{index}"])


@dataclass(frozen=True)
class Experiment:
    """A named table: a description and its presets (``paper``, ``cpu``, ``smoke``)."""

    name: str
    description: str
    presets: Mapping[str, ExperimentPreset]

    def preset(self, name: str) -> ExperimentPreset:
        """The experiment preset ``name``; ValueError listing the valid ones otherwise."""
        if name not in self.presets:
            raise ValueError(f"preset of {self.name} must be one of {', '.join(self.presets)}, got preset={name!r}")
        return self.presets[name]

    def base_settings(self, preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """TrainConfig defaults <- training preset <- the preset's changes <- ``overrides``
        (a dict; see :func:`parse_overrides`), with ``preset`` naming the training preset."""
        p = self.preset(preset)
        overrides = dict(overrides or {})
        if "preset" in overrides:
            raise ValueError("preset cannot be overridden: it records the training preset this experiment preset "
                             f"starts from ({p.train_preset}); override the settings themselves with --set")
        grid_keys = sorted(set(overrides) & set(GRID_SETTINGS))
        if grid_keys:
            raise ValueError(f"{', '.join(grid_keys)} cannot be overridden: the experiment's grid sets "
                             f"{', '.join(GRID_SETTINGS)} per run")
        return {**default_settings(), **get_preset(p.train_preset), "preset": p.train_preset,
                **p.settings, **overrides}

    def runs(self, preset: str, *, overrides: Mapping[str, Any] | None = None,
             data_dir: str | None = None) -> list[RunSpec]:
        """Every run of the experiment at ``preset``: cells in table order, seed indices within each.

        Args:
            preset: a key of ``self.presets``.
            overrides: TrainConfig settings replacing the preset's (not the grid's
                activation, sparsity, slope, m); ``seed`` salts the derived seeds.
            data_dir: the dataset directory (not part of a run's name or seed).

        Raises:
            ValueError: an unknown preset, an override of a grid setting, or settings that
                TrainConfig rejects (its message names the setting).
        """
        base = self.base_settings(preset, overrides)
        if data_dir is not None:
            base["data_dir"] = str(data_dir)
        grid = self.preset(preset).grid
        specs = []
        for cell in grid.cells():
            unseeded = TrainConfig(**{**base, "slope": None, "m": None, **cell})
            for index in range(grid.seeds):
                config = unseeded.replace(seed=derive_seed(unseeded, index))
                specs.append(RunSpec(f"{_readable_name(cell, index)}-{settings_hash(config)}", config, index,
                                     dict(cell)))
        return specs

    def n_cells(self, preset: str) -> int:
        return len(self.preset(preset).grid.cells())


def estimate_seconds(runs: Sequence[RunSpec], preset: ExperimentPreset) -> float | None:
    """Wall seconds the runs take on the 2-core CPU this project is developed on, all cores
    busy: sum of ``epochs x epoch_seconds + run_seconds``. An upper bound: a diverging run
    stops within its first epoch. None when the preset has no ``epoch_seconds``."""
    if preset.epoch_seconds is None:
        return None
    return float(sum(r.config.epochs * preset.epoch_seconds + preset.run_seconds for r in runs))


# ---------------------------------------------------------------- the registry

_TABLE_ACTIVATIONS = ("relu", "relu_tau", "st_tau", "crelu", "cst")
_TABLE_SPARSITIES = (0.6, 0.7, 0.8, 0.85, 0.9)
_TABLE_SLOPES = (0.5, 0.7, 0.9)
_TABLE = dict(activations=_TABLE_ACTIVATIONS, sparsities=_TABLE_SPARSITIES, slopes=_TABLE_SLOPES)

# A tiny MLP / CNN for tests: a few seconds a run on the full MNIST, less on a subset.
_SMOKE_GRID = Grid(activations=("relu_tau", "crelu"), sparsities=(0.7, 0.85), slopes=(0.7,), seeds=1)

EXPERIMENTS: Mapping[str, Experiment] = MappingProxyType({
    "dnn-table": Experiment(
        name="dnn-table",
        description="The paper's DNN table: test accuracy and sparsity of fully connected networks on MNIST "
                    "per activation, sparsity and V'(q*) (Price et al. 2024, section 5)",
        presets=MappingProxyType({
            "paper": ExperimentPreset(
                "mlp-paper", {}, Grid(**_TABLE, seeds=5),
                epoch_seconds=40.0, run_seconds=10.0,
                note="depth 100, width 300, SGD lr 1e-4, 200 epochs, 5 seeds (docs/theory.md section 5.1); "
                     "epoch time of depth 100 on the 2-core CPU (docs/theory.md section 6)",
            ),
            # Depth 40, not mlp-mnist-cpu's 30: at depth 30 relu_tau at s = 0.7 (V''(q*) = 0.30)
            # still trains (0.958 in a depth-30 sweep), at depth 40 it diverges within 5 steps,
            # as the paper's depth-100 runs do; 8 epochs bring crelu s = 0.85 to 0.933 there
            # (0.862 after 5), within 3 points of relu.
            "cpu": ExperimentPreset(
                "mlp-mnist-cpu", {"depth": 40, "epochs": 8, "log_layer_stats": True}, Grid(**_TABLE, seeds=2),
                epoch_seconds=9.0, run_seconds=5.0,
                note="mlp-mnist-cpu (width 300, SGD momentum 0.9, lr 1e-3) at depth 40 for 8 epochs, logging per-layer "
                     "statistics, the full grid, "
                     "2 seeds; about 9 s an epoch on 2 cores (two 1-thread workers at 17 s each); runs that "
                     "diverge stop in seconds",
            ),
            "smoke": ExperimentPreset(
                "mlp-mnist-cpu", {"depth": 4, "width": 32, "epochs": 1}, _SMOKE_GRID,
                epoch_seconds=3.0, run_seconds=4.0,
                note="depth 4, width 32, 1 epoch, relu_tau and crelu (V'(q*) 0.7) at s 0.7 and 0.85, 1 seed: "
                     "a few seconds a run on the full MNIST (less on a subset), for tests",
            ),
        }),
    ),
    "cnn-table": Experiment(
        name="cnn-table",
        description="The paper's CNN table: test accuracy and sparsity of a deep vanilla CNN per activation, "
                    "sparsity and V'(q*) (Price et al. 2024, section 5; the paper's runs are on CIFAR-10)",
        presets=MappingProxyType({
            "paper": ExperimentPreset(
                "cnn-paper", {}, Grid(**_TABLE, seeds=1),
                epoch_seconds=None,
                note="depth 50, 300 channels, SGD lr 1e-3, 200 epochs, 1 seed, CIFAR-10 (docs/theory.md section 5.1): GPU-sized",
            ),
            "cpu": ExperimentPreset(
                "cnn-mnist-cpu", {},
                Grid(activations=_TABLE_ACTIVATIONS, sparsities=(0.7, 0.85), slopes=(0.7,), seeds=1),
                epoch_seconds=240.0, run_seconds=15.0,
                note="cnn-mnist-cpu (depth 10, 32 channels, Adam lr 1e-3, 2 epochs) on MNIST; smaller grid: "
                     "s in {0.7, 0.85}, V'(q*) = 0.7 only, 1 seed (9 runs); at most about 4 min an epoch on 2 cores "
                     "(0.5 s a step, measured with another job running)",
            ),
            "smoke": ExperimentPreset(
                "cnn-mnist-cpu", {"depth": 3, "channels": 8, "epochs": 1}, _SMOKE_GRID,
                epoch_seconds=6.0, run_seconds=4.0,
                note="depth 3, 8 channels, 1 epoch, relu_tau and crelu (V'(q*) 0.7) at s 0.7 and 0.85, 1 seed",
            ),
        }),
    ),
})


def get_experiment(name: str) -> Experiment:
    """The named experiment; ValueError listing the valid names otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got experiment={name!r}")
    return EXPERIMENTS[name]
