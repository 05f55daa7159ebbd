"""The correlation map: Gauss-Legendre vs adaptive quadrature vs Monte Carlo vs closed-form anchors."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.gp import (
    GPParams,
    chi1,
    correlation_map,
    correlation_map_derivative,
    expected_derivative_product,
    expected_product,
    solve_eoc,
    variance_map,
)
from sparse_eoc.gp.correlation import _hinges, expected_product_quad

# One (tau, m) per registered activation with every kink at an O(1) place.
PARAMS = {"relu_tau": (0.8, math.inf), "st_tau": (1.2, math.inf), "crelu": (1.0364, 1.7395), "cst": (0.4, 1.0)}
EOC = [
    ("relu", None, {}),
    ("relu_tau", 0.85, {}),
    ("st_tau", 0.85, {}),
    ("crelu", 0.85, {"slope": 0.5}),
    ("crelu", 0.85, {"slope": 0.9}),
    ("cst", 0.85, {"slope": 0.7}),
    ("cst", 0.6, {"slope": 0.9}),
]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_hinge_decomposition_reproduces_phi(name):
    tau, m = PARAMS[name]
    x = np.linspace(-5, 5, 2001)
    from_hinges = sum(c * np.maximum(s * x - a, 0.0) for c, s, a in _hinges(name, tau, m))
    np.testing.assert_allclose(from_hinges, get_activation(name).fn(x, tau, m), atol=1e-14)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_gauss_legendre_matches_adaptive_quadrature(name):
    """Vectorised piecewise Gauss-Legendre vs scipy.quad, including |rho| -> 1 and unequal variances."""
    tau, m = PARAMS[name]
    rhos = np.array([-1.0, -1 + 1e-6, -0.6, 0.0, 0.35, 0.97, 1 - 1e-9, 1.0])
    for q1, q2 in ((1.0, 1.0), (0.3, 2.5)):
        c12 = rhos * math.sqrt(q1 * q2)
        value = expected_product(q1, q2, c12, name, tau, m)
        deriv = expected_derivative_product(q1, q2, c12, name, tau, m)
        for c, v, d in zip(c12, value, deriv):
            assert v == pytest.approx(expected_product_quad(q1, q2, c, name, tau, m), abs=1e-12)
            assert d == pytest.approx(expected_product_quad(q1, q2, c, name, tau, m, derivative=True), abs=1e-12)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_expected_products_match_monte_carlo(name):
    """Within 5 standard errors of a 200k-sample estimate (false-alarm rate ~6e-7 per check)."""
    act = get_activation(name)
    tau, m = PARAMS[name]
    rng = np.random.default_rng(20240215)
    z1, z2 = rng.standard_normal((2, 200_000))
    q1, q2 = 1.7, 0.6
    for rho in (-0.8, 0.0, 0.5, 0.95):
        u = math.sqrt(q1) * z1
        v = math.sqrt(q2) * (rho * z1 + math.sqrt(1 - rho**2) * z2)
        c12 = rho * math.sqrt(q1 * q2)
        for sample, value in (
            (act.fn(u, tau, m) * act.fn(v, tau, m), expected_product(q1, q2, c12, name, tau, m)),
            (act.derivative(u, tau, m) * act.derivative(v, tau, m),
             expected_derivative_product(q1, q2, c12, name, tau, m)),
        ):
            stderr = sample.std(ddof=1) / math.sqrt(sample.size)
            unseen = 3 / sample.size * max(1.0, np.abs(sample).max())  # rule of three
            assert abs(sample.mean() - float(value)) <= 5 * stderr + unseen


def test_plain_relu_is_the_arc_cosine_kernel():
    """Cho & Saul (2009): E[relu(u) relu(v)] = sqrt(q1 q2) (sin t + (pi - t) cos t) / (2 pi), t = arccos rho."""
    rho = np.linspace(-1, 1, 41)
    t = np.arccos(rho)
    q1, q2 = 0.5, 3.0
    value = expected_product(q1, q2, rho * math.sqrt(q1 * q2), "relu_tau", 0.0)
    deriv = expected_derivative_product(q1, q2, rho * math.sqrt(q1 * q2), "relu_tau", 0.0)
    np.testing.assert_allclose(value, math.sqrt(q1 * q2) * (np.sin(t) + (np.pi - t) * rho) / (2 * np.pi), atol=1e-14)
    np.testing.assert_allclose(deriv, (np.pi - t) / (2 * np.pi), atol=1e-14)


def test_unthresholded_soft_threshold_is_the_identity():
    c12 = np.array([-1.2, -0.3, 0.0, 0.9, 1.2])
    np.testing.assert_allclose(expected_product(0.8, 1.8, c12, "st_tau", 0.0), c12, atol=1e-14)
    np.testing.assert_allclose(expected_derivative_product(0.8, 1.8, c12, "cst", 0.0, math.inf), 1.0, atol=1e-14)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_symmetric_in_the_two_variances(name):
    """The integral treats u and v differently; the answer must not."""
    tau, m = PARAMS[name]
    c12 = np.array([-0.9, 0.2, 0.999]) * math.sqrt(0.4 * 2.2)
    for f in (expected_product, expected_derivative_product):
        np.testing.assert_allclose(f(0.4, 2.2, c12, name, tau, m), f(2.2, 0.4, c12, name, tau, m), atol=1e-13)


@pytest.mark.parametrize("name,s,kw", EOC)
def test_fixed_point_identities_on_the_eoc(name, s, kw):
    """R(1) = 1 and R'(1) = chi1(q*) = 1 to round-off, at two scales of q*."""
    for q_star in (1.0, 6.0):
        p = solve_eoc(name, s, q_star, **kw)
        assert float(correlation_map(1.0, p)) == pytest.approx(1.0, abs=1e-13)
        assert float(correlation_map_derivative(1.0, p)) == pytest.approx(float(chi1(q_star, p)), abs=1e-13)
        assert float(correlation_map_derivative(1.0, p)) == pytest.approx(1.0, abs=1e-13)


