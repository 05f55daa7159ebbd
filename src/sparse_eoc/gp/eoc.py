"""Edge-of-Chaos initialisation for a target sparsity, and the fixed points of V.

The EoC conditions are V(q*) = q* and chi1(q*) = 1 (paper Section 2; docs/theory.md
sections 1.2 and 3.3). For an activation, a target sparsity s and a fixed point q*:

1. tau from s (docs/theory.md section 2): ``tau = sqrt(q*) Phi^{-1}(s)`` one-sided,
   ``tau = sqrt(q*) Phi^{-1}((1 + s) / 2)`` two-sided;
2. ``sigma_w2 = 1 / (k P(q*))`` makes chi1(q*) = 1;
3. ``sigma_b2 = q* - k sigma_w2 A(q*)`` makes V(q*) = q*; it must be >= 0. For the
   four registered activations it is (a scan over s and m finds no exception, and it
   is exactly 0 for ReLU); the check guards round-off and activations added later.

For the clipped activations, V'(q*) rises monotonically from 0 (m -> 0) to 1
(m -> inf) on the EoC, so a target slope V'(q*) in (0, 1) fixes m (docs/theory.md section 4.2).

Accepted ranges: q* in ``Q_STAR_RANGE`` = [1e-100, 1e100] and, for a finite clip,
m / sqrt(q*) in ``M_RATIO_RANGE`` = [1e-10, 1e10]; m = inf (the unclipped limit) is
accepted too. There V'(q*), sigma_w2 and sigma_b2 agree with 60-digit arithmetic to about
1e-12 relative (tests/gp/test_eoc.py, tests/gp/test_maps.py). Past m / sqrt(q*) ~ 9 the
clip is inactive to round-off (V'(q*) = 1 in float64); below 1e-10, V'(q*) < 1e-9 and
sigma_w2 > 1e10, which no network can use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.stats import norm

from sparse_eoc.activations import RELU_SPARSITY, canonical_name, get_activation
from sparse_eoc.gp.maps import (
    Q_STAR_RANGE,
    GPParams,
    _check_q_star,
    _one_sided,
    chi1,
    variance_map,
    variance_map_derivative,
    variance_map_second_derivative,
)

__all__ = [
    "DEFAULT_SLOPE",
    "M_RATIO_RANGE",
    "Q_STAR_RANGE",
    "RELU_SPARSITY",
    "NoEoCPointError",
    "EoCPoint",
    "FixedPoint",
    "sparsity_range",
    "tau_from_sparsity",
    "sparsity_from_tau",
    "eoc_slope",
    "slope_and_curvature_vs_m",
    "solve_eoc",
    "fixed_points",
]

#: V'(q*) used for a clipped activation when neither m nor a slope is given.
DEFAULT_SLOPE = 0.7
#: |V'(q) - 1| below this counts as V'(q) = 1 (a tangent, half-stable fixed point).
SLOPE_TOL = 1e-7
#: An extremum of V(q) - q within this relative round-off of 0 is a tangent (double) root.
#: Near round-off, not looser: two simple roots a distance d apart around an extremum
#: give |V - q| ~ V'' d^2 / 8 there (about 7e-10 for crelu s = 0.85, m = 4, d = 8e-5).
TANGENT_RTOL = 1e-13
#: |V(q) - q| below this x q counts as V(q) = q on a whole band of q (:func:`fixed_points`).
NEUTRAL_RTOL = 1e-12
#: The accepted relative clips m / sqrt(q*) of :func:`solve_eoc` (module docstring).
M_RATIO_RANGE = (1e-10, 1e10)
#: How far the default fixed-point search reaches below the map's smallest scale and above
#: the largest (:func:`fixed_points`).
SEARCH_SPAN = 1e8


class NoEoCPointError(ValueError):
    """No Edge-of-Chaos point exists for the requested inputs (sigma_b2 would be < 0)."""


def sparsity_range(activation: str) -> tuple[float, float]:
    """The sparsities [lo, hi) reachable with tau >= 0: [0.5, 1) one-sided, [0, 1) two-sided."""
    return (0.0, 1.0) if get_activation(activation).two_sided else (RELU_SPARSITY, 1.0)


def tau_from_sparsity(activation: str, sparsity: float, q_star: float = 1.0) -> float:
    """The threshold tau giving sparsity s for pre-activations N(0, q*) (docs/theory.md section 2).

    Args:
        activation: registry name.
        sparsity: target fraction of exact zeros s, in [0.5, 1) for relu_tau/crelu
            and [0, 1) for st_tau/cst.
        q_star: pre-activation variance, > 0.

    Raises:
        ValueError: s outside the achievable range, or q_star <= 0.
    """
    act = get_activation(activation)
    q_star = _check_q_star(q_star)
    lo, hi = sparsity_range(activation)
    s = float(sparsity)
    if not (lo <= s < hi):
        reason = (
            f"; {act.name} with tau >= 0 zeroes at least half of N(0, q) inputs"
            if not act.two_sided and s < lo
            else ""
        )
        raise ValueError(f"sparsity for {act.name} must be in [{lo}, {hi}), got sparsity={s!r}{reason}")
    p = (1 + s) / 2 if act.two_sided else s
    return max(0.0, math.sqrt(q_star) * float(norm.ppf(p)))


def sparsity_from_tau(activation: str, tau: float, q: float = 1.0) -> float:
    """The fraction of zeros phi(h) = 0 for h ~ N(0, q): inverse of :func:`tau_from_sparsity`."""
    act = get_activation(activation)
    tau, _ = act.check_params(tau, math.inf if not act.clipped else 1.0)
    a = tau / math.sqrt(_check_q_star(q))
    return float(2 * norm.cdf(a) - 1) if act.two_sided else float(norm.cdf(a))


def _eoc_variances(act, q_star: float, tau: float, m: float) -> tuple[float, float]:
    """(sigma_w2, sigma_b2) with chi1(q*) = 1 and V(q*) = q*; sigma_b2 may be < 0."""
    q = np.asarray(q_star)
    sigma_w2 = 1.0 / (act.k * float(_one_sided(q, tau, m, -1)))
    sigma_b2 = q_star - act.k * sigma_w2 * float(_one_sided(q, tau, m, 0))
    return sigma_w2, sigma_b2


def _check_clipped(activation: str) -> str:
    act = get_activation(activation)
    if not act.clipped:
        raise ValueError(f"activation must be a clipped one (crelu or cst), got activation={activation!r}")
    return act.name


def _eoc_slope_curvature(act, tau: float, q_star: float, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V'(q*) = A'/P and V''(q*) = A''/P on the EoC for each clip in ``m`` (tau already solved)."""
    q = np.asarray(q_star)
    slope, curvature = np.empty_like(m), np.empty_like(m)
    for idx, mi in np.ndenumerate(m):
        density = _one_sided(q, tau, float(mi), -1)  # P(q*)
        slope[idx] = _one_sided(q, tau, float(mi), 1) / density
        curvature[idx] = _one_sided(q, tau, float(mi), 2) / density
    return slope, curvature


