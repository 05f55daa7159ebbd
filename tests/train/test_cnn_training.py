"""CNN training shares the MLP's run directory, metering and reloading; CIFAR-10 and presets."""

import json

import pytest
import torch

from sparse_eoc.cli import main
from sparse_eoc.data import load_image_dataset
from sparse_eoc.gp import solve_eoc
from sparse_eoc.nn import SparseCNN, init_eoc_
from sparse_eoc.train import PRESETS, TrainConfig, evaluate, get_preset, load_run, train

METRIC_KEYS = {"epoch", "train_loss", "train_accuracy", "test_accuracy", "train_sparsity", "test_sparsity"}
RESULT_KEYS = {"status", "test_accuracy", "train_sparsity", "test_sparsity", "layer_sparsity",
               "epochs_completed", "wall_seconds"}


def cnn_config(data_dir, **changes):
    base = dict(model="cnn", activation="crelu", sparsity=0.7, slope=0.7, depth=3, channels=8, epochs=1,
                optimizer="adam", lr=1e-3, batch_size=64, data_dir=str(data_dir))
    return TrainConfig(**{**base, **changes})


def test_cnn_on_mnist_writes_the_same_files_as_the_mlp(tmp_path, mnist_subset_dir):
    result = train(cnn_config(mnist_subset_dir), tmp_path, progress=False)
    assert RESULT_KEYS <= set(result) and result["status"] == "completed"
    assert len(result["layer_sparsity"]) == 3
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert METRIC_KEYS <= set(line)
    model, config = load_run(tmp_path)
    assert isinstance(model, SparseCNN) and config["network"]["image_shape"] == [1, 28, 28]
    data = load_image_dataset("mnist", mnist_subset_dir)
    x = torch.from_numpy(data.x_test).view(-1, 1, 28, 28)  # (N, 1, 28, 28)
    acc, _ = evaluate(model, x, torch.from_numpy(data.y_test))
    assert acc == result["test_accuracy"]


def test_cnn_on_cifar10_with_augmentation_and_delta_orthogonal(tmp_path, cifar_dir):
    config = cnn_config(cifar_dir, dataset="cifar10", augment=True, weight_init="delta_orthogonal",
                        padding_mode="circular", batch_size=32)
    result = train(config, tmp_path / "run", progress=False)
    assert result["status"] == "completed" and result["epochs_completed"] == 1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["network"]["in_channels"] == 3 and saved["data"]["n_train"] == 200
    assert len(saved["data"]["mean"]) == 3


@pytest.mark.parametrize("weight_init", ["gaussian", "delta_orthogonal"])
def test_cnn_init_sets_first_layer_variance_to_q_star(weight_init):
    """Circular padding, stationary Gaussian inputs: the mean of h^2 over 4 x 256 channels x 64
    positions sits at q* = 1 within 5 standard errors of the per-channel spread."""
    p = solve_eoc("crelu", 0.7, slope=0.7)
    model = SparseCNN(3, 10, 2, 256, "crelu", p.tau, p.m, padding_mode="circular").double()
    init_eoc_(model, p.sigma_w2, p.sigma_b2, input_sigma_w2=1.0 - p.sigma_b2, weight_init=weight_init,
              generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x /= x.pow(2).mean().sqrt()  # mean square exactly 1
    h = model.hidden_states(x)[0][0]  # (4, 256, 8, 8)
    per_channel = h.pow(2).mean(dim=(0, 2, 3))  # (256,)
    stderr = per_channel.std() / per_channel.numel() ** 0.5
    assert abs(per_channel.mean().item() - 1.0) <= 5 * stderr.item()


def test_delta_orthogonal_centre_tap_is_scaled_orthogonal():
    conv = torch.nn.Conv2d(16, 16, 3)
    from sparse_eoc.nn import delta_orthogonal_

    delta_orthogonal_(conv, 2.5, 0.3, generator=torch.Generator().manual_seed(0))
    w = conv.weight.detach()
    centre = w[:, :, 1, 1]  # (16, 16)
    torch.testing.assert_close(centre @ centre.T, 2.5 * torch.eye(16), atol=1e-5, rtol=1e-5)
    w[:, :, 1, 1] = 0
    assert w.abs().max() == 0


def test_presets_and_overrides(tmp_path, mnist_subset_dir, capsys):
    assert set(PRESETS) >= {"mlp-mnist-cpu", "cnn-mnist-cpu"}
    assert get_preset("cnn-mnist-cpu")["model"] == "cnn"
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("nope")
    argv = ["train", "--preset", "cnn-mnist-cpu", "--activation", "crelu", "--sparsity", "0.7",
            "--depth", "2", "--channels", "4", "--epochs", "1", "--data-dir", str(mnist_subset_dir),
            "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["preset"], saved["model"], saved["depth"], saved["channels"]) == ("cnn-mnist-cpu", "cnn", 2, 4)
    assert saved["optimizer"] == get_preset("cnn-mnist-cpu")["optimizer"]


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(kernel_size=4), "kernel_size must be odd"),
        (dict(model="mlp", weight_init="delta_orthogonal"), "delta_orthogonal applies to model=cnn"),
        (dict(model="mlp", augment=True), "augment"),
        (dict(dataset="imagenet"), "dataset must be one of mnist, cifar10"),
        (dict(padding_mode="reflect"), "padding_mode must be one of"),
    ],
)
def test_cnn_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        cnn_config("unused", **changes)


@pytest.mark.slow
def test_paper_cnn_forward_and_backward_on_cifar_shaped_batch():
    """The paper's CNN: depth 50, 300 channels, 32 x 32 x 3 inputs (a few seconds per image on CPU)."""
    p = solve_eoc("crelu", 0.85, slope=0.7)
    model = SparseCNN(3, 10, 50, 300, "crelu", p.tau, p.m)
    init_eoc_(model, p.sigma_w2, p.sigma_b2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([3, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(layer.weight.grad).all() for layer in model.hidden)
