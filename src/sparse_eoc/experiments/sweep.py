"""Sweeps: every run of a named experiment, in parallel worker processes or as Ray tasks, resumable.

A sweep directory ``DIR`` holds::

    sweep.json          the experiment, preset, overrides and the list of runs with their
                        settings and last known status (written atomically after each run)
    runs/<name>/        one run directory per run (see sparse_eoc.runs.files), plus
                        log.txt (the run's messages) and error.txt (the traceback of a run
                        that raised; removed once the run finishes)

A run's ``<name>`` is ``<activation>-s<sparsity>[-v<slope>][-m<m>][-q<q*>][-<setting><value>...][-<setting>x<factor>...]-seed<i>-<hash of its settings>``
(see :mod:`sparse_eoc.experiments.registry`), and its seed is derived from its settings,
so running the same command again, after a crash or ``kill -9``, resumes the sweep:
finished runs (``result.json`` with status completed or diverged) are skipped untouched,
half-finished ones continue from their last epoch's checkpoint
(``train(..., resume=True)``), failed ones are tried again.

Backends, one function (:func:`run_one`) for both:

- ``local``: ``workers`` processes (``ProcessPoolExecutor``, spawn), each run with
  ``cpus_per_run`` torch threads (default ``max(1, cores // workers)``; a sweep started
  while other processes keep the machine busy says so, as that default then oversubscribes
  the cores). A worker exits within about a second of the sweep's main process dying,
  even of ``kill -9`` on that process alone (:func:`_die_with_parent`), so that a rerun
  never trains a run that an orphaned worker still trains.
- ``ray``: each run a Ray task with ``num_cpus=cpus_per_run, num_gpus=gpus_per_run``; a
  local Ray with ``workers x cpus_per_run`` CPUs (at most the machine's), or the
  cluster at ``ray_address``. ``DIR`` and the data must then be on a filesystem every
  node sees at the same path. Ray is optional: ``pip install 'sparse-eoc[ray]'``.

Example::

    from sparse_eoc.experiments import run_sweep
    outcome = run_sweep("dnn-table", "smoke", data_dir="../shared/data/mnist", out="sweeps/smoke", workers=2)
    outcome.counts   # {'completed': 4}
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sparse_eoc.experiments.registry import RunSpec, estimate_seconds, get_experiment
from sparse_eoc.jsonio import write_json, write_text_atomic
from sparse_eoc.runs.files import ERROR_FILE, FINISHED, LOG_FILE, directory_lock, read_result, run_status

__all__ = ["BACKENDS", "SWEEP_FILE", "ERROR_FILE", "SweepOutcome", "run_one", "run_status", "plan_sweep",
           "run_sweep", "available_cores", "busy_warning", "format_duration"]

BACKENDS = ("local", "ray")
SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
RAY_INSTALL_HINT = "pip install 'sparse-eoc[ray]'"
SUMMARY_KEYS = ("test_accuracy", "epochs_completed", "wall_seconds")  # of result.json, kept in sweep.json
#: How often (seconds) a worker checks that the sweep's main process is still its parent.
PARENT_POLL_SECONDS = 0.5
#: The machine counts as busy when other processes keep more than this many cores running.
BUSY_CORES = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def format_duration(seconds: float | None) -> str:
    """``4510`` -> ``'1.3 h'``; ``95`` -> ``'1.6 min'``; None -> ``'n/a'``."""
    if seconds is None:
        return "n/a"
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def busy_warning(load: float | None, *, cores: int, workers: int, cpus_per_run: int) -> str | None:
    """The warning for a sweep about to start on a busy machine with the default threads, or None.

    The default ``cpus_per_run = max(1, cores // workers)`` fills every core. Torch's threads
    of a run wait for each other at each operation, so a run whose threads share a core
    with another process runs at the pace of its slowest thread: minutes instead of seconds.

    Args:
        load: the 1-minute load average (``os.getloadavg()[0]``), or None where there is none.
            This process counts as one of it, so ``load - 1`` is the other processes' load.
        cores: the cores this process may use, >= 1.
        workers: runs at once, >= 1.
        cpus_per_run: the (default) torch threads of each run, >= 1.

    Returns:
        A one-line message naming ``--cpus-per-run`` when the other processes' load exceeds
        :data:`BUSY_CORES` and the cores left to the sweep are fewer than
        ``workers * cpus_per_run`` threads; None otherwise (or ``cpus_per_run`` is already 1).
    """
    if load is None or cpus_per_run <= 1:
        return None
    others = max(0.0, load - 1.0)  # this process is running too
    free = cores - others
    if others <= BUSY_CORES or workers * cpus_per_run <= free:
        return None
    suggested = max(1, int(free // workers))
    return (f"warning: the machine is busy (load average {load:.1f} on {cores} cores, about {others:.1f} of it "
            f"from other processes); the default {cpus_per_run} thread(s) per run (cores // workers) oversubscribe "
            f"it and a run then crawls: pass --cpus-per-run {suggested} (cpus_per_run={suggested}) unless "
            "the other load ends soon")


def _load_average() -> float | None:
    """The 1-minute load average of the machine, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def _die_with_parent(parent_pid: int) -> None:
    """A worker's initializer: end this process when the sweep's main process ``parent_pid`` dies.

    Without it, ``kill -9`` of the main process alone (or the OOM killer) leaves its pool
    workers running, re-parented to init: they go on training the runs they hold while a
    rerun trains the same runs. Two mechanisms, as neither covers every case alone:

    - Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so that the kernel kills this process
      when the thread that started it ends (the main thread: the pool starts its spawn
      workers from ``submit``).
    - Everywhere: a daemon thread that checks every :data:`PARENT_POLL_SECONDS` that
      ``os.getppid()`` is still ``parent_pid`` and calls ``os._exit`` when it is not. It
      also covers a parent that died before the ``prctl`` was armed.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc or no prctl: the thread below still watches
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)  # orphaned: exit now (a half-written checkpoint.pt.tmp is never renamed)
            time.sleep(PARENT_POLL_SECONDS)

    if os.getppid() != parent_pid:  # the parent died before this process got here
        os._exit(1)
    threading.Thread(target=watch, name="sparse-eoc-parent-watch", daemon=True).start()


def run_one(settings: Mapping[str, Any], run_dir: str) -> dict[str, Any]:
    """Train, resume or just report one run in ``run_dir``; never raises for a failed run.

    Calls ``train(TrainConfig.from_dict(settings), run_dir, resume=True)`` with the run's
    messages appended to ``run_dir/log.txt``. An exception is written, with its traceback,
    to ``run_dir/error.txt`` and returned as ``{"status": "error", "error": "<type>: <message>"}``;
    a success removes any earlier ``error.txt`` and returns ``{"status", "test_accuracy",
    "epochs_completed", "wall_seconds"}``. Top-level, so worker processes and Ray can pickle it.
    """
    from sparse_eoc.train import TrainConfig, train  # the worker imports torch here

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        with (out / LOG_FILE).open("a") as fh:
            fh.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}\n")

    try:
        config = TrainConfig.from_dict(settings)
        log(f"sweep: running in process {os.getpid()} with {config.threads} thread(s)")
        result = train(config, out, progress=False, log=log, resume=True)
    except Exception as err:  # recorded, not raised: the sweep goes on with the other runs
        log(f"error: {type(err).__name__}: {err}")
        write_text_atomic(out / ERROR_FILE, traceback.format_exc())
        return {"status": "error", "error": f"{type(err).__name__}: {err}"}
    (out / ERROR_FILE).unlink(missing_ok=True)
    log(f"sweep: {result['status']} after {result.get('epochs_completed')} epoch(s)")
    return {k: result.get(k) for k in ("status", *SUMMARY_KEYS)}


@dataclass
class SweepOutcome:
    """What a sweep did: its directory, one entry per run (as in ``sweep.json``), the estimate."""

    out: Path
    runs: list[dict[str, Any]]
    estimated_seconds: float | None = None  # of the runs that were still to do
    wall_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # names of runs finished before this sweep started

    @property
    def counts(self) -> dict[str, int]:
        """Runs per status, e.g. ``{"completed": 80, "diverged": 2}``."""
        out: dict[str, int] = {}
        for run in self.runs:
            out[run["status"]] = out.get(run["status"], 0) + 1
        return out

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The runs whose last attempt raised (``error.txt`` in their directory)."""
        return [r for r in self.runs if r["status"] == "error"]


def plan_sweep(experiment: str, preset: str, *, data_dir: str | os.PathLike | None,
               overrides: Mapping[str, Any] | None = None, cpus_per_run: int = 1) -> list[RunSpec]:
    """The runs of ``experiment`` at ``preset``; ``threads`` is ``cpus_per_run`` unless overridden.

    Raises:
        ValueError: as :meth:`Experiment.runs`.
    """
    overrides = {"threads": cpus_per_run, **(overrides or {})}
    data = None if data_dir is None else str(Path(data_dir).resolve())
    return get_experiment(experiment).runs(preset, overrides=overrides, data_dir=data)


def _sweep_lock(out: Path):
    """One sweep at a time per directory (the lock dies with its process, kill -9 too)."""
    return directory_lock(out / ".sweep.lock", f"out={str(out)!r}: another sweep is running in this directory "
                                               "(pid {pid})")


def _check_same_sweep(path: Path, experiment: str, preset: str, names: Sequence[str]) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the sweep record ({err})") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a sweep record (a JSON object with experiment, preset and runs), "
                         f"got a JSON {type(saved).__name__}; move it away or write to another --out")
    runs = saved.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ValueError(f"{path}: runs must be a list of JSON objects (one per run), got {runs!r:.80}; "
                         "move the file away or write to another --out")
    saved_names = [r.get("name") for r in runs]
    if (saved.get("experiment"), saved.get("preset")) != (experiment, preset) or saved_names != list(names):
        raise ValueError(
            f"{path.parent} holds another sweep (experiment {saved.get('experiment')}, preset "
            f"{saved.get('preset')}, {len(saved_names)} runs, overrides {saved.get('overrides')}); rerun it with "
            f"the same --experiment, --preset and --set, or write to another --out"
        )


