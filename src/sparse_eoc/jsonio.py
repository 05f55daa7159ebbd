"""Strict JSON and atomic writes for every results file (run, sweep, report); no torch.

Strict JSON has no NaN or Infinity: non-finite floats are written as null. A file is
written atomically (a temporary file next to it, then a rename), so a kill leaves
either the old or the new file, never half of one. ``metrics.jsonl`` lines are
appended and synced one at a time instead.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["to_json_safe", "write_atomic", "write_text_atomic", "write_json", "json_line", "append_jsonl"]


def to_json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively in dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    return value


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Have ``write(tmp)`` write a temporary file next to ``path``, then rename it over ``path``.

    A kill leaves the old file or the new one, never half of one. If ``write`` fails (the
    disk is full, say) the temporary file is removed and ``path`` is left as it was.

    Raises:
        OSError: the write or the rename failed; the message names ``path`` and the cause
            (writers that report a full disk as another exception type, such as torch's
            and safetensors', are turned into OSError too).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise OSError(err.errno, f"{path}: cannot write ({err.strerror or err})") from err
        if isinstance(err, Exception):  # torch.save: RuntimeError; safetensors: SafetensorError
            raise OSError(f"{path}: cannot write ({type(err).__name__}: {err})") from err
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict, indented JSON, atomically."""
    write_text_atomic(path, json.dumps(to_json_safe(obj), indent=2, allow_nan=False) + "\n")


def json_line(obj: Any) -> str:
    """``obj`` as one strict JSON line, newline included (a ``.jsonl`` record)."""
    return json.dumps(to_json_safe(obj), allow_nan=False) + "\n"


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append ``obj`` as one line to ``path`` and sync it to disk."""
    with Path(path).open("a") as fh:
        fh.write(json_line(obj))
        fh.flush()
        os.fsync(fh.fileno())
