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


# Reference values at q* = 1 (docs/theory.md section 4.7 lists them to 4 decimals). Here to
# 14 significant digits, computed independently of this package: the closed forms of
# docs/theory.md sections 3.1-3.3 evaluated in 30-digit mpmath (tau = sqrt(2) erfinv(2p - 1),
# P = Q(a) - Q(b), A = (1 + a^2) P - a varphi(a) + (a - mu) varphi(b) + mu^2 Q(b),
# 2 A'' = a varphi(a) - b varphi(b) + mu varphi(b) (1 - b^2)), with m from mpmath.findroot
# of A'/P = slope; kappa = q* V''(q*) = A''/P. Checked at rel 1e-10.
@pytest.mark.parametrize(
    "name,s,slope,tau,m,sw2,sb2,kappa",
    [
        ("crelu", 0.85, 0.5, 1.0364333894938, 0.80952816370784, 8.5069382528793, 0.66049158762245,
         -0.14410093921966),
        ("crelu", 0.85, 0.7, 1.0364333894938, 1.1703673400911, 7.3348194285285, 0.59534085699654,
         0.022912749949558),
        ("crelu", 0.85, 0.9, 1.0364333894938, 1.7394908816920, 6.7912753132319, 0.55080231721644,
         0.40548879588526),
        ("cst", 0.85, 0.7, 1.4395314709385, 1.0016263473668, 7.3877207878009, 0.69892393412306,
         0.39595477568688),
        ("cst", 0.85, 0.9, 1.4395314709385, 1.5342803289469, 6.8000035905052, 0.65816387751070,
         0.89657033079557),
        ("relu_tau", 0.80, None, 0.84162123357291, math.inf, 5.0, 0.46978318323451, 0.58905474201765),
        ("relu_tau", 0.85, None, 1.0364333894938, math.inf, 6.6666666666667, 0.53682942731838,
         0.80551179908798),
        ("st_tau", 0.85, None, 1.4395314709385, math.inf, 6.6666666666667, 0.64472894913532, 1.3584899024788),
    ],
)
def test_reference_table(name, s, slope, tau, m, sw2, sb2, kappa):
    p = solve_eoc(name, s, 1.0, slope=slope)
    assert p.tau == pytest.approx(tau, rel=1e-10)
    assert p.m == pytest.approx(m, rel=1e-10)
    assert p.sigma_w2 == pytest.approx(sw2, rel=1e-10)
    assert p.sigma_b2 == pytest.approx(sb2, rel=1e-10)
    assert p.curvature * p.q_star == pytest.approx(kappa, rel=1e-10)


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
    # mpmath.findroot (30 digits) of V(q) = q with the closed forms, as for the reference table;
    # docs/theory.md section 4.7 lists them as 1, 1.2634 and 5.340 (no longer 5.33).
    np.testing.assert_allclose([f.q for f in fps], [1.0, 1.2633905988165, 5.3400149106170], rtol=1e-10)


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


def _slope_mp(mp, name, s, ratio):
    """V'(q*) = 1 - mu varphi(b) / P on the EoC (docs/theory.md section 3.2), mu = m / sqrt(q*),
    evaluated in mpmath at the working precision: the subtracting closed form, independent of
    the cancellation-free one in sparse_eoc.gp.maps."""
    p = (1 + mp.mpf(s)) / 2 if name == "cst" else mp.mpf(s)
    a = mp.sqrt(2) * mp.erfinv(2 * p - 1)
    mu = mp.mpf(ratio)
    mass = mp.ncdf(a + mu) - mp.ncdf(a)
    return 1 - mu * mp.npdf(a + mu) / mass


@pytest.mark.parametrize(
    "name,s,q_star,ratio",
    [
        ("crelu", 0.85, 1.0, 1e-6),
        ("crelu", 0.85, 1.0, 1e-8),
        ("crelu", 0.85, 4.0, 1e-10),  # the smallest accepted m / sqrt(q*)
        ("crelu", 0.5, 1.0, 1e-8),  # tau = 0: V'(q*) ~ mu^2 / 3
        ("cst", 0.7, 1.0, 1e-8),
        ("crelu", 0.999, 1e6, 1e-9),  # m = 1e-6: used to give V'(q*) = -5.9e-7
    ],
)
def test_slope_keeps_precision_for_small_clips(name, s, q_star, ratio):
    """V'(q*) for m / sqrt(q*) << 1 used to lose every digit to cancellation (negative at 1e-8).
    Against 60-digit mpmath of the closed form: positive and accurate to 1e-12 relative."""
    mp = pytest.importorskip("mpmath")
    m = ratio * math.sqrt(q_star)
    p = solve_eoc(name, s, q_star, m=m)
    with mp.workdps(60):
        expected = float(_slope_mp(mp, name, s, m / math.sqrt(q_star)))
    assert p.slope > 0 and eoc_slope(name, s, q_star, m) > 0
    assert p.slope == pytest.approx(expected, rel=1e-12)
    assert float(eoc_slope(name, s, q_star, m)) == pytest.approx(expected, rel=1e-12)
    assert float(variance_map(q_star, p)) == pytest.approx(q_star, rel=1e-12)
    assert p.chi1 == pytest.approx(1.0, rel=1e-12)


