"""Choosing the clip m of CReLU/CST: slope, curvature and the bifurcation of V (docs/theory.md sections 4.2-4.6).

On the EoC of a clipped activation (chi1(q*) = 1, V(q*) = q*) the clip m sets:

- the slope V'(q*), rising monotonically from 0 (m -> 0) to 1 (m -> inf): q* is stable
  from both sides for every finite m (docs/theory.md section 4.2);
- the curvature V''(q*), which is *not* monotone in m: it first dips below 0, then
  rises towards its positive ReLU_tau/ST_tau limit. We report it scale-free as
  kappa = q* V''(q*) (invariant under (q*, tau, m) -> (c q*, sqrt(c) tau, sqrt(c) m));
- past a bifurcation m_b, V has two more fixed points above q* (a saddle-node: an
  unstable one just above q* and a stable one far above); finite-width fluctuations
  can then jump to the far one (docs/theory.md section 4.3).

The paper's failing run, CReLU at s = 0.85 with V'(q*) = 0.9 (m = 1.7395), is below the
bifurcation (m_b = 1.8386) but has kappa = 0.4055; its working run (V'(q*) = 0.5, m = 0.8095)
has kappa = -0.1441 (docs/theory.md section 4.7; pinned in tests/gp/test_clip.py).
:func:`recommend_clip` therefore caps the slope, keeps m a margin below m_b and caps kappa
(default 0.25, our heuristic threshold between those two runs). :func:`analyse_clip` does
the whole analysis of one :class:`~sparse_eoc.gp.eoc.EoCPoint` once: its fixed points, m_b,
the recommendation and the warnings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from sparse_eoc.activations import get_activation
from sparse_eoc.gp.eoc import (
    M_RATIO_RANGE,
    EoCPoint,
    FixedPoint,
    _check_clipped,
    _check_q_star,
    _m_for_slope,
    fixed_points,
    slope_and_curvature_vs_m,
    solve_eoc,
)
from sparse_eoc.gp.maps import variance_map, variance_map_derivative

__all__ = [
    "ClipAnalysis",
    "ClipRecommendation",
    "analyse_clip",
    "slope_and_curvature_vs_m",
    "bifurcation_m",
    "recommend_clip",
    "check_clip",
    "eoc_points_at_fixed_m",
]

#: Grid of the scan for the bifurcation: points per decade of m / sqrt(q*), from M_SCAN_MIN.
M_SCAN_PER_DECADE = 60
M_SCAN_MIN = 0.05
#: Default upper end of the scan, in units of sqrt(q*). Past ~6 sqrt(q*), V'(q*) = 1 to
#: round-off and the map is ReLU_tau/ST_tau near q*.
M_MAX = 8.0


def _saddle_gap(name: str, sparsity: float, q_star: float, m: float) -> float:
    """(V(q2) - q2) / q2 at the local maximum q2 > q* of V(q) - q on the EoC for m; -1 if none.

    Positive exactly when V has fixed points above q*; continuous in m near the bifurcation.
    """
    p = solve_eoc(name, sparsity, q_star, m=m)
    v_inf = p.sigma_b2 + p.k * p.sigma_w2 * m * m  # sup V: every fixed point lies below it
    if v_inf <= q_star:
        return -1.0
    grid = np.geomspace(q_star, 1.01 * v_inf, 400)[1:]
    d = variance_map_derivative(grid, p) - 1.0
    # V' - 1 < 0 just above q*; the local max of V - q is where it next falls back through 0.
    up = np.nonzero((d[:-1] < 0) & (d[1:] >= 0))[0]
    if up.size == 0:
        return -1.0
    down = np.nonzero((d[:-1] > 0) & (d[1:] <= 0) & (np.arange(d.size - 1) >= up[0]))[0]
    if down.size == 0:
        return -1.0
    i = down[0]
    q2 = optimize.brentq(lambda q: float(variance_map_derivative(q, p)) - 1.0, grid[i], grid[i + 1], xtol=1e-14)
    return float(variance_map(q2, p)) / q2 - 1.0


def bifurcation_m(activation: str, sparsity: float, q_star: float = 1.0, *, m_max: float | None = None) -> float | None:
    """The smallest clip m at which V on the EoC has more than one fixed point (docs/theory.md section 4.3).

    Method: the saddle-node appears when the local maximum of V(q) - q above q* reaches 0.
    Its height, a smooth function of m, is scanned on a log grid of m from
    0.05 sqrt(q*) to m_max (60 points per decade), and its first sign change is refined by
    Brent's method: the result is accurate to about 1e-9 (tests check V has one fixed
    point at m_b - 1e-3 and three at m_b + 1e-3). A window of extra fixed points
    narrower than the scan step, or one below 0.05 sqrt(q*), would be missed; none was
    found in scans of crelu/cst over s in [0.5, 0.95].

    Args:
        activation: ``crelu`` or ``cst``.
        sparsity: the target sparsity s.
        q_star: the fixed point q*, > 0; m_b scales as sqrt(q*).
        m_max: the end of the scan, > 0.05 sqrt(q*); default 8 sqrt(q*).

    Returns:
        m_b, or None when V keeps a single fixed point up to m_max (e.g. crelu at s = 0.5,
        i.e. tau = 0).

    Raises:
        ValueError: an unclipped activation, a bad sparsity, q_star or m_max.
    """
    name = _check_clipped(activation)
    q_star = _check_q_star(q_star)
    lo_m = M_SCAN_MIN * math.sqrt(q_star)
    m_max = M_MAX * math.sqrt(q_star) if m_max is None else float(m_max)
    if not (math.isfinite(m_max) and m_max > lo_m):
        raise ValueError(f"m_max must be finite and > {lo_m:.6g} (0.05 sqrt(q_star)), got m_max={m_max!r}")
    n = max(2, int(math.ceil(M_SCAN_PER_DECADE * math.log10(m_max / lo_m))) + 1)
    grid = np.geomspace(lo_m, m_max, n)

    def gap(m: float) -> float:
        return _saddle_gap(name, sparsity, q_star, m)

    prev = gap(grid[0])
    if prev >= 0:
        return float(grid[0])
    for m0, m1 in zip(grid[:-1], grid[1:]):
        cur = gap(m1)
        if cur >= 0:
            return float(optimize.brentq(gap, m0, m1, xtol=1e-12, rtol=1e-12)) if cur > 0 else float(m1)
    return None


@dataclass(frozen=True)
class ClipRecommendation:
    """The clip :func:`recommend_clip` picks, with the numbers behind it.

    Attributes:
        m: the clip (absolute, in the units of the pre-activations).
        slope: V'(q*) on the EoC at m.
        curvature: V''(q*), units 1/q*.
        scaled_curvature: kappa = q* V''(q*), scale-free.
        bifurcation_m: m_b from :func:`bifurcation_m`, or None when there is none below m_max.
        binding: the constraint that fixed m: ``max_slope``, ``margin`` or ``kappa``.
        reason: one sentence saying so.
    """

    m: float
    slope: float
    curvature: float
    scaled_curvature: float
    bifurcation_m: float | None
    binding: str
    reason: str


def _check_thresholds(max_slope: float, margin: float, kappa: float) -> None:
    if not 0 < max_slope < 1:
        raise ValueError(f"max_slope must be in (0, 1), got max_slope={max_slope!r}")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got margin={margin!r}")
    if not math.isfinite(kappa):
        raise ValueError(f"kappa must be a finite number, got kappa={kappa!r}")


def _as_point(point_or_activation, sparsity, q_star, m, slope=None) -> EoCPoint:
    """The EoCPoint given, or the one solved from (activation, sparsity, q_star, m)."""
    if isinstance(point_or_activation, EoCPoint):
        if sparsity is not None or q_star is not None or m is not None:
            raise ValueError("give either an EoCPoint or (activation, sparsity, q_star, m), not both")
        return point_or_activation
    q_star = 1.0 if q_star is None else q_star
    return solve_eoc(point_or_activation, sparsity, q_star, m=m, slope=slope)


def _search_max_m(point: EoCPoint) -> float:
    """The end of the bifurcation scan for a point: 8 sqrt(q*), or just past a larger finite m
    (at most the largest accepted clip, ``M_RATIO_RANGE[1]`` sqrt(q*))."""
    root = math.sqrt(point.q_star)
    top = M_MAX * root
    return max(top, min(1.01 * point.m, M_RATIO_RANGE[1] * root)) if math.isfinite(point.m) else top


def _recommend(
    name: str, sparsity: float, q_star: float, m_b: float | None, *, max_slope: float, margin: float, kappa: float
) -> ClipRecommendation:
    """:func:`recommend_clip` with m_b already computed (arguments already checked)."""
    caps = {"max_slope": _m_for_slope(name, sparsity, q_star, max_slope)}
    if m_b is not None:
        caps["margin"] = margin * m_b
    binding = min(caps, key=caps.get)
    m_cap = caps[binding]

    def excess(m: float) -> float:
        return float(slope_and_curvature_vs_m(name, sparsity, q_star, m)[1]) * q_star - kappa

    m = m_cap
    if excess(m_cap) > 0:
        binding = "kappa"
        lo = 1e-4 * math.sqrt(q_star)
        grid = np.geomspace(lo, m_cap, int(50 * math.log10(m_cap / lo)) + 2)
        over = slope_and_curvature_vs_m(name, sparsity, q_star, grid)[1] * q_star - kappa > 0
        rising = np.nonzero(~over[:-1] & over[1:])[0]  # grid cells where kappa(m) crosses the cap upwards
        if rising.size == 0:
            raise ValueError(
                f"no clip m for {name} at sparsity={sparsity}, q_star={q_star} keeps q* V''(q*) <= "
                f"kappa={kappa}: even m = {grid[0]:.3g} exceeds it; lower the sparsity or raise kappa"
            )
        i = rising[-1]
        m = float(optimize.brentq(excess, grid[i], grid[i + 1], xtol=1e-12, rtol=1e-12))
        if excess(m) > 0:  # land on the feasible side of the root
            m = float(grid[i]) if excess(m - 1e-11) > 0 else m - 1e-11

    slope, curvature = (float(x) for x in slope_and_curvature_vs_m(name, sparsity, q_star, m))
    bif = "no bifurcation below m_max" if m_b is None else f"m_b = {m_b:.4g}"
    below_cap = "V has no bifurcation below m_max" if m_b is None else f"it is below {margin:g} x m_b = {margin * m_b:.4g}"
    reason = {
        "max_slope": f"m = {m:.4g} gives the largest allowed slope V'(q*) = {max_slope:g}; "
        f"{below_cap}, and q* V''(q*) = {curvature * q_star:.3g} <= {kappa:g}",
        "margin": f"m = {m:.4g} is {margin:g} x the bifurcation clip ({bif}), which caps the slope at "
        f"V'(q*) = {slope:.3g} < {max_slope:g}",
        "kappa": f"m = {m:.4g} is the largest clip with q* V''(q*) <= {kappa:g}, which caps the slope at "
        f"V'(q*) = {slope:.3g} (max_slope {max_slope:g}, {bif})",
    }[binding]
    return ClipRecommendation(m, slope, curvature, curvature * q_star, m_b, binding, reason + ".")


def recommend_clip(
    activation: str | EoCPoint,
    sparsity: float | None = None,
    q_star: float | None = None,
    *,
    max_slope: float = 0.9,
    margin: float = 0.9,
    kappa: float = 0.25,
) -> ClipRecommendation:
    """The clip with the largest slope V'(q*) that passes three stability checks (docs/theory.md section 4.6).

    m is the largest clip with V'(q*) <= max_slope, m <= margin x m_b (no such
    cap when there is no bifurcation), and kappa = q* V''(q*) <= kappa. Since V'(q*) is
    increasing in m, that is the largest slope allowed. kappa(m) is not monotone: the
    search scans [1e-4 sqrt(q*), m_cap] (50 points per decade, then Brent) for the
    largest m with kappa(m) <= kappa.

    Args:
        activation: ``crelu`` or ``cst``, or an :class:`~sparse_eoc.gp.eoc.EoCPoint` (then
            its activation, sparsity and q* are used, and sparsity and q_star must be None).
        sparsity: the target sparsity s.
        q_star: the fixed point q*, in ``Q_STAR_RANGE``; None means 1.
        max_slope: the largest V'(q*) wanted, in (0, 1) (paper's settings: 0.5, 0.7, 0.9).
        margin: the fraction of m_b m may reach, in (0, 1].
        kappa: the cap on q* V''(q*), a float (0.25: the paper's failing CReLU run at
            s = 0.85, V' = 0.9 has 0.4055; its V' = 0.5 run has -0.1441).

    Returns:
        A :class:`ClipRecommendation`.

    Raises:
        ValueError: an unclipped activation, a bad sparsity or q_star, max_slope outside
            (0, 1), margin outside (0, 1], a non-finite kappa, or a kappa so low that no
            m >= 1e-4 sqrt(q*) meets it (e.g. kappa = 0 for cst at s = 0.95, where
            q* V''(q*) > 0 for every m).
    """
    if isinstance(activation, EoCPoint):
        point = _as_point(activation, sparsity, q_star, None)
        activation, sparsity, q_star = point.activation, point.sparsity, point.q_star
    name = _check_clipped(activation)
    q_star = _check_q_star(1.0 if q_star is None else q_star)
    _check_thresholds(max_slope, margin, kappa)
    m_b = bifurcation_m(name, sparsity, q_star)
    return _recommend(name, sparsity, q_star, m_b, max_slope=max_slope, margin=margin, kappa=kappa)


def _clip_warnings(
    point: EoCPoint, fps: list[FixedPoint] | None, m_b: float | None, *, margin: float, kappa: float
) -> list[str]:
    """The sentences of :func:`check_clip` from the point's fixed points and m_b (None when unclipped)."""
    warnings: list[str] = []
    if math.isinf(point.m):
        if point.tau > 0:
            warnings.append(
                f"{point.activation} at sparsity {point.sparsity:g} is unclipped: V'(q*) = 1 and V''(q*) > 0, "
                "so q* is half-stable and any fluctuation above it grows without bound; use a clipped activation"
            )
        return warnings
    m = point.m
    if len(fps) > 1:
        where = ", ".join(f"{f.q:.3g} ({f.stability})" for f in fps)
        bif = "" if m_b is None else f" (m_b = {m_b:.4g})"
        warnings.append(
            f"m = {m:.4g} is past the bifurcation{bif}: V has {len(fps)} fixed points, "
            f"at q = {where}; fluctuations can jump off the EoC"
        )
    elif m_b is not None and m > margin * m_b:
        warnings.append(
            f"m = {m:.4g} is within {1 - margin:.0%} of the bifurcation clip m_b = {m_b:.4g}; "
            "a small change of scale can add fixed points"
        )
    scaled = point.curvature * point.q_star
    if scaled > kappa:
        warnings.append(
            f"q* V''(q*) = {scaled:.3g} > {kappa:g}: V bends up steeply above q*, so fluctuations "
            f"above q* decay slowly (the paper's failing CReLU s = 0.85, m = 1.74 run has 0.41)"
        )
    return warnings


