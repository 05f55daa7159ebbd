"""Closed-form maps against piecewise quadrature, finite differences and Monte Carlo."""

import math

import numpy as np
import pytest

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.gp import (
    GPParams,
    chi1,
    derivative_second_moment,
    second_moment,
    variance_map,
    variance_map_derivative,
    variance_map_second_derivative,
)
from sparse_eoc.gp.gaussian import derivative_second_moment_quad, kinks, second_moment_quad

# (tau, m) pairs: m = inf only for the unclipped activations.
PARAMS = {
    "relu_tau": [(0.0, math.inf), (0.5, math.inf), (1.2, math.inf), (3.0, math.inf)],
    "st_tau": [(0.0, math.inf), (0.3, math.inf), (1.44, math.inf), (2.5, math.inf)],
    "crelu": [(0.0, 0.2), (1.0364, 0.8095), (1.0364, 1.7395), (2.0, 5.0), (0.5, math.inf)],
    "cst": [(0.1, 0.3), (1.4395, 1.0016), (1.4395, 1.5343), (0.0, 4.0), (0.7, math.inf)],
}
CASES = [(name, tau, m) for name in ACTIVATIONS for tau, m in PARAMS[name]]
QS = [0.05, 0.5, 1.0, 2.0, 7.5, 40.0]


@pytest.mark.parametrize("name,tau,m", CASES)
def test_second_moments_match_piecewise_quadrature(name, tau, m):
    closed = second_moment(np.array(QS), name, tau, m)
    closed_d = derivative_second_moment(np.array(QS), name, tau, m)
    for q, c, cd in zip(QS, closed, closed_d):
        assert c == pytest.approx(second_moment_quad(q, name, tau, m), rel=1e-10, abs=1e-13)
        assert cd == pytest.approx(derivative_second_moment_quad(q, name, tau, m), rel=1e-10, abs=1e-13)


def _richardson(f, q, h):
    """Central difference with one Richardson step: error O(h^4)."""
    d = lambda h: (f(q + h) - f(q - h)) / (2 * h)  # noqa: E731
    return (4 * d(h / 2) - d(h)) / 3


@pytest.mark.parametrize("name,tau,m", CASES)
def test_derivatives_match_finite_differences(name, tau, m):
    params = GPParams(name, tau, m, sigma_w2=1.7, sigma_b2=0.3)
    for q in QS:
        h = 1e-3 * q
        v1 = _richardson(lambda x: float(variance_map(x, params)), q, h)
        v2 = _richardson(lambda x: float(variance_map_derivative(x, params)), q, h)
        scale = 1 + abs(float(variance_map(q, params))) / q
        assert float(variance_map_derivative(q, params)) == pytest.approx(v1, abs=1e-8 * scale)
        assert float(variance_map_second_derivative(q, params)) == pytest.approx(v2, abs=1e-7 * scale / q)


@pytest.mark.parametrize("name,tau,m", CASES)
def test_second_moments_match_monte_carlo(name, tau, m):
    """Within 5 standard errors of a 400k-sample estimate (false-alarm rate ~6e-7 per check).

    A region of probability below ~1/n may hold no sample at all (the sample std is then
    0): the rule of three bounds what it can contribute by 3/n times the largest value.
    """
    act = get_activation(name)
    rng = np.random.default_rng(1234)
    z = rng.standard_normal(400_000)
    for q in (0.5, 1.0, 3.0):
        x = math.sqrt(q) * z
        for sample, closed in (
            (act.fn(x, tau, m) ** 2, second_moment(q, name, tau, m)),
            (act.derivative(x, tau, m) ** 2, derivative_second_moment(q, name, tau, m)),
        ):
            stderr = sample.std(ddof=1) / math.sqrt(sample.size)
            unseen = 3 / sample.size * max(1.0, sample.max())
            assert abs(sample.mean() - float(closed)) <= 5 * stderr + unseen


def test_identity_v_prime_equals_chi1_unclipped_and_below_when_clipped():
    for name, tau, m in CASES:
        params = GPParams(name, tau, m, 2.0, 0.1)
        q = np.array(QS)
        gap = chi1(q, params) - variance_map_derivative(q, params)
        if math.isinf(m):
            np.testing.assert_allclose(gap, 0.0, atol=1e-14)
        else:  # > 0, but it underflows to 0 where (tau + m) / sqrt(q) > ~38
            assert np.all(gap >= 0) and np.any(gap > 0)


