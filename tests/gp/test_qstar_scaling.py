"""The scale of q* (docs/theory.md section 9): with tau and m scaled by sqrt(q*), the EoC maps in
units of q* do not depend on q*, and neither does a finite-width network at initialisation.

With tau = tau_1 sqrt(q*) and m = m_1 sqrt(q*), the EoC solve at q* gives sigma_w2 unchanged
and sigma_b2 = q* beta_1, and

    V(q* u) / q* = V_1(u),   V'(q* u) = V_1'(u),   q* V''(q* u) = V_1''(u),   chi1(q* u) = chi1_1(u)

for every u > 0, where V_1 is the map at q* = 1. So V'(q*) and kappa = q* V''(q*) are the same
at every q*. The closed forms agree to round-off (about 1e-15 relative, measured); the
tolerance 1e-10 leaves room for other platforms' special functions. A fixed absolute clip m
instead is the map of m / sqrt(q*) at q* = 1: a larger q* lowers V'(q*).
"""

import math
from itertools import pairwise

import numpy as np
import pytest

from sparse_eoc.activations import get_activation
from sparse_eoc.gp import (
    chi1,
    solve_eoc,
    variance_map,
    variance_map_derivative,
    variance_map_second_derivative,
)

#: The q* of the qstar-table experiment, and others whose square roots are not powers of 2
#: (with q* = 4^k the scaling is exact in binary floating point, which would hide a real error).
Q_STARS = [0.25, 4.0, 16.0, 0.3, 2.0, 9.0]
#: Relative pre-activation variances u = q / q* at which the maps are compared, around q* (u = 1).
U = np.logspace(-2, 2, 41)
TOL = 1e-10

CASES = [
    ("crelu", 0.9, {"slope": 0.7}),
    ("crelu", 0.85, {"slope": 0.5}),
    ("crelu", 0.95, {"m": 1.0}),
    ("cst", 0.9, {"slope": 0.5}),
    ("cst", 0.85, {"m": 0.25}),
    ("relu_tau", 0.7, {}),
    ("st_tau", 0.85, {}),
    ("relu", None, {}),
]


def _scaled(name, s, kw, q_star):
    """The EoC point at q* with the clip of the q* = 1 point scaled by sqrt(q*) (or its slope kept)."""
    one = solve_eoc(name, s, 1.0, **kw)
    if "m" in kw:
        return one, solve_eoc(name, s, q_star, m=one.m * math.sqrt(q_star))
    return one, solve_eoc(name, s, q_star, **kw)


@pytest.mark.parametrize("q_star", Q_STARS)
@pytest.mark.parametrize("name,s,kw", CASES)
def test_the_eoc_point_scales_with_q_star(name, s, kw, q_star):
    one, point = _scaled(name, s, kw, q_star)
    root = math.sqrt(q_star)
    assert point.tau == pytest.approx(root * one.tau, rel=TOL, abs=TOL)
    if math.isfinite(one.m):  # a target slope solves for m: it comes out scaled too
        assert point.m == pytest.approx(root * one.m, rel=TOL)
    assert point.sigma_w2 == pytest.approx(one.sigma_w2, rel=TOL)  # invariant
    assert point.sigma_b2 == pytest.approx(q_star * one.sigma_b2, rel=TOL, abs=TOL * q_star)  # proportional to q*


@pytest.mark.parametrize("q_star", Q_STARS)
@pytest.mark.parametrize("name,s,kw", CASES)
def test_the_maps_in_units_of_q_star_do_not_depend_on_q_star(name, s, kw, q_star):
    one, point = _scaled(name, s, kw, q_star)
    q = q_star * U
    v1 = variance_map(U, one)
    assert np.max(np.abs(variance_map(q, point) / q_star - v1) / v1) < TOL
    assert np.max(np.abs(variance_map_derivative(q, point) - variance_map_derivative(U, one))) < TOL
    assert np.max(np.abs(q_star * variance_map_second_derivative(q, point)
                         - variance_map_second_derivative(U, one))) < TOL
    assert np.max(np.abs(chi1(q, point) - chi1(U, one))) < TOL
    # at the fixed point: V(q*) = q*, chi1 = 1, and the same V'(q*) and kappa = q* V''(q*)
    assert point.slope == pytest.approx(one.slope, abs=TOL)
    assert q_star * point.curvature == pytest.approx(one.curvature, abs=TOL)
    assert float(variance_map(q_star, point)) == pytest.approx(q_star, rel=TOL)


