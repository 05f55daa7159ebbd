"""The inference benchmark's code, smoke-run on tiny networks (its timings are not checked); the ONNX Runtime
baseline is tested in test_ort.py, so these runs use the torch baseline only."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_eoc.cli import main
from sparse_eoc.infer import BENCH_KEYS, STRATEGY_CHOICES, run_benchmark
from sparse_eoc.infer.bench import SETTLE_S

REPO = Path(__file__).resolve().parents[2]


def test_rows_have_every_key_and_consistent_values(mnist_subset_dir):
    rows = run_benchmark(mnist_subset_dir, widths=[32], depth=3, batches=[1, 8], sparsities=[0.7, 0.85],
                         repeats=2, baselines=["torch"])
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
                         cache=cache, baselines=["torch"])
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
                 "--batches", "1", "--sparsities", "0.85", "--repeats", "2", "--baselines", "torch", "--json",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert len(rows) == 1 and set(BENCH_KEYS) <= set(rows[0])
    assert json.loads(out.read_text()) == rows
    assert "width    16 depth   2 batch   1" in captured.err
    help_text = subprocess.run([sys.executable, str(REPO / "benchmarks" / "inference.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "--widths" in help_text and "--repeats" in help_text


def _one_line_error(capsys, argv) -> str:
    """Run the CLI, expecting exit code 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("extra, option", [(["--widths", "1000000000"], "--widths:"),
                                           (["--widths", "300", "--depth", "1000000000"], "--widths/--depth:"),
                                           (["--widths", "300", "--batches", "1000000000"], "--batches:")])
def test_sizes_that_cannot_fit_in_memory_are_refused_first(tmp_path, capsys, extra, option):
    # The data directory does not exist: the sizes are refused before the data is read.
    err = _one_line_error(capsys, ["bench-inference", "--data-dir", str(tmp_path / "none"), *extra])
    assert option in err and "GiB" in err


def test_the_default_grid_fits_in_1_gib():
    from sparse_eoc.infer.bench import DEFAULT_BATCHES, DEFAULT_WIDTHS, check_memory

    check_memory(DEFAULT_WIDTHS, None, DEFAULT_BATCHES, memory=2**30)  # width 4096 x depth 8: ~0.9 GiB
    with pytest.raises(ValueError, match="--widths: a depth-8, width-4096 MLP"):
        check_memory(DEFAULT_WIDTHS, None, DEFAULT_BATCHES, memory=2**29)


def test_an_empty_test_split_is_one_line(mnist_subset_dir, monkeypatch, capsys):
    import dataclasses

    import sparse_eoc.data
    from sparse_eoc.data import load_image_dataset

    def empty_test_split(*args, **kwargs):  # the loader itself may refuse it; the benchmark must not rely on that
        data = load_image_dataset(*args, **kwargs)
        return dataclasses.replace(data, x_test=data.x_test[:0], y_test=data.y_test[:0])

    monkeypatch.setattr(sparse_eoc.data, "load_image_dataset", empty_test_split)
    err = _one_line_error(capsys, ["bench-inference", "--data-dir", str(mnist_subset_dir), "--widths", "16",
                                   "--depth", "2", "--batches", "1", "--sparsities", "0.85", "--repeats", "1"])
    assert "the test split holds no images" in err


@pytest.mark.parametrize("out, message", [(".", "is a directory"), ("missing/rows.json", "does not exist"),
                                          ("/proc/rows.json", "cannot create a file in /proc")])
def test_an_unwritable_out_is_refused_before_the_benchmark_runs(mnist_subset_dir, tmp_path, monkeypatch, capsys,
                                                                out, message):
    """/proc takes no new files, even from root (for whom permission bits do not count)."""
    import sparse_eoc.infer.bench

    if out.startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr(sparse_eoc.infer.bench, "run_benchmark", must_not_run)
    err = _one_line_error(capsys, ["bench-inference", "--data-dir", str(mnist_subset_dir), "--widths", "16",
                                   "--out", str(tmp_path / out)])
    assert "--out" in err and message in err


