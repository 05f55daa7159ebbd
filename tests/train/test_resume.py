"""Checkpoints and exact resume, per-layer diagnostics, label smoothing."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import sparse_eoc.train.loop as loop
import sparse_eoc.train.run as run
from dataset_files import write_idx
from sparse_eoc.cli import main
from sparse_eoc.nn import SparseMLP
from sparse_eoc.train import TrainConfig, evaluate, fit, load_run, train
from sparse_eoc.train.checkpoint import CHECKPOINT_FILE, CHECKPOINT_KEYS, load_checkpoint, settings_differences
from sparse_eoc.train.loop import Divergence, layer_preact_var


@pytest.fixture(scope="module")
def mnist_512(mnist_dir, tmp_path_factory):
    """The first 512 training and 256 test images of the real MNIST, in IDX format."""
    from sparse_eoc.data import read_idx

    out = tmp_path_factory.mktemp("mnist-512")
    for split, n in (("train", 512), ("t10k", 256)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte"
            write_idx(out / f"{name}.gz", read_idx(mnist_dir / f"{name}.gz")[:n])
    return out


def mlp_config(data_dir, **changes):
    base = dict(activation="crelu", sparsity=0.7, slope=0.7, depth=3, width=32, epochs=3, lr=0.02,
                batch_size=64, threads=1, data_dir=str(data_dir))
    return TrainConfig(**{**base, **changes})


def cnn_config(data_dir, **changes):
    base = dict(model="cnn", channels=4, depth=2, optimizer="adam", lr=3e-3, augment=True)
    return mlp_config(data_dir, **{**base, **changes})


class Killed(Exception):
    """A simulated kill of the training process."""


def kill_after_epoch(monkeypatch, k: int, *, before_checkpoint: bool = False):
    """Make the next ``train`` die after epoch k: once its checkpoint is written, or (before_checkpoint)
    after its metrics line but before its checkpoint (then the checkpoint is that of epoch k - 1)."""
    if before_checkpoint:
        real_save = run.save_checkpoint

        def save(path, **kwargs):
            if kwargs["epoch"] == k:
                raise Killed
            real_save(path, **kwargs)

        monkeypatch.setattr(run, "save_checkpoint", save)
        return
    real_fit = run.fit

    def fit_then_die(*args, on_epoch, **kwargs):
        def die_after(metrics):
            on_epoch(metrics)
            if metrics.epoch == k:
                raise Killed

        return real_fit(*args, on_epoch=die_after, **kwargs)

    monkeypatch.setattr(run, "fit", fit_then_die)


def train_killed_after_epoch_1(config, out, monkeypatch):
    """Run ``train`` until a simulated kill right after epoch 1's checkpoint."""
    with monkeypatch.context() as m:
        kill_after_epoch(m, 1)
        with pytest.raises(Killed):
            train(config, out, progress=False)


def numbers(result):
    return {k: v for k, v in result.items() if k != "wall_seconds"}