def slope_and_curvature_vs_m(activation: str, sparsity: float, q_star: float, m) -> tuple[np.ndarray, np.ndarray]:
    """V'(q*) and V''(q*) on the EoC as functions of the clip m (docs/theory.md sections 4.2-4.3).

    On the EoC sigma_w2 = 1 / (k P(q*)), so V'(q*) = A'(q*) / P(q*) and V''(q*) = A''(q*) / P(q*)
    (docs/theory.md sections 3.1-3.2); both keep full relative precision for small clips
    (no cancellation, see ``sparse_eoc.gp.maps._one_sided``).

    Args:
        activation: ``crelu`` or ``cst``.
        sparsity: the target sparsity s (range as in :func:`tau_from_sparsity`).
        q_star: the fixed point q*, in ``Q_STAR_RANGE``.
        m: the clip, > 0 (inf allowed: the unclipped limit); scalar or array of any shape.
            Accurate for m / sqrt(q*) in ``M_RATIO_RANGE`` (module docstring).

    Returns:
        (slope, curvature), each of the shape of ``m``: V'(q*) in (0, 1] (no unit) and
        V''(q*) in units of 1 / q* (multiply by q* for the scale-free kappa).

    Raises:
        ValueError: an unclipped activation, a bad sparsity or q_star, or m <= 0.
    """
    name = _check_clipped(activation)
    q_star = _check_q_star(q_star)
    m = np.asarray(m, dtype=float)
    if not np.all(m > 0):
        raise ValueError(f"m must be > 0 (inf means unclipped), got m={m!r}")
    tau = tau_from_sparsity(name, sparsity, q_star)
    return _eoc_slope_curvature(get_activation(name), tau, q_star, m)


