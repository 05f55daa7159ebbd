"""Edge-of-Chaos initialisation for a target sparsity, and the fixed points of V.

The EoC conditions are V(q*) = q* and chi1(q*) = 1 (paper Section 2; THEORY.md
sections 1 and 4). For an activation, a target sparsity s and a fixed point q*:

1. tau from s (THEORY.md section 2): ``tau = sqrt(q*) Phi^{-1}(s)`` one-sided,
   ``tau = sqrt(q*) Phi^{-1}((1 + s) / 2)`` two-sided;
2. ``sigma_w2 = 1 / (k P(q*))`` makes chi1(q*) = 1;
3. ``sigma_b2 = q* - k sigma_w2 A(q*)`` makes V(q*) = q*; it must be >= 0. For the
   four registered activations it is (a scan over s and m finds no exception, and it
   is exactly 0 for ReLU); the check guards round-off and activations added later.

For the clipped activations, V'(q*) rises monotonically from 0 (m -> 0) to 1
(m -> inf) on the EoC, so a target slope V'(q*) in (0, 1) fixes m (THEORY.md 4.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.stats import norm

from sparse_eoc.activations import canonical_name, get_activation
from sparse_eoc.gp.maps import (
    GPParams,
    _one_sided,
    chi1,
    variance_map,
    variance_map_derivative,
    variance_map_second_derivative,
)

__all__ = [
    "DEFAULT_SLOPE",
    "RELU_SPARSITY",
    "NoEoCPointError",
    "EoCPoint",
    "FixedPoint",
    "sparsity_range",
    "tau_from_sparsity",
    "sparsity_from_tau",
    "eoc_slope",
    "solve_eoc",
    "fixed_points",
]

#: V'(q*) used for a clipped activation when neither m nor a slope is given.
DEFAULT_SLOPE = 0.7
#: The sparsity of plain ReLU (``relu`` = ``relu_tau`` with tau = 0) at any q.
RELU_SPARSITY = 0.5
#: |V'(q) - 1| below this counts as V'(q) = 1 (a tangent, half-stable fixed point).
SLOPE_TOL = 1e-7
#: An extremum of V(q) - q within this relative round-off of 0 is a tangent (double) root.
#: Near round-off, not looser: two simple roots a distance d apart around an extremum
#: give |V - q| ~ V'' d^2 / 8 there (about 7e-10 for crelu s = 0.85, m = 4, d = 8e-5).
TANGENT_RTOL = 1e-13


class NoEoCPointError(ValueError):
    """No Edge-of-Chaos point exists for the requested inputs (sigma_b2 would be < 0)."""


def _check_q_star(q_star: float) -> float:
    q_star = float(q_star)
    if not (math.isfinite(q_star) and q_star > 0):
        raise ValueError(f"q_star must be finite and > 0, got q_star={q_star!r}")
    return q_star


def sparsity_range(activation: str) -> tuple[float, float]:
    """The sparsities [lo, hi) reachable with tau >= 0: [0.5, 1) one-sided, [0, 1) two-sided."""
    return (0.0, 1.0) if get_activation(activation).two_sided else (RELU_SPARSITY, 1.0)


def tau_from_sparsity(activation: str, sparsity: float, q_star: float = 1.0) -> float:
    """The threshold tau giving sparsity s for pre-activations N(0, q*) (THEORY.md section 2).

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


def eoc_slope_and_curvature(activation: str, sparsity: float, q_star: float, m) -> tuple[np.ndarray, np.ndarray]:
    """V'(q*) = A'(q*) / P(q*) and V''(q*) = A''(q*) / P(q*) on the EoC (sigma_w2 = 1 / (k P(q*))),
    as functions of the clip m (THEORY.md 4.2-4.3).

    Vectorised over m (> 0; inf gives the unclipped limit, slope 1). Both arrays have the
    shape of ``m``; V'' is in units of 1 / q*.
    """
    tau = tau_from_sparsity(activation, sparsity, q_star)
    m = np.asarray(m, dtype=float)
    q = np.asarray(q_star)
    slope, curvature = np.empty_like(m), np.empty_like(m)
    for idx, mi in np.ndenumerate(m):
        density = _one_sided(q, tau, float(mi), -1)  # P(q*)
        slope[idx] = _one_sided(q, tau, float(mi), 1) / density
        curvature[idx] = _one_sided(q, tau, float(mi), 2) / density
    return slope, curvature


def eoc_slope(activation: str, sparsity: float, q_star: float, m) -> np.ndarray:
    """V'(q*) on the EoC as a function of the clip m: ``1 - (m / sqrt(q*)) varphi(b) / P(q*)``.

    Vectorised over m (> 0; inf gives 1). Rises monotonically from 0 to 1 (THEORY.md 4.2).
    """
    return eoc_slope_and_curvature(activation, sparsity, q_star, m)[0]