def metric_lines(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def assert_same_run(a, b):
    assert numbers(json.loads((a / "result.json").read_text())) == numbers(json.loads((b / "result.json").read_text()))
    assert metric_lines(a) == metric_lines(b)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key  # bit-identical


@pytest.mark.parametrize(
    "make,changes,kill_at,before_checkpoint",
    [
        (mlp_config, dict(), 1, False),  # SGD with momentum
        (mlp_config, dict(optimizer="adam", lr=3e-3, lr_schedule="cosine", log_layer_stats=True), 2, False),
        (mlp_config, dict(lr_schedule="cosine", label_smoothing=0.1), 2, True),  # killed between line and checkpoint
        (cnn_config, dict(lr_schedule="cosine"), 1, False),  # Adam, augmentation generator
    ],
    ids=["mlp-sgd", "mlp-adam-cosine-stats", "mlp-killed-before-checkpoint", "cnn-adam-augment-cosine"],
)
def test_interrupted_and_resumed_run_equals_uninterrupted_run(
    tmp_path, mnist_512, monkeypatch, make, changes, kill_at, before_checkpoint
):
    config = make(mnist_512, **changes)
    whole = tmp_path / "whole"
    expected = train(config, whole, progress=False)
    assert expected["status"] == "completed" and expected["epochs_completed"] == 3
    assert not (whole / CHECKPOINT_FILE).exists()  # deleted once finished

    pieces = tmp_path / "pieces"
    with monkeypatch.context() as m:
        kill_after_epoch(m, kill_at, before_checkpoint=before_checkpoint)
        with pytest.raises(Killed):
            train(config, pieces, progress=False)
    saved = kill_at - 1 if before_checkpoint else kill_at
    assert not (pieces / "result.json").exists()
    assert len(metric_lines(pieces)) == kill_at  # one line more than the checkpoint when killed before it
    state = torch.load(pieces / CHECKPOINT_FILE, weights_only=True)
    assert set(state) == set(CHECKPOINT_KEYS) and state["epoch"] == saved and len(state["history"]) == saved
    wall_before = state["wall_seconds"]

    messages = []
    result = train(config, pieces, progress=False, resume=True, log=messages.append)
    assert f"resuming {pieces} after epoch {saved} of 3" in messages
    assert numbers(result) == numbers(expected)
    assert result["wall_seconds"] > wall_before  # the pieces add up
    assert_same_run(whole, pieces)
    assert not (pieces / CHECKPOINT_FILE).exists()
    if config.log_layer_stats:
        assert len(result["init_layer_preact_var"]) == config.depth


def test_resume_of_a_finished_run_returns_it_without_training(tmp_path, mnist_512, monkeypatch):
    config = mlp_config(mnist_512, epochs=1)
    first = train(config, tmp_path, progress=False)
    monkeypatch.setattr(run, "fit", lambda *a, **k: pytest.fail("a finished run must not train again"))
    assert train(config, tmp_path, progress=False, resume=True) == first
    # device and threads say how a run executes, not what it computes: they may change on resume
    assert train(config.replace(threads=2), tmp_path, progress=False, resume=True) == first


def test_resume_of_a_diverged_run_returns_it(tmp_path, mnist_512, monkeypatch):
    config = mlp_config(mnist_512, activation="relu_tau", sparsity=0.85, slope=None, lr=1e6, epochs=2)
    first = train(config, tmp_path, progress=False, log=lambda s: None)
    assert first["status"] == "diverged" and not (tmp_path / CHECKPOINT_FILE).exists()
    monkeypatch.setattr(run, "fit", lambda *a, **k: pytest.fail("a diverged run is finished"))
    assert train(config, tmp_path, progress=False, resume=True, log=lambda s: None) == first


def test_divergence_after_a_resume_keeps_the_checkpointed_weights(tmp_path, mnist_512, monkeypatch):
    config = mlp_config(mnist_512)
    train_killed_after_epoch_1(config, tmp_path, monkeypatch)
    epoch1 = load_checkpoint(tmp_path / CHECKPOINT_FILE)["model"]
    real_epoch = loop.train_epoch

    def diverge_in_epoch_2(*args, epoch, **kwargs):
        if epoch == 2:
            return math.nan, 0.0, Divergence(epoch, 3, math.inf, [2.3, 2.2])
        return real_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", diverge_in_epoch_2)
    result = train(config, tmp_path, progress=False, resume=True, log=lambda s: None)
    assert result["status"] == "diverged" and result["epochs_completed"] == 1 and result["model_epoch"] == 1
    assert result["diverged"]["epoch"] == 2 and len(metric_lines(tmp_path)) == 1
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(weights[k], epoch1[k]) for k in epoch1)


def test_resume_with_other_settings_names_them(tmp_path, mnist_512, monkeypatch):
    config = mlp_config(mnist_512)
    train_killed_after_epoch_1(config, tmp_path / "killed", monkeypatch)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: its settings differ in lr, optimizer \(lr=0\.02 there"):
        train(config.replace(lr=0.5, optimizer="adam"), tmp_path / "killed", progress=False, resume=True)
    train(config.replace(epochs=1), tmp_path / "done", progress=False)
    with pytest.raises(ValueError, match="settings differ in epochs"):
        train(config, tmp_path / "done", progress=False, resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, mnist_512, monkeypatch):
    config = mlp_config(mnist_512)
    train_killed_after_epoch_1(config, tmp_path, monkeypatch)
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[: 1000])  # truncated
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a readable checkpoint"):
        train(config, tmp_path, progress=False, resume=True)
    torch.save({"format": 1, "epoch": 1}, path)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: incomplete checkpoint, missing settings"):
        load_checkpoint(path)


def test_resume_with_nothing_there_starts_afresh(tmp_path, mnist_512):
    config = mlp_config(mnist_512, epochs=1)
    a = train(config, tmp_path / "a", progress=False)
    b = train(config, tmp_path / "b", progress=False, resume=True)
    assert numbers(a) == numbers(b)


