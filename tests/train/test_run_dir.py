"""A run directory is never lost or mixed: refusals, --overwrite, the lock, a full disk, Ctrl-C.

Each test reproduces a defect of the hostile test at 6b2918f (H2, H3, M1, M5, L3), named in its docstring.
"""

import errno
import json

import pytest

import sparse_eoc.train.run as run_module
from sparse_eoc.cli import main
from sparse_eoc.nn.build import load_run
from sparse_eoc.runs.files import RunLockedError, run_lock, run_status
from sparse_eoc.train import TrainConfig, train


def config(data_dir, **changes):
    base = dict(activation="crelu", sparsity=0.8, slope=0.7, depth=2, width=16, epochs=1, lr=0.01, batch_size=256,
                threads=1, data_dir=str(data_dir))
    return TrainConfig(**{**base, **changes})


def snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


class Killed(Exception):
    pass


def test_a_finished_run_is_refused_without_overwrite(tmp_path, mnist_subset_dir):
    """H3(a): train --out on a finished run replaced it silently."""
    run = tmp_path / "run"
    train(config(mnist_subset_dir), run, progress=False)
    before = snapshot(run)
    with pytest.raises(ValueError, match=r"holds a finished run \(completed\); pass --overwrite"):
        train(config(mnist_subset_dir, sparsity=0.7), run, progress=False)
    assert snapshot(run) == before
    result = train(config(mnist_subset_dir, sparsity=0.7), run, progress=False, overwrite=True)
    assert result["status"] == "completed" and json.loads((run / "config.json").read_text())["sparsity"] == 0.7


def test_an_unfinished_run_is_refused_without_resume(tmp_path, mnist_subset_dir, monkeypatch):
    """H3(a): an unfinished run given the same command without --resume lost its checkpoint."""
    run = tmp_path / "run"
    interrupt_after_epoch_1(config(mnist_subset_dir, epochs=2), run, monkeypatch)
    before = snapshot(run)
    assert "checkpoint.pt" in before
    with pytest.raises(ValueError, match=r"holds an unfinished run .*checkpoint\.pt.*pass --resume"):
        train(config(mnist_subset_dir, epochs=2), run, progress=False)
    assert snapshot(run) == before
    assert train(config(mnist_subset_dir, epochs=2), run, progress=False, resume=True)["epochs_completed"] == 2