def eoc_slope(activation: str, sparsity: float, q_star: float, m) -> np.ndarray:
    """V'(q*) on the EoC as a function of the clip m: ``1 - (m / sqrt(q*)) varphi(b) / P(q*)``.

    The first array of :func:`slope_and_curvature_vs_m` (same arguments and errors).
    Rises monotonically from 0 to 1 (docs/theory.md section 4.2).
    """
    return slope_and_curvature_vs_m(activation, sparsity, q_star, m)[0]


def _m_for_slope(activation: str, sparsity: float, q_star: float, slope: float) -> float:
    """The unique m with V'(q*) = slope on the EoC (bracketing root find in log(m / sqrt(q*))).

    tau is solved once. The bracket stays in ``M_RATIO_RANGE``.

    Raises:
        ValueError: slope below V'(q*) at the smallest accepted clip (it would need
            m / sqrt(q*) < 1e-10), naming slope and its range.
    """
    act = get_activation(activation)
    tau = tau_from_sparsity(act.name, sparsity, q_star)
    root = math.sqrt(q_star)

    def gap(log_ratio: float) -> float:
        m = np.asarray(root * math.exp(log_ratio))
        return float(_eoc_slope_curvature(act, tau, q_star, m)[0]) - slope

    lo_end, hi_end = (math.log(r) for r in M_RATIO_RANGE)
    if gap(lo_end) > 0:
        raise ValueError(
            f"slope (the target V'(q*)) for {act.name} at sparsity={sparsity} must be in "
            f"[{slope + gap(lo_end):.3g}, 1): smaller slopes need m / sqrt(q_star) < {M_RATIO_RANGE[0]:g}, "
            f"got slope={slope!r}"
        )
    lo, hi = max(lo_end, -5.0), min(hi_end, 1.0)
    while gap(lo) > 0:
        lo = max(lo_end, lo - 5.0)
    while gap(hi) < 0:  # ends: V'(q*) = 1 exactly at m / sqrt(q*) = 1e10 > any slope < 1
        hi = min(hi_end, hi + 1.0)
    log_ratio = optimize.brentq(gap, lo, hi, xtol=1e-14, rtol=1e-14)
    return root * math.exp(log_ratio)


@dataclass(frozen=True)
class EoCPoint(GPParams):
    """An Edge-of-Chaos initialisation: V(q*) = q* and chi1(q*) = 1.

    Attributes (besides those of :class:`GPParams`):
        sparsity: the fraction of zeros at the fixed point, s.
        q_star: the fixed point q* of V.
    """

    sparsity: float
    q_star: float

    @property
    def slope(self) -> float:
        """V'(q*): 1 for ReLU_tau/ST_tau, in (0, 1) for CReLU/CST."""
        return float(variance_map_derivative(self.q_star, self))

    @property
    def curvature(self) -> float:
        """V''(q*)."""
        return float(variance_map_second_derivative(self.q_star, self))

    @property
    def chi1(self) -> float:
        """chi_1 at q*: 1 up to round-off."""
        return float(chi1(self.q_star, self))

    def to_dict(self) -> dict[str, float | str | None]:
        """The point as strict-JSON-ready values: activation, sparsity, q_star, tau, m (None
        when unclipped), sigma_w2, sigma_b2, chi1, slope (V'(q*)) and curvature (V''(q*))."""
        return {
            "activation": self.activation, "sparsity": self.sparsity, "q_star": self.q_star,
            "tau": self.tau, "m": self.m if math.isfinite(self.m) else None,
            "sigma_w2": self.sigma_w2, "sigma_b2": self.sigma_b2,
            "chi1": self.chi1, "slope": self.slope, "curvature": self.curvature,
        }