def test_settings_differences():
    assert settings_differences({"lr": 0.1, "depth": 3}, {"lr": 0.01, "depth": 3}) == ["lr"]
    assert settings_differences({"a": 1}, {"b": 1}) == ["a", "b"]
    assert settings_differences({"threads": 1}, {"threads": 2}, ignore=("threads",)) == []


def test_cli_resume(tmp_path, mnist_512, monkeypatch, capsys):
    config = mlp_config(mnist_512, epochs=2)
    train(config, tmp_path / "whole", progress=False)
    train_killed_after_epoch_1(config, tmp_path / "run", monkeypatch)
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("completed: 2 epoch(s), test accuracy") and str(tmp_path / "run") in out
    assert_same_run(tmp_path / "whole", tmp_path / "run")
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0  # finished: reported
    assert "already finished" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run"), "--lr", "0.1", "--out", str(tmp_path)]) == 2
    assert "drop --lr, --out" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_cli_new_options_reach_the_config(tmp_path, mnist_512):
    argv = ["train", "--activation", "relu", "--depth", "2", "--width", "8", "--epochs", "1",
            "--label-smoothing", "0.1", "--log-layer-stats", "--data-dir", str(mnist_512),
            "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["label_smoothing"], saved["log_layer_stats"]) == (0.1, True)
    line = metric_lines(tmp_path)[0]
    assert len(line["layer_grad_norm"]) == len(line["layer_preact_var"]) == 2


# --- per-layer diagnostics ---------------------------------------------------------------------------


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return SparseMLP(6, 3, 3, 5, "crelu", 0.3, 1.5)


def test_layer_stats_equal_a_direct_computation():
    """fit's layer_grad_norm and layer_preact_var vs the same training steps written out by hand."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    xt, yt = torch.randn(300, 6, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history, div = fit(model, opt, {"train": (x, y), "test": (xt, yt)}, epochs=2, batch_size=16,
                       generator=torch.Generator().manual_seed(1), show_progress=False, layer_stats=True)
    assert div is None

    twin = tiny_mlp()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    shuffle = torch.Generator().manual_seed(1)
    for metrics in history:
        perm = torch.randperm(40, generator=shuffle)
        norms = []
        for start in range(0, 40, 16):  # 3 steps: 16, 16, 8 examples
            idx = perm[start : start + 16]
            twin_opt.zero_grad()
            F.cross_entropy(twin(x[idx]), y[idx]).backward()
            norms.append([layer.weight.grad.double().pow(2).sum().sqrt().item() for layer in twin.hidden])
            twin_opt.step()
        np.testing.assert_allclose(metrics.layer_grad_norm, np.mean(norms, axis=0), rtol=1e-6)
        # pre-activations of the first 256 test inputs, by hand in float64
        a = xt[:256].double()
        expected = []
        with torch.no_grad():
            for layer in twin.hidden:
                h = a @ layer.weight.double().T + layer.bias.double()  # (256, 5)
                expected.append(h.numpy().var())
                a = twin.act(h)
        np.testing.assert_allclose(metrics.layer_preact_var, expected, rtol=1e-5)
    assert history[0].layer_grad_norm != history[1].layer_grad_norm


def test_a_divergence_keeps_the_grad_norms_of_the_steps_before_it():
    """lr 1e4 blows this net up at step 4: the record holds steps 1-3's norms, as by hand."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)

    def net_and_opt():
        torch.manual_seed(0)
        net = SparseMLP(6, 3, 3, 5, "relu_tau", 0.3, math.inf)
        return net, torch.optim.SGD(net.parameters(), lr=1e4, momentum=0.9)

    model, opt = net_and_opt()
    history, div = fit(model, opt, {"train": (x, y), "test": (x, y)}, epochs=2, batch_size=8,
                       generator=torch.Generator().manual_seed(1), show_progress=False, layer_stats=True)
    assert history == [] and (div.epoch, div.step) == (1, 4)
    assert div.recent_steps == [1, 2, 3] and len(div.recent_layer_grad_norm) == 3

    twin, twin_opt = net_and_opt()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    for step in range(3):
        idx = perm[8 * step : 8 * step + 8]
        twin_opt.zero_grad()
        F.cross_entropy(twin(x[idx]), y[idx]).backward()
        norms = [layer.weight.grad.double().pow(2).sum().sqrt().item() for layer in twin.hidden]
        np.testing.assert_allclose(div.recent_layer_grad_norm[step], norms, rtol=1e-5)
        twin_opt.step()

    model, opt = net_and_opt()  # without the statistics the record has none
    _, div = fit(model, opt, {"train": (x, y), "test": (x, y)}, epochs=2, batch_size=8,
                 generator=torch.Generator().manual_seed(1), show_progress=False)
    assert div.step == 4 and div.recent_layer_grad_norm is None and div.recent_steps is None


def test_layer_stats_off_adds_nothing(tmp_path, mnist_512):
    result = train(mlp_config(mnist_512, epochs=1), tmp_path, progress=False)
    line = metric_lines(tmp_path)[0]
    assert "layer_grad_norm" not in line and "layer_preact_var" not in line
    assert "init_layer_preact_var" not in result


def test_init_layer_preact_var_is_that_of_the_initial_weights(tmp_path, mnist_512):
    """With 0 epochs model.safetensors holds the initial weights: recompute on the probe batch."""
    result = train(mlp_config(mnist_512, epochs=0, log_layer_stats=True), tmp_path, progress=False)
    model, _ = load_run(tmp_path)
    from sparse_eoc.data import load_mnist

    probe = torch.from_numpy(load_mnist(mnist_512).x_test[:256])  # (256, 784)
    direct = [h.double().var(correction=0).item() for h, _ in model.hidden_states(probe)]
    np.testing.assert_allclose(result["init_layer_preact_var"], direct, rtol=1e-6)
    # at the EoC point the first layer's variance sits near q* = 1 (256 images x 32 units)
    assert 0.5 < result["init_layer_preact_var"][0] < 1.5
    assert layer_preact_var(model, probe) == result["init_layer_preact_var"]


# --- label smoothing ---------------------------------------------------------------------------------


def test_label_smoothing_applies_to_the_training_loss_only():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    xt, yt = torch.randn(50, 6, generator=gen), torch.randint(0, 3, (50,), generator=gen)
    runs = {}
    for eps in (0.0, 0.3):
        model = tiny_mlp()
        with torch.no_grad():
            first_loss = F.cross_entropy(model(x), y, label_smoothing=eps).item()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        (metrics,), _ = fit(model, opt, {"train": (x, y), "test": (xt, yt)}, epochs=1, batch_size=32,
                            generator=torch.Generator().manual_seed(1), show_progress=False, label_smoothing=eps)
        assert metrics.train_loss == pytest.approx(first_loss, rel=1e-6)  # one step: the initial model's loss
        _, plain_test_loss = evaluate(model, xt, yt)
        assert metrics.test_loss == plain_test_loss  # evaluation: plain cross-entropy
        runs[eps] = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(runs[0.0], runs[0.3]))  # it changes training


