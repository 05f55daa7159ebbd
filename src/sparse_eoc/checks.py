"""Argument checks shared by every layer (no torch): bad input fails at the boundary, by name."""

from __future__ import annotations

import operator
import os

__all__ = ["check_int", "physical_memory_bytes"]


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer (not a bool) >= ``minimum``.

    Raises:
        ValueError: naming the argument, its value and the valid range.
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}") from None
    if result < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return result


def physical_memory_bytes() -> int | None:
    """The machine's physical memory in bytes (None where the OS does not say): what network
    sizes are checked against before anything is built (less may still not fit beside other
    processes, so only what cannot fit at all is refused)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf
        return None
