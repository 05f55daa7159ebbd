"""Sweeps: run directories, sweep.json, skipping and resuming, failures, backends, the CLI, kill -9."""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dataset_files import write_idx

from sparse_eoc.cli import main
from sparse_eoc.experiments import get_experiment, plan_sweep, run_status, run_sweep
from sparse_eoc.experiments import sweep as sweep_module
from sparse_eoc.experiments.results import load_runs
from sparse_eoc.experiments.sweep import SWEEP_FILE, busy_warning

SMOKE = dict(experiment="dnn-table", preset="smoke")


def results(out: Path) -> dict[str, dict]:
    """Each run's result.json and metrics.jsonl, without the wall-clock times."""
    got = {}
    for run in sorted((out / "runs").iterdir()):
        result = json.loads((run / "result.json").read_text())
        result.pop("wall_seconds")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for line in metrics:
            line.pop("seconds")
        got[run.name] = {"result": result, "metrics": metrics}
    return got


def assert_close(a, b, tol=1e-6):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y, tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tol
    else:
        assert a == b


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """The sweep sees no load average (no busy-machine warning in its log) unless a test sets one."""
    monkeypatch.setattr(sweep_module, "_load_average", lambda: None)


@pytest.fixture(scope="module")
def smoke_sweep(mnist_subset_dir, tmp_path_factory):
    """The smoke sweep on 2000 MNIST images, local backend, 2 workers, run once for the module."""
    out = tmp_path_factory.mktemp("smoke-sweep")
    started = time.perf_counter()
    outcome = run_sweep(**SMOKE, data_dir=mnist_subset_dir, out=out, workers=2, progress=False, log=lambda s: None)
    return outcome, time.perf_counter() - started


def test_smoke_sweep_runs_every_run_once_and_records_it(smoke_sweep, mnist_subset_dir):
    outcome, _ = smoke_sweep
    specs = plan_sweep(**SMOKE, data_dir=mnist_subset_dir)
    assert outcome.counts == {"completed": 4} and not outcome.failed and not outcome.skipped
    assert sorted(p.name for p in (outcome.out / "runs").iterdir()) == sorted(s.name for s in specs)
    record = json.loads((outcome.out / SWEEP_FILE).read_text())
    assert (record["experiment"], record["preset"], record["workers"]) == ("dnn-table", "smoke", 2)
    assert [r["name"] for r in record["runs"]] == [s.name for s in specs]
    for entry, spec in zip(record["runs"], specs):
        assert entry["status"] == "completed" == run_status(outcome.out / entry["dir"])
        assert entry["settings"]["seed"] == spec.config.seed == entry["seed"]
        saved = json.loads((outcome.out / entry["dir"] / "config.json").read_text())
        assert saved["seed"] == spec.config.seed and saved["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
        assert (saved["depth"], saved["width"], saved["epochs"]) == (4, 32, 1)
        result = json.loads((outcome.out / entry["dir"] / "result.json").read_text())
        assert entry["test_accuracy"] == result["test_accuracy"]
        # The grid reached the run: its EoC point is the cell's (relu_tau's realised sparsity at
        # width 32 may wander, as the theory's half-stable fixed point predicts, so it is not checked).
        assert saved["sparsity"] == entry["cell"]["sparsity"] == pytest.approx(saved["eoc"]["sparsity"], abs=1e-9)
        assert saved["activation"] == entry["cell"]["activation"]


def test_rerun_skips_finished_runs_untouched(smoke_sweep, mnist_subset_dir):
    outcome, first_seconds = smoke_sweep
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (outcome.out / "runs").glob("*/result.json")}
    started = time.perf_counter()
    again = run_sweep(**SMOKE, data_dir=mnist_subset_dir, out=outcome.out, workers=2, progress=False,
                      log=lambda s: None)
    assert time.perf_counter() - started < first_seconds
    assert sorted(again.skipped) == sorted(r["name"] for r in outcome.runs)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in stamps} == stamps
    assert [(r["name"], r["status"]) for r in again.runs] == [(r["name"], r["status"]) for r in outcome.runs]


def test_another_sweep_in_the_same_directory_is_refused(smoke_sweep, mnist_subset_dir):
    outcome, _ = smoke_sweep
    with pytest.raises(ValueError, match="holds another sweep"):
        run_sweep("cnn-table", "smoke", data_dir=mnist_subset_dir, out=outcome.out, progress=False,
                  log=lambda s: None)
    with pytest.raises(ValueError, match="holds another sweep"):  # other settings: other run names
        run_sweep(**SMOKE, data_dir=mnist_subset_dir, out=outcome.out, overrides={"epochs": 2}, progress=False,
                  log=lambda s: None)