@pytest.mark.parametrize("value", [-0.1, 1.0, math.nan, True, "0.1"])
def test_label_smoothing_range(value):
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        mlp_config("unused", label_smoothing=value)


def test_fit_checks_its_arguments():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = dict(epochs=2, batch_size=4, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        fit(model, opt, {}, label_smoothing=1.0, **kwargs)

    with pytest.raises(ValueError, match="start_epoch must be in"):
        fit(model, opt, {}, start_epoch=4, **kwargs)
    with pytest.raises(ValueError, match="history must hold the 1 epoch"):
        fit(model, opt, {}, start_epoch=2, history=[], **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(ValueError, match="lr_schedule or scheduler"):
        fit(model, opt, {}, lr_schedule="cosine", scheduler=sched, **kwargs)


def test_resume_refuses_a_checkpoint_into_another_network(tmp_path, mnist_512, monkeypatch):
    """The same settings can build another network when a default changes (the residual scale's
    did: 1 / sqrt(depth) -> 2 / sqrt(depth)); the checkpoint's weights are never loaded into it."""
    config = mlp_config(mnist_512, model="resmlp", activation="crelu", sparsity=0.85, slope=0.7, depth=2,
                        width=16)
    train_killed_after_epoch_1(config, tmp_path, monkeypatch)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["network"]["residual_scale"] = 0.5  # as the older default would have built it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(ValueError, match=r"another network than the one .*config\.json records \(it differs in "
                                         r"residual_scale;.*--overwrite with --residual-scale 0\.5"):
        train(config, tmp_path, progress=False, resume=True)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    result = train(config.replace(residual_scale=0.5), tmp_path, progress=False, overwrite=True)
    assert result["status"] == "completed"
