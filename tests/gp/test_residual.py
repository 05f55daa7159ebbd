"""Tests for sparse_eoc/gp/residual.py: the residual recursions and the per-site thresholds
(docs/theory.md section 8), checked against their defining identities and a direct iteration of V."""

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from sparse_eoc.gp import (
    THRESHOLDS,
    GPParams,
    chi1,
    correlation_map,
    default_residual_scale,
    residual_correlation,
    residual_covariance,
    residual_init,
    residual_variances,
    solve_eoc,
    sparsity_from_tau,
    variance_map,
)
from sparse_eoc.runs.config import THRESHOLD_CHOICES

POINTS = {  # name -> solve_eoc arguments
    "relu": ("relu", None, {}),
    "relu_tau": ("relu_tau", 0.85, {}),
    "st_tau": ("st_tau", 0.85, {}),
    "crelu": ("crelu", 0.85, {"slope": 0.7}),
    "cst": ("cst", 0.7, {"slope": 0.5}),
}


def point(name, q_star=1.0):
    activation, s, kwargs = POINTS[name]
    return solve_eoc(activation, s, q_star, **kwargs)


@pytest.mark.parametrize("convs", [1, 2])
@pytest.mark.parametrize("name", list(POINTS))
def test_per_layer_thresholds_put_every_site_on_its_own_eoc(name, convs):
    """V_l(q^l) = q^l, chi1 = 1 and sparsity s at every site; q^{l+1} = (1 + alpha^2) q^l; the solve
    is the scale law's rescaling of the base point (docs/theory.md section 8.3)."""
    base, depth = point(name, q_star=1.7), 12
    init = residual_init(base, depth, convs_per_block=convs)
    alpha2 = 4.0 / depth  # the default alpha = 2 / sqrt(L)
    assert init.n_sites == convs * depth + 1 and init.residual_scale == pytest.approx(math.sqrt(alpha2), rel=1e-15)
    np.testing.assert_allclose(init.q, 1.7 * (1 + alpha2) ** np.arange(depth + 1), rtol=1e-12)
    np.testing.assert_allclose(init.site_q, np.repeat(init.q[:-1], convs).tolist() + [init.q[-1]], rtol=1e-12)
    for p, q in zip(init.sites, init.site_q):
        assert float(variance_map(q, p)) == pytest.approx(q, rel=1e-10)
        assert float(chi1(q, p)) == pytest.approx(1.0, rel=1e-10)
        assert sparsity_from_tau(p.activation, p.tau, q) == pytest.approx(base.sparsity, abs=1e-12)
        scale = math.sqrt(q / base.q_star)
        assert p.tau == pytest.approx(base.tau * scale, rel=1e-12, abs=1e-15)
        assert p.m == (math.inf if math.isinf(base.m) else pytest.approx(base.m * scale, rel=1e-12))
        assert p.sigma_w2 == pytest.approx(base.sigma_w2, rel=1e-10)
        assert p.sigma_b2 == pytest.approx(base.sigma_b2 * q / base.q_star, rel=1e-9, abs=1e-15)
        assert p.slope == pytest.approx(base.slope, abs=1e-9)
    assert init.site_sparsity == pytest.approx([base.sparsity] * init.n_sites, abs=1e-12)


def test_relu_is_the_anchor_and_its_thresholds_do_not_depend_on_the_mode():
    """Plain ReLU: (tau, sigma_w2, sigma_b2) = (0, 2, 0) at every site, per-layer or fixed."""
    per_layer, fixed = (residual_init(point("relu"), 5, thresholds=t) for t in THRESHOLDS)
    for p in per_layer.sites:
        assert (p.tau, p.sigma_w2, p.sigma_b2) == (0.0, pytest.approx(2.0, rel=1e-14), 0.0)
    np.testing.assert_allclose(per_layer.q, fixed.q, rtol=1e-14)
    assert per_layer.site_sparsity == fixed.site_sparsity == (0.5,) * 6


@pytest.mark.parametrize("depth", [1, 3, 30, 100, 1000])
def test_the_default_scale_keeps_the_growth_below_e_to_the_4(depth):
    init = residual_init(point("crelu"), depth)
    assert init.residual_scale == default_residual_scale(depth) == 2 / math.sqrt(depth)
    assert init.q[-1] == pytest.approx((1 + 4 / depth) ** depth, rel=1e-12)
    assert 5.0 <= init.q[-1] < math.e**4


@pytest.mark.parametrize("convs", [1, 2])
@pytest.mark.parametrize("name", ["crelu", "relu_tau", "cst"])
def test_fixed_thresholds_follow_the_recursion_and_the_sparsity_drifts(name, convs):
    """q^{l+1} = q^l + alpha^2 V(..V(q^l)) with the base point at every site, written out here
    with variance_map, and s_l = P(phi(h) = 0) for h ~ N(0, q_l) (docs/theory.md section 8.4)."""
    base, depth, alpha = point(name), 20, 0.3
    init = residual_init(base, depth, residual_scale=alpha, thresholds="fixed", convs_per_block=convs)
    assert all(p is base for p in init.sites)
    q, site_q = [base.q_star], []
    for _ in range(depth):
        x = q[-1]
        for _ in range(convs):
            site_q.append(x)
            x = float(variance_map(x, base))
        q.append(q[-1] + alpha**2 * x)
    site_q.append(q[-1])
    np.testing.assert_allclose(init.q, q, rtol=1e-13)
    np.testing.assert_allclose(init.site_q, site_q, rtol=1e-13)
    a = base.tau / np.sqrt(site_q)
    expected = 2 * norm.cdf(a) - 1 if name == "cst" else norm.cdf(a)
    np.testing.assert_allclose(init.site_sparsity, expected, rtol=1e-13)
    outer = np.array(init.site_sparsity[::convs])  # the stream's sites: falling as q^l grows
    assert np.all(np.diff(outer) < 0) and outer[-1] < base.sparsity - 0.1