def test_a_running_sweep_locks_its_directory(tmp_path, mnist_subset_dir):
    with (tmp_path / ".sweep.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another sweep is running"):
            run_sweep(**SMOKE, data_dir=mnist_subset_dir, out=tmp_path, progress=False, log=lambda s: None)


def test_failing_run_is_recorded_the_others_go_on_and_a_rerun_retries_it(tmp_path, mnist_subset_dir):
    specs = plan_sweep(**SMOKE, data_dir=mnist_subset_dir)
    bad = tmp_path / "runs" / specs[1].name
    bad.mkdir(parents=True)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")  # train(..., resume=True) raises on it
    outcome = run_sweep(**SMOKE, data_dir=mnist_subset_dir, out=tmp_path, workers=2, progress=False,
                        log=lambda s: None)
    assert outcome.counts == {"completed": 3, "error": 1}
    assert [r["name"] for r in outcome.failed] == [specs[1].name]
    assert "checkpoint" in outcome.failed[0]["error"]
    assert "Traceback" in (bad / "error.txt").read_text() and run_status(bad) == "error"
    record = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert [r["status"] for r in record["runs"]] == ["completed", "error", "completed", "completed"]

    (bad / "checkpoint.pt").unlink()
    again = run_sweep(**SMOKE, data_dir=mnist_subset_dir, out=tmp_path, workers=2, progress=False,
                      log=lambda s: None)
    assert again.counts == {"completed": 4} and len(again.skipped) == 3
    assert not (bad / "error.txt").exists() and run_status(bad) == "completed"


def test_dry_run_writes_nothing_and_estimates(tmp_path, mnist_subset_dir):
    lines = []
    outcome = run_sweep("dnn-table", "cpu", data_dir=mnist_subset_dir, out=tmp_path / "sweep", dry_run=True,
                        progress=False, log=lines.append)
    assert not (tmp_path / "sweep").exists()
    assert len(outcome.runs) == 82 and outcome.counts == {"pending": 82}
    exp = get_experiment("dnn-table")
    assert outcome.estimated_seconds == 82 * (8 * exp.preset("cpu").epoch_seconds + exp.preset("cpu").run_seconds)
    assert "82 runs, 0 finished, 82 to do; estimated 1.8 h" in lines[0]
    assert len(lines) == 83


@pytest.mark.parametrize("kwargs,message", [
    (dict(workers=0), "workers must be an integer >= 1"),
    (dict(cpus_per_run=0), "cpus_per_run must be an integer >= 1"),
    (dict(backend="slurm"), "backend must be one of local, ray"),
    (dict(gpus_per_run=1), "gpus_per_run applies to backend=ray only"),
    (dict(gpus_per_run=-1, backend="ray", dry_run=True), "gpus_per_run must be a number >= 0"),
    (dict(ray_address="auto"), "ray_address applies to backend=ray only"),
    (dict(data_dir=None), "data_dir is required: the directory with the mnist files"),
])
def test_bad_sweep_arguments(tmp_path, kwargs, message):
    kwargs = {"data_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_sweep(**SMOKE, out=tmp_path / "s", progress=False, log=lambda s: None, **kwargs)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("record, message", [
    ([1, 2], "not a sweep record .* got a JSON list"),
    ({"experiment": "dnn-table", "preset": "smoke", "runs": [1, 2]}, "runs must be a list of JSON objects"),
    ({"experiment": "dnn-table", "preset": "smoke", "runs": {"a": 1}}, "runs must be a list of JSON objects"),
])
def test_a_malformed_sweep_record_is_a_one_line_error_naming_it(tmp_path, capsys, record, message):
    (tmp_path / SWEEP_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"{tmp_path / SWEEP_FILE}: {message}"):
        run_sweep(**SMOKE, data_dir=tmp_path, out=tmp_path, dry_run=True, progress=False, log=lambda s: None)
    code = main(["sweep", "--experiment", "dnn-table", "--preset", "smoke", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path), "--dry-run", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / SWEEP_FILE) in err and "Traceback" not in err