def solve_eoc(
    activation: str,
    sparsity: float | None = None,
    q_star: float = 1.0,
    *,
    m: float | None = None,
    slope: float | None = None,
) -> EoCPoint:
    """Solve for the EoC initialisation of a target sparsity (docs/theory.md sections 3.3 and 4.2).

    Args:
        activation: ``relu_tau``, ``st_tau``, ``crelu``, ``cst``, or ``relu``
            (= relu_tau with tau = 0, whose sparsity is 0.5; None means 0.5).
        sparsity: target fraction of exact zeros s at the fixed point; range as in
            :func:`tau_from_sparsity`.
        q_star: the fixed point q* of the variance map, in ``Q_STAR_RANGE`` = [1e-100, 1e100]
            (paper: 1).
        m: the clip, with m / sqrt(q*) in ``M_RATIO_RANGE`` = [1e-10, 1e10], or inf (unclipped
            limit); only for ``crelu``/``cst``; exclusive with ``slope``.
        slope: the target V'(q*) in (0, 1), at least V'(q*) at m / sqrt(q*) = 1e-10 (about
            1e-10 tau / sqrt(q*) + 3e-21); only for ``crelu``/``cst``. When a clipped activation
            gets neither m nor slope, slope = 0.7.

    Returns:
        An :class:`EoCPoint` with tau, m (inf when unclipped), sigma_w2, sigma_b2.

    Raises:
        ValueError: sparsity outside the achievable range (or != 0.5 for relu),
            q_star, m or slope outside the ranges above, m or slope for an
            unclipped activation, or both m and slope.
        NoEoCPointError: sigma_b2 would be negative (the message says why and what to change).
    """
    q_star = _check_q_star(q_star)
    if activation == "relu":
        if sparsity is not None and float(sparsity) != RELU_SPARSITY:
            raise ValueError(
                f"sparsity for relu is {RELU_SPARSITY} (tau = 0); got sparsity={sparsity!r}: "
                "use relu_tau or crelu for another sparsity"
            )
        sparsity = RELU_SPARSITY
    act = get_activation(canonical_name(activation))
    if sparsity is None:
        raise ValueError(f"sparsity is required for {activation!r}")
    sparsity = float(sparsity)
    tau = tau_from_sparsity(act.name, sparsity, q_star)

    if not act.clipped:
        if slope is not None:
            raise ValueError(
                f"slope applies only to the clipped activations (crelu, cst); for {activation} "
                "V'(q*) = chi1 = 1 on the EoC"
            )
        if m is not None and float(m) != math.inf:
            raise ValueError(f"m applies only to the clipped activations (crelu, cst), got m={m!r} for {activation}")
        m = math.inf
    else:
        if m is not None and slope is not None:
            raise ValueError("give either m or slope, not both")
        if m is None:
            slope = DEFAULT_SLOPE if slope is None else float(slope)
            if not (0.0 < slope < 1.0):
                raise ValueError(f"slope (the target V'(q*)) must be in (0, 1), got slope={slope!r}")
            m = _m_for_slope(act.name, sparsity, q_star, slope)
        tau, m = act.check_params(tau, m)
        lo, hi = (r * math.sqrt(q_star) for r in M_RATIO_RANGE)
        if math.isfinite(m) and not lo <= m <= hi:
            raise ValueError(
                f"m must be in [{lo:.3g}, {hi:.3g}], i.e. m / sqrt(q_star) in [{M_RATIO_RANGE[0]:g}, "
                f"{M_RATIO_RANGE[1]:g}], where the EoC solve is accurate (m = inf is the unclipped limit), got m={m!r}"
            )

    sigma_w2, sigma_b2 = _eoc_variances(act, q_star, tau, m)
    if sigma_b2 < 0:
        if abs(sigma_b2) <= 1e-12 * q_star:
            sigma_b2 = 0.0
        else:
            raise NoEoCPointError(
                f"no Edge-of-Chaos point for {activation} at sparsity={sparsity}, q_star={q_star}, "
                f"m={m:.6g}: V(q*) = q* needs sigma_b2 = {sigma_b2:.6g} < 0, because the clip saturates "
                f"so much that E[phi^2] / E[phi'^2] > q*; use a larger m (a larger slope) "
                "or a higher sparsity"
            )
    return EoCPoint(
        activation=act.name, tau=tau, m=m, sigma_w2=sigma_w2, sigma_b2=sigma_b2,
        sparsity=sparsity, q_star=q_star,
    )


