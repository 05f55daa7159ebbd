"""The paper's theory figures, each drawn by one function into a fresh matplotlib Figure.

Price et al., ICLR 2024 (docs/theory.md sections 2-4): the activations, the variance map V(q) on the
Edge of Chaos, the slope V'(q*) and curvature V''(q*) against the clip m, the
bifurcation of V, the correlation map R(rho), finite-width propagation at
initialisation, and the (s, m) stability diagram of the clipped activations.

Every function builds a :class:`matplotlib.figure.Figure` directly (no pyplot, no
global state; saving a png/pdf picks the Agg/PDF canvas itself) and returns it.
:data:`FIGURES` maps each figure number to (file stem, caption, function), and
:func:`write_figures` saves them as ``NN_stem.png``/``.pdf`` with an ``index.md``.
Colours are fixed per activation across figures (:data:`COLORS`, from
:mod:`sparse_eoc.plotstyle`). All theory is at q* = 1 (the scale invariance of
docs/theory.md section 4.5 makes that no loss of generality).

Example::

    from sparse_eoc.figures import write_figures
    write_figures("figs")            # all seven, about 30-60 s on 2 CPU cores
    write_figures("figs", only=3)    # one figure
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sparse_eoc.activations import get_activation
from sparse_eoc.gp import (
    bifurcation_m,
    correlation_map,
    fixed_points,
    slope_and_curvature_vs_m,
    solve_eoc,
    variance_map,
)
from sparse_eoc.plotstyle import CMAPS, COLORS, LABELS  # the palette; importable from here too

__all__ = [
    "COLORS",
    "CMAPS",
    "LABELS",
    "FIGURES",
    "draw_activations",
    "draw_variance_maps",
    "draw_slope_curvature",
    "draw_bifurcation",
    "draw_correlation_maps",
    "draw_propagation",
    "draw_stability_diagram",
    "write_figures",
]

#: The paper's headline sparsity, and the V'(q*) used for a clipped activation unless stated.
SPARSITY = 0.85
SLOPE = 0.7
SMALL, WIDE = (5.0, 3.5), (9.0, 3.5)
#: Marker per fixed-point stability: (marker, fillstyle).
_FP_STYLE = {"stable": ("o", "full"), "unstable": ("o", "none"), "half-stable": ("o", "left"), "neutral": ("D", "full")}
_FP_EDGE = {"stable": "k", "unstable": None, "half-stable": "k", "neutral": "k"}  # None: the curve's colour


def _figure(size: tuple[float, float], nrows: int = 1, ncols: int = 1, **kw) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure and its axes as a (nrows, ncols) array."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _shades(activation: str, n: int) -> list:
    """n shades of the activation's colour map, light to dark."""
    from matplotlib import colormaps

    return list(colormaps[CMAPS[activation]](np.linspace(0.4, 0.95, n)))


def _point(activation: str, sparsity: float, **kw):
    """The EoC point at q* = 1; a clipped activation gets V'(q*) = SLOPE unless m or slope is given."""
    if get_activation(activation).clipped and "m" not in kw:
        kw.setdefault("slope", SLOPE)
    return solve_eoc(activation, sparsity, 1.0, **kw)


def _mark_fixed_point(ax: Axes, q: float, y: float, stability: str, color) -> None:
    """A fixed point at (q, y): filled if stable, a white disc edged in the curve's colour if unstable."""
    marker, fill = _FP_STYLE[stability]
    ax.plot([q], [y], marker=marker, fillstyle=fill, color=color, markeredgecolor=_FP_EDGE[stability] or color,
            markeredgewidth=1.0 if _FP_EDGE[stability] else 2.0, markersize=7, markerfacecolor=color if fill != "none"
            else "white", markerfacecoloralt="white", linestyle="none", zorder=5)


# ---------------------------------------------------------------------------------------------
# Figure 1
# ---------------------------------------------------------------------------------------------


