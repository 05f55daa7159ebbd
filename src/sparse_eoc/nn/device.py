"""Choosing the torch device from a user's option."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str) -> torch.device:
    """The torch device for a ``--device`` option.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (cuda when available, else cpu).

    Raises:
        ValueError: an unknown device string, or CUDA requested where it is not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got device={device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use --device cpu")
    return dev
