"""Kink detection, and a quickly trained model evaluated by the engine and by the dense model."""

import json
import math

import numpy as np
import pytest
import torch

from sparse_eoc.cli import main
from sparse_eoc.gp.gaussian import kinks
from sparse_eoc.infer import SparseEngine, evaluate_run, near_kink
from sparse_eoc.nn import SparseMLP
from sparse_eoc.train import TrainConfig, load_run, train


@pytest.mark.parametrize(
    "activation,tau,m,expected",
    [
        ("relu_tau", 0.5, math.inf, (0.5,)),
        ("crelu", 0.5, 2.0, (0.5, 2.5)),
        ("st_tau", 0.5, math.inf, (-0.5, 0.5)),
        ("cst", 0.5, 2.0, (-2.5, -0.5, 0.5, 2.5)),
    ],
)
def test_kinks_are_the_thresholds_and_clips(activation, tau, m, expected):
    """near_kink's kinks are the theory's (sparse_eoc.gp.gaussian.kinks: ascending)."""
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
    # 85 % sparse hidden layers, ~80 % background pixels; at batch 8 ``auto`` runs block, whose
    # multiply-adds cover each group of 8 examples' union of nonzero units, zeros included
    assert result["flop_reduction"] > (2.0 if batch_size == 8 else 3.0)
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


