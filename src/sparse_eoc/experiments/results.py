"""Finished runs read from disk, grouped into cells, as the paper's results table.

Price et al., ICLR 2024, section 5 (docs/theory.md section 5): test accuracy mean +- std over seeds
and train/test sparsity per activation, sparsity s and clip, against the ReLU
baseline. The table's text forms are in :mod:`sparse_eoc.experiments.report_table`,
the figures in :mod:`sparse_eoc.experiments.report_figures`, and the report written
from all of them in :mod:`sparse_eoc.experiments.report`.

A *run* is any directory holding a ``config.json`` with an ``eoc`` section (written by
``sparse_eoc.train.train``); it is *finished* when its ``result.json`` has the status
``completed`` or ``diverged`` (:data:`FINISHED`, the sweep's notion too), and
*unfinished* otherwise (reported as a count, never tabulated). :func:`load_runs` finds
them at any depth below a directory (a sweep's ``DIR/runs/*/``, or any tree), and
either refuses a run whose files are malformed or, asked to, skips it with a note.

A *cell* is one table row: the runs that share every setting but the seed. Its
identity is (model, activation, s, V'(q*)) with s and V'(q*) the *resolved* values
of ``config.json["eoc"]`` (so ``--slope 0.7`` and the ``--m`` it resolves to meet,
and ReLU is s = 0.5, V'(q*) = 1), plus every other scalar setting that varies across
the runs given (depth, lr, ...: shown as extra columns); bookkeeping settings
(:data:`IGNORED_SETTINGS`) never split a cell.

Diverged runs (``result.json["status"] == "diverged"``) are failures. The headline
accuracy counts each at *chance*, 1 / num_classes: a network whose loss went
non-finite predicts nothing, and it is how the paper's 0.28 +- 0.37 for CReLU at
s = 0.85, V'(q*) = 0.9 over 5 seeds reads (four at ~0.1, one trained). The other
conventions (``diverged="last"``: the last completed epoch's test accuracy, chance if
none; ``"exclude"``) are one argument away, and every row also reports the number of
diverged runs and the accuracy over completed runs alone. Sparsities are means over
completed runs.

Example::

    from sparse_eoc.experiments.results import build_table, load_runs, select_cells
    runs = load_runs("sweeps/table1")
    rows = build_table(runs)
    shown = select_cells(runs, ["crelu:0.85:0.9"])

Nothing here imports torch: results are read from JSON files.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_eoc.activations import ACTIVATIONS, ALIASES
from sparse_eoc.gp import bifurcation_m
from sparse_eoc.plotstyle import LABELS
from sparse_eoc.runs.config import CELL_FREE_SETTINGS
from sparse_eoc.runs.files import CONFIG_FILE, FINISHED, METRICS_FILE, RESULT_FILE, read_metrics

__all__ = [
    "DIVERGED_CONVENTIONS",
    "COUNTED",
    "FINISHED",
    "IGNORED_SETTINGS",
    "IDENTITY",
    "ACTIVATION_ORDER",
    "Run",
    "Cell",
    "load_runs",
    "is_clipped",
    "group_cells",
    "build_table",
    "choose_cells",
    "cell_spec",
    "select_cells",
]

#: How a diverged run enters the headline accuracy: at chance (1 / num_classes), at its
#: last completed epoch's test accuracy (chance if none), or not at all.
DIVERGED_CONVENTIONS = ("chance", "last", "exclude")
#: How each convention reads in a caption: "counted <...>".
COUNTED = {"chance": "at chance", "last": "at its last completed epoch", "exclude": "as excluded"}
#: Settings that never split a cell: the seed (averaged over), where and how a run ran,
#: and records of where its settings came from.
IGNORED_SETTINGS = frozenset({*CELL_FREE_SETTINGS, "sparse_eoc_version", "torch_version", "device_resolved"})
#: Settings that mean something for one model only (TrainConfig): the other's never split a cell.
_MODEL_ONLY = {"mlp": frozenset({"width"}), "cnn": frozenset({"channels", "kernel_size", "padding_mode"})}
#: The settings every cell is named by, in the table's column order.
IDENTITY = ("model", "activation", "sparsity", "slope")
_RAW_CLIP = ("sparsity", "slope", "m")  # as asked; replaced by their resolved values
#: The table's (and the figures') order of activations: the baseline, then the registry's.
ACTIVATION_ORDER = ["relu", *ACTIVATIONS]


# ---------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One run directory, read.

    Attributes:
        path: the directory.
        config: ``config.json``: the TrainConfig settings at top level, and the resolved
            ``eoc``, ``network`` and ``data`` sections.
        result: ``result.json``, or None when there is none (unfinished); a status
            other than :data:`FINISHED` leaves the run unfinished too.
        metrics: the lines of ``metrics.jsonl``, one dict per completed epoch, in order
            (empty if the file is absent).
    """

    path: Path
    config: dict[str, Any]
    result: dict[str, Any] | None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """``result.json`` says completed or diverged (:data:`FINISHED`)."""
        return self.result is not None and self.result.get("status") in FINISHED

    @property
    def diverged(self) -> bool:
        return self.finished and self.result.get("status") == "diverged"

    @property
    def activation(self) -> str:
        """The activation as asked (``relu`` stays ``relu``)."""
        return str(self.config.get("activation") or self.config["eoc"]["activation"])

    @property
    def sparsity(self) -> float:
        """The resolved target sparsity s (0.5 for ReLU)."""
        return float(self.config["eoc"]["sparsity"])

    @property
    def slope(self) -> float:
        """The resolved V'(q*) (1 for an unclipped activation)."""
        return float(self.config["eoc"]["slope"])

    @property
    def m(self) -> float:
        """The resolved clip m (inf when unclipped)."""
        m = self.config["eoc"].get("m")
        return math.inf if m is None else float(m)

    @property
    def q_star(self) -> float:
        return float(self.config["eoc"].get("q_star", self.config.get("q_star", 1.0)))

    @property
    def model(self) -> str:
        """``mlp`` or ``cnn`` (older configs kept the network under ``model``)."""
        model = self.config.get("model")
        if isinstance(model, dict):
            model = model.get("kind")
        return str(model or self.config.get("network", {}).get("kind", "mlp"))

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def chance(self) -> float:
        """1 / num_classes: the accuracy counted for a failed run."""
        return 1.0 / int(self.config.get("network", {}).get("num_classes", 10))

    @property
    def last_accuracy(self) -> float | None:
        """The test accuracy of the last completed epoch (None if none completed)."""
        acc = self.result.get("test_accuracy") if self.result else None
        if acc is None and self.metrics:
            acc = self.metrics[-1].get("test_accuracy")
        return acc

    def accuracy(self, diverged: str = "chance") -> float | None:
        """The test accuracy this run counts with under a diverged-run convention.

        Args:
            diverged: one of :data:`DIVERGED_CONVENTIONS` (used only if the run diverged).

        Returns:
            The accuracy in [0, 1], or None (excluded: unfinished, a completed run with no
            accuracy, or a diverged one under ``"exclude"``).
        """
        if not self.finished:
            return None
        if not self.diverged:
            return self.result.get("test_accuracy")
        if diverged == "exclude":
            return None
        if diverged == "last" and self.last_accuracy is not None:
            return self.last_accuracy
        return self.chance

    @property
    def has_validation(self) -> bool:
        """The run held out a validation split (``val_size`` > 0, ``sparse-eoc train --val-size``)."""
        data = self.config.get("data")
        return bool(self.config.get("val_size") or (isinstance(data, dict) and data.get("n_val")))

    def val_accuracy(self, diverged: str = "chance") -> float | None:
        """The validation accuracy this run counts with, under the same conventions as
        :meth:`accuracy`: ``result.json``'s ``val_accuracy`` (that of the last completed
        epoch), a diverged run at chance / its last completed epoch's (chance if none) / not
        at all; None without a validation split."""
        if not self.finished or not self.has_validation:
            return None
        last = self.result.get("val_accuracy")
        if last is None and self.metrics:
            last = self.metrics[-1].get("val_accuracy")
        if not self.diverged:
            return last
        if diverged == "exclude":
            return None
        return last if diverged == "last" and last is not None else self.chance

    @property
    def clip_reading(self) -> tuple[str, float] | None:
        """How the clip was asked for: ``("m", m)`` for a fixed clip (``--m``), ``("slope", V'(q*))``
        for a target slope (``--slope``, or the default 0.7: the resolved value), None when unclipped."""
        if not is_clipped(self.activation):
            return None
        if self.config.get("m") is not None:
            return ("m", float(self.config["m"]))
        return ("slope", float(self.config.get("slope") or self.slope))

    def settings(self) -> dict[str, Any]:
        """The scalar settings that identify this run's cell (all but the seed and bookkeeping)."""
        other = _MODEL_ONLY.get("cnn" if self.model == "mlp" else "mlp", frozenset())
        out = {k: _canon(v) for k, v in self.config.items() if k not in IGNORED_SETTINGS and k not in _RAW_CLIP
               and k not in other and not isinstance(v, (dict, list))}
        out.update(model=self.model, activation=self.activation, sparsity=_canon(self.sparsity),
                   slope=_canon(self.slope))
        return out