def _entry(spec: RunSpec, status: str, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    entry = {"name": spec.name, "dir": f"{RUNS_DIR}/{spec.name}", "cell": dict(spec.cell),
             "seed_index": spec.seed_index, "seed": spec.config.seed, "status": status}
    if summary:
        entry.update({k: summary.get(k) for k in (*SUMMARY_KEYS, "error") if k in summary})
    entry["settings"] = spec.config.to_dict()
    return entry


def run_sweep(
    experiment: str,
    preset: str,
    *,
    data_dir: str | os.PathLike | None,
    out: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    workers: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    cpus_per_run: int | None = None,
    gpus_per_run: float = 0,
    dry_run: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run (or resume) every run of a named experiment; see the module docstring.

    Args:
        experiment: a name in ``EXPERIMENTS`` (``dnn-table``, ``cnn-table``).
        preset: one of the experiment's presets (``paper``, ``cpu``, ``smoke``).
        data_dir: the dataset directory (MNIST IDX files, or CIFAR-10 batches).
        out: the sweep directory ``DIR`` (created).
        overrides: TrainConfig settings replacing the preset's (see ``parse_overrides``).
        workers: runs at once, >= 1 (local worker processes; a local Ray's CPUs are
            ``workers x cpus_per_run``; ignored on a Ray cluster).
        backend: ``local`` or ``ray``.
        ray_address: the Ray cluster to join (``ray`` only); None starts a local Ray.
        cpus_per_run: torch threads of each run (and its Ray ``num_cpus``), >= 1;
            default ``max(1, cores // workers)``; with that default, a machine kept busy by
            other processes gets one warning to ``log`` (:func:`busy_warning`). ``--set
            threads=T`` overrides the threads.
        gpus_per_run: Ray ``num_gpus`` of each run, >= 0 (``ray`` only; pair it with
            ``overrides={"device": "cuda"}``).
        dry_run: only plan: log the runs, their status on disk and the estimate; write nothing.
        progress: a tqdm bar over runs.
        log: where one-line messages go.

    Returns:
        A :class:`SweepOutcome`; failed runs are in ``outcome.failed``, not raised.

    Raises:
        ValueError: an unknown experiment, preset, backend or setting, out-of-range
            ``workers``/``cpus_per_run``/``gpus_per_run``, ``DIR`` holding another sweep
            or another sweep running in it.
        ImportError: ``backend="ray"`` without Ray installed (the message says how to install it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got backend={backend!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got workers={workers!r}")
    default_threads = cpus_per_run is None and "threads" not in (overrides or {})
    if cpus_per_run is None:
        cpus_per_run = max(1, available_cores() // workers)
    if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
        raise ValueError(f"cpus_per_run must be an integer >= 1, got cpus_per_run={cpus_per_run!r}")
    if not gpus_per_run >= 0:
        raise ValueError(f"gpus_per_run must be a number >= 0, got gpus_per_run={gpus_per_run!r}")
    if gpus_per_run and backend != "ray":
        raise ValueError("gpus_per_run applies to backend=ray only (the local backend: --set device=cuda)")
    if ray_address and backend != "ray":
        raise ValueError("ray_address applies to backend=ray only")
    if backend == "ray" and not dry_run:
        _import_ray()  # fail before any work
    specs = plan_sweep(experiment, preset, data_dir=data_dir, overrides=overrides, cpus_per_run=cpus_per_run)
    if not dry_run and specs and specs[0].config.data_dir is None:
        raise ValueError(f"data_dir is required: the directory with the {specs[0].config.dataset} files")
    exp = get_experiment(experiment)
    out = Path(out).resolve()
    sweep_path = out / SWEEP_FILE
    if sweep_path.is_file():
        _check_same_sweep(sweep_path, experiment, preset, [s.name for s in specs])
    runs_dir = out / RUNS_DIR
    status = {s.name: run_status(runs_dir / s.name) for s in specs}
    todo = [s for s in specs if status[s.name] not in FINISHED]
    skipped = [s.name for s in specs if status[s.name] in FINISHED]
    estimate = estimate_seconds(todo, exp.preset(preset))
    log(f"{experiment}/{preset}: {len(specs)} runs, {len(specs) - len(todo)} finished, {len(todo)} to do; "
        f"estimated {format_duration(estimate)} on a 2-core CPU (an upper bound: diverging runs stop early)")
    if default_threads and todo and not ray_address:  # once, at the start: the runs share this machine's cores
        busy = busy_warning(_load_average(), cores=available_cores(), workers=workers, cpus_per_run=cpus_per_run)
        if busy:
            log(busy)
    if dry_run:
        for s in specs:
            log(f"  {status[s.name]:<10} {s.name}")
        entries = [_entry(s, status[s.name]) for s in specs]
        return SweepOutcome(out, entries, estimate, skipped=skipped)

    out.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out):
        entries = {s.name: _entry(s, status[s.name], read_result(runs_dir / s.name)) for s in specs}
        record = {
            "experiment": experiment, "preset": preset, "description": exp.description,
            "note": exp.preset(preset).note, "overrides": dict(overrides or {}),
            "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
            "backend": backend, "workers": workers, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run,
            "ray_address": ray_address, "estimated_seconds": estimate,
        }

        def save() -> None:
            write_json(sweep_path, {**record, "updated": datetime.datetime.now().isoformat(timespec="seconds"),
                                    "runs": [entries[s.name] for s in specs]})

        save()
        started = time.perf_counter()
        bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"{experiment}/{preset}", unit="run",
                   disable=not progress)
        n_failed = 0

        def done(spec: RunSpec, summary: Mapping[str, Any]) -> None:
            nonlocal n_failed
            entries[spec.name] = _entry(spec, summary["status"], summary)
            save()
            n_failed += summary["status"] == "error"
            bar.update(1)
            bar.set_postfix_str(f"last {spec.name}: {summary['status']}" + (f", failed {n_failed}" if n_failed else ""))

        try:
            if todo and backend == "local":
                _run_local(todo, runs_dir, workers=workers, done=done)
            elif todo:
                _run_ray(todo, runs_dir, workers=workers, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                         address=ray_address, done=done)
        finally:
            bar.close()
    return SweepOutcome(out, [entries[s.name] for s in specs], estimate, time.perf_counter() - started,
                        skipped=skipped)


def _run_local(todo: Sequence[RunSpec], runs_dir: Path, *, workers: int,
               done: Callable[[RunSpec, Mapping[str, Any]], None]) -> None:
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_one, s.config.to_dict(), str(runs_dir / s.name)): s for s in todo}
        try:
            for future in as_completed(futures):
                spec = futures[future]
                try:
                    summary = future.result()
                except Exception as err:  # the worker process died (killed, out of memory)
                    summary = _record_lost(runs_dir / spec.name, err)
                done(spec, summary)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _record_lost(run_dir: Path, err: BaseException) -> dict[str, Any]:
    """An error summary for a run whose worker died before it could record anything itself."""
    message = f"{type(err).__name__}: {err}"
    with contextlib.suppress(OSError):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / ERROR_FILE, f"the run's worker failed: {message}\n")
    return {"status": "error", "error": message}


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"backend=ray needs Ray, an optional extra: {RAY_INSTALL_HINT}") from err
    return ray


def _run_ray(todo: Sequence[RunSpec], runs_dir: Path, *, workers: int, cpus_per_run: int, gpus_per_run: float,
             address: str | None, done: Callable[[RunSpec, Mapping[str, Any]], None]) -> None:
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here and address:
        ray.init(address=address, log_to_driver=False)
    elif started_here:
        ray.init(num_cpus=max(cpus_per_run, min(available_cores(), workers * cpus_per_run)),
                 include_dashboard=False, log_to_driver=False)
    refs: dict = {}
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(run_one)
        refs = {task.remote(s.config.to_dict(), str(runs_dir / s.name)): s for s in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            spec = refs[ready[0]]
            try:
                summary = ray.get(ready[0])
            except ray.exceptions.RayError as err:  # the task's worker died, or the node was lost
                summary = _record_lost(runs_dir / spec.name, err)
            done(spec, summary)
    except BaseException:
        for ref in refs:  # stop what still runs (a finished task ignores this)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
