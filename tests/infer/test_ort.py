"""The ONNX Runtime baseline: the exported network equals the torch model, for every activation, the MLP and
the CNN, at any batch size; the benchmark's ORT column, and what happens without ONNX Runtime."""

import json
import sys

import numpy as np
import pytest
import torch

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.cli import main
from sparse_eoc.gp import solve_eoc
from sparse_eoc.infer import BENCH_KEYS, run_benchmark
from sparse_eoc.infer.bench import BASELINE_KEYS, check_baselines, default_baselines
from sparse_eoc.infer.ort import OrtModel, ort_unavailable_reason
from sparse_eoc.nn import SparseCNN, SparseMLP
from sparse_eoc.nn.build import init_from_point_

# Logits: |ORT - torch| <= RTOL * max |torch logit|, per example. Both add the same float32 products
# (sums of <= 800 terms, ~1e-6 relative round-off each) in other orders; a unit at a kink of phi may
# fall on either side, but phi is continuous, so the logits still agree to round-off.
RTOL = 1e-4
BATCHES = (1, 3, 8)


@pytest.fixture
def ort_installed():
    """Skip unless onnxruntime and onnx import (pip install 'sparse-eoc[bench]')."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")


def relative_error(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per example, max |out - ref| / max |ref|, (B,)."""
    return np.abs(out - ref).max(axis=1) / np.abs(ref).max(axis=1)


def eoc_model(kind: str, activation: str, **kwargs):
    """A random EoC network at sparsity 0.8: an MLP (784 -> 10) or a CNN on (1, 8, 8) images."""
    p = solve_eoc(activation, 0.8, slope=0.7 if get_activation(activation).clipped else None)
    if kind == "mlp":
        model = SparseMLP(784, 10, 3, 48, activation, p.tau, p.m)
    else:
        model = SparseCNN(1, 10, 3, 8, activation, p.tau, p.m, **kwargs)
    init_from_point_(model, p, mean_square_input=1.0, generator=torch.Generator().manual_seed(0))
    return model.eval()


def assert_same_logits(model, ort_model, shape, seed=0):
    rng = np.random.default_rng(seed)
    for batch in BATCHES:  # the batch axis is dynamic
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = ort_model(x)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert np.all(relative_error(out, ref) <= RTOL)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_logits_equal_torch_at_any_batch(ort_installed, activation):
    model = eoc_model("mlp", activation)
    ort_model = OrtModel(model, torch.zeros(2, 784), threads=1, exporter="torchscript")
    assert_same_logits(model, ort_model, (784,))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 784\)"):
        ort_model(np.zeros((2, 783), np.float32))


@pytest.mark.parametrize("activation, padding_mode", [("crelu", "circular"), ("cst", "zeros"),
                                                      ("relu_tau", "zeros"), ("st_tau", "circular")])
def test_cnn_logits_equal_torch_at_any_batch(ort_installed, activation, padding_mode):
    model = eoc_model("cnn", activation, padding_mode=padding_mode)
    ort_model = OrtModel(model, torch.zeros(1, 1, 8, 8), threads=2, exporter="torchscript")
    assert ort_model.example_shape == (1, 8, 8)
    assert_same_logits(model, ort_model, (1, 8, 8))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_default_dynamo_exporter(ort_installed, kind):
    pytest.importorskip("onnxscript")
    model = eoc_model(kind, "crelu", padding_mode="circular") if kind == "cnn" else eoc_model(kind, "crelu")
    shape = (784,) if kind == "mlp" else (1, 8, 8)
    ort_model = OrtModel(model, torch.zeros(1, *shape), threads=1)  # an example of batch 1 is fine too
    assert ort_model.exporter == "dynamo"
    assert_same_logits(model, ort_model, shape, seed=1)


def test_the_session_options(ort_installed):
    import onnxruntime

    ort_model = OrtModel(eoc_model("mlp", "crelu"), torch.zeros(1, 784), threads=3, exporter="torchscript")
    options = ort_model._session.get_session_options()
    assert options.intra_op_num_threads == 3 and ort_model.threads == 3
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert ort_model._session.get_providers() == ["CPUExecutionProvider"]


