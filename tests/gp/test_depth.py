"""Iterated maps: convergence to q*, the half-stability of ReLU_tau, and rho -> 1 on the EoC."""

import math
import warnings

import numpy as np
import pytest

from sparse_eoc.gp import (
    GPParams,
    chi1,
    correlation_map,
    depth_to_correlate,
    fixed_points,
    iterate_correlation,
    iterate_variance,
    solve_eoc,
    variance_map,
)


@pytest.mark.parametrize("name", ["crelu", "cst"])
@pytest.mark.parametrize("q0", [0.5, 2.0])
def test_clipped_variance_converges_to_q_star_from_both_sides(name, q0):
    p = solve_eoc(name, 0.85, slope=0.7)
    q = iterate_variance(q0, p, 80)
    assert q.shape == (81,) and q[0] == q0
    gap = q - 1.0
    assert np.all(np.sign(gap) == np.sign(q0 - 1))  # no overshoot: V is increasing
    assert np.all(np.diff(np.abs(gap)) < 0)
    assert abs(gap[-1]) < 1e-10
    # Near q* the gap shrinks by V'(q*) = 0.7 per layer (+ V'' gap / 2, ~1e-5 at layer 30).
    assert gap[30] / gap[29] == pytest.approx(0.7, abs=1e-4)


def test_relu_tau_creeps_up_from_below():
    """V'(q*) = 1, V'' > 0: 1 - q^l ~ 2 / (V''(q*) l), a polynomial creep (docs/theory.md section 4.1)."""
    p = solve_eoc("relu_tau", 0.85)
    q = iterate_variance(0.9, p, 2000)
    assert np.all(np.diff(q) > 0) and np.all(q < 1)
    assert q[2000] == pytest.approx(0.998779, abs=1e-6)  # measured
    assert 2000 * (1 - q[2000]) == pytest.approx(2 / p.curvature, rel=0.03)


def test_relu_tau_diverges_from_above_without_warnings():
    p = solve_eoc("relu_tau", 0.85)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = iterate_variance(1.05, p, 700)
    assert np.all(np.diff(q[np.isfinite(q)]) > 0)
    assert int(np.argmax(q > 1e3)) == 63  # measured: the first layer above 1e3
    first_inf = int(np.argmax(np.isinf(q)))
    assert first_inf == 647 and np.all(np.isinf(q[first_inf:]))  # measured: float64 overflow
    # V(q)/q -> sigma_w2 / 2 for ReLU_tau (docs/theory.md section 4.1).
    assert q[400] / q[399] == pytest.approx(p.sigma_w2 / 2, rel=1e-3)


def test_iterate_variance_is_vectorised_over_q0():
    p = solve_eoc("cst", 0.7, slope=0.5)
    q0 = np.array([[0.1, 1.0], [3.0, 10.0]])
    q = iterate_variance(q0, p, 5)
    assert q.shape == (6, 2, 2)
    np.testing.assert_array_equal(q[:, 1, 0], iterate_variance(3.0, p, 5))
    np.testing.assert_allclose(q[1], variance_map(q0, p), rtol=1e-15)


def test_plain_relu_keeps_any_variance():
    np.testing.assert_allclose(iterate_variance(3.7, solve_eoc("relu"), 50), 3.7, rtol=1e-13)


@pytest.mark.parametrize(
    "name,s,kw,expected",
    [("relu", None, {}, 199), ("crelu", 0.85, {"slope": 0.7}, 78), ("cst", 0.85, {"slope": 0.7}, 63)],
)
def test_depth_to_correlate_pinned(name, s, kw, expected):
    """Measured: orthogonal inputs (rho0 = 0) become correlated to within 1e-3 at these depths."""
    p = solve_eoc(name, s, **kw)
    assert depth_to_correlate(0.0, p) == expected
    rho = iterate_correlation(0.0, p, None, expected)
    assert 1 - rho[-1] < 1e-3 <= 1 - rho[-2]
    assert np.all(np.diff(rho) > 0)


def test_rho_converges_polynomially_on_the_eoc():
    """ReLU: R(rho) = 1 - e + (2 sqrt2 / 3 pi) e^1.5 + ..., e = 1 - rho, so l^2 (1 - rho^l) -> 9 pi^2 / 2."""
    rho = iterate_correlation(0.0, solve_eoc("relu"), None, 400)
    scaled = np.arange(100, 401, 100) ** 2 * (1 - rho[100::100])
    assert np.all(np.diff(scaled) > 0)  # approaches the limit from below
    assert scaled[-1] == pytest.approx(9 * math.pi**2 / 2, rel=0.08)


def test_ordered_and_chaotic_phases():
    """Off the EoC: chi1 < 1 correlates inputs exponentially fast; chi1 > 1 never does."""
    ordered = GPParams("crelu", 0.0, 1.0, sigma_w2=1.5, sigma_b2=0.5)
    (fp,) = fixed_points(ordered)
    assert float(chi1(fp.q, ordered)) < 0.6
    assert depth_to_correlate(0.0, ordered, fp.q) == 9  # measured

    chaotic = GPParams("crelu", 0.0, 1.0, sigma_w2=3.0, sigma_b2=0.01)
    (fp,) = fixed_points(chaotic)
    assert float(chi1(fp.q, chaotic)) > 1.1
    assert depth_to_correlate(0.0, chaotic, fp.q, max_depth=300) is None
    rho = iterate_correlation(0.0, chaotic, fp.q, 200)
    c_star = rho[-1]  # the stable fixed correlation c* < 1
    assert c_star < 0.95 and float(correlation_map(c_star, chaotic, fp.q)) == pytest.approx(c_star, abs=1e-10)


def test_depth_to_correlate_edge_cases():
    p = solve_eoc("crelu", 0.85)
    assert depth_to_correlate(0.9995, p) == 0
    assert depth_to_correlate(0.0, p, max_depth=10) is None
    assert depth_to_correlate(0.0, p, tol=0.5) < depth_to_correlate(0.0, p, tol=0.05)


def test_iterate_correlation_shape_and_endpoints():
    p = solve_eoc("st_tau", 0.7)
    rho = iterate_correlation(np.array([-1.0, 0.3, 1.0]), p, None, 4)
    assert rho.shape == (5, 3)
    np.testing.assert_allclose(rho[:, 2], 1.0, atol=1e-13)  # rho = 1 is a fixed point of R
    np.testing.assert_allclose(rho[1], correlation_map([-1.0, 0.3, 1.0], p), atol=1e-15)


def test_bad_inputs_raise():
    p = solve_eoc("crelu", 0.85)
    with pytest.raises(ValueError, match="depth must be an integer >= 0"):
        iterate_variance(1.0, p, -1)
    with pytest.raises(ValueError, match="depth must be an integer >= 0"):
        iterate_variance(1.0, p, 2.5)
    with pytest.raises(ValueError, match="q0 .* finite and > 0"):
        iterate_variance(0.0, p, 3)
    with pytest.raises(ValueError, match="not a fixed point of V"):
        iterate_correlation(0.0, p, 2.0, 3)
    with pytest.raises(ValueError, match="tol must be in"):
        depth_to_correlate(0.0, p, tol=0.0)
    with pytest.raises(ValueError, match="max_depth must be an integer"):
        depth_to_correlate(0.0, p, max_depth=-3)