def _canon(value: Any) -> Any:
    """Floats to 8 significant digits, so that 0.6999999999999995 and 0.7 meet."""
    return float(f"{value:.8g}") if isinstance(value, float) and math.isfinite(value) else value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` read by :func:`sparse_eoc.runs.files.read_metrics`, its lines' fields checked."""
    try:
        lines = read_metrics(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid JSON lines ({err})") from err
    for i, record in enumerate(lines, 1):
        if not _is_int(record.get("epoch")):
            raise ValueError(f"{path}, record {i}: epoch must be an integer, got {record.get('epoch')!r}")
        for key in ("train_loss", "test_accuracy"):
            if not _is_number_or_null(record.get(key)):
                raise ValueError(f"{path}, record {i}: {key} must be a number or null, got {record.get(key)!r}")
    return lines


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """Raise a ValueError naming ``path`` and the field for what the table reads of a run's config.json."""
    eoc = config["eoc"]
    for key in ("sparsity", "slope"):
        if key not in eoc:
            raise ValueError(f"{path}: eoc.{key} is missing (the resolved EoC point that train writes)")
        if eoc[key] is None or not _is_number_or_null(eoc[key]) or not math.isfinite(eoc[key]):
            raise ValueError(f"{path}: eoc.{key} must be a finite number, got {eoc[key]!r}")
    if not _is_number_or_null(eoc.get("m")) or (eoc.get("m") is not None and not eoc["m"] > 0):
        raise ValueError(f"{path}: eoc.m must be a number > 0 or null (unclipped), got {eoc.get('m')!r}")
    q_star = eoc.get("q_star", config.get("q_star", 1.0))
    if q_star is None or not _is_number_or_null(q_star) or not 0 < q_star < math.inf:
        raise ValueError(f"{path}: eoc.q_star must be a finite number > 0, got {q_star!r}")
    activation = config.get("activation") or eoc.get("activation")
    if not isinstance(activation, str):
        raise ValueError(f"{path}: activation (or eoc.activation) must be a name, e.g. 'crelu', got {activation!r}")
    network = config.get("network", {})
    if not isinstance(network, dict):
        raise ValueError(f"{path}: network must be a JSON object, got {type(network).__name__}")
    classes = network.get("num_classes", 10)
    if not _is_int(classes) or classes < 1:
        raise ValueError(f"{path}: network.num_classes must be an integer >= 1, got {classes!r}")


def _check_result(path: Path, result: Any) -> None:
    """Raise a ValueError naming ``path`` and the field for what the table reads of a result.json."""
    if not isinstance(result, dict):
        raise ValueError(f"{path}: not a run's result (a JSON object with a status), got {type(result).__name__}")
    for key in ("test_accuracy", "train_sparsity", "test_sparsity", "val_accuracy"):
        if not _is_number_or_null(result.get(key)):
            raise ValueError(f"{path}: {key} must be a number or null, got {result.get(key)!r}")
    if not (result.get("diverged") is None or isinstance(result["diverged"], dict)):
        raise ValueError(f"{path}: diverged must be a JSON object or null, got {result['diverged']!r}")


def load_runs(directory: str | os.PathLike, *, include_unfinished: bool = False,
              notes: list[str] | None = None) -> list[Run]:
    """Every run directory at any depth below ``directory``, sorted by path.

    Args:
        directory: a sweep directory (runs in ``runs/*/``) or any tree of run directories;
            a single run directory works too.
        include_unfinished: also return unfinished runs: without ``result.json`` (``result``
            None) or with a status other than :data:`FINISHED` (``result`` as read).
        notes: None to raise on a malformed run, or a list: such a run is then left
            out and one line naming its file and the field is appended to the list.
            Malformed: invalid JSON, a ``result.json`` that is not an object, a missing
            or ill-typed field the table reads (``eoc.sparsity``, ``eoc.slope``,
            ``network.num_classes`` >= 1, ...), a ``metrics.jsonl`` line that is not an
            object with an integer ``epoch``.

    Returns:
        The runs: each a directory whose ``config.json`` is a JSON object with an ``eoc``
        section; other ``config.json`` files (a sweep's own, say) are skipped silently.

    Raises:
        ValueError: ``directory`` is not a directory; with ``notes`` None, a run's file
            is malformed (the message names the file and the field).
    """
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"directory {str(root)!r} is not a directory (pass a sweep or run directory)")
    runs = []
    for cfg_path in sorted(root.rglob(CONFIG_FILE)):
        try:
            run = _read_run(cfg_path)
        except ValueError as err:
            if notes is None:
                raise
            notes.append(f"run skipped: {err}")
            continue
        if run is not None and (run.finished or include_unfinished):
            runs.append(run)
    return runs


def _read_run(cfg_path: Path) -> Run | None:
    """The run of ``cfg_path`` (None if it is not a run's config.json); ValueError if malformed."""
    config = _read_json(cfg_path)
    if not isinstance(config, dict) or not isinstance(config.get("eoc"), dict):
        return None  # not a run's config
    _check_config(cfg_path, config)
    run_dir = cfg_path.parent
    result_path = run_dir / RESULT_FILE
    result = None
    if result_path.is_file():
        result = _read_json(result_path)
        _check_result(result_path, result)
    return Run(run_dir, config, result, _read_metrics(run_dir / METRICS_FILE))


# --------------------------------------------------------------------------- table


@dataclass
class Cell:
    """One table row: the finished runs that share every setting but the seed.

    Attributes:
        settings: the cell's settings, :data:`IDENTITY` first, then the extra columns.
        runs: its finished runs, in path order.
        extras: the settings besides the identity that vary within its model (its label's).
        row: its row of :func:`build_table`.
    """

    settings: dict[str, Any]  # every setting of the cell, identity first
    runs: list[Run]
    extras: list[str] = field(default_factory=list)  # the settings besides identity varying within its model
    row: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """E.g. ``"CReLU, s = 0.85, V'(q*) = 0.7, depth = 8"`` (mathtext activation names)."""
        act = self.settings["activation"]
        text = f"{LABELS.get(act, act)}, s = {self.settings['sparsity']:g}"
        if is_clipped(act):
            text += f", V'(q*) = {self.settings['slope']:g}"
        return ", ".join([text, *(f"{k} = {self.settings[k]}" for k in self.extras)])

    def group(self) -> tuple:
        """The model and the values of its varying settings: the cells one can compare."""
        return (self.settings["model"], *(repr(self.settings[k]) for k in self.extras))


def is_clipped(activation: str) -> bool:
    """Whether a run's ``activation`` (a registry name or alias; ``relu`` is not) has a clip m."""
    name = ALIASES.get(activation, activation)
    return name in ACTIVATIONS and ACTIVATIONS[name].clipped


def _sort_key(settings: dict[str, Any], extras: Sequence[str]) -> tuple:
    act = settings["activation"]
    rank = ACTIVATION_ORDER.index(act) if act in ACTIVATION_ORDER else len(ACTIVATION_ORDER)

    def k(v):  # None first, numbers before strings, never comparing the two
        return (v is not None, isinstance(v, str), v if v is not None else 0)

    return (str(settings["model"]), *(k(settings[e]) for e in extras), rank, act,
            settings["sparsity"], settings["slope"])


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def group_cells(runs: Sequence[Run], diverged: str) -> tuple[list[Cell], list[str]]:
    """The finished runs grouped into cells, sorted, each with its table row; and the extra columns.

    Args:
        runs: from :func:`load_runs`; unfinished runs are left out.
        diverged: one of :data:`DIVERGED_CONVENTIONS` (see :func:`build_table`).

    Returns:
        The cells in table order (see :func:`build_table`), and the names of the settings
        besides :data:`IDENTITY` that vary within some model (the extra columns).

    Raises:
        ValueError: an unknown ``diverged`` convention.
    """
    if diverged not in DIVERGED_CONVENTIONS:
        raise ValueError(f"diverged must be one of {DIVERGED_CONVENTIONS}, got diverged={diverged!r}")
    finished = [r for r in runs if r.finished]
    all_settings = [r.settings() for r in finished]
    keys = sorted({k for s in all_settings for k in s} - set(IDENTITY))
    by_model: dict[str, list[str]] = {}
    for model in dict.fromkeys(s["model"] for s in all_settings):
        mine = [s for s in all_settings if s["model"] == model]
        by_model[model] = [k for k in keys if len({repr(s.get(k)) for s in mine}) > 1]
    extras = [k for k in keys if any(k in e for e in by_model.values())]
    cells: dict[tuple, Cell] = {}
    for run, s in zip(finished, all_settings):
        settings = {k: s.get(k) for k in (*IDENTITY, *extras)}
        cell = cells.setdefault(tuple(repr(v) for v in settings.values()), Cell(settings, [], by_model[s["model"]]))
        cell.runs.append(run)
    ordered = sorted(cells.values(), key=lambda c: _sort_key(c.settings, extras))
    for cell in ordered:
        cell.row = _row(cell, diverged)
    return ordered, extras


@functools.lru_cache(maxsize=None)
def _bifurcation_m(activation: str, sparsity: float, q_star: float) -> float | None:
    return bifurcation_m(activation, sparsity, q_star)  # ~0.1 s each: once per (activation, s, q*)


def _row(cell: Cell, diverged: str) -> dict[str, Any]:
    runs = cell.runs
    first = runs[0]
    completed = [r for r in runs if not r.diverged]
    acc_mean, acc_std = _mean_std(r.accuracy(diverged) for r in runs)
    ok_mean, ok_std = _mean_std(r.result.get("test_accuracy") for r in completed)
    val_mean, val_std = _mean_std(r.val_accuracy(diverged) for r in runs)
    act = cell.settings["activation"]
    m_b = below = None
    if is_clipped(act):
        m_b = _bifurcation_m(act, first.sparsity, first.q_star)
        below = m_b is None or first.m < m_b  # no bifurcation up to 8 sqrt(q*): stable
    row = {**cell.settings, "m": first.m}
    row.setdefault("q_star", first.q_star)  # a column of its own when it varies
    return {
        **row,
        "n_runs": len(runs),
        "seeds": [r.seed for r in runs],
        "n_completed": len(completed),
        "n_diverged": len(runs) - len(completed),
        "test_accuracy_mean": acc_mean,
        "test_accuracy_std": acc_std,
        "completed_accuracy_mean": ok_mean,
        "completed_accuracy_std": ok_std,
        "val_accuracy_mean": val_mean,
        "val_accuracy_std": val_std,
        "train_sparsity_mean": _mean_std(r.result.get("train_sparsity") for r in completed)[0],
        "test_sparsity_mean": _mean_std(r.result.get("test_sparsity") for r in completed)[0],
        "bifurcation_m": m_b,
        "below_bifurcation": below,
        "chance": first.chance,
    }


def build_table(runs: Sequence[Run], *, diverged: str = "chance") -> list[dict[str, Any]]:
    """The paper's results table: one row per cell (model, activation, s, V'(q*), other settings).

    Args:
        runs: from :func:`load_runs`; unfinished runs are skipped.
        diverged: how a diverged run enters ``test_accuracy_mean/std``, one of
            :data:`DIVERGED_CONVENTIONS` (default ``"chance"``, see the module docstring).

    Returns:
        Rows sorted by model, the extra settings, activation (relu, relu_tau, st_tau, crelu,
        cst), s, V'(q*). Each row has: ``model``, ``activation`` (as asked), ``sparsity`` (s,
        0.5 for ReLU), ``slope`` (resolved V'(q*), 1 when unclipped), one key per extra
        setting that varies across the runs, ``m`` (resolved clip, inf when unclipped),
        ``q_star``, ``n_runs``, ``seeds`` (list, in run-path order), ``n_completed``,
        ``n_diverged``, ``test_accuracy_mean`` / ``_std`` (over all runs under the
        convention; std with ddof = 1, None for one value), ``completed_accuracy_mean`` /
        ``_std`` (completed runs only, None if none), ``val_accuracy_mean`` / ``_std`` (the
        validation accuracy under the same convention; None when the runs held out no
        validation split; choose settings on it, not on the test accuracy), ``train_sparsity_mean`` and
        ``test_sparsity_mean`` (completed runs; fractions of exact zeros in the hidden
        layers), ``bifurcation_m`` (m_b of ``sparse_eoc.gp.bifurcation_m``, docs/theory.md section 4.3;
        None when unclipped or no bifurcation up to 8 sqrt(q*)), ``below_bifurcation``
        (m < m_b, the theory's stability prediction; True when no m_b exists, None when
        unclipped) and ``chance`` (1 / num_classes).

    Raises:
        ValueError: an unknown ``diverged`` convention.
    """
    return [cell.row for cell in group_cells(runs, diverged)[0]]


# ------------------------------------------------------------------------- choosing


def _parse_spec(spec: str) -> dict[str, Any]:
    parts = [p.strip() for p in spec.split(":")]
    out: dict[str, Any] = {}
    if parts and parts[0] in ("mlp", "cnn"):
        out["model"] = parts.pop(0)
    if not parts or not parts[0] or len(parts) > 3:
        raise ValueError(f"cells: {spec!r} is not [model:]activation[:sparsity[:slope]], e.g. 'crelu:0.85:0.9'")
    out["activation"] = parts[0]
    try:
        for name, text in zip(("sparsity", "slope"), parts[1:]):
            out[name] = float(text)
    except ValueError as err:
        raise ValueError(f"cells: {spec!r}: sparsity and slope must be numbers, e.g. 'crelu:0.85:0.9'") from err
    return out


def _matches(settings: dict[str, Any], want: dict[str, Any]) -> bool:
    for k, v in want.items():
        have = settings[k]
        if isinstance(v, float) and not math.isclose(have, v, rel_tol=0, abs_tol=1e-6):
            return False
        if not isinstance(v, float) and have != v:
            return False
    return True


def cell_spec(cell: Cell) -> str:
    """The cell as a ``model:activation:sparsity[:slope]`` spec, e.g. ``"mlp:crelu:0.85:0.7"``."""
    s = cell.settings
    clip = f":{s['slope']:g}" if is_clipped(s["activation"]) else ""
    return f"{s['model']}:{s['activation']}:{s['sparsity']:g}{clip}"


def choose_cells(cells: Sequence[Cell], specs: Sequence[str] | None, n_default: int = 2) -> list[Cell]:
    """The cells that ``specs`` pick (as :func:`select_cells`), or by default the ``n_default``
    of highest s with the lowest mean test accuracy.

    Raises:
        ValueError: a malformed spec, or one matching no cell (the message lists them).
    """
    if specs:
        chosen: list[Cell] = []
        for spec in specs:
            hits = [c for c in cells if _matches(c.settings, _parse_spec(spec))]
            if not hits:
                raise ValueError(f"cells: {spec!r} matches no cell; the cells are: "
                                 + ", ".join(cell_spec(c) for c in cells))
            chosen += [c for c in hits if c not in chosen]
        return chosen

    def acc(c: Cell) -> float:
        v = c.row["test_accuracy_mean"]
        return -math.inf if v is None else v

    return sorted(cells, key=lambda c: (-c.settings["sparsity"], acc(c)))[:n_default]


def select_cells(runs: Sequence[Run], specs: Sequence[str] | None = None, *,
                 diverged: str = "chance") -> list[dict[str, Any]]:
    """The table rows a loss-curve figure shows.

    Args:
        runs: from :func:`load_runs`.
        specs: ``[model:]activation[:sparsity[:slope]]`` strings, e.g. ``"crelu:0.85:0.9"``,
            ``"relu"``, ``"cnn:cst:0.85"``; a spec picks every cell it matches (sparsity and
            slope to 1e-6), in table order, and the union is kept in spec order. None or
            empty: the two cells of highest s with the lowest mean test accuracy.
        diverged: the accuracy convention the default choice ranks by.

    Raises:
        ValueError: a malformed spec, or one matching no cell (the message lists them).
    """
    cells, _ = group_cells(runs, diverged)
    return [c.row for c in choose_cells(cells, specs)]

