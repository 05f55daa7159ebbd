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
from pathlib import Path
from typing import Any

__all__ = ["to_json_safe", "write_text_atomic", "write_json", "json_line", "append_jsonl"]


def to_json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively in dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