def test_residual_variances_reproduce_the_plan_and_start_anywhere():
    init = residual_init(point("crelu"), 15, convs_per_block=2)
    site_q, q = residual_variances(init.base.q_star, init)
    np.testing.assert_allclose(site_q, init.site_q, rtol=1e-14)
    np.testing.assert_allclose(q, init.q, rtol=1e-14)
    q1 = np.array([[0.5, 1.0, 2.0]])  # (1, 3): one per input
    site_q, q = residual_variances(q1, init)
    assert site_q.shape == (31, 1, 3) and q.shape == (16, 1, 3)
    np.testing.assert_allclose(q[:, 0, 1], init.q, rtol=1e-14)
    # the sites' maps are fixed once chosen: an input below q* stays below, one above stays above
    assert np.all(q[:, 0, 0] < q[:, 0, 1]) and np.all(q[:, 0, 1] < q[:, 0, 2])
    x = 0.5
    for p_out, p_in in zip(init.sites[0:-1:2], init.sites[1::2]):
        x = x + init.residual_scale**2 * float(variance_map(variance_map(x, p_out), p_in))
    assert q[-1, 0, 0] == pytest.approx(x, rel=1e-13)


@pytest.mark.parametrize("name", ["crelu", "relu_tau", "relu"])
def test_per_layer_correlation_is_an_euler_step_of_the_base_map(name):
    """rho^{l+1} = (rho^l + alpha^2 R(rho^l)) / (1 + alpha^2), R the base point's map (docs/theory.md section 8.5)."""
    init = residual_init(point(name), 10)
    rho0 = np.array([-0.5, 0.0, 0.5, 0.9, 1.0])
    rho = residual_correlation(rho0, init)
    assert rho.shape == (11, 5)
    a2, expected = init.residual_scale**2, rho0
    for layer in range(1, 11):
        expected = np.minimum((expected + a2 * correlation_map(expected, init.base)) / (1 + a2), 1.0)
        np.testing.assert_allclose(rho[layer], expected, atol=1e-12)
    assert rho[-1, -1] == pytest.approx(1.0, abs=1e-12)  # identical inputs stay identical
    assert np.all(np.diff(rho[:, 1:4], axis=0) > 0)  # unrelated inputs become alike, slowly


def test_covariance_recursion_of_equal_inputs_is_the_variance_recursion():
    init = residual_init(point("cst"), 8, thresholds="fixed", convs_per_block=2)
    qa, qb, c = residual_covariance(1.3, 1.3, 1.3, init)
    _, q = residual_variances(1.3, init)
    np.testing.assert_allclose(qa, q, rtol=1e-14)
    np.testing.assert_allclose(qb, q, rtol=1e-14)
    np.testing.assert_allclose(c, q, rtol=1e-11)
    qa, qb, c = residual_covariance(0.7, 1.4, 0.0, init)  # unequal variances: each follows its own recursion
    np.testing.assert_allclose(qa, residual_variances(0.7, init)[1], rtol=1e-14)
    np.testing.assert_allclose(qb, residual_variances(1.4, init)[1], rtol=1e-14)
    assert np.all(np.abs(c) <= np.sqrt(qa * qb))


def test_to_dict_is_strict_json_with_one_entry_per_site():
    for name in ("crelu", "relu_tau"):
        init = residual_init(point(name), 4)
        d = json.loads(json.dumps(init.to_dict(), allow_nan=False))
        assert len(d["sites"]) == 5 and len(d["q"]) == 5 and d["thresholds"] == "per-layer"
        assert [s["tau"] for s in d["sites"]] == list(init.site_taus)
        assert all((s["m"] is None) == (name == "relu_tau") for s in d["sites"])


def test_the_threshold_modes_are_the_settings_choices():
    # training adds "tracked": the per-layer thresholds at init, then held in training
    assert THRESHOLD_CHOICES == ("tracked", *THRESHOLDS)


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 0}, r"depth must be an integer >= 1, got depth=0"),
    ({"residual_scale": 0.0}, r"residual_scale must be a finite number > 0"),
    ({"residual_scale": math.inf}, r"residual_scale must be a finite number > 0"),
    ({"residual_scale": True}, r"residual_scale must be a finite number > 0"),
    ({"thresholds": "per_layer"}, r"thresholds must be one of per-layer, fixed, got thresholds='per_layer'"),
    ({"convs_per_block": 3}, r"convs_per_block must be 1 or 2, got convs_per_block=3"),
    ({"residual_scale": 1e30}, r"residual_scale=1e\+30 over 3 blocks takes the predicted variance to"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"depth": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        residual_init(point("crelu"), **args)


def test_a_plain_point_and_bad_variances_are_refused():
    base = point("crelu")
    plain = GPParams(base.activation, base.tau, base.m, base.sigma_w2, base.sigma_b2)
    with pytest.raises(ValueError, match="point must be an EoCPoint"):
        residual_init(plain, 3)
    init = residual_init(base, 3)
    with pytest.raises(ValueError, match=r"q1 \(the stem's output variance\) must be finite and > 0"):
        residual_variances(0.0, init)
    with pytest.raises(ValueError, match=r"c12 \(the covariance\) must satisfy"):
        residual_covariance(1.0, 1.0, 1.5, init)
    with pytest.raises(ValueError, match=r"rho \(a correlation\) must be in \[-1, 1\]"):
        residual_correlation(1.5, init)
