"""Infinite-width theory against real random networks at initialisation (float64).

Width 300, depth 100, Gaussian inputs, five seeds (via ``propagate``). The theory
says q^l stays at q* = 1 for the clipped activations (a stable fixed point) and
that ReLU_tau's half-stable point lets finite-width fluctuations above q* grow
without bound. Observed here: crelu/cst medians 0.92-0.96 (every seed in
[0.77, 1.13]); relu_tau at s = 0.85 median ~1e45.
"""

import json

import numpy as np
import pytest
import torch

from sparse_eoc.gp import iterate_variance, solve_eoc, sparsity_from_tau
from sparse_eoc.nn import SparseMLP, init_eoc_, input_weight_variance
from sparse_eoc.experiments.propagate import propagate

DEPTH, WIDTH, SEEDS, BATCH = 100, 300, 5, 64


@pytest.mark.parametrize("name", ["crelu", "cst"])
def test_clipped_activations_hold_q_star_for_100_layers(name):
    result = propagate(name, 0.85, slope=0.7, depth=DEPTH, width=WIDTH, seeds=SEEDS, batch_size=BATCH)
    assert 0.5 <= result.q_median[-1] <= 2.0
    assert result.blown_up_at_layer is None
    assert result.q_theory == [pytest.approx(1.0, rel=1e-12)] * DEPTH
    # Sparsity at layer 100 matches the target: binomial noise over 64 x 300 units per seed
    # is ~0.003, finite-width drift of q^l moves it by d s / d q ~ 0.1 per unit of q.
    assert result.sparsity[-1] == pytest.approx(0.85, abs=0.03)


def test_relu_tau_blows_up():
    result = propagate("relu_tau", 0.85, depth=DEPTH, width=WIDTH, seeds=SEEDS, batch_size=BATCH)
    assert result.q_median[-1] is None or result.q_median[-1] > 1e3
    assert result.q_median[0] == pytest.approx(1.0, abs=0.2)  # it starts at q*
    # and its sparsity collapses: at q >> q* the threshold tau zeroes barely half the units
    tau = solve_eoc("relu_tau", 0.85).tau
    assert result.sparsity[-1] < sparsity_from_tau("relu_tau", tau, 1e3)


def test_overflow_is_reported_as_none_with_the_blow_up_layer():
    result = propagate("st_tau", 0.9, depth=500, width=100, seeds=2, batch_size=8)
    assert result.blown_up_at_layer is not None
    i = result.blown_up_at_layer - 1
    assert result.q_median[i] is None or result.q_median[i] > 1e30
    assert all(q is None or q <= 1e30 for q in result.q_median[:i])
    assert result.q_median[-1] is None and result.sparsity[-1] is None  # float64 overflowed before layer 500


def test_first_layer_variance_is_q_star():
    """input_weight_variance gives q^1 = q*: for one input with mean square exactly 2, each of
    N first-layer units is an independent N(0, q*) draw, so mean(h^2) has sd q* sqrt(2 / N)."""
    q_star, n_units = 1.7, 20_000
    point = solve_eoc("crelu", 0.7, q_star, slope=0.7)
    gen = torch.Generator().manual_seed(0)
    model = SparseMLP(WIDTH, 10, 1, n_units, "crelu", point.tau, point.m).double()
    init_eoc_(model, point.sigma_w2, point.sigma_b2,
                  input_sigma_w2=input_weight_variance(q_star, point.sigma_b2, 2.0), generator=gen)
    x = torch.randn(1, WIDTH, generator=gen, dtype=torch.float64)
    x *= torch.sqrt(2.0 / (x**2).mean())  # (1, WIDTH), mean square exactly 2
    with torch.no_grad():
        (h, _), = model.hidden_states(x)
    assert abs((h**2).mean().item() - q_star) <= 5 * q_star * np.sqrt(2 / n_units)