def test_r_at_one_is_v_over_q_off_the_fixed_point():
    params = GPParams("cst", 0.5, 1.2, sigma_w2=3.0, sigma_b2=0.2)
    for q in (0.3, 2.0):
        assert float(correlation_map(1.0, params, q)) == pytest.approx(float(variance_map(q, params)) / q, rel=1e-13)


def _richardson(f, x, h):
    d = lambda h: (f(x + h) - f(x - h)) / (2 * h)  # noqa: E731
    return (4 * d(h / 2) - d(h)) / 3


@pytest.mark.parametrize("name,s,kw", EOC)
def test_derivative_matches_finite_differences(name, s, kw):
    p = solve_eoc(name, s, 1.0, **kw)
    for rho in (-0.9, -0.3, 0.0, 0.4, 0.9):
        fd = _richardson(lambda r: float(correlation_map(r, p)), rho, 1e-3)
        assert float(correlation_map_derivative(rho, p)) == pytest.approx(fd, abs=1e-8)


@pytest.mark.parametrize("name,s,kw", EOC)
def test_map_is_nondecreasing_and_inside_the_unit_interval(name, s, kw):
    p = solve_eoc(name, s, 1.0, **kw)
    rho = np.linspace(-1, 1, 201)
    r = correlation_map(rho, p)
    assert np.all(np.diff(r) >= -1e-14)
    assert np.all(correlation_map_derivative(rho, p) >= 0)
    assert np.all((r >= -1 - 1e-13) & (r <= 1 + 1e-13))
    # Cauchy-Schwarz: R'(rho) = sigma_w2 E[phi'(u1) phi'(u2)] <= sigma_w2 E[phi'^2] = chi1 = 1.
    assert np.all(correlation_map_derivative(rho, p) <= 1 + 1e-13)