def test_slope_reaches_down_to_the_smallest_accepted_clip():
    """A target slope is found down to V'(q*) at m / sqrt(q*) = 1e-10; below, a ValueError names slope."""
    tiny = float(eoc_slope("crelu", 0.85, 1.0, 2e-10))
    assert solve_eoc("crelu", 0.85, slope=tiny).m == pytest.approx(2e-10, rel=1e-9)
    with pytest.raises(ValueError, match=r"slope .* must be in \[5\.18e-11, 1\).*got slope=1e-300"):
        solve_eoc("crelu", 0.85, slope=1e-300)


@pytest.mark.parametrize("m", [1e4, 1e5, 1e10])
def test_fixed_points_list_q_star_for_large_clips(m):
    """The search used to start at 1e-8 m^2, above q* for m >= 1e5. Past the bifurcation V has
    q* (V'(q*) = 1 to round-off: half-stable) and a far stable fixed point below sup V."""
    p = solve_eoc("crelu", 0.85, m=m)
    fps = fixed_points(p)
    assert fps[0].q == 1.0 and fps[0].stability == "half-stable"
    assert [f.stability for f in fps[1:]] == ["stable"]
    assert 1 < fps[1].q < p.sigma_b2 + p.sigma_w2 * m * m
    assert float(variance_map(fps[1].q, p)) == pytest.approx(fps[1].q, rel=1e-12)


@pytest.mark.parametrize("name", ["crelu", "cst", "relu_tau"])
@pytest.mark.parametrize("q_star", [1e-100, 1e100])
def test_fixed_points_list_q_star_at_the_ends_of_its_range(name, q_star):
    """q* = 1e-300 used to give no fixed point and V''(q*) = -inf; 1e-100 and 1e100 (the accepted
    ends) give the map of q* = 1, scaled (docs/theory.md section 4.5)."""
    p, ref = solve_eoc(name, 0.85, q_star), solve_eoc(name, 0.85, 1.0)
    fps, ref_fps = fixed_points(p), fixed_points(ref)
    assert fps[0].q == q_star
    assert [f.stability for f in fps] == [f.stability for f in ref_fps]
    assert p.curvature * q_star == pytest.approx(ref.curvature, rel=1e-9)
    assert p.to_dict()["curvature"] == p.curvature and math.isfinite(p.curvature)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"q_star": 1e-300}, r"q_star must be finite and > 0, in \[1e-100, 1e\+100\].*got q_star=1e-300"),
        ({"q_star": 1e300}, r"q_star must be finite and > 0, in \[1e-100, 1e\+100\].*got q_star=1e\+300"),
        ({"m": 1e-300}, r"m must be in \[1e-10, 1e\+10\], i.e. m / sqrt\(q_star\).*got m=1e-300"),
        ({"m": 1e300}, r"m must be in \[1e-10, 1e\+10\].*got m=1e\+300"),
        ({"m": 1e-9, "q_star": 1e4}, r"m must be in \[1e-08, 1e\+12\].*got m=1e-09"),
    ],
)
def test_values_outside_the_accurate_ranges_are_refused(kwargs, match):
    """They used to crash (ZeroDivisionError at m = 1e-300, OverflowError in the fixed-point grid at
    q* = 1e300) or give nan (sigma_b2 at m = 1e300)."""
    with pytest.raises(ValueError, match=match):
        solve_eoc("crelu", 0.85, **kwargs)


def test_unclipped_limit_of_a_clipped_activation_is_accepted():
    assert solve_eoc("crelu", 0.85, m=math.inf).sigma_w2 == pytest.approx(1 / 0.15, rel=1e-12)


def test_a_neutral_band_is_one_entry():
    """crelu at s = 0.5 (tau = 0) with m = 100 is plain ReLU below q ~ m^2 / 50: V(q) = q to
    round-off there, which used to give a thousand 'fixed points'."""
    fps = fixed_points(solve_eoc("crelu", 0.5, m=100.0))
    assert len(fps) == 1 and fps[0].q == 1.0 and fps[0].stability == "neutral"
    assert "to round-off for every q in" in fps[0].note


def test_fixed_points_range_is_checked():
    with pytest.raises(ValueError, match="q_min < q_max"):
        fixed_points(solve_eoc("crelu", 0.85), q_min=2.0, q_max=1.0)
