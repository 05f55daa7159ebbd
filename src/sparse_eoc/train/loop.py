"""The training loop: epochs of minibatch steps, evaluation, sparsity metering, divergence.

Read top to bottom: :func:`fit` runs epochs; each epoch is :func:`train_epoch`
(one pass over shuffled training data, metering the hidden layers' zeros on the
same forward passes) followed by :func:`evaluate` on the held-out splits.
A non-finite loss stops training at once and is reported, not raised.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparse_eoc.nn import SparsityMeter

__all__ = ["EpochMetrics", "Divergence", "LR_SCHEDULES", "evaluate", "train_epoch", "fit", "make_optimizer",
           "make_scheduler"]


@dataclass
class EpochMetrics:
    """What one epoch records (one line of ``metrics.jsonl``).

    Sparsities are fractions of exact zeros over all hidden-layer outputs and all
    examples of the split; ``train_sparsity`` is metered on the training forward
    passes of the epoch itself (no extra pass), so it averages over the epoch's
    weight updates. ``test_layer_sparsity`` has one entry per hidden layer.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    train_sparsity: float
    test_sparsity: float
    test_loss: float
    test_layer_sparsity: list[float]
    val_accuracy: float | None = None
    val_sparsity: float | None = None
    seconds: float = 0.0


@dataclass
class Divergence:
    """Where training stopped on a non-finite loss."""

    epoch: int  # 1-based epoch in which it happened
    step: int  # 1-based step within that epoch
    loss: float  # the offending loss (nan or inf)
    recent_losses: list[float] = field(default_factory=list)  # the finite losses before it
    partial_train_loss: float | None = None  # mean finite loss of that epoch's steps before it
    partial_train_sparsity: list[float] | None = None  # per-layer zeros of that epoch's forwards


def make_optimizer(name: str, params, *, lr: float, momentum: float, weight_decay: float):
    """SGD (with momentum) or Adam over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")


LR_SCHEDULES = ("none", "cosine")


def make_scheduler(name: str, optimizer, *, total_steps: int):
    """None for a constant lr, or a per-step cosine decay to 0 over ``total_steps``."""
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got lr_schedule={name!r}")


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000, meter: SparsityMeter | None = None):
    """Accuracy and mean cross-entropy of ``model`` on (x, y), metering sparsity if given.

    Args:
        x: inputs, (N, in_features), on the model's device.  y: labels, (N,) int64.
        meter: reset and filled with this split's zero counts.

    Returns:
        (accuracy, loss); (nan, nan) for an empty split.
    """
    if len(x) == 0:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    with _metering(model, meter):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = model(xb)  # (B, classes)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
    model.train(was_training)
    return correct.item() / len(x), loss_sum.item() / len(x)


def train_epoch(
    model,
    optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    meter: SparsityMeter | None = None,
    progress: Callable | None = None,
    epoch: int = 1,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[float, float, Divergence | None]:
    """One pass over shuffled (x, y) in minibatches; cross-entropy, one optimiser step each.

    Args:
        x: (N, in_features) or (N, C, H, W), y: (N,), on the model's device.
        generator: a CPU generator drawing the shuffling permutation (explicit randomness).
        meter: reset, then filled with the zeros of the training forward passes.
        progress: a callable wrapping the step range (e.g. a tqdm factory) or None.
        augment: applied to each training batch of inputs (e.g. random crop and flip).
        scheduler: a learning-rate schedule stepped after every optimiser step.

    Returns:
        (mean train loss, train accuracy, Divergence or None). On divergence, the
        loss and accuracy are over the steps before it.
    """
    model.train()
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    steps = range(0, len(x), batch_size)
    bar = progress(steps) if progress is not None else steps
    losses: list[float] = []
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    seen = 0
    with _metering(model, meter):
        for step, start in enumerate(bar, 1):
            idx = perm[start : start + batch_size]
            xb, yb = x[idx], y[idx]  # (B, in_features) or (B, C, H, W); (B,)
            if augment is not None:
                xb = augment(xb)
            logits = model(xb)  # (B, classes)
            loss = F.cross_entropy(logits, yb)
            value = loss.item()  # one sync per step: the divergence check and the bar need it
            if not math.isfinite(value):
                div = Divergence(epoch, step, value, losses[-20:], partial_train_loss=_mean(losses))
                return _mean(losses), correct.item() / max(seen, 1), div
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(value)
            correct += (logits.detach().argmax(dim=1) == yb).sum()
            seen += len(idx)
            if progress is not None and step % 20 == 0:
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    return _mean(losses), correct.item() / max(seen, 1), None


def _metering(model, meter: SparsityMeter | None):
    """Reset ``meter`` and attach it to ``model`` for the duration (or do nothing)."""
    if meter is None:
        return contextlib.nullcontext()
    meter.reset()
    return meter.attach(model)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def fit(
    model,
    optimizer,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    show_progress: bool = True,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lr_schedule: str = "none",
) -> tuple[list[EpochMetrics], Divergence | None]:
    """Train for ``epochs`` epochs; evaluate ``test`` (and ``val`` if present) after each.

    Args:
        splits: ``{"train": (x, y), "test": (x, y), "val": (x, y)}`` on the model's device.
        on_epoch: called with each epoch's metrics as soon as they exist (the run
            directory appends them to ``metrics.jsonl``).
        lr_schedule: ``none`` (constant) or ``cosine`` (per-step cosine decay from the
            optimiser's lr to 0 over all ``epochs``).

    Returns:
        (history, divergence): the metrics of every completed epoch, and where
        training diverged (None if it did not).
    """
    meter = SparsityMeter()
    history: list[EpochMetrics] = []
    x_train, y_train = splits["train"]
    scheduler = make_scheduler(lr_schedule, optimizer, total_steps=epochs * math.ceil(len(x_train) / batch_size))
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        progress = None
        if show_progress:
            progress = lambda it: tqdm(it, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False)  # noqa: E731
        loss, acc, divergence = train_epoch(
            model, optimizer, x_train, y_train, batch_size=batch_size,
            generator=generator, meter=meter, progress=progress, epoch=epoch, augment=augment,
            scheduler=scheduler,
        )
        if divergence is not None:
            divergence.partial_train_sparsity = meter.per_layer()  # includes the diverging forward
            return history, divergence
        train_sparsity = meter.overall()
        val_acc = val_sparsity = None
        if "val" in splits and len(splits["val"][0]):
            val_acc, _ = evaluate(model, *splits["val"], meter=meter)
            val_sparsity = meter.overall()
        test_acc, test_loss = evaluate(model, *splits["test"], meter=meter)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss,
            train_accuracy=acc,
            test_accuracy=test_acc,
            train_sparsity=train_sparsity,
            test_sparsity=meter.overall(),
            test_loss=test_loss,
            test_layer_sparsity=meter.per_layer(),
            val_accuracy=val_acc,
            val_sparsity=val_sparsity,
            seconds=time.perf_counter() - start,
        )
        history.append(metrics)
        on_epoch(metrics)
    return history, None