def test_a_run_is_finished_for_the_report_as_for_the_sweep(tmp_path):
    from sparse_eoc.experiments.results import FINISHED
    from sparse_eoc.runs.files import FINISHED as RUN_FILES_FINISHED
    from sparse_eoc.train.run import FINISHED as TRAIN_FINISHED

    assert FINISHED is RUN_FILES_FINISHED is TRAIN_FINISHED  # one definition, in the run-files floor
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    eoc = {"activation": "crelu", "sparsity": 0.85, "slope": 0.7, "m": 1.17, "q_star": 1.0}
    (run / "config.json").write_text(json.dumps({"activation": "crelu", "eoc": eoc}))
    for status, finished in (("weird", False), ("completed", True), ("diverged", True)):
        (run / "result.json").write_text(json.dumps({"status": status, "test_accuracy": 0.5}))
        assert (run_status(run) == status) == finished and (run_status(run) == "started") != finished
        assert bool(load_runs(tmp_path)) == finished


@pytest.mark.parametrize("load, cores, workers, cpus, warns", [
    (1.0, 2, 1, 2, False),   # only this process: idle machine
    (1.4, 2, 1, 2, False),   # another process's 0.4 core: tolerated
    (2.0, 2, 1, 2, True),    # another process keeps a core busy: 2 threads on 1 free core
    (2.0, 2, 1, 1, False),   # one thread per run already
    (3.0, 8, 2, 4, True),    # 8 threads on 6 free cores
    (3.0, 8, 2, 3, False),   # 6 threads fit
    (None, 2, 1, 2, False),  # no load average on this OS
])
def test_busy_warning(load, cores, workers, cpus, warns):
    message = busy_warning(load, cores=cores, workers=workers, cpus_per_run=cpus)
    assert (message is not None) == warns
    if warns:
        assert "--cpus-per-run" in message and "busy" in message


def test_a_sweep_on_a_busy_machine_warns_once_with_the_default_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "available_cores", lambda: 4)
    monkeypatch.setattr(sweep_module, "_load_average", lambda: 3.0)  # 2 cores busy besides this process

    def lines(**kwargs) -> list[str]:
        got: list[str] = []
        run_sweep(**SMOKE, data_dir=tmp_path, out=tmp_path / "s", dry_run=True, progress=False, log=got.append,
                  **kwargs)
        return [line for line in got if "busy" in line]

    (warning,) = lines()  # default: 4 threads per run, 2 cores free
    assert "--cpus-per-run 2" in warning and "load average 3.0 on 4 cores" in warning
    assert lines(cpus_per_run=4) == []  # asked for: no warning
    assert lines(overrides={"threads": 4}) == []
    monkeypatch.setattr(sweep_module, "_load_average", lambda: 1.2)
    assert lines() == []


def test_ray_backend_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'sparse-eoc\[ray\]'"):
        run_sweep(**SMOKE, data_dir=tmp_path, out=tmp_path / "s", backend="ray", progress=False, log=lambda s: None)
    code = main(["sweep", "--experiment", "dnn-table", "--preset", "smoke", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "s"), "--backend", "ray"])
    assert code == 2 and "pip install 'sparse-eoc[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_experiments_lists_presets_counts_and_estimates(capsys):
    assert main(["experiments"]) == 0
    out = capsys.readouterr().out
    assert "dnn-table   cpu     mlp-mnist-cpu     41     2    82      1.8 h" in out
    assert "cnn-table   cpu     cnn-mnist-cpu      9     1     9" in out
    assert "dnn-table   paper   mlp-paper         41     5   205" in out


