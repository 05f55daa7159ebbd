"""The training figures of a set of finished runs, each drawn into a fresh matplotlib Figure.

Price et al., ICLR 2024: test accuracy against sparsity (section 5, the main result);
the appendix's training-loss curves of every seed; and, ours, per-layer gradient
norms over training of a failing and a healthy setting, and accuracy and sparsity
against the fixed point q* (docs/theory.md section 9). Runs and cells are those of
:mod:`sparse_eoc.experiments.results`; no pyplot, no global state.

Example::

    from sparse_eoc.experiments.report_figures import draw_loss_curves
    from sparse_eoc.experiments.results import load_runs
    draw_loss_curves(load_runs("sweeps/table1"), ["crelu:0.85:0.9"]).savefig("loss.png")

Nothing here imports torch: results are read from JSON files.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sparse_eoc.activations import ALIASES
from sparse_eoc.experiments.report_table import format_mean_std, format_number
from sparse_eoc.experiments.results import (
    ACTIVATION_ORDER,
    COUNTED,
    Cell,
    Run,
    choose_cells,
    group_cells,
    is_clipped,
)
from sparse_eoc.plotstyle import CMAPS, COLORS, LABELS

__all__ = ["draw_accuracy_vs_sparsity", "draw_loss_curves", "draw_layer_stats", "draw_accuracy_vs_qstar"]

_MARKERS = "os^Dv<>p"


def _wrap(text: str, width: int = 52) -> str:
    """A panel title broken into lines of at most ``width`` characters, so neighbours do not overlap."""
    return textwrap.fill(text, width, break_on_hyphens=False)


def _figure(nrows: int, ncols: int, panel: tuple[float, float], **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _colour(activation: str, i: int, n: int):
    """The activation's colour; for n > 1 clipped lines, shades of its colour map (light to dark)."""
    name = ALIASES.get(activation, activation) if activation != "relu" else "relu"
    if n <= 1 or name not in CMAPS:
        return COLORS.get(name, f"C{i}")
    return colormaps[CMAPS[name]](0.45 + 0.5 * i / (n - 1))


