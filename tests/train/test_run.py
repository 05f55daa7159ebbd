"""Training runs: the run directory, reloading, determinism, validation split, config checks."""

import json

import pytest
import torch

from sparse_eoc.data import load_mnist
from sparse_eoc.train import TrainConfig, evaluate, load_run, train


def small_config(data_dir, **changes):
    base = dict(activation="cst", sparsity=0.8, slope=0.6, depth=3, width=48, epochs=2, lr=0.01,
                batch_size=64, data_dir=str(data_dir))
    return TrainConfig(**{**base, **changes})


def test_load_run_rebuilds_the_trained_model(tmp_path, mnist_subset_dir):
    result = train(small_config(mnist_subset_dir), tmp_path, progress=False)
    model, config = load_run(tmp_path)
    assert config["network"]["depth"] == 3 and not model.training
    data = load_mnist(mnist_subset_dir)
    acc, _ = evaluate(model, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    assert acc == result["test_accuracy"]


def test_load_run_names_a_config_without_network_and_a_corrupt_weights_file(tmp_path, mnist_subset_dir):
    train(small_config(mnist_subset_dir, epochs=1), tmp_path, progress=False)
    config_path, weights_path = tmp_path / "config.json", tmp_path / "model.safetensors"
    config, weights = config_path.read_text(), weights_path.read_bytes()
    old = json.loads(config)
    del old["network"]
    config_path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"config\.json: cannot rebuild the model.*'network' section"):
        load_run(tmp_path)
    config_path.write_text(config)
    weights_path.write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt"):
        load_run(tmp_path)
    wider = json.loads(config)
    wider["network"]["width"] += 1
    config_path.write_text(json.dumps(wider))
    weights_path.write_bytes(weights)
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or not the weights of the network"):
        load_run(tmp_path)


def test_same_seed_same_results_and_other_seed_differs(tmp_path, mnist_subset_dir):
    a = train(small_config(mnist_subset_dir), tmp_path / "a", progress=False)
    b = train(small_config(mnist_subset_dir), tmp_path / "b", progress=False)
    c = train(small_config(mnist_subset_dir, seed=1), tmp_path / "c", progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() != ""
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_seconds"}  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_validation_split_is_held_out_and_reported(tmp_path, mnist_subset_dir):
    train(small_config(mnist_subset_dir, val_size=300, epochs=1), tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["data"]["n_train"], config["data"]["n_val"]) == (1700, 300)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert 0 <= line["val_accuracy"] <= 1 and 0 <= line["val_sparsity"] <= 1


def test_sparsity_at_target_after_short_training(tmp_path, mnist_subset_dir):
    result = train(small_config(mnist_subset_dir, activation="crelu", sparsity=0.85, epochs=1, lr=1e-3),
                   tmp_path, progress=False)
    # A 3-layer net after one short epoch stays close to its initial sparsity.
    assert result["train_sparsity"] == pytest.approx(0.85, abs=0.05)
    assert result["test_sparsity"] == pytest.approx(0.85, abs=0.05)
    assert all(0.7 < s < 0.95 for s in result["layer_sparsity"])


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(activation="relu", sparsity=0.7), "sparsity for relu is 0.5"),
        (dict(activation="relu_tau", slope=0.5), "slope and m apply only"),
        (dict(slope=0.5, m=1.0), "either m or slope"),
        (dict(width=0), "width must be an integer >= 1"),
        (dict(lr=-1.0), "lr must be a finite number > 0"),
        (dict(readout_lr_scale=0.0), "readout_lr_scale must be a finite number > 0"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(optimizer="lbfgs"), "optimizer must be one of sgd, adam"),
        (dict(activation="tanh"), "activation must be one of"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        small_config("unused", **changes)


def test_bad_device(tmp_path, mnist_subset_dir):
    with pytest.raises(ValueError, match="device"):
        train(small_config(mnist_subset_dir, device="tpu"), tmp_path, progress=False)


def test_cosine_schedule_decays_to_zero_per_step():
    from sparse_eoc.train.loop import make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler("cosine", opt, total_steps=10)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert make_scheduler("none", opt, total_steps=10) is None
    with pytest.raises(ValueError, match="lr_schedule must be one of none, cosine"):
        make_scheduler("step", opt, total_steps=10)


def test_readout_lr_scale_moves_only_the_readout_faster(tmp_path, mnist_subset_dir):
    """The readout group learns at lr x scale: with a scale of 4 and SGD without momentum
    the readout's first update is exactly 4x that of the same run at scale 1, and the
    hidden layers' first update is unchanged."""
    from sparse_eoc.nn import SparseMLP
    from sparse_eoc.train.loop import make_optimizer, param_groups

    model = SparseMLP(20, 3, depth=2, width=8, activation="relu")
    groups = param_groups(model, 4.0, lr=0.01)
    assert [g.get("lr") for g in groups] == [None, 0.04]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.readout.parameters()}
    assert len(param_groups(model, 1.0, lr=0.01)) == 1
    x, y = torch.randn(16, 20, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    steps = {}
    for scale in (1.0, 4.0):
        m = SparseMLP(20, 3, depth=2, width=8, activation="relu").double()
        m.load_state_dict(model.double().state_dict())
        before = [p.detach().clone() for p in m.parameters()]
        opt = make_optimizer("sgd", param_groups(m, scale, lr=0.01), lr=0.01, momentum=0.0, weight_decay=0.0)
        torch.nn.functional.cross_entropy(m(x.double()), y).backward()
        opt.step()
        steps[scale] = [p.detach() - b for p, b in zip(m.parameters(), before)]
    readout = {id(p) for p in m.readout.parameters()}
    for p, a, b in zip(m.parameters(), steps[1.0], steps[4.0]):
        torch.testing.assert_close(b, 4 * a if id(p) in readout else a, rtol=1e-12, atol=0)
    result = train(small_config(mnist_subset_dir, epochs=1, readout_lr_scale=3.0), tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["readout_lr_scale"] == 3.0
    assert result["status"] == "completed"