def test_bad_arguments(ort_installed):
    model = eoc_model("mlp", "crelu")
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        OrtModel(model, torch.zeros(1, 784), threads=0)
    with pytest.raises(ValueError, match="exporter must be one of auto, dynamo, torchscript"):
        OrtModel(model, torch.zeros(1, 784), exporter="jit")
    with pytest.raises(ValueError, match="example must be a CPU float32 tensor"):
        OrtModel(model, torch.zeros(1, 784, dtype=torch.float64))
    with pytest.raises(ValueError, match="example must be a CPU float32 tensor"):
        OrtModel(model, np.zeros((1, 784), np.float32))
    with pytest.raises(ValueError, match="must be in eval mode"):
        OrtModel(model.train(), torch.zeros(1, 784))


def test_the_benchmark_rows_carry_the_ort_column(ort_installed, mnist_subset_dir):
    rows = run_benchmark(mnist_subset_dir, widths=[16], depth=2, batches=[1, 4], sparsities=[0.85], repeats=2,
                         baselines=["torch", "ort"])
    for row in rows:
        assert set(BENCH_KEYS) <= set(row) and set(BASELINE_KEYS["ort"]) <= set(row)
        assert row["dense_ort_ms"] > 0
        assert row["speedup_vs_ort"] == pytest.approx(row["dense_ort_ms"] / row["sparse_ms"])
    assert default_baselines() == ("torch", "ort")
    only_ort = run_benchmark(mnist_subset_dir, widths=[16], depth=2, batches=[2], sparsities=[0.85], repeats=1,
                             baselines=["ort"])[0]
    assert "dense_ort_ms" in only_ort and not set(BASELINE_KEYS["torch"]) & set(only_ort)


def test_the_cli_prints_the_ort_version(ort_installed, mnist_subset_dir, capsys):
    import onnxruntime

    assert main(["bench-inference", "--data-dir", str(mnist_subset_dir), "--widths", "16", "--depth", "2",
                 "--batches", "2", "--sparsities", "0.85", "--repeats", "1", "--baselines", "ort,torch",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert f"ONNX Runtime {onnxruntime.__version__}" in captured.err
    (row,) = json.loads(captured.out)
    assert {"dense_torch_ms", "dense_ort_ms", "speedup_vs_ort"} <= set(row)


def test_a_wrong_baseline_is_caught_before_timing(ort_installed, mnist_subset_dir, monkeypatch):
    monkeypatch.setattr(OrtModel, "__call__", lambda self, x: np.zeros((len(x), 10), np.float32))
    with pytest.raises(RuntimeError, match="dense_ort: its logits differ from the torch model's"):
        run_benchmark(mnist_subset_dir, widths=[16], depth=2, batches=[2], sparsities=[0.85], repeats=1,
                      baselines=["torch", "ort"])


# ------------------------------------------------------------------ without ONNX Runtime (simulated)


@pytest.fixture
def no_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError


def test_without_onnxruntime_the_reason_names_the_extra(no_onnxruntime):
    reason = ort_unavailable_reason()
    assert "onnxruntime" in reason and "pip install 'sparse-eoc[bench]'" in reason and "\n" not in reason
    with pytest.raises(ImportError, match=r"sparse-eoc\[bench\]"):
        OrtModel(SparseMLP(4, 2, 1, 3, "relu").eval(), torch.zeros(1, 4))
    assert default_baselines() == ("torch",)
    assert check_baselines(None) == ("torch",)
    with pytest.raises(ValueError, match=r"--baselines ort: .*sparse-eoc\[bench\]"):
        check_baselines(["ort"])


def test_without_onnxruntime_the_command_says_why_once(no_onnxruntime, mnist_subset_dir, capsys):
    argv = ["bench-inference", "--data-dir", str(mnist_subset_dir), "--widths", "16", "--depth", "2",
            "--batches", "1,2", "--sparsities", "0.85", "--repeats", "1", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "ONNX Runtime" in line]
    assert len(notes) == 1 and "sparse-eoc[bench]" in notes[0]
    rows = json.loads(captured.out)
    assert len(rows) == 2 and all(set(BENCH_KEYS) <= set(r) and "dense_ort_ms" not in r for r in rows)
    # Asked for explicitly, it is an error (one line, exit code 2), before anything runs.
    assert main([*argv, "--baselines", "torch,ort"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--baselines ort" in err and "sparse-eoc[bench]" in err


def test_unknown_baselines_are_refused():
    with pytest.raises(ValueError, match="--baselines must name one or more of torch, ort, got tf"):
        check_baselines(["tf"])
    with pytest.raises(ValueError, match="--baselines must name one or more of torch, ort, got none"):
        check_baselines([])