@pytest.mark.slow  # numba compiles the parallel kernels on first use (~10 s)
def test_the_thread_check_rows(mnist_subset_dir):
    from sparse_eoc.infer import STRATEGY_CHOICES
    from sparse_eoc.infer.bench import check_threads

    rows = check_threads(mnist_subset_dir, widths=[32], depth=2, batches=[8], sparsities=[0.85], threads=2,
                         repeats=2, limit=1e9)
    assert [r["strategy"] for r in rows] == list(STRATEGY_CHOICES)
    for row in rows:
        assert (row["width"], row["depth"], row["batch"], row["threads"]) == (32, 2, 8, 2)
        assert row["one_thread_ms"] > 0 and row["threads_ms"] > 0 and row["ok"]
        assert row["ratio"] == pytest.approx(row["threads_ms"] / row["one_thread_ms"]) and row["attempts"] == 1
    with pytest.raises(ValueError, match="threads must be an integer >= 2"):
        check_threads(mnist_subset_dir, threads=1)
    with pytest.raises(ValueError, match="limit must be a finite number > 0"):
        check_threads(mnist_subset_dir, limit=0.0)


@pytest.mark.parametrize("slowdown, code", [(1.2, 0), (3.0, 1)])
def test_the_thread_check_fails_loudly(mnist_subset_dir, monkeypatch, capsys, slowdown, code):
    """Simulated timings: 2 threads 1.2x (passes) or 3x (fails: exit code 1, one FAILED line) one thread's time."""
    import sparse_eoc.infer.bench

    monkeypatch.setattr(sparse_eoc.infer.bench, "_time_engines",
                        lambda engines, *args: {n: 1.0 if n == 1 else slowdown for n in engines})
    assert main(["bench-inference", "--data-dir", str(mnist_subset_dir), "--widths", "16", "--depth", "2",
                 "--batches", "4", "--sparsities", "0.85", "--threads", "2", "--check-threads"]) == code
    captured = capsys.readouterr()
    assert captured.out.count("ratio") == len(STRATEGY_CHOICES)  # one line per strategy
    failed = [line for line in captured.err.splitlines() if "thread check FAILED" in line]
    assert len(failed) == code
    if code:
        assert f"{len(STRATEGY_CHOICES)} of {len(STRATEGY_CHOICES)} cases took more than 1.5x one thread's time on 2 threads, in every timing" in failed[0]
        assert captured.out.count("FAIL (more than 1.5x) (timing 3)") == len(STRATEGY_CHOICES)  # timed three times each


def test_the_thread_check_times_a_slow_case_again(mnist_subset_dir, monkeypatch):
    """A slow timing followed by a normal one (a busy machine, once) passes, and says so."""
    import sparse_eoc.infer.bench

    timings = itertools.chain([{1: 1.0, 2: 4.0}], itertools.repeat({1: 1.0, 2: 0.9}))
    monkeypatch.setattr(sparse_eoc.infer.bench, "_time_engines", lambda *args: next(timings))
    rows = sparse_eoc.infer.bench.check_threads(mnist_subset_dir, widths=[16], depth=2, batches=[4],
                                                sparsities=[0.85])
    assert [r["attempts"] for r in rows] == [2] + [1] * (len(STRATEGY_CHOICES) - 1)
    assert all(r["ok"] and r["ratio"] == pytest.approx(0.9) for r in rows)


@pytest.mark.parametrize(("threads", "waits"), [(1, False), (2, True), (4, True)])
def test_each_method_waits_for_the_previous_ones_threads_only_on_more_than_one_thread(threads, waits):
    """settle: with more than one thread, a busy wait of SETTLE_S before a method's turn (ONNX Runtime's
    workers spin after a call and would hold a core the next method needs); one thread: no wait."""
    import time

    from sparse_eoc.infer import bench

    start_cpu, start = time.process_time(), time.perf_counter()
    bench.settle(threads)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if waits:
        assert wall >= SETTLE_S and cpu >= 0.2 * SETTLE_S  # busy (on the CPU), not asleep
    else:
        assert wall < SETTLE_S
