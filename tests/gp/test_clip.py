"""Clip selection: slope and curvature in m, the bifurcation of V, the recommendation and its checks."""

import math

import numpy as np
import pytest

from sparse_eoc.gp import (
    analyse_clip,
    bifurcation_m,
    check_clip,
    eoc_points_at_fixed_m,
    eoc_slope,
    fixed_points,
    recommend_clip,
    slope_and_curvature_vs_m,
    solve_eoc,
)


def _count(name, s, m, q_star=1.0):
    return len(fixed_points(solve_eoc(name, s, q_star, m=m)))


@pytest.mark.parametrize("name", ["crelu", "cst"])
def test_slope_and_curvature_match_the_eoc_solve(name):
    m = np.array([0.3, 0.8095, 1.2, 1.7395, 3.0])
    slope, curvature = slope_and_curvature_vs_m(name, 0.85, 2.0, m * math.sqrt(2))
    for mi, sl, cu in zip(m * math.sqrt(2), slope, curvature):
        p = solve_eoc(name, 0.85, 2.0, m=mi)
        assert sl == pytest.approx(p.slope, abs=1e-13)
        assert cu == pytest.approx(p.curvature, abs=1e-13)
    np.testing.assert_allclose(slope, eoc_slope(name, 0.85, 2.0, m * math.sqrt(2)), atol=1e-14)


def test_curvature_is_not_monotone_in_m():
    """crelu s = 0.85: q* V''(q*) dips below 0, then rises past the paper's failing run (docs/theory.md section 4.3)."""
    m = np.geomspace(0.05, 4, 200)
    slope, curvature = slope_and_curvature_vs_m("crelu", 0.85, 1.0, m)
    assert np.all(np.diff(slope) > 0)
    assert curvature.min() < -0.15 and curvature[-1] > 0.8
    i = int(np.argmin(curvature))
    assert 0 < i < m.size - 1 and np.all(np.diff(curvature[:i]) < 0) and np.all(np.diff(curvature[i:]) > 0)
    # The paper's two CReLU runs at s = 0.85 (docs/theory.md section 4.7), at the clips as printed.
    # kappa = A''/P from the closed forms in 30-digit mpmath (as in test_eoc.py's reference table).
    # gp/clip.py's docstring used to say -0.16 for the working run: it is -0.1441.
    _, (good, bad) = slope_and_curvature_vs_m("crelu", 0.85, 1.0, [0.8095, 1.7395])
    assert good == pytest.approx(-0.14410874276, rel=1e-9) and bad == pytest.approx(0.40549453885345, rel=1e-10)


@pytest.mark.parametrize(
    "name,s,expected",
    [
        ("crelu", 0.6, 3.2391),
        ("crelu", 0.85, 1.8386),
        ("crelu", 0.95, 1.1019),
        ("cst", 0.3, 2.9325),
        ("cst", 0.85, 1.3270),
    ],
)
def test_bifurcation_m(name, s, expected):
    """Measured values; below m_b V has one fixed point, just above it three."""
    m_b = bifurcation_m(name, s)
    assert m_b == pytest.approx(expected, abs=1e-4)
    assert _count(name, s, m_b - 1e-3) == 1
    assert _count(name, s, m_b + 1e-3) == 3


def test_crelu_085_bifurcates_near_1_84_and_the_paper_runs_are_below_it():
    m_b = bifurcation_m("crelu", 0.85)
    assert m_b == pytest.approx(1.84, abs=0.01)
    assert 1.7395 < m_b  # the failing V' = 0.9 run is not past the bifurcation
    assert [f.stability for f in fixed_points(solve_eoc("crelu", 0.85, slope=0.9))] == ["stable"]


def test_cst_085_slope_09_is_past_its_bifurcation():
    p = solve_eoc("cst", 0.85, slope=0.9)
    assert bifurcation_m("cst", 0.85) < p.m == pytest.approx(1.5343, abs=1e-4)
    assert [f.stability for f in fixed_points(p)] == ["stable", "unstable", "stable"]