def test_relu_tau_is_convex_for_positive_tau():
    params = GPParams("relu_tau", 0.8, math.inf, 5.0, 0.47)
    assert np.all(variance_map_second_derivative(np.geomspace(1e-3, 1e3, 50), params) > 0)


def test_plain_relu_map_is_linear():
    params = GPParams("relu", 0.0, math.inf, 2.0, 0.0)
    q = np.geomspace(1e-4, 1e4, 9)
    np.testing.assert_allclose(variance_map(q, params), q, rtol=1e-14)


def test_kinks():
    assert kinks("crelu", 1.0, 2.0) == (1.0, 3.0)
    assert kinks("cst", 1.0, 2.0) == (-3.0, -1.0, 1.0, 3.0)
    assert kinks("st_tau", 0.5) == (-0.5, 0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(activation="crelu", tau=-0.1, m=1.0, sigma_w2=1.0, sigma_b2=0.0), "tau"),
        (dict(activation="crelu", tau=0.1, m=0.0, sigma_w2=1.0, sigma_b2=0.0), "m must be > 0"),
        (dict(activation="relu_tau", tau=0.1, m=2.0, sigma_w2=1.0, sigma_b2=0.0), "m must be inf"),
        (dict(activation="crelu", tau=0.1, m=1.0, sigma_w2=0.0, sigma_b2=0.0), "sigma_w2"),
        (dict(activation="crelu", tau=0.1, m=1.0, sigma_w2=1.0, sigma_b2=-1.0), "sigma_b2"),
        (dict(activation="gelu", tau=0.1, m=1.0, sigma_w2=1.0, sigma_b2=0.0), "relu_tau, st_tau, crelu, cst"),
    ],
)
def test_bad_parameters_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPParams(**kwargs)


def test_nonpositive_q_raises():
    with pytest.raises(ValueError, match="q .* > 0"):
        second_moment([1.0, 0.0], "crelu", 1.0, 1.0)


def _one_sided_mp(mp, a, mu, order):
    """The closed forms of the module docstring (mu = m / sqrt(q), q = 1) in mpmath arithmetic."""
    a, mu = mp.mpf(a), mp.mpf(mu)
    b = a + mu
    pdf = lambda z: mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi)  # noqa: E731
    sf = lambda z: mp.erfc(z / mp.sqrt(2)) / 2  # noqa: E731
    mass = sf(a) - sf(b)
    return {
        -1: mass,
        0: (1 + a * a) * mass - a * pdf(a) + (a - mu) * pdf(b) + mu * mu * sf(b),
        1: mass - mu * pdf(b),
        2: (a * pdf(a) - b * pdf(b) + mu * pdf(b) * (1 - b * b)) / 2,
    }[order]


@pytest.mark.parametrize("a", [0.0, 1.0364, 3.09, 6.0])
def test_one_sided_keeps_precision_for_narrow_clips(a):
    """For mu (a + mu) << 1 the closed forms subtract nearly equal terms (V'(q*) came out < 0 at
    m / sqrt(q*) = 1e-8); _one_sided integrates over the window [a, a + mu] there. Checked against
    the same closed forms in 80-digit mpmath (enough for their cancellation: at most ~40 digits
    here), from mu = 1e-12 across the switch at mu (a + mu) = 1 (NARROW_CLIP) up to mu = 3."""
    mp = pytest.importorskip("mpmath")
    from sparse_eoc.gp.maps import NARROW_CLIP, _one_sided

    switch = (-a + math.sqrt(a * a + 4 * NARROW_CLIP)) / 2  # mu (a + mu) = NARROW_CLIP
    mus = [*np.geomspace(1e-12, 3.0, 25), switch * (1 - 1e-9), switch * (1 + 1e-9)]
    with mp.workdps(80):
        for order in (-1, 0, 1, 2):
            for mu in mus:
                value = float(_one_sided(np.asarray(1.0), a, float(mu), order))
                ref = _one_sided_mp(mp, a, mu, order)
                if order == 2:  # changes sign inside the window when a < sqrt(3) < a + mu: absolute scale
                    scale = mp.quad(lambda z: abs((z - a) * z * (z * z - 3)) * mp.npdf(z), [a, a + mu]) / 2
                    assert abs(value - float(ref)) <= 1e-13 * float(scale), (order, mu)
                else:
                    assert value == pytest.approx(float(ref), rel=1e-12), (order, mu)