def _infer_error(capsys, run, data_dir, *options) -> str:
    """``sparse-eoc infer`` that must fail: exit code 2 and one line on stderr, returned."""
    assert main(["infer", "--run", str(run), "--data-dir", str(data_dir), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _run_copy(trained_run, dest, *, weights: bool = True, status: str = "completed", **network):
    """A copy of ``trained_run`` in ``dest`` with its result's status and network fields replaced."""
    import shutil

    dest.mkdir()
    config = json.loads((trained_run / "config.json").read_text())
    config["network"].update(network)
    (dest / "config.json").write_text(json.dumps(config))
    result = json.loads((trained_run / "result.json").read_text())
    (dest / "result.json").write_text(json.dumps({**result, "status": status}))
    if weights:
        shutil.copy(trained_run / "model.safetensors", dest / "model.safetensors")
    return dest


@pytest.mark.parametrize("option", ["--batch-size", "--threads", "--repeats", "--limit"])
def test_infer_checks_its_options_before_the_run(tmp_path, capsys, option):
    err = _infer_error(capsys, tmp_path / "no-run", tmp_path, option, "0")
    assert f"{option[2:].replace('-', '_')} must be an integer >= 1" in err


def test_infer_refuses_a_network_that_cannot_fit_in_memory(trained_run, mnist_subset_dir, tmp_path, capsys):
    # Width 10^7 at depth 2: a 10^7 x 10^7 hidden layer, 400 TB of float32 weights; refused before it is built.
    run = _run_copy(trained_run, tmp_path / "huge", width=10**7, depth=2)
    err = _infer_error(capsys, run, mnist_subset_dir)
    assert str(run) in err and "width-10000000 MLP needs at least" in err and "memory" in err


def test_infer_on_a_run_that_diverged_before_any_epoch_says_so(trained_run, mnist_subset_dir, tmp_path, capsys):
    run = _run_copy(trained_run, tmp_path / "diverged", weights=False, status="diverged")
    err = _infer_error(capsys, run, mnist_subset_dir)
    assert "diverged before" in err and "no weights" in err and "run directory?" not in err


def _mnist_like(directory, *, size: int, classes: int, n_train: int = 240, n_test: int = 48):
    """An MNIST-format directory of random size x size images, every one of ``classes`` labels in both splits."""
    from dataset_files import write_idx

    rng = np.random.default_rng(0)
    directory.mkdir()
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % classes)
    return directory


def test_infer_checks_the_data_against_the_run(trained_run, tmp_path, capsys):
    err = _infer_error(capsys, trained_run, _mnist_like(tmp_path / "small", size=20, classes=10))
    assert "--data-dir" in err and str(trained_run) in err and "(1, 20, 20)" in err and "(1, 28, 28)" in err
    # Labels 10 and 11 would silently count as wrong for the run's 10 classes.
    err = _infer_error(capsys, trained_run, _mnist_like(tmp_path / "twelve", size=28, classes=12))
    assert "--data-dir" in err and str(trained_run) in err and "labels 0..11" in err and "10 classes" in err


def test_infer_on_an_empty_test_split_is_one_line(trained_run, mnist_subset_dir, monkeypatch, capsys):
    import dataclasses

    import sparse_eoc.data
    from sparse_eoc.data import load_image_dataset

    def empty_test_split(*args, **kwargs):  # the loader itself may refuse it; infer must not rely on that
        data = load_image_dataset(*args, **kwargs)
        return dataclasses.replace(data, x_test=data.x_test[:0], y_test=data.y_test[:0])

    monkeypatch.setattr(sparse_eoc.data, "load_image_dataset", empty_test_split)
    assert "the test split holds no images" in _infer_error(capsys, trained_run, mnist_subset_dir)


@pytest.fixture(scope="module")
def trained_cnn_run(tmp_path_factory, mnist_subset_dir):
    """A depth-3, 8-channel CReLU CNN at 85 % sparsity after one epoch on 2000 MNIST images (the readout at
    10x the learning rate, as cnn-mnist-cpu)."""
    run = tmp_path_factory.mktemp("cnn-run")
    config = TrainConfig(model="cnn", activation="crelu", sparsity=0.85, slope=0.7, depth=3, channels=8, epochs=1,
                         optimizer="adam", lr=3e-3, readout_lr_scale=10.0, batch_size=32,
                         data_dir=str(mnist_subset_dir), threads=1)
    train(config, run, progress=False)
    return run


@pytest.mark.parametrize("strategy", ["auto", "sparse"])
def test_trained_cnn_engine_equals_dense(trained_cnn_run, mnist_subset_dir, strategy):
    result = evaluate_run(trained_cnn_run, mnist_subset_dir, batch_size=8, strategy=strategy, limit=200)
    assert result["n"] == 200 and result["backend"] in ("numba", "numpy")
    assert result["test_accuracy"] == result["dense_test_accuracy"]
    assert result["test_accuracy"] > 0.2, result["test_accuracy"]  # one epoch on 2000 images: above chance
    assert result["max_rel_logit_diff"] <= 1e-4
    assert result["flop_reduction"] > 2.0  # ~85 % sparse hidden layers; the image's background skipped
    assert set(result["strategies"]) <= {"sparse", "dense"} and result["strategies"]["sparse"] > 0


def test_trained_cnn_engine_from_run_takes_the_zero_pixel_as_offset(trained_cnn_run, mnist_subset_dir):
    from sparse_eoc.data import load_mnist
    from sparse_eoc.infer import SparseCNNEngine

    model, _ = load_run(trained_cnn_run)
    x = load_mnist(mnist_subset_dir).x_test[:16].reshape(16, 1, 28, 28)
    engine = SparseCNNEngine.from_run(trained_cnn_run, strategy="sparse")
    out = engine(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.all(np.abs(out - ref).max(axis=1) <= 1e-4 * np.abs(ref).max(axis=1))
    assert engine.last_stats.density[0] < 0.3  # the background pixels became exact zeros


def test_infer_command_json_on_a_cnn_run(trained_cnn_run, mnist_subset_dir, capsys):
    assert main(["infer", "--run", str(trained_cnn_run), "--data-dir", str(mnist_subset_dir), "--batch-size", "8",
                 "--limit", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("test_accuracy", "dense_test_accuracy", "max_abs_logit_diff", "speedup", "flop_reduction"):
        assert key in out
    assert out["test_accuracy"] == out["dense_test_accuracy"] and out["n"] == 64
    assert out["max_rel_logit_diff"] <= 1e-4


def test_infer_refuses_a_strategy_of_the_other_kind_of_network(trained_run, trained_cnn_run, mnist_subset_dir,
                                                                capsys):
    err = _infer_error(capsys, trained_cnn_run, mnist_subset_dir, "--strategy", "gather")
    assert "strategy must be one of auto, dense, sparse for a cnn run" in err
    err = _infer_error(capsys, trained_run, mnist_subset_dir, "--strategy", "sparse")
    assert "strategy must be one of auto, dense, gather, union, csr, block for a mlp run" in err


def test_infer_refuses_a_cnn_that_cannot_fit_in_memory(trained_cnn_run, mnist_subset_dir, tmp_path, capsys):
    # 10^6 channels: a 10^6 x 10^6 x 3 x 3 conv, 36 TB of float32 weights; refused before it is built.
    run = _run_copy(trained_cnn_run, tmp_path / "huge", channels=10**6, depth=2)
    err = _infer_error(capsys, run, mnist_subset_dir)
    assert str(run) in err and "depth-2 CNN with 1000000 channels needs at least" in err and "memory" in err