def check_clip(
    activation: str | EoCPoint,
    sparsity: float | None = None,
    q_star: float | None = None,
    m: float | None = None,
    *,
    margin: float = 0.9,
    kappa: float = 0.25,
) -> list[str]:
    """Human-readable warnings about an EoC point's clip; empty when it passes (docs/theory.md sections 4.1-4.3 and 4.6).

    Checks: an unclipped activation (or m = inf) with tau > 0 has a half-stable q*;
    m at or past the bifurcation m_b (V has more fixed points); m above margin x m_b;
    kappa = q* V''(q*) above ``kappa``.

    Args:
        activation: an :class:`~sparse_eoc.gp.eoc.EoCPoint` (then sparsity, q_star and m must
            be None), or any registered name, solved with sparsity, q_star (None means 1) and m
            as in :func:`~sparse_eoc.gp.eoc.solve_eoc`.
        margin, kappa: the thresholds of :func:`recommend_clip`.

    Returns:
        A list of sentences, empty when the clip passes every check.

    Raises:
        ValueError: bad arguments, or no EoC point for them.
    """
    point = _as_point(activation, sparsity, q_star, m)  # a finite m for relu_tau/st_tau raises
    if math.isinf(point.m):
        return _clip_warnings(point, None, None, margin=margin, kappa=kappa)
    m_b = bifurcation_m(point.activation, point.sparsity, point.q_star, m_max=_search_max_m(point))
    return _clip_warnings(point, fixed_points(point), m_b, margin=margin, kappa=kappa)


