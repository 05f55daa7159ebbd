"""Argument checks shared by every layer (no torch): bad input fails at the boundary, by name."""

from __future__ import annotations

import operator

__all__ = ["check_int"]


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