def test_cli_sweep_set_errors_and_dry_run(tmp_path, mnist_subset_dir, capsys):
    base = ["sweep", "--experiment", "dnn-table", "--preset", "smoke", "--data-dir", str(mnist_subset_dir),
            "--out", str(tmp_path / "s")]
    assert main([*base, "--set", "colour=red"]) == 2
    assert "unknown setting 'colour'; valid keys: activation" in capsys.readouterr().err
    assert main([*base, "--set", "activation=relu"]) == 2
    assert "cannot be overridden" in capsys.readouterr().err
    assert main([*base, "--set", "epochs=3", "--dry-run", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "4 runs, 0 finished, 4 to do" in err and "relu_tau-s0.7-seed0-" in err
    assert not (tmp_path / "s").exists()


def test_cli_sweep_reports_failures_with_exit_code_1(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = main(["sweep", "--experiment", "dnn-table", "--preset", "smoke", "--data-dir", str(empty),
                 "--out", str(tmp_path / "s"), "--workers", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "4 runs (4 error; 0 finished before)" in captured.out
    assert captured.err.count("failed: ") == 4 and "error.txt" in captured.err


def sweep_command(data_dir, out, *extra):
    return [sys.executable, "-m", "sparse_eoc", "sweep", "--experiment", "dnn-table", "--preset", "smoke",
            "--data-dir", str(data_dir), "--out", str(out), "--workers", "2", "--no-progress", *extra]


@pytest.mark.slow
def test_kill_9_mid_sweep_then_the_same_command_resumes(tmp_path, mnist_subset_dir):
    extra = ("--set", "epochs=12")  # ~2 s a run on 2000 images: time to catch one mid-way
    reference = tmp_path / "uninterrupted"
    subprocess.run(sweep_command(mnist_subset_dir, reference, *extra), check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(sweep_command(mnist_subset_dir, out, *extra), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while True:  # one run finished, another half-way (a checkpoint, no result yet)
            finished = list(out.glob("runs/*/result.json"))
            half = [p for p in out.glob("runs/*/checkpoint.pt") if not (p.parent / "result.json").exists()]
            if finished and half:
                break
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
        proc.wait()
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("runs/*/result.json")}
    assert 1 <= len(stamps) < 4

    subprocess.run(sweep_command(mnist_subset_dir, out, *extra), check=True, capture_output=True)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in stamps} == stamps  # not retrained
    resumed = [p.parent for p in out.glob("runs/*/log.txt") if "resuming" in p.read_text()]
    assert resumed, "no run continued from its checkpoint"
    record = json.loads((out / SWEEP_FILE).read_text())
    names = [r["name"] for r in record["runs"]]
    assert len(names) == len(set(names)) == 4 and {r["status"] for r in record["runs"]} == {"completed"}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(names)
    assert not list(out.glob("runs/*/checkpoint.pt"))
    assert_close(results(out), results(reference), tol=0.0)


def test_ray_backend_matches_the_local_backend(smoke_sweep, tmp_path, mnist_subset_dir):
    pytest.importorskip("ray")
    local, _ = smoke_sweep
    threads = local.runs[0]["settings"]["threads"]  # the same thread count per run
    ray = run_sweep(**SMOKE, data_dir=mnist_subset_dir, out=tmp_path, workers=2, cpus_per_run=threads,
                    backend="ray", progress=False, log=lambda s: None)
    assert ray.counts == local.counts == {"completed": 4}
    record = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert (record["backend"], record["cpus_per_run"]) == ("ray", threads)
    assert_close(results(tmp_path), results(local.out), tol=1e-6)


def write_tiny_mnist(directory: Path, n_train: int = 256, n_test: int = 64) -> Path:
    """Random 28x28 images and labels 0..9 in MNIST's IDX files (a fraction of a second an epoch)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    return directory


def processes() -> dict[int, tuple[int, int, str]]:
    """{pid: (parent pid, start time in clock ticks, state)} of every process, from /proc/<pid>/stat."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., starttime
            out[int(stat.parent.name)] = (int(fields[1]), int(fields[19]), fields[0])
    return out


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:150]
    except OSError:
        return f"{pid} (gone)"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_kill_9_of_the_main_process_alone_ends_its_workers(tmp_path):
    # kill -9 of the main process only (not its group, unlike the test above): its spawn
    # worker and the multiprocessing resource tracker are re-parented; they must not go on
    # training (a rerun would train the same runs at once) nor wait forever.
    data = write_tiny_mnist(tmp_path / "data")
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "sparse_eoc", "sweep", "--experiment", "dnn-table", "--preset", "smoke",
               "--data-dir", str(data), "--out", str(out), "--workers", "1", "--cpus-per-run", "1",
               "--no-progress", "--set", "epochs=1000"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size for p in out.glob("runs/*/metrics.jsonl")):  # a worker is training
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no run started training within 120 s"
            time.sleep(0.05)
        children = {pid: start for pid, (ppid, start, _) in processes().items() if ppid == proc.pid}
        assert children, "the sweep started no process"
        os.kill(proc.pid, signal.SIGKILL)  # the main process alone
        proc.wait()
        deadline = time.monotonic() + 10
        while True:
            table = processes()
            alive = {pid: table[pid] for pid, start in children.items()
                     if pid in table and table[pid][1] == start and table[pid][2] not in "ZX"}  # not a zombie
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not alive, f"still running 10 s after the main process died: {[command_line(p) for p in alive]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the sweep's process group
        proc.wait()