@dataclass(frozen=True)
class FixedPoint:
    """A fixed point q = V(q) of the variance map.

    Attributes:
        q: its location, > 0.
        stability: ``stable`` (V' < 1), ``unstable`` (V' > 1), ``half-stable``
            (V' = 1 within 1e-7 and V'' != 0: attracting from one side only), or
            ``neutral`` (V(q) = q for every q: plain ReLU on its EoC; or V(q) = q to
            round-off on a band of q, e.g. crelu at s = 0.5 with m >= 8 sqrt(q*); curvature 0).
        slope: V'(q).  curvature: V''(q).
        note: a sentence for the special cases, else empty.
    """

    q: float
    stability: str
    slope: float
    curvature: float
    note: str = ""


def _classify(q: float, params: GPParams) -> FixedPoint:
    slope = float(variance_map_derivative(q, params))
    curvature = float(variance_map_second_derivative(q, params))
    if slope < 1 - SLOPE_TOL:
        stability = "stable"
    elif slope > 1 + SLOPE_TOL:
        stability = "unstable"
    elif curvature != 0:
        stability = "half-stable"
    else:
        stability = "neutral"
    return FixedPoint(float(q), stability, slope, curvature)


def _is_fixed(q: float, params: GPParams) -> bool:
    """V(q) = q to 1e-9 relative (an EoCPoint's q* is, up to round-off)."""
    return abs(float(variance_map(q, params)) - q) <= 1e-9 * q


def _search_range(params: GPParams, q_star: float | None) -> tuple[float, float]:
    """The default [q_min, q_max] of :func:`fixed_points` (see there)."""
    clipped = math.isfinite(params.m)
    scales = [x for x in (params.sigma_b2, params.tau**2, params.m**2 if clipped else 0.0, q_star or 0.0) if x > 0]
    scales = scales or [1.0]  # plain ReLU GPParams with sigma_b2 = 0: any scale will do
    q_min = max(params.sigma_b2 * (1 - 1e-9), min(scales) / SEARCH_SPAN)
    if clipped:
        q_max = 1.01 * (params.sigma_b2 + params.k * params.sigma_w2 * params.m**2)
    else:
        q_max = max(scales) * SEARCH_SPAN
    if q_star is not None:
        q_max = max(q_max, 1.01 * q_star)
    return q_min, q_max