@pytest.mark.parametrize("name,s,kw", [e for e in EOC if get_activation(e[0]).two_sided])
def test_odd_activations(name, s, kw):
    """phi odd: E[phi(u1) phi(u2)] is odd in rho, so R(0) = sigma_b2/q*, R(-1) = -1 + 2 sigma_b2/q*."""
    p = solve_eoc(name, s, 2.0, **kw)
    rho = np.array([0.2, 0.5, 0.8])
    np.testing.assert_allclose(
        correlation_map(rho, p) + correlation_map(-rho, p), 2 * p.sigma_b2 / p.q_star, atol=1e-13
    )
    assert float(correlation_map(0.0, p)) == pytest.approx(p.sigma_b2 / p.q_star, abs=1e-14)
    assert float(correlation_map(-1.0, p)) == pytest.approx(-1 + 2 * p.sigma_b2 / p.q_star, abs=1e-13)
    without_bias = GPParams(p.activation, p.tau, p.m, p.sigma_w2, 0.0)
    assert float(correlation_map(0.0, without_bias, 2.0)) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name,s,kw", [e for e in EOC if not get_activation(e[0]).two_sided])
def test_r_at_zero_is_the_squared_mean(name, s, kw):
    """Independent inputs: R(0) = (sigma_w2 E[phi]^2 + sigma_b2) / q*.

    E[(X - a)_+] = sqrt(q) varphi(a / sqrt q) - a Phi(-a / sqrt q) for X ~ N(0, q).
    """
    q = 1.5
    p = solve_eoc(name, s, q, **kw)

    def hinge_mean(a):
        return math.sqrt(q) * norm.pdf(a / math.sqrt(q)) - a * norm.sf(a / math.sqrt(q)) if math.isfinite(a) else 0.0

    mean = hinge_mean(p.tau) - hinge_mean(p.tau + p.m)
    assert float(correlation_map(0.0, p)) == pytest.approx((p.sigma_w2 * mean**2 + p.sigma_b2) / q, abs=1e-13)


def test_plain_relu_r_at_zero_is_one_over_pi():
    assert float(correlation_map(0.0, solve_eoc("relu"))) == pytest.approx(1 / math.pi, abs=1e-15)


def test_vectorised_over_any_shape():
    p = solve_eoc("cst", 0.85, slope=0.7)
    rho = np.array([[-0.5, 0.1, 0.7], [0.99, -1.0, 1.0]])
    out = correlation_map(rho, p)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, [[float(correlation_map(r, p)) for r in row] for row in rho])
    assert correlation_map_derivative(rho, p).shape == (2, 3)


def test_bad_inputs_raise():
    p = solve_eoc("crelu", 0.85)
    with pytest.raises(ValueError, match=r"rho .* must be in \[-1, 1\]"):
        correlation_map(1.0001, p)
    with pytest.raises(ValueError, match=r"rho .* must be in \[-1, 1\]"):
        correlation_map_derivative([0.0, -1.5], p)
    with pytest.raises(ValueError, match="q_star is required"):
        correlation_map(0.5, GPParams("crelu", 1.0, 1.0, 2.0, 0.1))
    with pytest.raises(ValueError, match="q_star must be finite and > 0"):
        correlation_map(0.5, p, q_star=-1.0)
    with pytest.raises(ValueError, match=r"c12 .* \|c12\| <= sqrt\(q1 q2\)"):
        expected_product(1.0, 4.0, 2.01, "crelu", 1.0, 1.0)
    with pytest.raises(ValueError, match="q2 .* > 0"):
        expected_product(1.0, 0.0, 0.0, "crelu", 1.0, 1.0)
    # Round-off above sqrt(q1 q2) is clipped, not an error.
    assert float(expected_product(1.0, 4.0, 2 * (1 + 1e-13), "crelu", 1.0, 1.0)) == pytest.approx(
        float(expected_product(1.0, 4.0, 2.0, "crelu", 1.0, 1.0)), abs=1e-13
    )