def draw_activations(tau: float = 1.0, m: float = 1.0) -> Figure:
    """The five activations on x in [-4, 4], one panel each (paper Figure 1, docs/theory.md section 2).

    ReLU, ReLU_tau and ST_tau at threshold tau; CReLU and CST at tau and clip m. The
    dotted diagonal is the identity; the zero set (|x| <= tau, or x <= tau) is shaded.
    """
    x = np.linspace(-4, 4, 801)
    names = ["relu", "relu_tau", "st_tau", "crelu", "cst"]
    fig, axes = _figure((10.0, 2.6), 1, len(names), sharey=True)
    for ax, name in zip(axes[0], names):
        act = get_activation(name)
        t = 0.0 if name == "relu" else tau
        mm = m if act.clipped else np.inf
        ax.plot(x, x, ":", color="0.6", lw=1)
        ax.axvspan(-t if act.two_sided else -4, t, color=COLORS[name], alpha=0.12, lw=0)
        ax.plot(x, act.fn(x, t, mm), color=COLORS[name], lw=2)
        params = "" if name == "relu" else rf"$\tau={t:g}$" + (rf", $m={m:g}$" if act.clipped else "")
        ax.set_title(LABELS[name] + (f"  ({params})" if params else ""), fontsize=10)
        ax.set(xlim=(-4, 4), ylim=(-2.5, 4), xlabel=r"$x$")
        ax.axhline(0, color="0.8", lw=0.6, zorder=0)
        ax.axvline(0, color="0.8", lw=0.6, zorder=0)
    axes[0, 0].set_ylabel(r"$\phi(x)$")
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 2
# ---------------------------------------------------------------------------------------------


def draw_variance_maps(sparsities: Sequence[float] = (0.6, 0.7, 0.85)) -> Figure:
    """V(q) against the identity on the EoC at q* = 1 (paper Figures 2-3, docs/theory.md sections 4.1-4.2).

    Left: ReLU_tau and ST_tau: V is convex and tangent to the identity at q*
    (V'(q*) = 1), so V(q) > q on both sides: q* is half-stable. Right: CReLU and CST
    at V'(q*) = 0.7: V crosses the identity at q* with slope 0.7 (stable) and
    saturates at sigma_b^2 + k sigma_w^2 m^2. Line style: sparsity. ST_tau at s has exactly the
    map of ReLU_tau at (1 + s)/2 (same tau, same k sigma_w^2), so those curves coincide.
    """
    q = np.linspace(1e-3, 2.5, 400)
    styles = dict(zip(sparsities, [":", "--", "-", "-."]))
    fig, axes = _figure(WIDE, 1, 2)
    panels = (
        (("relu_tau", "st_tau"), "unclipped: half-stable tangency", 3.8),
        (("crelu", "cst"), rf"clipped, $V'(q^*)={SLOPE:g}$: stable crossing", 2.6),
    )
    for ax, (names, title, top) in zip(axes[0], panels):
        ax.plot(q, q, color="k", lw=1, label=r"identity $V(q)=q$")
        for name in names:
            for s in sparsities:
                ax.plot(q, variance_map(q, _point(name, s)), styles[s], color=COLORS[name], lw=1.6)
        ax.plot([1], [1], "o", color="k", ms=5, zorder=5)
        ax.annotate(r"$q^*=1$", (1, 1), (1.25, 0.55), arrowprops=dict(arrowstyle="-", color="0.4"), fontsize=9)
        handles = [Line2D([], [], color=COLORS[n], lw=2, label=LABELS[n]) for n in names]
        handles += [Line2D([], [], color="0.3", ls=styles[s], label=f"$s={s:g}$") for s in sparsities]
        handles += [Line2D([], [], color="k", lw=1, label=r"$V(q)=q$")]
        ax.legend(handles=handles, fontsize=8, loc="upper left", ncol=2)
        if "st_tau" in names:  # why some curves coincide
            ax.text(0.98, 0.03, "ST$_\\tau$ at $s$ has the map of ReLU$_\\tau$ at $(1+s)/2$", transform=ax.transAxes,
                    ha="right", fontsize=7.5, color="0.3")
        ax.set(title=title, xlabel=r"$q^{l-1}$ (pre-activation variance)", ylabel=r"$q^{l} = V(q^{l-1})$",
               xlim=(0, 2.5), ylim=(0, top))
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 3
# ---------------------------------------------------------------------------------------------