@dataclass(frozen=True)
class ClipAnalysis:
    """Everything :func:`analyse_clip` says about one EoC point, each computed once.

    Attributes:
        point: the :class:`~sparse_eoc.gp.eoc.EoCPoint` analysed.
        fixed_points: every fixed point of V, ascending (:func:`~sparse_eoc.gp.eoc.fixed_points`).
        bifurcation_m: m_b (:func:`bifurcation_m`), or None when V keeps one fixed point up
            to ``bifurcation_search_max_m`` or the activation is unclipped.
        bifurcation_search_max_m: the end of the m_b scan (8 sqrt(q*), or 1.01 m for a larger
            clip); None for an unclipped activation.
        recommendation: :func:`recommend_clip`'s answer for the point's (activation, s, q*);
            None for an unclipped activation.
        warnings: :func:`check_clip`'s sentences for the point.
    """

    point: EoCPoint
    fixed_points: tuple[FixedPoint, ...]
    bifurcation_m: float | None
    bifurcation_search_max_m: float | None
    recommendation: ClipRecommendation | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        """Strict-JSON-ready values: the point's (:meth:`EoCPoint.to_dict`), then ``fixed_points``
        (q, stability, and note when there is one), ``bifurcation_m``, ``bifurcation_search_max_m``,
        ``recommended_m``, ``recommendation`` (m, slope, scaled_curvature, binding, reason) and
        ``warnings``; None where a value does not apply."""
        rec = self.recommendation
        return {
            **self.point.to_dict(),
            "fixed_points": [
                {"q": f.q, "stability": f.stability, **({"note": f.note} if f.note else {})}
                for f in self.fixed_points
            ],
            "bifurcation_m": self.bifurcation_m,
            "bifurcation_search_max_m": self.bifurcation_search_max_m,
            "recommended_m": None if rec is None else rec.m,
            "recommendation": None if rec is None else {
                "m": rec.m, "slope": rec.slope, "scaled_curvature": rec.scaled_curvature,
                "binding": rec.binding, "reason": rec.reason,
            },
            "warnings": list(self.warnings),
        }


