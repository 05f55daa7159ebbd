"""The inference benchmark's code, smoke-run on tiny networks (its timings are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_eoc.cli import main
from sparse_eoc.infer import BENCH_KEYS, run_benchmark

REPO = Path(__file__).resolve().parents[2]


def test_rows_have_every_key_and_consistent_values(mnist_subset_dir):
    rows = run_benchmark(mnist_subset_dir, widths=[32], depth=3, batches=[1, 8], sparsities=[0.7, 0.85],
                         repeats=2)
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.7, 1), (0.7, 8), (0.85, 1), (0.85, 8)]
    for row in rows:
        assert set(BENCH_KEYS) <= set(row)
        assert (row["width"], row["depth"]) == (32, 3)
        assert row["ideal"] == pytest.approx(1 / (1 - row["sparsity"]))
        for key in ("dense_torch_ms", "dense_own_ms", "sparse_ms"):
            assert row[key] > 0
        assert row["speedup_vs_torch"] == pytest.approx(row["dense_torch_ms"] / row["sparse_ms"])
        assert row["speedup_vs_own"] == pytest.approx(row["dense_own_ms"] / row["sparse_ms"])
        # A fresh EoC network on real MNIST: the hidden layers near the target sparsity.
        assert row["measured_sparsity"] == pytest.approx(row["sparsity"], abs=0.1)
        assert 1.0 < row["flop_reduction"]
        assert 0.0 < row["union_density"] <= 1.0
        strategies = dict(part.split(":") for part in row["strategy"].split(","))
        assert sum(int(n) for n in strategies.values()) == 4  # 3 hidden layers + readout
    single = [r for r in rows if r["batch"] == 1]
    assert all(r["union_density"] == pytest.approx(1 - r["measured_sparsity"]) for r in single)
    assert all(r["strategy"] == "gather:4" for r in single)


@pytest.mark.parametrize("cache, calls_per_repeat", [("cold", 2), ("warm", 4)])
def test_the_warm_protocol_precedes_each_timed_call_by_an_untimed_one(mnist_subset_dir, monkeypatch, cache,
                                                                       calls_per_repeat):
    from sparse_eoc.infer import SparseEngine

    calls = []
    original = SparseEngine.__call__
    monkeypatch.setattr(SparseEngine, "__call__", lambda self, x, **kw: calls.append(kw) or original(self, x, **kw))
    rows = run_benchmark(mnist_subset_dir, widths=[16], depth=2, batches=[1], sparsities=[0.85], repeats=3,
                         cache=cache)
    assert rows[0]["cache"] == cache
    assert len(calls) == 2 + 3 * calls_per_repeat  # the warm-up of own dense and sparse, then the repeats


def test_bad_options(mnist_subset_dir):
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        run_benchmark(mnist_subset_dir, widths=[8], batches=[0])
    with pytest.raises(ValueError, match="sparsity"):
        run_benchmark(mnist_subset_dir, widths=[8], sparsities=[1.5])
    with pytest.raises(ValueError, match="cache must be one of cold, warm"):
        run_benchmark(mnist_subset_dir, widths=[8], cache="hot")


def test_cli_json_and_the_script(mnist_subset_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench-inference", "--data-dir", str(mnist_subset_dir), "--widths", "16", "--depth", "2",
                 "--batches", "1", "--sparsities", "0.85", "--repeats", "2", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert len(rows) == 1 and set(BENCH_KEYS) <= set(rows[0])
    assert json.loads(out.read_text()) == rows
    assert "width    16 depth   2 batch   1" in captured.err
    help_text = subprocess.run([sys.executable, str(REPO / "benchmarks" / "inference.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--widths" in help_text and "--repeats" in help_text