def draw_slope_curvature(
    sparsities: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9), activations: Sequence[str] = ("crelu", "cst")
) -> Figure:
    """V'(q*) and V''(q*) on the EoC against the clip m (paper Figure 4, docs/theory.md sections 4.2-4.4).

    One row per clipped activation, one curve per sparsity s (darker = sparser).
    V'(q*) rises monotonically from 0 to 1; V''(q*) first dips below 0, then rises to
    its positive unclipped limit (not monotone). The dot on each curve is the
    bifurcation clip m_b past which V has two more fixed points (none for CReLU at s = 0.5).
    """
    m = np.linspace(0.02, 4.0, 300)
    fig, axes = _figure((9.0, 3.2 * len(activations)), len(activations), 2, sharex=True)
    for row, name in zip(axes, activations):
        for s, color in zip(sparsities, _shades(name, len(sparsities))):
            slope, curv = slope_and_curvature_vs_m(name, s, 1.0, m)
            row[0].plot(m, slope, color=color, lw=1.6, label=f"$s={s:g}$")
            row[1].plot(m, curv, color=color, lw=1.6)
            m_b = bifurcation_m(name, s, 1.0, m_max=m[-1])
            if m_b is not None:
                sb, cb = slope_and_curvature_vs_m(name, s, 1.0, m_b)
                for ax, y in zip(row, (sb, cb)):
                    ax.plot([m_b], [y], "o", color=color, markeredgecolor="k", ms=6, zorder=5)
        row[0].axhline(1, color="0.5", ls=":", lw=1)
        row[1].axhline(0, color="0.5", ls=":", lw=1)
        handles, _ = row[0].get_legend_handles_labels()
        handles.append(Line2D([], [], marker="o", color="0.6", markeredgecolor="k", ls="none",
                              label=r"$m_b$ (bifurcation)"))
        row[0].legend(handles=handles, fontsize=8, loc="lower right", ncol=2)
        row[0].set(ylabel=r"slope $V'(q^*)$", ylim=(0, 1.05), title=f"{LABELS[name]}: slope on the EoC")
        row[1].set(ylabel=r"curvature $V''(q^*)$", title=f"{LABELS[name]}: curvature (not monotone in $m$)")
    for ax in axes[-1]:
        ax.set_xlabel(r"clip $m$  (units of $\sqrt{q^*}$)")
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 4
# ---------------------------------------------------------------------------------------------


def draw_bifurcation(sparsity: float = SPARSITY) -> Figure:
    """V(q) - q past the bifurcation: two extra fixed points above q* (docs/theory.md section 4.3).

    CST with V'(q*) = 0.9 (m = 1.53 > m_b = 1.33) and CReLU with m = 2.5
    (> m_b = 1.84) each have q* = 1 (stable), an unstable fixed point just above it and
    a stable one far above; CST with V'(q*) = 0.7 (m = 1.00 < m_b) has q* only. Left:
    log q; right: a zoom near q*. Markers from :func:`~sparse_eoc.gp.fixed_points`.
    """
    cases = [
        ("cst", dict(slope=0.9), "-", "V'(q^*)=0.9"),
        ("crelu", dict(m=2.5), "-", ""),
        ("cst", dict(slope=0.7), "--", "V'(q^*)=0.7"),
    ]
    fig, axes = _figure(WIDE, 1, 2)
    wide, zoom = axes[0]
    q_wide, q_zoom = np.geomspace(0.05, 50, 600), np.linspace(0.9, 1.45, 400)
    for name, kw, ls, tag in cases:
        p = _point(name, sparsity, **kw)
        label = f"{LABELS[name]}, ${tag + ', ' if tag else ''}m={p.m:.2f}$"
        for ax, q in ((wide, q_wide), (zoom, q_zoom)):
            ax.plot(q, variance_map(q, p) - q, ls, color=COLORS[name], lw=1.6, label=label)
        for fp in fixed_points(p):
            for ax, lo, hi in ((wide, q_wide[0], q_wide[-1]), (zoom, q_zoom[0], q_zoom[-1])):
                if lo <= fp.q <= hi:
                    _mark_fixed_point(ax, fp.q, 0.0, fp.stability, COLORS[name])
            if fp.q > 1.5:  # the far stable one: cst's label below-left, crelu's above-right
                below = name == "cst"
                wide.annotate(f"$q={fp.q:.2f}$", (fp.q, 0), xytext=(-4 if below else 4, -12 if below else 6),
                              textcoords="offset points", ha="right" if below else "left", fontsize=8,
                              color=COLORS[name])
            elif fp.q > 1 + 1e-6:  # the unstable one near q*
                below = fp.q > 1.1
                zoom.annotate(f"$q={fp.q:.3f}$", (fp.q, 0), xytext=(0, -14 if below else 7), textcoords="offset points",
                              ha="center", fontsize=8, color=COLORS[name])
    wide.set(xscale="log", xlim=(q_wide[0], q_wide[-1]), ylim=(-1.2, 0.8),
             title=f"past the bifurcation ($s={sparsity:g}$)")
    zoom.set(xlim=(q_zoom[0], q_zoom[-1]), ylim=(-0.05, 0.05), title=r"zoom near $q^*=1$")
    for ax in (wide, zoom):
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel=r"$q$ (pre-activation variance)", ylabel=r"$V(q) - q$")
    handles, _ = wide.get_legend_handles_labels()
    handles += [Line2D([], [], marker="o", color="0.5", markeredgecolor="k", ls="none", label="stable fixed point"),
                Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="0.5", markeredgewidth=2, ls="none",
                       label="unstable fixed point")]
    wide.legend(handles=handles, fontsize=7.5, loc="lower left")
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 5
# ---------------------------------------------------------------------------------------------