def _m_for_slope(activation: str, sparsity: float, q_star: float, slope: float) -> float:
    """The unique m with V'(q*) = slope on the EoC (bracketing root find in log m)."""

    def gap(log_m: float) -> float:
        return float(eoc_slope(activation, sparsity, q_star, math.exp(log_m))) - slope

    scale = 0.5 * math.log(q_star)
    lo, hi = scale - 5.0, scale + 1.0
    while gap(lo) > 0:
        lo -= 5.0
    while gap(hi) < 0:
        hi += 1.0
    log_m = optimize.brentq(gap, lo, hi, xtol=1e-14, rtol=1e-14)
    return math.exp(log_m)


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
    """Solve for the EoC initialisation of a target sparsity (THEORY.md section 3-4).

    Args:
        activation: ``relu_tau``, ``st_tau``, ``crelu``, ``cst``, or ``relu``
            (= relu_tau with tau = 0, whose sparsity is 0.5; None means 0.5).
        sparsity: target fraction of exact zeros s at the fixed point; range as in
            :func:`tau_from_sparsity`.
        q_star: the fixed point q* of the variance map, > 0 (paper: 1).
        m: the clip, > 0; only for ``crelu``/``cst``; exclusive with ``slope``.
        slope: the target V'(q*) in (0, 1); only for ``crelu``/``cst``. When a
            clipped activation gets neither m nor slope, slope = 0.7.

    Returns:
        An :class:`EoCPoint` with tau, m (inf when unclipped), sigma_w2, sigma_b2.

    Raises:
        ValueError: sparsity outside the achievable range (or != 0.5 for relu),
            q_star <= 0, m <= 0, a slope outside (0, 1), m or slope for an
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
            ``neutral`` (V(q) = q for every q: plain ReLU on its EoC).
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


def fixed_points(
    params: GPParams,
    *,
    q_min: float | None = None,
    q_max: float | None = None,
    points_per_decade: int = 200,
) -> list[FixedPoint]:
    """All fixed points of V on (0, inf), ascending, each classified (THEORY.md section 4).

    Method: the extrema of V(q) - q (roots of V'(q) - 1 bracketed on a log grid over
    [q_min, q_max]) are added to the grid, then sign changes of V(q) - q on it are
    refined by Brent's method; tangent (double) roots, which do not change sign, are
    the extrema where V(q) - q vanishes to round-off.
    Plain ReLU on its EoC point (tau = 0, sigma_w2 = 2, sigma_b2 = 0) has V(q) = q
    for every q: returned as one entry at q = 1 with stability ``neutral`` and a note.

    Args:
        params: the map's parameters (an :class:`EoCPoint` works).
        q_min, q_max: the grid's range. Defaults cover every fixed point that can
            exist: from 1e-8 x scale, and every fixed point satisfies q >= sigma_b2,
            up to 1e8 x scale, where scale = max(1, sigma_b2, tau^2, m^2).
        points_per_decade: grid density.

    Returns:
        A list of :class:`FixedPoint`, ascending in q.
    """
    scale = max(1.0, params.sigma_b2, params.tau**2, params.m**2 if math.isfinite(params.m) else 0.0)
    q_min = 1e-8 * scale if q_min is None else float(q_min)
    q_max = 1e8 * scale if q_max is None else float(q_max)
    n = int(points_per_decade * math.log10(q_max / q_min)) + 1
    grid = np.geomspace(q_min, q_max, n)
    gap = variance_map(grid, params) - grid
    if np.all(np.abs(gap) <= 1e-12 * grid):
        q = getattr(params, "q_star", 1.0)
        return [
            FixedPoint(
                q, "neutral", float(variance_map_derivative(q, params)), 0.0,
                note="V(q) = q for every q > 0 (plain ReLU on its EoC): every q is a fixed point",
            )
        ]

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
        optimize.brentq(dg, grid[i], grid[i + 1], xtol=1e-15, rtol=1e-14)
        for i in np.nonzero(np.sign(slope_gap[:-1]) * np.sign(slope_gap[1:]) < 0)[0]
    ]
    tangent = [q for q in critical if abs(g(q)) <= TANGENT_RTOL * q]
    fine = np.union1d(grid, critical)
    gap = variance_map(fine, params) - fine
    crossings = list(fine[gap == 0])
    for i in np.nonzero(np.sign(gap[:-1]) * np.sign(gap[1:]) < 0)[0]:
        crossings.append(optimize.brentq(g, fine[i], fine[i + 1], xtol=1e-15, rtol=1e-14))
    # A tangent root may also show up as two crossings a round-off apart: keep the tangent one.
    roots = tangent + [q for q in crossings if all(abs(q - t) > 1e-6 * q for t in tangent)]

    roots.sort()
    merged: list[float] = []
    for q in roots:
        if merged and abs(q - merged[-1]) <= 1e-6 * q:
            continue
        merged.append(q)
    return [_classify(q, params) for q in merged]
