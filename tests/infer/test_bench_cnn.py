"""The CNN inference benchmark's code, smoke-run on tiny networks (its timings are not checked)."""

import json

import pytest

from sparse_eoc.cli import main
from sparse_eoc.infer import CNN_BENCH_KEYS, SparseCNNEngine, run_cnn_benchmark
from sparse_eoc.infer.ort import ort_unavailable_reason

HAVE_ORT = ort_unavailable_reason() is None


@pytest.mark.parametrize("ort", [False, None])
def test_rows_have_every_key_and_consistent_values(mnist_subset_dir, ort):
    if ort is None and not HAVE_ORT:
        pytest.skip(ort_unavailable_reason())
    rows = run_cnn_benchmark(mnist_subset_dir, channels=[8], depth=3, batches=[1, 3], sparsities=[0.7, 0.85],
                             repeats=2, ort=ort)
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.7, 1), (0.7, 3), (0.85, 1), (0.85, 3)]
    for row in rows:
        assert set(CNN_BENCH_KEYS) <= set(row)
        assert (row["channels"], row["depth"], row["threads"]) == (8, 3, 1)
        assert row["dense_torch_ms"] > 0 and row["sparse_ms"] > 0
        assert row["speedup_vs_torch"] == pytest.approx(row["dense_torch_ms"] / row["sparse_ms"])
        if ort is False:
            assert row["dense_ort_ms"] is None and row["speedup_vs_ort"] is None and row["ort_note"]
        else:
            assert row["speedup_vs_ort"] == pytest.approx(row["dense_ort_ms"] / row["sparse_ms"])
            assert row["ort_note"] == "" and row["ort_version"]
        # A fresh EoC CNN on real MNIST: mostly zeros in the hidden layers (more than the target: the
        # images' flat background gives flat pre-activations), the logits exact.
        assert 0.6 < row["measured_sparsity"] < 0.97
        assert row["max_rel_logit_diff"] <= 1e-4
        assert row["flop_reduction"] > 1.0
        strategies = dict(part.split(":") for part in row["strategy"].split(","))
        assert sum(int(n) for n in strategies.values()) == 4  # 3 conv layers + readout
    assert rows[2]["measured_sparsity"] > rows[0]["measured_sparsity"]  # s = 0.85 sparser than s = 0.7


def test_the_warm_protocol_precedes_each_timed_call_by_an_untimed_one(mnist_subset_dir, monkeypatch):
    calls = []
    original = SparseCNNEngine.__call__
    monkeypatch.setattr(SparseCNNEngine, "__call__", lambda self, x: calls.append(len(x)) or original(self, x))
    run_cnn_benchmark(mnist_subset_dir, channels=[4], depth=2, batches=[2], repeats=3, ort=False)
    assert calls == [2] * (1 + 3 * 2)  # the warm-up, then an untimed and a timed call per repeat


def test_bad_options(mnist_subset_dir):
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        run_cnn_benchmark(mnist_subset_dir, channels=[8], batches=[0])
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        run_cnn_benchmark(mnist_subset_dir, channels=[0])
    with pytest.raises(ValueError, match="strategy must be one of auto, dense, sparse for a CNN"):
        run_cnn_benchmark(mnist_subset_dir, channels=[8], strategy="gather")
    with pytest.raises(ValueError, match="sparsity"):
        run_cnn_benchmark(mnist_subset_dir, channels=[8], sparsities=[1.5])
    with pytest.raises(ValueError, match="--channels/--depth: a depth-2 CNN with 10000000 channels needs"):
        run_cnn_benchmark(mnist_subset_dir, channels=[10**7], depth=2)


def test_bench_inference_model_cnn_command(mnist_subset_dir, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["bench-inference", "--model", "cnn", "--data-dir", str(mnist_subset_dir), "--channels", "4",
                 "--depth", "2", "--batches", "1", "--sparsities", "0.85", "--repeats", "2", "--baselines", "torch",
                 "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert rows == json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["channels"] == 4 and rows[0]["dense_ort_ms"] is None
    assert "channels    4 depth   2 batch   1" in captured.err  # the table goes to stderr with --json
    assert main(["bench-inference", "--model", "cnn", "--data-dir", str(mnist_subset_dir), "--cache", "cold"]) == 2
    assert "apply to --model mlp only" in capsys.readouterr().err