def draw_accuracy_vs_sparsity(runs: Sequence[Run], *, diverged: str = "chance") -> Figure | None:
    """Test accuracy against the target sparsity s (the paper's main result, section 5).

    One panel per sparse activation (columns) and per model and extra-setting group
    (rows). A clipped activation has one line per V'(q*), shaded light to dark; each
    point is the mean over seeds with a ±1 std error bar (ddof = 1), open if any of its
    runs diverged. The ReLU baseline of the same group is a grey band (mean ± std).

    Returns:
        The figure, or None when no sparse (non-ReLU) cell exists.
    """
    cells, _ = group_cells(runs, diverged)
    groups = list(dict.fromkeys(c.group() for c in cells))
    acts = sorted({c.settings["activation"] for c in cells} - {"relu"},
                  key=lambda a: (ACTIVATION_ORDER.index(a) if a in ACTIVATION_ORDER else len(ACTIVATION_ORDER),
                                 a))
    if not acts:
        return None
    fig, axes = _figure(len(groups), len(acts), (3.6, 3.2))
    for gi, group in enumerate(groups):
        in_group = [c for c in cells if c.group() == group]
        base = next((c.row for c in in_group if c.settings["activation"] == "relu"), None)
        first = in_group[0]
        tag = ", ".join([first.settings["model"].upper(), *(f"{e} = {first.settings[e]}" for e in first.extras)])
        labelled = False
        for ai, act in enumerate(acts):
            ax = axes[gi, ai]
            mine = [c for c in in_group if c.settings["activation"] == act]
            if not mine:  # this activation was not run in this group
                ax.set_visible(False)
                continue
            slopes = sorted({c.settings["slope"] for c in mine})
            xs_all = sorted({c.settings["sparsity"] for c in mine})
            span = (xs_all[-1] - xs_all[0]) if len(xs_all) > 1 else 0.1
            if base is not None and base["test_accuracy_mean"] is not None:
                mu, sd = base["test_accuracy_mean"], base["test_accuracy_std"] or 0.0
                ax.axhspan(mu - sd, mu + sd, color="0.85", lw=0, zorder=0)
                ax.axhline(mu, color=COLORS["relu"], lw=1, ls="--", zorder=1,
                           label=f"ReLU: {format_mean_std(mu, base['test_accuracy_std'])}")
            for si, slope in enumerate(slopes):
                line = sorted((c for c in mine if c.settings["slope"] == slope), key=lambda c: c.settings["sparsity"])
                pts = [c for c in line if c.row["test_accuracy_mean"] is not None]
                if not pts:
                    continue
                dx = (si - (len(slopes) - 1) / 2) * 0.012 * span  # side by side, so error bars do not overlap
                x = np.array([c.settings["sparsity"] for c in pts]) + dx
                y = np.array([c.row["test_accuracy_mean"] for c in pts])
                e = np.array([c.row["test_accuracy_std"] or 0.0 for c in pts])
                colour = _colour(act, si, len(slopes))
                label = f"V'(q*) = {slope:g}" if is_clipped(act) else LABELS.get(act, act)
                marker = _MARKERS[si % len(_MARKERS)]
                ax.errorbar(x, y, yerr=e, color=colour, marker=marker, ms=5, capsize=3, lw=1.3, label=label)
                bad = np.array([c.row["n_diverged"] > 0 for c in pts])
                if bad.any():
                    ax.plot(x[bad], y[bad], ls="none", marker=marker, ms=5, mfc="white", mec=colour, zorder=5)
            ax.set_xticks(xs_all)
            ax.set_xlabel("target sparsity s")
            ax.set_title(f"{LABELS.get(act, act)}\n" + _wrap(tag, 45), fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            if not labelled:
                ax.set_ylabel("test accuracy")
                labelled = True
        shown = [ax for ax in axes[gi] if ax.get_visible()]  # one y range per row, to compare the panels
        lo, hi = min(ax.get_ylim()[0] for ax in shown), max(ax.get_ylim()[1] for ax in shown)
        for ax in shown:
            ax.set_ylim(lo, hi)
    xs = [c.settings["sparsity"] for c in cells if c.settings["activation"] != "relu"]
    pad = 0.08 * max(max(xs) - min(xs), 0.1)
    for ax in axes.flat:  # one s axis for every panel
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
    if any(c.row["n_diverged"] for c in cells):
        fig.suptitle(f"open markers: at least one run diverged (counted {COUNTED[diverged]})", fontsize=8)
    return fig



def draw_loss_curves(runs: Sequence[Run], specs: Sequence[str] | None = None, *,
                     diverged: str = "chance") -> Figure:
    """Training loss against epoch for every seed of the chosen cells (the paper's appendix).

    One panel per cell (see :func:`select_cells` for ``specs``), one line per run: the
    per-epoch mean training loss of ``metrics.jsonl``, log scale, labelled with the
    seed and final test accuracy. A diverged run's partial epoch (the mean finite loss
    of its steps before the divergence, ``result.json["diverged"]["partial_train_loss"]``)
    is an x at that epoch, joined by a dotted line.

    Raises:
        ValueError: as :func:`select_cells`.
    """
    cells, _ = group_cells(runs, diverged)
    chosen = choose_cells(cells, specs)
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig, axes = _figure(nrows, ncols, (4.4, 3.9))
    for ax in axes.flat[len(chosen):]:
        ax.set_visible(False)
    for ax, cell in zip(axes.flat, chosen):
        cell_runs = sorted(cell.runs, key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
        for i, run in enumerate(cell_runs):
            pts = [(m["epoch"], m["train_loss"]) for m in run.metrics
                   if m.get("train_loss") is not None and m["train_loss"] > 0]
            colour = f"C{i % 10}"
            div = (run.result or {}).get("diverged") or {}
            partial = div.get("partial_train_loss") if run.diverged else None
            last = run.last_accuracy
            if run.diverged:
                label = f"seed {run.seed}: diverged in epoch {div.get('epoch', '?')}"
                label += f" (acc {last:.3f} before)" if last is not None else " (no epoch completed)"
            else:
                label = f"seed {run.seed}: acc {format_number(run.result.get('test_accuracy'), '.3f') or 'n/a'}"
            if pts:
                ax.plot(*zip(*pts), color=colour, marker="o", ms=3, lw=1.3, label=label)
                label = None
            if partial is not None and partial > 0:
                x = div.get("epoch", (pts[-1][0] + 1) if pts else 1)
                if pts:
                    ax.plot([pts[-1][0], x], [pts[-1][1], partial], color=colour, ls=":", lw=1.2)
                ax.plot([x], [partial], color=colour, marker="x", ms=8, mew=2, ls="none", label=label)
            elif label is not None:  # nothing to draw: still name the run in the legend
                ax.plot([], [], color=colour, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (per-epoch mean)")
        acc = format_mean_std(cell.row["test_accuracy_mean"], cell.row["test_accuracy_std"])
        ax.set_title(_wrap(f"{cell.label()} ({cell.settings['model'].upper()})") + f"\ntest acc {acc or 'n/a'}",
                     fontsize=9)
        last_epoch = max([1, *(x for line in ax.get_lines() for x in line.get_xdata())])
        ax.set_xlim(0.5, last_epoch + 0.5)
        if last_epoch <= 12:
            ax.set_xticks(range(1, int(last_epoch) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    if any(r.diverged for c in chosen for r in c.runs):
        fig.suptitle("x: the partial training loss of the epoch in which a run diverged", fontsize=8)
    return fig


def _has_stat(run: Run, key: str) -> bool:
    return any(isinstance(m.get(key), list) and m[key] for m in run.metrics)


def _steps_before_divergence(run: Run) -> dict[int, np.ndarray]:
    """{-k: ||dLoss/dW^l||_2 per layer, (L,)} of the steps a diverged run logged before it blew
    up, keyed by their distance to the divergence (-1: the last step before it), so that seeds
    that diverge at different steps line up."""
    div = (run.result or {}).get("diverged") or {}
    norms, steps, at = div.get("recent_layer_grad_norm"), div.get("recent_steps"), div.get("step")
    if not (isinstance(norms, list) and isinstance(steps, list) and len(norms) == len(steps)
            and isinstance(at, int)):
        return {}
    return {int(step) - at: _floats(v) for step, v in zip(steps, norms)}


def _floats(values: Sequence) -> np.ndarray:
    """A JSON list of numbers as float64, (L,); None (a non-finite value, written as null) is NaN."""
    return np.array([np.nan if x is None else float(x) for x in values], dtype=float)


def _per_epoch(run: Run, key: str) -> dict[int, np.ndarray]:
    """{epoch: the run's per-layer ``key``, (L,)}; epoch 0 is the initialisation (pre-activation variance)."""
    out = {int(m["epoch"]): _floats(m[key]) for m in run.metrics if isinstance(m.get(key), list) and m[key]}
    init = (run.result or {}).get("init_layer_preact_var") if key == "layer_preact_var" else None
    if isinstance(init, list) and init:
        out[0] = _floats(init)
    return out


def _geo_mean(series: Sequence[dict[int, np.ndarray]]) -> dict[int, np.ndarray]:
    """{index: per-layer geometric mean over the series that have that index}, (L,) each.

    Non-positive and missing values are left out of a layer's mean; an index whose series
    differ in length (runs of different depth) is dropped.
    """
    by_index: dict[int, list[np.ndarray]] = {}
    for one in series:
        for i, v in one.items():
            by_index.setdefault(i, []).append(v)
    out = {}
    for i, arrs in sorted(by_index.items()):
        if len({a.shape for a in arrs}) != 1:
            continue  # runs of different depth cannot share a layer axis
        stack = np.stack(arrs)  # (runs, L)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            logs = np.where(stack > 0, np.log(np.where(stack > 0, stack, 1.0)), np.nan)
            count = np.sum(~np.isnan(logs), axis=0)
            out[i] = np.where(count > 0, np.exp(np.nansum(logs, axis=0) / np.maximum(count, 1)), np.nan)
    return out


def _geo_mean_by_epoch(runs: Sequence[Run], key: str) -> dict[int, np.ndarray]:
    """{epoch: per-layer geometric mean over the runs that logged it}, shape (L,) each."""
    return _geo_mean([_per_epoch(run, key) for run in runs])


def _pick_stat_cells(cells: Sequence[Cell]) -> list[tuple[str, Cell]]:
    """The failing and the healthy cell among those with logged gradient norms.

    Failing: the lowest mean accuracy; among equals (e.g. cells whose runs all diverged, at
    chance) the one with the most records (a run with per-epoch statistics counts one, a
    diverged run one per logged step: the blow-up seen for longest), then the lowest
    sparsity. Healthy: the highest accuracy of the rest, then the highest s.
    """
    def logged(c):
        return sum(_has_stat(r, "layer_grad_norm") + len(_steps_before_divergence(r)) for r in c.runs)

    def acc(c):
        v = c.row["test_accuracy_mean"]
        return -math.inf if v is None else v

    candidates = [c for c in cells if logged(c)]
    if not candidates:
        return []
    failing = min(candidates, key=lambda c: (acc(c), -logged(c), c.settings["sparsity"]))
    rest = [c for c in candidates if c is not failing and any(_has_stat(r, "layer_grad_norm") for r in c.runs)]
    if not rest:
        return [("", failing)]
    healthy = max(rest, key=lambda c: (acc(c), c.settings["sparsity"]))
    return [("failing", failing), ("healthy", healthy)]


def _evenly(items: list, k: int) -> list:
    """At most k of ``items``, evenly spaced, the first and the last kept."""
    if len(items) <= k:
        return items
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))]


def draw_layer_stats(runs: Sequence[Run], *, diverged: str = "chance",
                     max_epochs: int = 8) -> Figure | None:
    """Per-layer gradient norms (and pre-activation variances) over training.

    For the cell with the lowest mean test accuracy ("failing") and the one with the
    highest ("healthy") among those whose runs logged ``layer_grad_norm``
    (``sparse-eoc train --log-layer-stats``): x is the hidden layer l = 1..L, y (log) the
    mean over the epoch's steps of ||dLoss/dW^l||_2, one line per epoch coloured by
    epoch (at most ``max_epochs`` of them, evenly spaced, first and last kept),
    geometric mean over the cell's seeds. A failing cell whose runs all diverged in their
    first epoch has no epoch means; its panel shows instead the norms of each step before
    the divergence (the runs' ``recent_layer_grad_norm``), one line per step counted back
    from the divergence, red. When
    ``layer_preact_var`` was logged too, a second row shows the pre-activation variance q^l
    (epoch 0: at initialisation) against q* (dashed), the fixed point the EoC
    initialisation targets (docs/theory.md section 3.3).

    Returns:
        The figure, or None when no run logged gradient norms.

    Raises:
        ValueError: ``max_epochs`` < 2.
    """
    if max_epochs < 2:
        raise ValueError(f"max_epochs must be >= 2, got max_epochs={max_epochs!r}")
    cells, _ = group_cells(runs, diverged)
    picked = _pick_stat_cells(cells)
    if not picked:
        return None
    stats = [("layer_grad_norm", r"$\|\partial \mathrm{Loss} / \partial W^l\|_2$ (epoch mean)")]
    if any(_has_stat(r, "layer_preact_var") for _, c in picked for r in c.runs):
        stats.append(("layer_preact_var", r"pre-activation variance $q^l$"))
    fig, axes = _figure(len(stats), len(picked), (4.6, 3.3))
    all_epochs = [e for _, c in picked for key, _ in stats for e in _geo_mean_by_epoch(c.runs, key)]
    has_epochs = bool(all_epochs)
    all_epochs = all_epochs or [0, 1]
    norm = Normalize(min(all_epochs), max(max(all_epochs), min(all_epochs) + 1))
    # a cell with no epoch of gradient norms (its runs diverged in epoch 1) is drawn by step
    steps_only = [not any(_has_stat(r, "layer_grad_norm") for r in cell.runs) for _, cell in picked]
    cmap = colormaps["viridis"]
    for ci, (role, cell) in enumerate(picked):
        by_step = steps_only[ci]
        for si, (key, ylabel) in enumerate(stats):
            ax = axes[si, ci]
            if key == "layer_grad_norm" and by_step:
                series = _geo_mean([_steps_before_divergence(r) for r in cell.runs])
                epochs = _evenly(sorted(series), max_epochs)
                reds = colormaps["Reds"]
                for i, step in enumerate(epochs):
                    v = series[step]  # (L,)
                    ax.plot(np.arange(1, len(v) + 1), v, color=reds(0.35 + 0.65 * i / max(len(epochs) - 1, 1)),
                            marker=".", ms=3, lw=1.1, label=f"{-step} step{'s' if step < -1 else ''} before")
                ax.legend(fontsize=7, loc="best", title="before the divergence", title_fontsize=7)
            else:
                series = _geo_mean_by_epoch(cell.runs, key)
                epochs = _evenly(sorted(series), max_epochs)
                for epoch in epochs:
                    v = series[epoch]  # (L,)
                    ax.plot(np.arange(1, len(v) + 1), v, color=cmap(norm(epoch)), marker=".", ms=3, lw=1.1)
            if key == "layer_preact_var":
                ax.axhline(cell.runs[0].q_star, color="k", ls="--", lw=1, label="q*")
                ax.legend(fontsize=7, loc="best")
            if not epochs:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.set_yscale("log")
            ax.set_xlabel("hidden layer l")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3, which="both")
            if key == "layer_grad_norm" and by_step:
                ax.set_ylabel(r"$\|\partial \mathrm{Loss} / \partial W^l\|_2$ (one step)")
            elif ci == 0 or (steps_only[0] and key == "layer_grad_norm"):
                ax.set_ylabel(ylabel)
            if si == 0:
                n_seeds = sum(bool(_steps_before_divergence(r)) if by_step else _has_stat(r, key)
                              for r in cell.runs)
                acc = format_mean_std(cell.row["test_accuracy_mean"], cell.row["test_accuracy_std"]) or "n/a"
                head = f"{role}: " if role else ""
                ax.set_title(_wrap(f"{head}{cell.label()} ({cell.settings['model'].upper()})") +
                             f"\ntest acc {acc}; geometric mean of {n_seeds} seed(s)", fontsize=9)
    if has_epochs:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="epoch (0: at initialisation)"
                           if 0 in all_epochs else "epoch", shrink=0.9)
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _reading_label(reading: tuple[str, float] | None, activation: str) -> str:
    if reading is None:
        return LABELS.get(activation, activation)
    return f"V'(q*) = {reading[1]:g}" if reading[0] == "slope" else f"m = {reading[1]:g} (fixed)"