def analyse_clip(
    point: EoCPoint, *, max_slope: float = 0.9, margin: float = 0.9, kappa: float = 0.25
) -> ClipAnalysis:
    """The clip analysis of one EoC point: fixed points, m_b, recommendation and warnings.

    What ``sparse-eoc eoc`` reports. m_b is scanned once, up to 8 sqrt(q*) or just past the
    point's own clip when that is larger, and shared by the recommendation and the warnings
    (docs/theory.md sections 4.3 and 4.6).

    Args:
        point: an :class:`~sparse_eoc.gp.eoc.EoCPoint` (from :func:`~sparse_eoc.gp.eoc.solve_eoc`).
        max_slope, margin, kappa: the thresholds of :func:`recommend_clip` and :func:`check_clip`.

    Returns:
        A :class:`ClipAnalysis`. For an unclipped activation only ``fixed_points`` and
        ``warnings`` are filled in.

    Raises:
        ValueError: ``point`` is not an EoCPoint, a threshold out of range, or a kappa no
            clip meets (as :func:`recommend_clip`).
    """
    if not isinstance(point, EoCPoint):
        raise ValueError(f"point must be an EoCPoint (from solve_eoc), got {type(point).__name__}")
    _check_thresholds(max_slope, margin, kappa)
    fps = fixed_points(point)
    m_b = search_max = rec = None
    if get_activation(point.activation).clipped:
        search_max = _search_max_m(point)
        m_b = bifurcation_m(point.activation, point.sparsity, point.q_star, m_max=search_max)
        rec = _recommend(point.activation, point.sparsity, point.q_star, m_b,
                         max_slope=max_slope, margin=margin, kappa=kappa)
    warnings = _clip_warnings(point, fps, m_b, margin=margin, kappa=kappa)
    return ClipAnalysis(point, tuple(fps), m_b, search_max, rec, tuple(warnings))


def eoc_points_at_fixed_m(activation: str, sparsity: float, m: float, q_stars) -> list[EoCPoint]:
    """The EoC points for one absolute clip m and several q* (docs/theory.md section 4.5, the follow-up paper).

    By scale invariance, (q*, m) is the same map as (1, m / sqrt(q*)): a fixed absolute
    m with a larger q* is a smaller relative clip, hence a lower slope V'(q*) (and,
    past the curvature's dip, a lower q* V''(q*)). Each point carries ``.slope``,
    ``.curvature`` (multiply by ``.q_star`` for kappa) and ``.sigma_w2``, ``.sigma_b2``.

    Args:
        activation: ``crelu`` or ``cst``.
        sparsity: the target sparsity s.
        m: the absolute clip, > 0.
        q_stars: the fixed points to try, each > 0; a sequence.

    Returns:
        One :class:`~sparse_eoc.gp.eoc.EoCPoint` per q*, in the order given.

    Raises:
        ValueError: an unclipped activation, or bad sparsity, m or q*.
    """
    name = _check_clipped(activation)
    return [solve_eoc(name, sparsity, float(q), m=m) for q in np.atleast_1d(np.asarray(q_stars, dtype=float))]