def interrupt_after_epoch_1(run_config, run, monkeypatch):
    """Train until a simulated kill right after epoch 1's checkpoint: an unfinished run in ``run``."""
    save = run_module.save_checkpoint

    def kill(*args, **kwargs):
        save(*args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(run_module, "save_checkpoint", kill)
        with pytest.raises(Killed):
            train(run_config, run, progress=False)


def test_a_crash_while_overwriting_leaves_no_old_weights_beside_new_settings(tmp_path, mnist_subset_dir,
                                                                             monkeypatch):
    """H3(b): a crash during an overwrite left new config.json + old weights, which infer evaluated."""
    run = tmp_path / "run"
    train(config(mnist_subset_dir), run, progress=False)
    monkeypatch.setattr(run_module, "fit", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        train(config(mnist_subset_dir, sparsity=0.7), run, progress=False, overwrite=True)
    assert not (run / "model.safetensors").exists() and not (run / "result.json").exists()
    assert run_status(run) == "started"
    with pytest.raises(ValueError, match=r"not a finished run"):
        load_run(run)


def test_a_run_another_process_trains_is_refused_even_with_overwrite(tmp_path, mnist_subset_dir):
    """M1 and H2: two processes on one run directory mixed their metrics; the lock refuses the second."""
    run = tmp_path / "run"
    with run_lock(run):  # as held by another training process (flock: per open file, so this conflicts too)
        for kwargs in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(RunLockedError, match=r"another process \(pid \d+\) is training"):
                train(config(mnist_subset_dir), run, progress=False, **kwargs)
        assert snapshot(run) == {}  # nothing written by the refused runs
    assert train(config(mnist_subset_dir), run, progress=False)["status"] == "completed"  # released


def test_the_cli_refuses_in_one_line_and_overwrites_when_told(tmp_path, mnist_subset_dir, capsys):
    argv = ["train", "--activation", "crelu", "--sparsity", "0.8", "--depth", "2", "--width", "16", "--epochs", "1",
            "--threads", "1", "--data-dir", str(mnist_subset_dir), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a finished run" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    with pytest.raises(ValueError, match=r"--resume continues a run and --overwrite replaces it"):
        train(config(mnist_subset_dir), tmp_path / "r", progress=False, resume=True, overwrite=True)


def test_an_unreadable_result_is_refused_and_the_weights_kept(tmp_path, mnist_subset_dir, capsys):
    """A result.json that cannot be read made a resume (and a sweep rerun) start afresh, deleting the weights."""
    run = tmp_path / "run"
    train(config(mnist_subset_dir), run, progress=False)
    for text in ("{", '{"status": "weird"}'):
        (run / "result.json").write_text(text)
        before = snapshot(run)
        for kwargs in ({"resume": True}, {}):
            with pytest.raises(ValueError, match=r"result\.json is not a finished run's result .*nothing was changed"):
                train(config(mnist_subset_dir), run, progress=False, **kwargs)
            assert snapshot(run) == before
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "is not a finished run's result" in capsys.readouterr().err
    assert train(config(mnist_subset_dir), run, progress=False, overwrite=True)["status"] == "completed"


def test_a_new_run_that_fails_before_writing_leaves_no_directory(tmp_path, mnist_subset_dir):
    """A refused or failed new run left an empty directory (and a lock file) behind."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="train-images-idx3-ubyte"):
        train(config(tmp_path / "empty"), tmp_path / "new" / "run", progress=False)
    assert not (tmp_path / "new" / "run").exists()


@pytest.mark.parametrize("target, error", [
    ("save_file", OSError(errno.ENOSPC, "No space left on device")),
    ("save_file", RuntimeError("SafetensorError: No space left on device")),
    ("torch_save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")),
])
def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path, mnist_subset_dir, monkeypatch, capsys,
                                                               target, error):
    """M5: disk full while saving gave a traceback and left a partial temporary file."""
    def full_disk(obj, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise error

    if target == "save_file":
        monkeypatch.setattr(run_module, "save_file", lambda tensors, path: full_disk(tensors, path))
        name = "model.safetensors"
    else:
        import sparse_eoc.train.checkpoint as checkpoint

        monkeypatch.setattr(checkpoint.torch, "save", full_disk)
        name = "checkpoint.pt"
    run = tmp_path / "r"
    argv = ["train", "--activation", "crelu", "--sparsity", "0.8", "--depth", "2", "--width", "16", "--epochs", "1",
            "--threads", "1", "--data-dir", str(mnist_subset_dir), "--out", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / name}: cannot write" in err
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not (run / "result.json").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, mnist_subset_dir, monkeypatch, capsys):
    """L3: Ctrl-C printed a KeyboardInterrupt traceback and exited with -2."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "fit", interrupted)
    argv = ["train", "--activation", "relu", "--depth", "2", "--width", "16", "--epochs", "1",
            "--data-dir", str(mnist_subset_dir), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sparse-eoc train: interrupted"


def test_load_run_refuses_an_unfinished_run_and_a_diverged_one_without_weights(tmp_path, mnist_subset_dir):
    """H3: infer/load_run did not check result.json; L4: a weightless diverged run was 'not a run directory'."""
    run = tmp_path / "run"
    train(config(mnist_subset_dir), run, progress=False)
    (run / "result.json").unlink()
    with pytest.raises(ValueError, match=r"not a finished run"):
        load_run(run)
    diverged = tmp_path / "diverged"
    result = train(config(mnist_subset_dir, activation="relu_tau", sparsity=0.85, slope=None, depth=4, width=32,
                                 lr=1e6, batch_size=128),
                   diverged, progress=False)
    assert result["status"] == "diverged" and result["epochs_completed"] == 0
    with pytest.raises(ValueError, match=r"diverged before its first epoch completed, so it has no weights"):
        load_run(diverged)


def test_sizes_that_cannot_fit_are_refused_before_anything_is_built(tmp_path, mnist_subset_dir, capsys):
    """M4: --depth 1e9 built layers until memory ran out; a kernel larger than the image never finished."""
    base = ["train", "--activation", "crelu", "--sparsity", "0.8", "--epochs", "1", "--data-dir",
            str(mnist_subset_dir), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*base, "--depth", "1000000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--depth/--width: a depth-1000000000, width 300 mlp" in err and "GiB" in err
    assert main([*base, "--model", "cnn", "--kernel-size", "99"]) == 2
    assert "--kernel-size must be at most the image side 28, got --kernel-size 99" in capsys.readouterr().err
    assert not (tmp_path / "r" / "config.json").exists()


def test_a_tampered_checkpoint_is_named_not_a_traceback(tmp_path, mnist_subset_dir, monkeypatch):
    """M7: a checkpoint with bogus history, a string wall_seconds or wrong tensor shapes gave tracebacks."""
    import torch

    from sparse_eoc.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    interrupt_after_epoch_1(config(mnist_subset_dir, epochs=2), run, monkeypatch)
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    for change, message in (({"wall_seconds": "1"}, r"wall_seconds must be a number"),
                            ({"history": [1]}, r"history must be 1 dicts"),
                            ({"shuffle_rng": torch.zeros(3)}, r"shuffle_rng must be a uint8 tensor")):
        torch.save({**good, **change}, run / "checkpoint.pt")
        with pytest.raises(ValueError, match=r"checkpoint\.pt: not a consistent checkpoint \(" + message):
            load_checkpoint(run / "checkpoint.pt")
    model = dict(good["model"])
    model["readout.weight"] = torch.zeros(3, 3)
    torch.save({**good, "model": model}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: does not fit this run"):
        train(config(mnist_subset_dir, epochs=2), run, progress=False, resume=True)


@pytest.mark.slow
def test_sparse_kernels_train_as_the_dense_ones_on_mnist(tmp_path, mnist_dir):
    """Issue 12's end-to-end exactness: two epochs with --kernels sparse and with --kernels dense, same seed."""
    pytest.importorskip("numba")
    results = {}
    for kernels in ("sparse", "dense"):
        run_config = TrainConfig(activation="crelu", sparsity=0.85, slope=0.7, depth=8, width=256, epochs=2,
                                 kernels=kernels, threads=2, data_dir=str(mnist_dir))
        results[kernels] = train(run_config, tmp_path / kernels, progress=False)
    sparse, dense = results["sparse"], results["dense"]
    assert abs(sparse["test_accuracy"] - dense["test_accuracy"]) <= 0.003, (sparse, dense)
    assert abs(sparse["test_sparsity"] - dense["test_sparsity"]) <= 0.002, (sparse, dense)
    assert sparse["test_accuracy"] > 0.9
