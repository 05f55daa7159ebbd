"""Kink detection, and a quickly trained model evaluated by the engine and by the dense model."""

import json
import math

import pytest
import torch

from sparse_eoc.cli import main
from sparse_eoc.infer import SparseEngine, evaluate_run, kinks, near_kink
from sparse_eoc.nn import SparseMLP
from sparse_eoc.train import TrainConfig, load_run, train


@pytest.mark.parametrize(
    "activation,tau,m,expected",
    [
        ("relu_tau", 0.5, math.inf, (0.5,)),
        ("crelu", 0.5, 2.0, (0.5, 2.5)),
        ("st_tau", 0.5, math.inf, (0.5, -0.5)),
        ("cst", 0.5, 2.0, (0.5, 2.5, -0.5, -2.5)),
    ],
)
def test_kinks_are_the_thresholds_and_clips(activation, tau, m, expected):
    assert kinks(activation, tau, m) == expected


def _constant_model(activation: str, bias: float, m: float = math.inf) -> SparseMLP:
    """Depth 1, width 3: h = x W^T + bias with W = 0, so every h equals ``bias``."""
    model = SparseMLP(4, 2, 1, 3, activation, 0.5, m)
    with torch.no_grad():
        model.hidden[0].weight.zero_()
        model.hidden[0].bias.fill_(bias)
    return model


@pytest.mark.parametrize("activation,m", [("relu_tau", math.inf), ("crelu", 2.0), ("st_tau", math.inf),
                                          ("cst", 2.0)])
def test_near_kink_flags_pre_activations_at_a_kink_only(activation, m):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    for k in kinks(activation, 0.5, m):
        report = near_kink(_constant_model(activation, k, m), x)
        assert report.count == 5 and report.per_layer == (15,)
        # 1e-3 away is far beyond float32 round-off of |h| ~ 1.
        assert near_kink(_constant_model(activation, k + 1e-3, m), x).count == 0
    with pytest.raises(ValueError, match="factor must be"):
        near_kink(_constant_model(activation, 0.0, m), x, factor=0.0)


def test_near_kink_tolerance_scales_with_the_sum_of_magnitudes():
    model = SparseMLP(2, 2, 1, 1, "relu_tau", 0.5)
    with torch.no_grad():
        model.hidden[0].weight.copy_(torch.tensor([[1e4, -1e4]]))
        model.hidden[0].bias.fill_(0.5)
    x = torch.tensor([[1.0, 1.0]])  # h = 0.5 + 1e4 - 1e4: at the kink, from terms of size 1e4
    assert near_kink(model, x).count == 1
    # Tolerance 64 eps32 (1e4 + 1e4 + |b|) ~ 0.15: 1e-2 from the kink is still within it, 0.5 is not.
    with torch.no_grad():
        model.hidden[0].bias.fill_(0.5 + 1e-2)
    assert near_kink(model, x).count == 1
    with torch.no_grad():
        model.hidden[0].bias.fill_(1.0)
    assert near_kink(model, x).count == 0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_subset_dir):
    """A depth-3, width-48 CReLU MLP at 85 % sparsity after one epoch on 2000 MNIST images."""
    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(activation="crelu", sparsity=0.85, slope=0.7, depth=3, width=48, epochs=1, lr=0.01,
                         batch_size=64, data_dir=str(mnist_subset_dir), threads=1)
    train(config, run, progress=False)
    return run


@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_trained_model_engine_equals_dense(trained_run, mnist_subset_dir, batch_size):
    result = evaluate_run(trained_run, mnist_subset_dir, batch_size=batch_size, limit=200 if batch_size == 1 else None)
    assert result["n"] == (200 if batch_size == 1 else 500)
    assert result["test_accuracy"] == result["dense_test_accuracy"]
    assert result["max_rel_logit_diff"] <= 1e-4
    assert result["flop_reduction"] > 3.0  # 85 % sparse hidden layers, ~80 % background pixels
    assert result["speedup"] > 0 and result["backend"] in ("numba", "numpy")


def test_trained_model_zero_patterns_away_from_kinks(trained_run, mnist_subset_dir):
    from sparse_eoc.data import load_mnist

    model, _ = load_run(trained_run)
    x = load_mnist(mnist_subset_dir).x_test[:200]
    report = near_kink(model, x)
    assert report.count <= 4, f"{report.count} of 200 test images near a kink: {report.per_layer}"
    x = x[~report.flagged]
    engine = SparseEngine.from_run(trained_run, strategy="csr")  # offset: the run's zero pixel
    engine(x)
    with torch.no_grad():
        states = model.hidden_states(torch.from_numpy(x))
    assert list(engine.last_stats.nnz[1:]) == [int((phi != 0).sum()) for _, phi in states]
    assert engine.last_stats.density[0] < 0.3  # the background pixels became exact zeros


def test_infer_command_json(trained_run, mnist_subset_dir, capsys):
    assert main(["infer", "--run", str(trained_run), "--data-dir", str(mnist_subset_dir), "--batch-size", "8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("test_accuracy", "dense_test_accuracy", "max_abs_logit_diff", "speedup", "flop_reduction"):
        assert key in out
    assert out["test_accuracy"] == out["dense_test_accuracy"] and out["n"] == 500


def test_infer_command_text_and_errors(trained_run, mnist_subset_dir, tmp_path, capsys):
    assert main(["infer", "--run", str(trained_run), "--data-dir", str(mnist_subset_dir), "--limit", "20",
                 "--strategy", "gather"]) == 0
    assert "20 test examples, batch 1" in capsys.readouterr().out
    assert main(["infer", "--run", str(tmp_path), "--data-dir", str(mnist_subset_dir)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["infer", "--run", str(trained_run), "--data-dir", str(mnist_subset_dir), "--batch-size",
                 "0"]) == 2
    assert "batch_size must be an integer >= 1" in capsys.readouterr().err
    assert main(["infer", "--run", str(trained_run), "--data-dir", str(mnist_subset_dir), "--limit", "0"]) == 2
    assert "limit must be an integer >= 1" in capsys.readouterr().err
