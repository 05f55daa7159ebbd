"""The EoC solve, its identities, the reference table and the fixed-point classification."""

import math

import numpy as np
import pytest

from sparse_eoc.gp import (
    NoEoCPointError,
    chi1,
    eoc_slope,
    fixed_points,
    solve_eoc,
    sparsity_from_tau,
    tau_from_sparsity,
    variance_map,
)
from sparse_eoc.gp.gaussian import derivative_second_moment_quad, second_moment_quad

SOLVES = [
    ("relu", None, {}),
    ("relu_tau", 0.6, {}),
    ("relu_tau", 0.85, {}),
    ("st_tau", 0.3, {}),
    ("st_tau", 0.85, {}),
    ("crelu", 0.6, {"slope": 0.9}),
    ("crelu", 0.85, {"slope": 0.5}),
    ("crelu", 0.85, {"m": 2.0}),
    ("cst", 0.7, {"slope": 0.7}),
    ("cst", 0.9, {"slope": 0.3}),
]


@pytest.mark.parametrize("q_star", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("name,s,kw", SOLVES)
def test_eoc_identities(name, s, kw, q_star):
    kw = {k: (v * math.sqrt(q_star) if k == "m" else v) for k, v in kw.items()}
    p = solve_eoc(name, s, q_star, **kw)
    assert float(variance_map(q_star, p)) == pytest.approx(q_star, rel=1e-12)
    assert float(chi1(q_star, p)) == pytest.approx(1.0, rel=1e-12)
    assert sparsity_from_tau(p.activation, p.tau, q_star) == pytest.approx(p.sparsity, abs=1e-12)
    # The same identities by quadrature, independent of the closed forms.
    k_quad = second_moment_quad(q_star, p.activation, p.tau, p.m)
    assert p.sigma_w2 * k_quad + p.sigma_b2 == pytest.approx(q_star, rel=1e-9)
    assert p.sigma_w2 * derivative_second_moment_quad(q_star, p.activation, p.tau, p.m) == pytest.approx(1, rel=1e-9)
    if "slope" in kw:
        assert p.slope == pytest.approx(kw["slope"], abs=1e-10)


def test_relu_anchor():
    p = solve_eoc("relu")
    assert (p.activation, p.tau, p.m, p.sparsity) == ("relu_tau", 0.0, math.inf, 0.5)
    assert p.sigma_w2 == pytest.approx(2.0, rel=1e-14)
    assert p.sigma_b2 == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("name", ["relu_tau", "st_tau"])
@pytest.mark.parametrize("s", [0.6, 0.75, 0.9])
def test_unclipped_sigma_w2_is_one_over_density(name, s):
    for q_star in (0.5, 1.0, 3.0):
        assert solve_eoc(name, s, q_star).sigma_w2 == pytest.approx(1 / (1 - s), rel=1e-12)


# THEORY.md section 4, reference values at q* = 1 (4 decimals).
@pytest.mark.parametrize(
    "name,s,slope,tau,m,sw2,sb2",
    [
        ("crelu", 0.85, 0.5, 1.0364, 0.8095, 8.5069, 0.6605),
        ("crelu", 0.85, 0.9, 1.0364, 1.7395, 6.7913, 0.5508),
        ("cst", 0.85, 0.7, 1.4395, 1.0016, 7.3877, 0.6989),
        ("cst", 0.85, 0.9, 1.4395, 1.5343, 6.8000, 0.6582),
        ("relu_tau", 0.80, None, 0.8416, math.inf, 5.0, 0.4698),
    ],
)
def test_reference_table(name, s, slope, tau, m, sw2, sb2):
    p = solve_eoc(name, s, 1.0, slope=slope)
    assert p.tau == pytest.approx(tau, abs=5e-5)
    assert p.m == pytest.approx(m, abs=5e-5)
    assert p.sigma_w2 == pytest.approx(sw2, abs=5e-5)
    assert p.sigma_b2 == pytest.approx(sb2, abs=5e-5)


@pytest.mark.parametrize("name", ["relu_tau", "st_tau"])
@pytest.mark.parametrize("s", [0.6, 0.7, 0.85])
def test_unclipped_eoc_point_is_half_stable(name, s):
    p = solve_eoc(name, s)
    fps = fixed_points(p)
    assert [f.stability for f in fps] == ["half-stable"]
    assert fps[0].q == pytest.approx(1.0, rel=1e-6)
    assert fps[0].curvature > 0
    # V(q) > q on both sides: the fixed point attracts from below only.
    q = np.array([0.5, 0.9, 1.1, 2.0])
    assert np.all(variance_map(q, p) > q)


def test_crelu_085_slope07_has_one_stable_fixed_point():
    fps = fixed_points(solve_eoc("crelu", 0.85, slope=0.7))
    assert [f.stability for f in fps] == ["stable"]
    assert fps[0].q == pytest.approx(1.0, rel=1e-9)
    assert fps[0].slope == pytest.approx(0.7, abs=1e-9)


def test_cst_085_slope09_is_past_its_bifurcation():
    fps = fixed_points(solve_eoc("cst", 0.85, slope=0.9))
    assert [f.stability for f in fps] == ["stable", "unstable", "stable"]
    np.testing.assert_allclose([f.q for f in fps], [1.0, 1.26, 5.33], rtol=0.01)


def test_plain_relu_is_neutral_everywhere():
    fps = fixed_points(solve_eoc("relu"))
    assert len(fps) == 1 and fps[0].stability == "neutral"
    assert "every q" in fps[0].note


def test_slope_rises_monotonically_in_m():
    m = np.geomspace(1e-3, 30, 400)
    for name in ("crelu", "cst"):
        slope = eoc_slope(name, 0.85, 1.0, m)
        rising = slope[:-1] < 1 - 1e-12  # past that, 1 - slope is below round-off
        assert np.all(np.diff(slope)[rising] > 0) and np.all(np.diff(slope) >= 0)
        assert slope[0] < 1e-3 and slope[-1] > 1 - 1e-9


def test_scale_invariance():
    """(q*, tau, m) -> (c q*, sqrt(c) tau, sqrt(c) m) leaves sigma_w2 and sigma_b2 / q* unchanged."""
    a = solve_eoc("crelu", 0.8, 1.0, slope=0.6)
    b = solve_eoc("crelu", 0.8, 9.0, slope=0.6)
    assert b.tau == pytest.approx(3 * a.tau) and b.m == pytest.approx(3 * a.m, rel=1e-9)
    assert b.sigma_w2 == pytest.approx(a.sigma_w2, rel=1e-9)
    assert b.sigma_b2 == pytest.approx(9 * a.sigma_b2, rel=1e-9)


def test_tau_sparsity_round_trip():
    for name in ("relu_tau", "crelu", "st_tau", "cst"):
        for s in (0.55, 0.7, 0.95):
            tau = tau_from_sparsity(name, s, 2.0)
            assert sparsity_from_tau(name, tau, 2.0) == pytest.approx(s, abs=1e-13)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("relu_tau", 0.4), {}, r"sparsity for relu_tau must be in \[0.5, 1.0\).*at least half"),
        (("crelu", 1.0), {}, r"sparsity for crelu must be in"),
        (("st_tau", -0.1), {}, r"sparsity for st_tau must be in \[0.0, 1.0\)"),
        (("relu", 0.7), {}, "sparsity for relu is 0.5"),
        (("crelu", 0.85, 0.0), {}, "q_star must be finite and > 0"),
        (("crelu", 0.85), {"slope": 1.0}, r"slope .* must be in \(0, 1\)"),
        (("crelu", 0.85), {"slope": 0.0}, r"slope .* must be in \(0, 1\)"),
        (("relu_tau", 0.85), {"slope": 0.7}, "slope applies only to the clipped"),
        (("st_tau", 0.85), {"m": 1.0}, "m applies only to the clipped"),
        (("crelu", 0.85), {"m": -1.0}, "m must be > 0"),
        (("crelu", 0.85), {"m": 1.0, "slope": 0.5}, "either m or slope"),
        (("crelu",), {}, "sparsity is required"),
        (("swish", 0.85), {}, "activation must be one of"),
    ],
)
def test_bad_inputs_raise_clear_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_eoc(*args, **kwargs)


def test_sigma_b2_is_nonnegative_over_the_whole_clipped_family():
    """A scan over (s, m): the EoC bias variance never goes below 0 (it is 0 for ReLU)."""
    for name, s_lo in (("crelu", 0.5), ("cst", 0.0)):
        for s in np.linspace(s_lo, 0.98, 15):
            for m in np.geomspace(1e-2, 50, 25):
                assert solve_eoc(name, s, m=m).sigma_b2 >= 0


def test_negative_sigma_b2_raises_no_eoc_point(monkeypatch):
    """The guard for sigma_b2 < 0 names the inputs and says what to change."""
    from sparse_eoc.gp import eoc

    monkeypatch.setattr(eoc, "_eoc_variances", lambda *args: (7.0, -0.25))
    with pytest.raises(NoEoCPointError, match=r"crelu at sparsity=0.85, q_star=1.0, m=1.*sigma_b2 = -0.25 < 0"):
        solve_eoc("crelu", 0.85, m=1.0)


def test_default_slope_for_clipped():
    assert solve_eoc("cst", 0.8).slope == pytest.approx(0.7, abs=1e-10)
