"""The end-of-epoch checkpoint of a training run, for an exact resume.

After every completed epoch, :func:`sparse_eoc.train.train` writes ``RUN/checkpoint.pt``
(atomically: a temporary file in ``RUN``, then a rename). It holds everything the next
epoch depends on, so a run killed after epoch k and resumed from it computes, on the
same device and CPU thread count, bit for bit what the uninterrupted run computes::

    format          CHECKPOINT_FORMAT (an int)
    epoch           k, the number of completed epochs
    settings        the run's TrainConfig as a dict (data_dir resolved)
    model           the model's state_dict after epoch k (CPU tensors)
    optimizer       the optimiser's state_dict (momentum buffers, Adam moments and steps, lr)
    scheduler       the lr schedule's state_dict, or None (constant lr)
    shuffle_rng     the shuffling generator's state (a uint8 tensor)
    augment_rng     the augmentation generator's state, or None (no augmentation)
    torch_rng       the global torch CPU RNG state
    history         the k epochs' metrics, as metrics_to_dict dicts
    wall_seconds    the run's wall time up to this checkpoint, summed over resumed pieces
    init_layer_preact_var  the per-layer diagnostics at init, or None (log_layer_stats off)

Only tensors, numbers, strings, None, lists, tuples and dicts, so it loads with
``torch.load(path, weights_only=True)`` (no pickled code runs on load).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from sparse_eoc.jsonio import write_atomic
from sparse_eoc.runs.config import settings_differences  # noqa: F401  (moved; importable from here)
from sparse_eoc.runs.files import CHECKPOINT_FILE

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "CHECKPOINT_KEYS", "save_checkpoint", "load_checkpoint",
           "restore_training_state", "settings_differences"]

CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = ("format", "epoch", "settings", "model", "optimizer", "scheduler", "shuffle_rng", "augment_rng",
                   "torch_rng", "history", "wall_seconds", "init_layer_preact_var")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    epoch: int,
    settings: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    optimizer,
    scheduler,
    shuffle_generator: torch.Generator,
    augment_generator: torch.Generator | None,
    history: list[dict[str, Any]],
    wall_seconds: float,
    init_layer_preact_var: list[float] | None = None,
) -> None:
    """Write the state after ``epoch`` completed epochs to ``path``, atomically.

    Args:
        path: the checkpoint file (``RUN/checkpoint.pt``); a temporary file next to it
            is renamed over it, so a kill leaves either the old or the new checkpoint.
        epoch: the number of completed epochs, >= 1.
        settings: the run's settings (``TrainConfig.to_dict()``).
        model_state: the model's state_dict, CPU tensors (e.g. the copy kept as the
            last good weights).
        optimizer, scheduler: the live optimiser and lr schedule (None: constant lr).
        shuffle_generator, augment_generator: the run's generators (None: no augmentation).
        history: the completed epochs' metrics dicts, ``len(history) == epoch``.
        wall_seconds: the run's wall time so far.
        init_layer_preact_var: the at-init diagnostics, or None.
    """
    assert len(history) == epoch, (len(history), epoch)
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "settings": dict(settings),
        "model": dict(model_state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "shuffle_rng": shuffle_generator.get_state(),
        "augment_rng": augment_generator.get_state() if augment_generator is not None else None,
        "torch_rng": torch.get_rng_state(),
        "history": list(history),
        "wall_seconds": float(wall_seconds),
        "init_layer_preact_var": init_layer_preact_var,
    }
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        ValueError: the file is not a readable checkpoint (truncated, corrupt, another
            format or missing entries); the message names the file.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, ...
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); "
                         "delete it to restart the run from scratch") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a sparse-eoc checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    problem = _checkpoint_problem(state)
    if problem:
        raise ValueError(f"{path}: not a consistent checkpoint ({problem}); delete it to restart the run from scratch")
    return state


def _checkpoint_problem(state: Mapping[str, Any]) -> str | None:
    """What is wrong with a checkpoint's entries' types, or None (the tensors' shapes are
    checked when they are loaded into the live objects)."""
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return f"epoch must be an integer >= 1, found {epoch!r}"
    history = state["history"]
    if not isinstance(history, (list, tuple)) or len(history) != epoch or not all(isinstance(h, dict) for h in history):
        return f"history must be {epoch} dicts of epoch metrics"
    if not isinstance(state["settings"], dict):
        return "settings must be a dict"
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        return "model must be a dict of tensors"
    if not isinstance(state["optimizer"], dict):
        return "optimizer must be a state dict"
    for key in ("shuffle_rng", "torch_rng"):
        if not (isinstance(state[key], torch.Tensor) and state[key].dtype == torch.uint8):
            return f"{key} must be a uint8 tensor (a generator state)"
    wall = state["wall_seconds"]
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not math.isfinite(wall) or wall < 0:
        return f"wall_seconds must be a number >= 0, found {wall!r}"
    return None


def restore_training_state(
    state: Mapping[str, Any],
    *,
    model,
    optimizer,
    scheduler,
    shuffle_generator: torch.Generator,
    augment_generator: torch.Generator | None,
) -> None:
    """Load a checkpoint's model, optimiser, schedule and RNG states into the live objects, in place.

    The objects must be built as for a fresh run (same settings): the model's
    parameters on their device, the optimiser over them, the schedule (if any) over
    the optimiser; the optimiser state is moved to the parameters' device.

    Raises:
        ValueError: the checkpoint has a schedule or augmentation generator state and
            the run has none, or the other way round.
    """
    for name, live in (("scheduler", scheduler), ("augment_rng", augment_generator)):
        if (state[name] is None) != (live is None):
            raise ValueError(f"checkpoint {name} is {'absent' if state[name] is None else 'present'} "
                             f"but the run {'has' if live is not None else 'has no'} {name}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    shuffle_generator.set_state(state["shuffle_rng"])
    if augment_generator is not None:
        augment_generator.set_state(state["augment_rng"])
    torch.set_rng_state(state["torch_rng"])