def test_the_slope_and_curvature_are_the_same_at_every_q_star_of_the_experiment():
    """crelu s = 0.9, V'(q*) = 0.7 at q* in {0.25, 1, 4, 16}: one (V'(q*), kappa), the reference values."""
    points = [solve_eoc("crelu", 0.9, q, slope=0.7) for q in (0.25, 1.0, 4.0, 16.0)]
    kappas = [p.q_star * p.curvature for p in points]
    assert np.ptp([p.slope for p in points]) < TOL and np.ptp(kappas) < TOL
    assert kappas[0] == pytest.approx(0.237, abs=1e-3)  # docs/theory.md section 9
    assert np.ptp([p.sigma_w2 for p in points]) < TOL * points[0].sigma_w2
    assert np.ptp([p.sigma_b2 / p.q_star for p in points]) < TOL


@pytest.mark.parametrize("name,s", [("crelu", 0.9), ("cst", 0.85)])
def test_a_fixed_clip_at_q_star_is_the_map_of_m_over_sqrt_q_star_at_one(name, s):
    """The other reading: a fixed absolute m, a larger q* -> a smaller relative clip, a lower V'(q*)."""
    m = 1.0
    slopes = []
    for q_star in (0.25, 1.0, 4.0, 16.0):
        point, same = solve_eoc(name, s, q_star, m=m), solve_eoc(name, s, 1.0, m=m / math.sqrt(q_star))
        v1 = variance_map(U, same)
        assert np.max(np.abs(variance_map(q_star * U, point) / q_star - v1) / v1) < TOL
        assert point.slope == pytest.approx(same.slope, abs=TOL)
        assert q_star * point.curvature == pytest.approx(same.curvature, abs=TOL)
        slopes.append(point.slope)
    assert all(a > b for a, b in pairwise(slopes))  # V'(q*) falls as q* grows


def _forward(name, point, x, draws, input_sigma_w2):
    """Pre-activations of an MLP: layer 1 W ~ N(0, input_sigma_w2 / N0), then N(0, sigma_w2 / N),
    biases N(0, sigma_b2), all from the same standard normal ``draws``; returns [h^l], each (B, N)."""
    act = get_activation(name)
    hs, a = [], x
    for layer, (z_w, z_b) in enumerate(draws):
        var = input_sigma_w2 if layer == 0 else point.sigma_w2
        h = a @ (z_w * math.sqrt(var / z_w.shape[0])) + z_b * math.sqrt(point.sigma_b2)  # (B, N)
        hs.append(h)
        a = act.fn(h, point.tau, point.m)
    return hs, a


@pytest.mark.parametrize("q_star", [0.25, 4.0, 16.0, 9.0])
@pytest.mark.parametrize("name,s,kw", [("crelu", 0.9, {"slope": 0.7}), ("cst", 0.85, {"slope": 0.5}),
                                       ("st_tau", 0.7, {})])
def test_a_finite_network_at_q_star_is_the_one_at_one_scaled(name, s, kw, q_star):
    """At any width, the same draws give h^l(q*) = sqrt(q*) h^l(1) and the same zeros: the finite
    width is no part of what q* changes (docs/theory.md section 9). The first layer's sigma_w^2 is
    (q* - sigma_b2) / mean x^2, so that q^1 = q* (docs/theory.md section 5.3)."""
    rng = np.random.default_rng(0)
    n0, width, depth, batch = 30, 40, 6, 16
    x = rng.standard_normal((batch, n0)) * 0.7  # (B, N0)
    draws = [(rng.standard_normal((n0 if l == 0 else width, width)), rng.standard_normal(width))
             for l in range(depth)]
    msi = float(np.mean(x * x))
    one, point = _scaled(name, s, kw, q_star)
    h1, out1 = _forward(name, one, x, draws, (1.0 - one.sigma_b2) / msi)
    hq, outq = _forward(name, point, x, draws, (q_star - point.sigma_b2) / msi)
    root = math.sqrt(q_star)
    for a, b in zip(hq, h1):
        assert np.max(np.abs(a - root * b)) <= 1e-12 * np.max(np.abs(a))
    assert np.array_equal(outq == 0, out1 == 0)  # the same sparsity, unit by unit
    assert np.max(np.abs(outq - root * out1)) <= 1e-12 * np.max(np.abs(outq))