@pytest.mark.parametrize("name,s", [("relu_tau", 0.85), ("crelu", 0.85)])
def test_theory_starts_each_given_input_at_its_own_variance(name, s):
    """Given inputs with mean squares 0.5 and 1.5, the first layer puts them at q^1_i =
    (q* - sigma_b2) ms_i + sigma_b2 (the batch mean square is 1), and the theory column is
    the mean of V iterated from each: ReLU_tau's upper input runs off in theory too."""
    depth, n0 = 40, 64
    x = torch.randn(2, n0, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x *= torch.sqrt(torch.tensor([[0.5], [1.5]], dtype=torch.float64) / (x**2).mean(dim=1, keepdim=True))
    result = propagate(name, s, depth=depth, width=50, seeds=1, inputs=x)
    point = solve_eoc(name, s)
    q1 = (1.0 - point.sigma_b2) * np.array([0.5, 1.5]) + point.sigma_b2
    expected = iterate_variance(q1, point, depth - 1).mean(axis=1)  # (depth,)
    theory = np.array([np.inf if v is None else v for v in result.q_theory])
    np.testing.assert_allclose(theory, expected, rtol=1e-12)
    assert theory[0] == pytest.approx(1.0, rel=1e-12)  # the mean starts at q*
    if name == "relu_tau":
        assert theory[-1] > 10  # the input above q* diverges: not a finite-width effect
    else:
        assert theory[-1] == pytest.approx(1.0, rel=1e-5)  # both converge to the stable q*


@pytest.mark.parametrize("argv, message", [
    (["--width", "0"], "width must be an integer >= 1, got width=0"),
    (["--model", "cnn", "--image-size", "0"], "image_size must be an integer >= 1"),
    (["--seed", "-1"], "seed must be an integer >= 0, got seed=-1"),
    (["--seed", str(10**30)], "seed + seeds must be at most 2**63"),
    (["--depth", "1000000000"], "--depth/--width/--batch-size: a depth-1000000000, width 300 mlp"),
    (["--model", "cnn", "--batch-size", "1000000000"], "--depth/--channels/--batch-size: a depth-100"),
])
def test_propagate_names_the_option_and_refuses_what_cannot_fit(argv, message, capsys):
    """L4, L5, M4 of the hostile test: internal names (in_features), a negative seed accepted, an
    overflowing seed, and sizes that ran out of memory."""
    from sparse_eoc.cli import main

    assert main(["propagate", "--activation", "crelu", "--sparsity", "0.85", "--seeds", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("name, s, slope", [("crelu", 0.85, 0.7), ("relu_tau", 0.85, None)])
def test_resmlp_per_layer_thresholds_hold_the_sparsity_at_every_site(name, s, slope):
    """docs/theory.md section 8.3: q^l = q* (1 + 1/L)^(l-1) and sparsity s at all L + 1 sites. The
    median of five width-300 networks stays within 25 % of q^l (per network the relative error is
    about sqrt(2 / 300) = 0.08 from the stem's shared biases, plus the drift of the unit sample the
    sites share; observed: 0.97-1.06); the sparsity within the issue's 0.03 (observed: 0.006).
    ReLU_tau, which blows up in the plain network above, holds: each block adds 1/L of a layer."""
    result = propagate(name, s, slope=slope, model="resmlp", depth=DEPTH, width=WIDTH, seeds=SEEDS,
                       batch_size=BATCH, residual_scale=DEPTH**-0.5)  # alpha^2 L = 1, as in section 8.4
    assert result.layer == list(range(1, DEPTH + 2)) and result.blown_up_at_layer is None
    np.testing.assert_allclose(result.q_theory, (1 + 1 / DEPTH) ** np.arange(DEPTH + 1), rtol=1e-12)
    np.testing.assert_allclose(result.sparsity_theory, 0.85, atol=1e-12)
    np.testing.assert_allclose(np.array(result.q_median) / np.array(result.q_theory), 1.0, atol=0.25)
    np.testing.assert_allclose(result.sparsity, 0.85, atol=0.03)


def test_resmlp_fixed_thresholds_drift_as_the_theory_says():
    """With the EoC point of q* at every site the sparsity falls to 0.748 at the head (docs/theory.md
    section 8.4), and the networks follow the predicted drift site by site within 0.03."""
    result = propagate("crelu", 0.85, slope=0.7, model="resmlp", depth=DEPTH, width=WIDTH, seeds=SEEDS,
                       batch_size=BATCH, thresholds="fixed", residual_scale=DEPTH**-0.5)
    assert result.sparsity_theory[0] == pytest.approx(0.85, abs=1e-12)
    assert result.sparsity_theory[-1] == pytest.approx(0.748, abs=1e-3)
    np.testing.assert_allclose(result.sparsity, result.sparsity_theory, atol=0.03)
    assert result.sparsity[-1] < 0.8


def test_residual_theory_starts_each_given_input_at_its_own_variance():
    """Given inputs: the theory column is the mean over inputs of the residual recursion from each
    input's q^1_i, as for the plain networks."""
    from sparse_eoc.gp import residual_init, residual_variances

    depth, n0 = 6, 40
    x = torch.randn(3, n0, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x *= torch.sqrt(torch.tensor([[0.5], [1.0], [1.5]], dtype=torch.float64) / (x**2).mean(dim=1, keepdim=True))
    result = propagate("cst", 0.85, slope=0.7, model="resmlp", depth=depth, width=30, seeds=1, inputs=x,
                       residual_scale=0.5, thresholds="fixed")
    point = solve_eoc("cst", 0.85, slope=0.7)
    init = residual_init(point, depth, residual_scale=0.5, thresholds="fixed")
    q1 = (1.0 - point.sigma_b2) * np.array([0.5, 1.0, 1.5]) + point.sigma_b2
    np.testing.assert_allclose(result.q_theory, residual_variances(q1, init)[0].mean(axis=1), rtol=1e-12)
    assert len(result.sparsity_theory) == depth + 1


def test_rescnn_propagates_with_two_sites_per_block():
    result = propagate("crelu", 0.85, slope=0.7, model="rescnn", depth=3, channels=16, image_size=6, seeds=1,
                       batch_size=4)
    assert len(result.layer) == 7 and len(result.q_theory) == 7
    np.testing.assert_allclose(result.sparsity_theory, 0.85, atol=1e-12)


def test_propagate_cli_residual_options(capsys):
    from sparse_eoc.cli import main

    argv = ["propagate", "--activation", "crelu", "--sparsity", "0.85", "--model", "resmlp", "--depth", "4",
            "--width", "20", "--seeds", "1", "--batch-size", "4", "--thresholds", "fixed", "--residual-scale", "0.5"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["layer"]) == 5 and out["sparsity_theory"][-1] < out["sparsity_theory"][0]
    assert main(argv) == 0
    assert "fixed thresholds" in capsys.readouterr().out
    assert main(["propagate", "--activation", "crelu", "--sparsity", "0.85", "--seeds", "1", "--thresholds",
                 "fixed"]) == 2
    assert "--residual-scale and --thresholds apply to --model resmlp or rescnn" in capsys.readouterr().err