def fixed_points(
    params: GPParams,
    *,
    q_min: float | None = None,
    q_max: float | None = None,
    points_per_decade: int = 200,
) -> list[FixedPoint]:
    """All fixed points of V on (0, inf), ascending, each classified (docs/theory.md section 4).

    Method: the extrema of V(q) - q (roots of V'(q) - 1 bracketed on a log grid over
    [q_min, q_max]) are added to the grid, then sign changes of V(q) - q on it are
    refined by Brent's method; tangent (double) roots, which do not change sign, are
    the extrema where V(q) - q vanishes to round-off. An :class:`EoCPoint`'s q* is a
    fixed point by construction and is always listed (exactly q*) when it is in range.
    Plain ReLU on its EoC point (tau = 0, sigma_w2 = 2, sigma_b2 = 0) has V(q) = q
    for every q: returned as one entry at q = q* (1 for plain GPParams) with stability
    ``neutral`` and a note.

    Args:
        params: the map's parameters (an :class:`EoCPoint` works).
        q_min, q_max: the grid's range. The defaults scale with the map (it is scale-free,
            docs/theory.md section 4.5): every fixed point is >= sigma_b2 (V >= sigma_b2),
            and for a clipped activation <= sup V = sigma_b2 + k sigma_w2 m^2
            (docs/theory.md section 4.3). So q_min = max(sigma_b2 (1 - 1e-9), smallest / 1e8)
            and q_max = 1.01 sup V (clipped) or largest x 1e8 (unclipped), where smallest
            and largest are the extreme positive values of sigma_b2, tau^2, m^2 and q*.
        points_per_decade: grid density.

    Returns:
        A list of :class:`FixedPoint`, ascending in q.

    Raises:
        ValueError: q_min, q_max not finite with 0 < q_min < q_max.
    """
    q_star = getattr(params, "q_star", None)
    default_min, default_max = _search_range(params, q_star)
    q_min = default_min if q_min is None else float(q_min)
    q_max = default_max if q_max is None else float(q_max)
    if not (math.isfinite(q_min) and math.isfinite(q_max) and 0 < q_min < q_max):
        raise ValueError(f"fixed_points needs finite 0 < q_min < q_max, got q_min={q_min!r}, q_max={q_max!r}")
    n = int(points_per_decade * math.log10(q_max / q_min)) + 1
    grid = np.geomspace(q_min, q_max, n)
    anchor = q_star is not None and q_min <= q_star <= q_max and _is_fixed(q_star, params)
    if anchor:
        grid = np.union1d(grid, [q_star])
    gap = variance_map(grid, params) - grid
    flat = np.abs(gap) <= NEUTRAL_RTOL * grid
    if np.all(flat):
        q = 1.0 if q_star is None else q_star
        return [
            FixedPoint(
                q, "neutral", float(variance_map_derivative(q, params)), 0.0,
                note="V(q) = q for every q > 0 (plain ReLU on its EoC): every q is a fixed point",
            )
        ]
    bands = _neutral_bands(grid, flat)

    def g(q: float) -> float:
        return float(variance_map(q, params)) - q

    def dg(q: float) -> float:
        return float(variance_map_derivative(q, params)) - 1.0

    # The extrema of V(q) - q. Two roots closer together than a grid cell (q* and the
    # unstable fixed point just above it when V'(q*) is near 1) make no sign change on
    # the grid; V(q) - q is monotone between consecutive extrema, so splitting the grid
    # at them exposes both. An extremum where V(q) - q vanishes is a tangent root.
    slope_gap = variance_map_derivative(grid, params) - 1.0
    critical = [
        optimize.brentq(dg, grid[i], grid[i + 1], xtol=1e-15 * grid[i], rtol=1e-14)
        for i in np.nonzero(np.sign(slope_gap[:-1]) * np.sign(slope_gap[1:]) < 0)[0]
    ]
    tangent = [q for q in critical if abs(g(q)) <= TANGENT_RTOL * q]
    fine = np.union1d(grid, critical)
    gap = variance_map(fine, params) - fine
    crossings = list(fine[gap == 0])
    for i in np.nonzero(np.sign(gap[:-1]) * np.sign(gap[1:]) < 0)[0]:
        crossings.append(optimize.brentq(g, fine[i], fine[i + 1], xtol=1e-15 * fine[i], rtol=1e-14))
    # A tangent root may also show up as two crossings a round-off apart: keep the tangent one.
    roots = tangent + [q for q in crossings if all(abs(q - t) > 1e-6 * q for t in tangent)]
    if anchor:  # q* itself, exactly, in place of any root found within 1e-6 of it
        roots = [q_star] + [q for q in roots if abs(q - q_star) > 1e-6 * q_star]
    # Round-off makes V(q) - q change sign at random inside a neutral band: one entry per band.
    step = grid[1] / grid[0]
    roots = [q for q in roots if not any(lo / step <= q <= hi * step for lo, hi in bands)]

    roots.sort()
    merged: list[float] = []
    for q in roots:
        if merged and abs(q - merged[-1]) <= 1e-6 * q:
            continue
        merged.append(q)
    found = [_classify(q, params) for q in merged]
    for lo, hi in bands:
        q = q_star if anchor and lo <= q_star <= hi else math.sqrt(lo * hi)
        note = f"V(q) = q to round-off for every q in [{lo:.3g}, {hi:.3g}]: each is a fixed point"
        found.append(FixedPoint(q, "neutral", float(variance_map_derivative(q, params)), 0.0, note=note))
    return sorted(found, key=lambda f: f.q)


def _neutral_bands(grid: np.ndarray, flat: np.ndarray) -> list[tuple[float, float]]:
    """The runs of ``flat`` grid points (V(q) = q to round-off) spanning at least a factor 2 in q.

    Such a band appears where an activation is linear over the inputs that matter, e.g. crelu at
    s = 0.5 (tau = 0) with m >= 8 sqrt(q*), which is plain ReLU below q ~ m^2 / 40.
    """
    bands = []
    edges = np.diff(np.concatenate([[0], flat.astype(np.int8), [0]]))
    for start, stop in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]):
        if grid[stop - 1] >= 2 * grid[start]:
            bands.append((float(grid[start]), float(grid[stop - 1])))
    return bands
