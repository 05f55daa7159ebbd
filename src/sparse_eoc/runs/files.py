"""The run-directory format, in one place: file names, readers, status and the lock (no torch).

A run directory ``RUN`` holds::

    config.json        the settings (TrainConfig) at top level and what they resolved to:
                       ``eoc`` (the EoC point and its fixed points), ``network`` (a
                       NetworkSpec), ``data`` (the data statistics) and the versions
    metrics.jsonl      one JSON object per completed epoch
    result.json        written last: status (completed | diverged) and the final metrics;
                       a run is *finished* when result.json has one of those statuses
    model.safetensors  the trained weights (for a diverged run those of its last completed
                       epoch; absent if none completed)
    checkpoint.pt      while unfinished: the state after the last completed epoch
    .lock              held (``flock``) by the process training in RUN, so that no two
                       processes ever train one run at once; the lock dies with its
                       process, ``kill -9`` included
    log.txt, error.txt a sweep's messages for the run, and the traceback of its last
                       failed attempt

Every JSON file is strict JSON and written atomically (:mod:`sparse_eoc.jsonio`).
:mod:`sparse_eoc.train.run` writes these files; ``experiments`` (sweeps, reports),
``infer`` and the CLI read them through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "CONFIG_FILE", "METRICS_FILE", "RESULT_FILE", "MODEL_FILE", "CHECKPOINT_FILE", "LOCK_FILE", "LOG_FILE",
    "ERROR_FILE", "FINISHED", "RunLockedError", "read_json", "read_metrics", "read_result", "run_status",
    "run_lock", "directory_lock", "unfinished_run_files",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"
LOG_FILE = "log.txt"
ERROR_FILE = "error.txt"
FINISHED = ("completed", "diverged")  # result.json statuses of a finished run


class RunLockedError(ValueError):
    """Another process holds the run directory's lock (it is training there)."""


def read_json(path: str | os.PathLike, *, what: str = "a JSON object") -> dict[str, Any]:
    """A JSON file that must hold an object.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON, or not an object; the message names the file.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected {what}, found a JSON {type(value).__name__}")
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (empty if absent), one dict per completed epoch.

    Raises:
        ValueError: a line that is not a JSON object; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}, line {i}: not valid JSON ({err})") from err
        if not isinstance(value, dict):
            raise ValueError(f"{path}, line {i}: not a JSON object, got {type(value).__name__}")
        lines.append(value)
    return lines


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``RUN/result.json`` if the run is finished (status completed or diverged), else None.

    An unreadable ``result.json`` counts as unfinished (a run is finished only when it says so).
    """
    try:
        result = read_json(Path(run_dir) / RESULT_FILE)
    except (OSError, ValueError):
        return None
    return result if result.get("status") in FINISHED else None


def run_status(run_dir: str | os.PathLike) -> str:
    """What a run directory says about its run: ``completed`` or ``diverged`` (finished),
    ``error`` (its last attempt raised: ``error.txt``), ``started`` (``config.json`` but no
    finished result: interrupted or running) or ``pending`` (nothing yet)."""
    run_dir = Path(run_dir)
    result = read_result(run_dir)
    if result is not None:
        return result["status"]
    if (run_dir / ERROR_FILE).is_file():
        return "error"
    return "started" if (run_dir / CONFIG_FILE).is_file() else "pending"


def unfinished_run_files(run_dir: str | os.PathLike) -> list[str]:
    """The run files present in ``run_dir`` (config, metrics, checkpoint, weights, result),
    empty when the directory holds none (absent, empty, or only unrelated files)."""
    run_dir = Path(run_dir)
    names = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE, RESULT_FILE)
    return [name for name in names if (run_dir / name).exists()]


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` for the duration, or refuse at once.

    The lock is released when the block ends or the process dies (``kill -9`` and the OOM
    killer included), so a stale lock never blocks a rerun. The file holds the holder's pid.

    Raises:
        RunLockedError: another process holds the lock; the message is ``busy`` with
            ``{pid}`` filled in.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    with Path(path).open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise RunLockedError(busy.format(pid=fh.read().strip() or "unknown")) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fh.truncate(0)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``RUN/.lock`` (created with ``RUN``) while a process trains in ``RUN``, or refuse at once.

    A directory this call created is removed again if the block leaves nothing in it but the
    lock (a new run refused or failed before it wrote a file).

    Raises:
        RunLockedError: another process holds the lock (the message names the directory and its pid).
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with directory_lock(run_dir / LOCK_FILE, f"{run_dir}: another process (pid {{pid}}) is training in this "
                                                 "run directory; wait for it to finish or stop it first"):
            yield
    finally:
        if created and [p.name for p in run_dir.iterdir()] in ([LOCK_FILE], []):
            with contextlib.suppress(OSError):
                (run_dir / LOCK_FILE).unlink(missing_ok=True)
                run_dir.rmdir()