@pytest.mark.parametrize("s", [0.4, 0.7])
def test_cst_is_crelu_at_the_matching_threshold(s):
    """CST's maps are twice CReLU's with tau from (1 + s)/2, and sigma_w2 = 1/(k P) cancels the 2."""
    assert bifurcation_m("cst", s) == pytest.approx(bifurcation_m("crelu", (1 + s) / 2), abs=1e-8)
    m = np.array([0.5, 1.0, 2.0])
    for a, b in zip(slope_and_curvature_vs_m("cst", s, 1.0, m), slope_and_curvature_vs_m("crelu", (1 + s) / 2, 1.0, m)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_no_bifurcation_without_a_threshold():
    """tau = 0 (crelu at s = 0.5, cst at s = 0): one fixed point for every m up to m_max."""
    assert bifurcation_m("crelu", 0.5) is None
    assert bifurcation_m("cst", 0.0, m_max=20.0) is None
    assert all(_count("crelu", 0.5, m) == 1 for m in (0.5, 2.0, 6.0))


def test_bifurcation_m_scales_with_sqrt_q_star():
    assert bifurcation_m("crelu", 0.85, 4.0) == pytest.approx(2 * bifurcation_m("crelu", 0.85, 1.0), rel=1e-8)


def test_bifurcation_m_respects_m_max():
    assert bifurcation_m("crelu", 0.85, m_max=1.8) is None
    assert bifurcation_m("crelu", 0.85, m_max=1.9) == pytest.approx(1.8386, abs=1e-4)


def test_recommend_clip_at_085():
    """crelu s = 0.85: the curvature cap binds; the slope it allows is below 0.9 and above 0.5."""
    r = recommend_clip("crelu", 0.85)
    assert r.binding == "kappa"
    assert r.m == pytest.approx(1.5072, abs=1e-4) and r.slope == pytest.approx(0.8362, abs=1e-4)
    assert r.scaled_curvature == pytest.approx(0.25, abs=1e-9) and r.scaled_curvature <= 0.25
    assert r.bifurcation_m == pytest.approx(1.8386, abs=1e-4)
    assert "q* V''(q*) <= 0.25" in r.reason
    assert check_clip("crelu", 0.85, 1.0, r.m) == []
    # A slightly larger clip breaks the binding constraint.
    assert float(slope_and_curvature_vs_m("crelu", 0.85, 1.0, 1.01 * r.m)[1]) > 0.25
    c = recommend_clip("cst", 0.85)
    assert (c.binding, round(c.m, 4), round(c.slope, 4)) == ("kappa", 0.8434, 0.6105)


def test_recommend_clip_each_binding():
    low = recommend_clip("crelu", 0.6)
    assert low.binding == "max_slope" and low.slope == pytest.approx(0.9, abs=1e-12)
    assert low.m < 0.9 * low.bifurcation_m and low.scaled_curvature <= 0.25
    near = recommend_clip("crelu", 0.85, kappa=1.0)
    assert near.binding == "margin" and near.m == pytest.approx(0.9 * near.bifurcation_m, rel=1e-12)
    assert near.slope < 0.9
    loose = recommend_clip("crelu", 0.85, kappa=1.0, margin=1.0)
    assert loose.binding == "max_slope" and loose.m == pytest.approx(1.7395, abs=1e-4)
    none = recommend_clip("crelu", 0.5)
    assert none.bifurcation_m is None and none.binding == "max_slope" and "no bifurcation" in none.reason


def test_recommend_clip_scales_with_q_star():
    a, b = recommend_clip("crelu", 0.85, 1.0), recommend_clip("crelu", 0.85, 9.0)
    assert b.m == pytest.approx(3 * a.m, rel=1e-8)
    assert b.slope == pytest.approx(a.slope, abs=1e-9)
    assert b.scaled_curvature == pytest.approx(a.scaled_curvature, abs=1e-9)


def test_check_clip_flags_the_papers_failing_run():
    """crelu s = 0.85, m = 1.74: below the bifurcation, but within 10% of it and kappa ~ 0.41 > 0.25."""
    warnings = check_clip("crelu", 0.85, 1.0, 1.7395)
    assert len(warnings) == 2
    assert not any("past the bifurcation" in w for w in warnings)
    assert any("within 10% of the bifurcation" in w for w in warnings)
    assert any("q* V''(q*) = 0.405 > 0.25" in w for w in warnings)
    assert check_clip("crelu", 0.85, 1.0, 0.8095) == []  # the paper's working run


def test_check_clip_other_cases():
    past = check_clip("cst", 0.85, 1.0, 1.5343)
    assert any("past the bifurcation" in w and "3 fixed points" in w for w in past)
    assert any("half-stable" in w for w in check_clip("relu_tau", 0.85, 1.0, math.inf))
    assert any("half-stable" in w for w in check_clip("st_tau", 0.6, 1.0, math.inf))
    assert check_clip("relu", 0.5, 1.0, math.inf) == []
    assert check_clip("crelu", 0.85, 1.0, 1.7395, kappa=0.5, margin=0.95) == []


def test_fixed_absolute_m_with_larger_q_star():
    """docs/theory.md section 4.5: a fixed absolute m with a larger q* is a smaller relative clip."""
    q_stars = [1.0, 2.0, 4.0, 8.0]
    points = eoc_points_at_fixed_m("crelu", 0.85, 1.7395, q_stars)
    assert [p.q_star for p in points] == q_stars and all(p.m == 1.7395 for p in points)
    slopes = [p.slope for p in points]
    kappas = [p.curvature * p.q_star for p in points]
    assert np.all(np.diff(slopes) < 0) and np.all(np.diff(kappas) < 0)
    assert slopes[0] == pytest.approx(0.9, abs=1e-5) and kappas[2] < 0  # q* = 4: m / sqrt(q*) = 0.87
    # Scale invariance: (q* = 4, m) is the map of (q* = 1, m / 2).
    ref = solve_eoc("crelu", 0.85, 1.0, m=1.7395 / 2)
    assert points[2].slope == pytest.approx(ref.slope, abs=1e-12)
    assert kappas[2] == pytest.approx(ref.curvature, abs=1e-12)
    assert points[2].sigma_w2 == pytest.approx(ref.sigma_w2, rel=1e-12)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: bifurcation_m("relu_tau", 0.85), "clipped one"),
        (lambda: slope_and_curvature_vs_m("st_tau", 0.85, 1.0, 1.0), "clipped one"),
        (lambda: slope_and_curvature_vs_m("crelu", 0.85, 1.0, [1.0, 0.0]), "m must be > 0"),
        (lambda: bifurcation_m("crelu", 0.85, m_max=0.01), "m_max must be"),
        (lambda: recommend_clip("crelu", 0.85, max_slope=1.0), r"max_slope must be in \(0, 1\)"),
        (lambda: recommend_clip("crelu", 0.85, margin=0.0), r"margin must be in \(0, 1\]"),
        (lambda: recommend_clip("crelu", 0.85, kappa=math.nan), "kappa must be a finite"),
        (lambda: recommend_clip("cst", 0.95, kappa=0.0), "no clip m for cst .* raise kappa"),
        (lambda: eoc_points_at_fixed_m("relu_tau", 0.85, 1.0, [1.0]), "clipped one"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fixed_points_resolves_roots_closer_than_its_grid():
    """Past the bifurcation at large m the unstable fixed point sits within one grid cell of q*.

    Regression: fixed_points used to miss both (no sign change on its grid), dropping q* itself,
    or to report the extremum between them as a spurious half-stable root.
    """
    fps = fixed_points(solve_eoc("crelu", 0.6, m=4.0))
    assert [f.stability for f in fps] == ["stable", "unstable", "stable"]
    np.testing.assert_allclose([f.q for f in fps], [1.0, 1.008006, 3.707682], rtol=1e-6)
    fps = fixed_points(solve_eoc("crelu", 0.85, m=4.0))
    assert [f.stability for f in fps] == ["stable", "unstable", "stable"]
    assert fps[1].q == pytest.approx(1.000082, abs=1e-6)


def test_bifurcation_m_and_recommended_m_against_high_precision():
    """crelu s = 0.85 at q* = 1. m_b: mpmath.findroot (30 digits) of the saddle-node conditions
    V(q2) = q2, V'(q2) = 1 (unknowns m, q2 = 1.8517) with the closed forms on the EoC; the scan's
    Brent refinement is documented to about 1e-9. The recommended m: mpmath.findroot of
    kappa(m) = 0.25, where V'(q*) = 0.83623524822399."""
    assert bifurcation_m("crelu", 0.85) == pytest.approx(1.8386317906859, rel=1e-9)
    r = recommend_clip("crelu", 0.85)
    assert r.m == pytest.approx(1.5071889908055, rel=1e-9) and r.slope == pytest.approx(0.83623524822399, rel=1e-9)


@pytest.mark.parametrize(
    "name,s,kw",
    [("crelu", 0.85, {"slope": 0.7}), ("crelu", 0.85, {"m": 1.7395}), ("cst", 0.85, {"slope": 0.9}),
     ("relu_tau", 0.85, {}), ("relu", None, {}), ("crelu", 0.5, {"m": 2.0})],
)
def test_analyse_clip_is_check_clip_recommend_clip_and_fixed_points_at_once(name, s, kw):
    point = solve_eoc(name, s, **kw)
    a = analyse_clip(point)
    assert a.point is point
    assert [f.q for f in a.fixed_points] == [f.q for f in fixed_points(point)]
    assert list(a.warnings) == check_clip(point) == check_clip(point.activation, point.sparsity, 1.0, point.m)
    if name.startswith("c"):
        rec = recommend_clip(point)
        assert a.recommendation == rec == recommend_clip(point.activation, point.sparsity, 1.0)
        assert a.bifurcation_m == rec.bifurcation_m and a.bifurcation_search_max_m == 8.0
    else:
        assert a.recommendation is None and a.bifurcation_m is None and a.bifurcation_search_max_m is None
    out = a.to_dict()
    assert set(out) == set(point.to_dict()) | {
        "fixed_points", "bifurcation_m", "bifurcation_search_max_m", "recommended_m", "recommendation", "warnings"}


def test_analyse_clip_scans_the_bifurcation_once(monkeypatch):
    """sparse-eoc eoc used to scan for m_b three times (itself, recommend_clip and check_clip)."""
    from sparse_eoc.gp import clip

    calls = []
    real = clip.bifurcation_m
    monkeypatch.setattr(clip, "bifurcation_m", lambda *a, **k: calls.append(a) or real(*a, **k))
    a = analyse_clip(solve_eoc("crelu", 0.85, m=1.7395))
    assert len(calls) == 1 and a.bifurcation_m == pytest.approx(1.8386317906859, rel=1e-9)
    assert any("within 10% of the bifurcation" in w for w in a.warnings)


def test_analyse_clip_past_a_large_clip_scans_beyond_it():
    """m = 1e5 (M2): q* and the far stable fixed point are listed, and the warning says so."""
    a = analyse_clip(solve_eoc("crelu", 0.85, m=1e5))
    assert [f.stability for f in a.fixed_points] == ["half-stable", "stable"] and a.fixed_points[0].q == 1.0
    assert a.bifurcation_search_max_m == pytest.approx(1.01e5)
    assert any("past the bifurcation" in w and "2 fixed points" in w for w in a.warnings)
    assert not any("within 10%" in w for w in a.warnings)


def test_slope_root_find_solves_tau_once(monkeypatch):
    from sparse_eoc.gp import eoc

    calls = []
    real = eoc.tau_from_sparsity
    monkeypatch.setattr(eoc, "tau_from_sparsity", lambda *a, **k: calls.append(a) or real(*a, **k))
    eoc._m_for_slope("crelu", 0.85, 1.0, 0.7)
    assert len(calls) == 1


def test_one_slope_and_curvature_function():
    from sparse_eoc.gp import clip, eoc

    assert clip.slope_and_curvature_vs_m is eoc.slope_and_curvature_vs_m
    assert not hasattr(eoc, "eoc_slope_and_curvature")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: analyse_clip("crelu"), "point must be an EoCPoint"),
        (lambda: analyse_clip(solve_eoc("crelu", 0.85), margin=0.0), r"margin must be in \(0, 1\]"),
        (lambda: check_clip(solve_eoc("crelu", 0.85), 0.85), "either an EoCPoint"),
        (lambda: recommend_clip(solve_eoc("crelu", 0.85), q_star=2.0), "either an EoCPoint"),
        (lambda: recommend_clip(solve_eoc("relu_tau", 0.85)), "clipped one"),
    ],
)
def test_clip_analysis_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