def _reading_key(reading: tuple[str, float] | None) -> tuple:
    """Slope readings first, then fixed clips, each by value; an unclipped line last."""
    return (2, 0.0) if reading is None else (0 if reading[0] == "slope" else 1, reading[1])


def draw_accuracy_vs_qstar(runs: Sequence[Run], *, diverged: str = "chance") -> Figure | None:
    """Accuracy and sparsity against the fixed point q* (docs/theory.md section 9; Dent and Tanner 2026).

    One column of two panels per (model, activation, s) of the sparse cells, three columns a
    row: on top the accuracy, below the test sparsity (the target s dotted); x is q* on a log
    axis. The accuracy is the validation accuracy when every run held out a validation split
    (``--val-size``: choose settings on it) and the test accuracy otherwise. One line per clip
    reading: a target V'(q*) (solid: tau and m scale with sqrt(q*), the same infinite-width map
    at every q*) or a fixed clip m (dashed, purple: a larger q* is a smaller m / sqrt(q*)). A point
    is the mean over seeds with a +-1 std error bar (ddof = 1), open if a run of it diverged
    (counted by ``diverged``); the lines of a panel sit side by side on the q* axis so that
    their error bars do not overlap. Cells whose other settings (lr, readout_lr_scale, ...)
    differ from the most common ones (the controls) are stars, not joined, labelled with those
    settings. ReLU with the common settings is a grey band (one q*) or a grey line. One legend
    below each pair of panels.

    Returns:
        The figure, or None when q* takes a single value or there is no sparse cell.
    """
    cells, extras = group_cells(runs, diverged)
    sparse = [c for c in cells if c.settings["activation"] != "relu"]
    if "q_star" not in extras or not sparse:
        return None
    use_val = all(r.has_validation for c in cells for r in c.runs)
    acc_key = "val_accuracy" if use_val else "test_accuracy"
    others = [e for e in extras if e != "q_star"]

    def variant(c: Cell) -> tuple:
        return tuple(repr(c.settings[k]) for k in others)

    common = Counter(variant(c) for c in cells).most_common(1)[0][0]
    multi_model = len({c.settings["model"] for c in cells}) > 1
    rank = {a: i for i, a in enumerate(ACTIVATION_ORDER)}
    panels = sorted(dict.fromkeys((c.settings["model"], c.settings["activation"], c.settings["sparsity"])
                                  for c in sparse),
                    key=lambda k: (k[0], rank.get(k[1], len(rank)), k[1], k[2]))
    ncols = min(3, len(panels))
    blocks = math.ceil(len(panels) / ncols)
    fig, axes = _figure(2 * blocks, ncols, (3.9, 2.9))
    q_all = sorted({c.settings["q_star"] for c in cells})
    log_span = math.log2(q_all[-1] / q_all[0])
    for i in range(len(panels), ncols * blocks):  # the unused panels of the last block
        axes[2 * (i // ncols), i % ncols].set_visible(False)
        axes[2 * (i // ncols) + 1, i % ncols].set_visible(False)
    for pi, (model, act, s) in enumerate(panels):
        top, bottom = axes[2 * (pi // ncols), pi % ncols], axes[2 * (pi // ncols) + 1, pi % ncols]
        mine = [c for c in cells if (c.settings["model"], c.settings["activation"], c.settings["sparsity"])
                == (model, act, s)]
        readings = sorted({c.runs[0].clip_reading for c in mine}, key=_reading_key)
        slopes = [r for r in readings if r is None or r[0] == "slope"]
        clips = [r for r in readings if r is not None and r[0] == "m"]
        relu = sorted((c for c in cells if c.settings["activation"] == "relu" and c.settings["model"] == model
                       and variant(c) == common), key=lambda c: c.settings["q_star"])
        relu = [c for c in relu if c.row[f"{acc_key}_mean"] is not None]
        if len(relu) == 1:
            mu, sd = relu[0].row[f"{acc_key}_mean"], relu[0].row[f"{acc_key}_std"]
            top.axhspan(mu - (sd or 0.0), mu + (sd or 0.0), color="0.85", lw=0, zorder=0)
            top.axhline(mu, color=COLORS["relu"], lw=1, ls="--", zorder=1, label=f"ReLU: {format_mean_std(mu, sd)}")
        elif relu:
            top.errorbar([c.settings["q_star"] for c in relu], [c.row[f"{acc_key}_mean"] for c in relu],
                         yerr=[c.row[f"{acc_key}_std"] or 0.0 for c in relu], color=COLORS["relu"], ls="--",
                         marker="o", ms=4, capsize=2, lw=1, label="ReLU")
        for li, reading in enumerate(readings):
            family = clips if reading in clips else slopes
            j = family.index(reading)
            colour = (colormaps["Purples"](0.45 + 0.5 * j / max(len(family) - 1, 1)) if reading in clips
                      else _colour(act, j, len(family)))
            style = {"ls": "--", "marker": "s"} if reading in clips else {"ls": "-", "marker": "o"}
            shift = 2 ** ((li - (len(readings) - 1) / 2) * 0.025 * max(log_span, 1.0))
            label = _reading_label(reading, act)
            line = sorted((c for c in mine if c.runs[0].clip_reading == reading), key=lambda c: c.settings["q_star"])
            for ax, key in ((top, acc_key), (bottom, "test_sparsity")):
                main = [c for c in line if variant(c) == common and c.row[f"{key}_mean"] is not None]
                if main:
                    x = np.array([c.settings["q_star"] for c in main]) * shift
                    y = np.array([c.row[f"{key}_mean"] for c in main])
                    e = np.array([c.row.get(f"{key}_std") or 0.0 for c in main])
                    ax.errorbar(x, y, yerr=e, color=colour, ms=5, capsize=3, lw=1.3,
                                label=label if ax is top else None, **style)
                    bad = np.array([c.row["n_diverged"] > 0 for c in main])
                    if bad.any():
                        ax.plot(x[bad], y[bad], ls="none", marker=style["marker"], ms=5, mfc="white", mec=colour,
                                zorder=5)
                for n, c in enumerate([c for c in line if variant(c) != common]):
                    if c.row[f"{key}_mean"] is None:
                        continue
                    nudge = 2 ** ((n + 1) * 0.02 * max(log_span, 1.0))  # controls at one q* side by side
                    changed = ", ".join(f"{k} = {c.settings[k]:g}" if isinstance(c.settings[k], float)
                                        else f"{k} = {c.settings[k]}" for k, v in zip(others, common)
                                        if repr(c.settings[k]) != v)
                    ax.errorbar([c.settings["q_star"] * shift * nudge], [c.row[f"{key}_mean"]],
                                yerr=[c.row.get(f"{key}_std") or 0.0], color=colour, marker="*", ms=10, mec="k",
                                mew=0.6, capsize=3, ls="none", label=f"{label}, {changed}" if ax is top else None)
        bottom.axhline(s, color="k", ls=":", lw=1, label=f"target s = {s:g}")
        title = f"{LABELS.get(act, act)}, s = {s:g}" + (f" ({model.upper()})" if multi_model else "")
        top.set_title(title, fontsize=9)
        handles, labels = top.get_legend_handles_labels()  # one legend for both panels, below them
        more = bottom.get_legend_handles_labels()
        bottom.legend(handles + more[0], labels + more[1], fontsize=6, loc="upper center",
                      bbox_to_anchor=(0.5, -0.2), frameon=False)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(q_all, [f"{q:g}" for q in q_all])
            ax.minorticks_off()
            ax.set_xlim(q_all[0] / 2 ** (0.15 * max(log_span, 1.0)), q_all[-1] * 2 ** (0.15 * max(log_span, 1.0)))
            ax.grid(alpha=0.3)
        bottom.set_xlabel("q*")
        if pi % ncols == 0:
            top.set_ylabel("validation accuracy" if use_val else "test accuracy")
            bottom.set_ylabel("test sparsity")
    for b in range(blocks):  # one accuracy range per block row, to compare the panels
        shown = [ax for ax in axes[2 * b] if ax.get_visible()]
        lo, hi = min(ax.get_ylim()[0] for ax in shown), max(ax.get_ylim()[1] for ax in shown)
        for ax in shown:
            ax.set_ylim(lo, hi)
    notes = ["solid: V'(q*) fixed (tau, m ~ sqrt(q*)); dashed: m fixed; stars: other settings"]
    if any(c.row["n_diverged"] for c in cells):
        notes.append(f"open markers: at least one run diverged (counted {COUNTED[diverged]})")
    fig.suptitle(_wrap("; ".join(notes), 60 * ncols), fontsize=8)
    return fig