def draw_correlation_maps(sparsity: float = SPARSITY) -> Figure:
    """The correlation map R(rho) on the EoC at q* = 1 (paper Figure 5, docs/theory.md sections 1.2, 3.4 and 4.4).

    ReLU (s = 0.5) for reference; ReLU_tau, ST_tau, CReLU and CST at s = 0.85 (clipped:
    V'(q*) = 0.7). All pass through R(1) = 1 with slope chi_1 = 1; the sparse ones map
    uncorrelated inputs (rho = 0) to a large R(0), i.e. a large sigma_b^2 / q*.
    """
    rho = np.linspace(-1, 1, 201)
    fig, axes = _figure(SMALL)
    ax = axes[0, 0]
    ax.plot(rho, rho, ":", color="k", lw=1, label=r"identity $R(\rho)=\rho$")
    for name in ("relu", "relu_tau", "st_tau", "crelu", "cst"):
        p = _point(name, 0.5 if name == "relu" else sparsity)
        r = correlation_map(rho, p)
        ax.plot(rho, r, color=COLORS[name], lw=1.6, label=f"{LABELS[name]}, $s={p.sparsity:g}$, $R(0)={r[100]:.2f}$")
    ax.set(xlim=(-1, 1), ylim=(-1, 1.05), xlabel=r"input correlation $\rho^{l-1}$",
           ylabel=r"$\rho^{l} = R(\rho^{l-1})$",
           title=rf"correlation map on the EoC (clipped: $V'(q^*)={SLOPE:g}$)")
    ax.legend(fontsize=7.5, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 6
# ---------------------------------------------------------------------------------------------


def _as_array(values: Sequence[float | None]) -> np.ndarray:
    """A list with None (overflow) as nan, so matplotlib leaves a gap."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def draw_propagation(
    sparsity: float = SPARSITY,
    *,
    depth: int = 100,
    width: int = 300,
    seeds: int = 4,
    batch_size: int = 32,
    activations: Sequence[str] = ("relu_tau", "st_tau", "crelu", "cst"),
) -> Figure:
    """Empirical q^l over depth at finite width against the theory (docs/theory.md sections 4.1-4.2, paper Section 4).

    ``seeds`` random EoC MLPs per activation (Gaussian inputs scaled so q^1 = q* = 1;
    clipped ones at V'(q*) = 0.7) via :func:`sparse_eoc.experiments.propagate.propagate`. Left:
    the median q^l with its 10-90 % band over seeds (log scale; gaps where float64
    overflowed), the infinite-width theory q^l = q* = 1, and a vertical line where the
    median first passes 1e30; inset: the clipped ones on a linear scale. Right: the
    fraction of exact zeros per layer. Defaults: the paper's depth 100, width 300.
    """
    from sparse_eoc.experiments.propagate import BLOW_UP, propagate  # torch only for this figure

    fig, axes = _figure(WIDE, 1, 2, gridspec_kw=dict(width_ratios=(1.3, 1)))
    ax_q, ax_s = axes[0]
    inset = ax_q.inset_axes([0.1, 0.6, 0.3, 0.32])  # above ST_tau's line: q > 1e45 at l < 40
    layers, theory = None, None
    for name in activations:
        clipped = get_activation(name).clipped
        r = propagate(name, sparsity, slope=SLOPE if clipped else None, width=width, depth=depth,
                      seeds=seeds, batch_size=batch_size)
        layers, theory = np.array(r.layer), _as_array(r.q_theory)
        median, lo, hi = _as_array(r.q_median), _as_array(r.q_p10), _as_array(r.q_p90)
        targets = (ax_q, inset) if clipped else (ax_q,)
        for ax in targets:
            ax.fill_between(layers, lo, hi, color=COLORS[name], alpha=0.25, lw=0)
            ax.plot(layers, median, color=COLORS[name], lw=1.5, label=LABELS[name])
        ax_s.plot(layers, _as_array(r.sparsity), color=COLORS[name], lw=1.5, label=LABELS[name])
        if r.blown_up_at_layer is not None:
            ax_q.axvline(r.blown_up_at_layer, color=COLORS[name], ls=":", lw=1.2)
            ax_q.annotate(f"$>10^{{30}}$ at $l={r.blown_up_at_layer}$", (r.blown_up_at_layer, 1e30), fontsize=7.5,
                          color=COLORS[name], rotation=90, ha="right", va="bottom", xytext=(-2, 4),
                          textcoords="offset points")
    for ax in (ax_q, inset):
        ax.plot(layers, theory, "--", color="k", lw=1, label=r"theory ($q^l=q^*$)")
    ax_q.axhline(BLOW_UP, color="0.6", lw=0.6)
    ax_q.set(yscale="log", xlim=(1, depth), xlabel=r"layer $l$", ylabel=r"$q^l$ (median, 10-90% band)",
             title=f"variance over depth ($s={sparsity:g}$, width {width}, {seeds} seeds)")
    ax_q.set_ylim(bottom=0.3)
    ax_q.legend(fontsize=7.5, loc="lower right")
    inset.set(xlim=(1, depth), ylim=(0.5, 2.0))
    inset.set_xlabel(r"$l$", fontsize=7, labelpad=1)
    inset.set_ylabel(r"$q^l$", fontsize=7, labelpad=1)
    inset.tick_params(labelsize=6.5)
    ax_s.axhline(sparsity, color="k", ls="--", lw=1, label=f"target $s={sparsity:g}$")
    ax_s.set(xlim=(1, depth), ylim=(0, 1), xlabel=r"layer $l$", ylabel="fraction of exact zeros",
             title="sparsity over depth (mean over seeds)")
    ax_s.legend(fontsize=7.5, loc="lower left")
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 7
# ---------------------------------------------------------------------------------------------


def draw_stability_diagram(
    n_sparsities: int = 31, s_range: tuple[float, float] = (0.5, 0.95), m_top: float = 4.0
) -> Figure:
    """Where the clipped EoC is safe, over (sparsity s, clip m) (docs/theory.md sections 4.2-4.3, paper Section 4).

    Two panels (CReLU, CST). Shaded: m > m_b(s), the bifurcated region where V has
    three fixed points; unshaded below: q* is the only fixed point. Lines: the clip
    giving V'(q*) = 0.5, 0.7, 0.9 at each s. On CReLU the paper's two runs at s = 0.85:
    V'(q*) = 0.9 (m = 1.74, failed) and V'(q*) = 0.5 (m = 0.81, trained).

    Args:
        n_sparsities: points of the s grid (each costs one bifurcation scan, ~0.05-0.1 s).
        s_range: the grid's ends. m_top: the top of the m axis.
    """
    s = np.linspace(*s_range, n_sparsities)
    fig, axes = _figure(WIDE, 1, 2, sharey=True)
    for ax, name in zip(axes[0], ("crelu", "cst")):
        # None: no bifurcation below the scan's end, i.e. above the visible axis
        m_b = np.array([bifurcation_m(name, si, 1.0, m_max=1.1 * m_top) or 1.2 * m_top for si in s])
        ax.fill_between(s, m_b, 1.2 * m_top, color=COLORS[name], alpha=0.22, lw=0,
                        label="3 fixed points (bifurcated)")
        ax.plot(s, m_b, color=COLORS[name], lw=2, label=r"$m_b(s)$")
        for v, ls in zip((0.5, 0.7, 0.9), (":", "--", "-.")):
            m_v = [solve_eoc(name, si, 1.0, slope=v).m for si in s]
            ax.plot(s, m_v, ls, color="k", lw=1.1, label=f"$V'(q^*)={v:g}$")
        ax.text(0.05, 0.05, r"1 fixed point: $q^*$ stable", transform=ax.transAxes, fontsize=8.5)
        ax.set(xlim=s_range, ylim=(0, m_top), xlabel=r"sparsity $s$", title=LABELS[name])
    crelu = axes[0, 0]
    fail, good = (solve_eoc("crelu", SPARSITY, 1.0, slope=v) for v in (0.9, 0.5))
    crelu.plot([SPARSITY], [fail.m], "X", color="tab:red", markeredgecolor="k", ms=9, zorder=6,
               label=f"paper: failed ($m={fail.m:.2f}$)")
    crelu.plot([SPARSITY], [good.m], "*", color="gold", markeredgecolor="k", ms=12, zorder=6,
               label=f"paper: trained ($m={good.m:.2f}$)")
    crelu.set_ylabel(r"clip $m$  (units of $\sqrt{q^*}$)")
    crelu.legend(fontsize=7, loc="upper right", ncol=2)
    axes[0, 1].legend(fontsize=7, loc="upper right", ncol=2)
    return fig


# ---------------------------------------------------------------------------------------------
# Registry and writer
# ---------------------------------------------------------------------------------------------

#: number -> (file stem, caption, function drawing the figure with its defaults).
FIGURES: dict[int, tuple[str, str, Callable[[], Figure]]] = {
    1: ("activations", "The five activations ReLU, ReLU_tau, ST_tau, CReLU and CST at tau = 1, m = 1.",
        draw_activations),
    2: ("variance_maps", "The variance map V(q) on the EoC at q* = 1: tangent to the identity (half-stable) for "
        "ReLU_tau/ST_tau, a stable crossing with slope 0.7 for CReLU/CST.", draw_variance_maps),
    3: ("slope_curvature", "The slope V'(q*) and curvature V''(q*) on the EoC against the clip m for several "
        "sparsities, with the bifurcation clip m_b marked on each curve.", draw_slope_curvature),
    4: ("bifurcation", "V(q) - q past the bifurcation (s = 0.85): two extra fixed points above q* = 1, each "
        "marked with its stability.", draw_bifurcation),
    5: ("correlation_maps", "The correlation map R(rho) on the EoC for each activation at s = 0.85 "
        "(ReLU at 0.5), against the identity.", draw_correlation_maps),
    6: ("propagation", "Empirical q^l over 100 layers of width-300 MLPs at init against the theory: ReLU_tau and "
        "ST_tau blow up, CReLU and CST stay near q*, with their sparsity per layer.", draw_propagation),
    7: ("stability_diagram", "The (s, m) stability diagram of CReLU and CST: the bifurcated region m > m_b(s), the "
        "clips giving V'(q*) = 0.5, 0.7, 0.9, and the paper's two CReLU runs.", draw_stability_diagram),
}


def write_figures(
    out_dir: str | Path, only: int | None = None, formats: Sequence[str] = ("png", "pdf"), progress: bool = True
) -> list[Path]:
    """Draw the figures and save each as ``NN_stem.<format>``, plus an ``index.md`` listing them.

    Args:
        out_dir: directory, created if missing.
        only: a figure number (a key of :data:`FIGURES`), or None for all.
        formats: file formats matplotlib can write, e.g. ("png", "pdf"); png at 200 dpi.
        progress: print each figure's drawing time and the total.

    Returns:
        The paths written, figure files in order, then ``index.md``.

    Raises:
        ValueError: ``only`` not a figure number, or no formats.
    """
    if only is not None and (isinstance(only, bool) or only not in FIGURES):
        raise ValueError(f"only must be one of {sorted(FIGURES)} or None, got only={only!r}")
    formats = tuple(formats)
    if not formats:
        raise ValueError("formats must name at least one file format, e.g. ('png', 'pdf')")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = ["# Theory figures", "", "Price et al., ICLR 2024; drawn by `sparse_eoc.figures`.", "",
            "| # | file | shows |", "|---|---|---|"]
    start = time.perf_counter()
    for number in sorted(FIGURES) if only is None else [only]:
        stem, caption, draw = FIGURES[number]
        t0 = time.perf_counter()
        fig = draw()
        name = f"{number:02d}_{stem}"
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            fig.savefig(path, dpi=200, metadata={"CreationDate": None} if fmt == "pdf" else None)
            written.append(path)
        rows.append(f"| {number} | " + ", ".join(f"[{name}.{f}]({name}.{f})" for f in formats) + f" | {caption} |")
        if progress:
            print(f"figure {number} ({stem}): {time.perf_counter() - t0:.1f} s", flush=True)
    index = out / "index.md"
    index.write_text("\n".join(rows) + "\n")
    written.append(index)
    if progress:
        print(f"wrote {len(written)} files to {out} in {time.perf_counter() - start:.1f} s", flush=True)
    return written
