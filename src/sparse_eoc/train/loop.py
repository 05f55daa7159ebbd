"""The training loop: epochs of minibatch steps, evaluation, sparsity metering, divergence.

Read top to bottom: :func:`fit` runs epochs; each epoch is :func:`train_epoch`
(one pass over shuffled training data, metering the hidden layers' zeros on the
same forward passes) followed by :func:`evaluate` on the held-out splits.
A non-finite loss stops training at once and is reported, not raised.
``fit(..., start_epoch=k + 1, history=..., scheduler=...)`` continues a run whose
first k epochs are done (the run directory restores their state from a checkpoint).

Per-layer diagnostics (``layer_stats=True``, for the exploding-gradient figures):
each epoch also records the mean L2 norm of every hidden layer's weight gradient
over its steps, and the variance of every hidden layer's pre-activations on a fixed
probe batch (:func:`layer_preact_var`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparse_eoc.nn import SparsityMeter
from sparse_eoc.runs.config import LR_SCHEDULES

__all__ = ["EpochMetrics", "Divergence", "LR_SCHEDULES", "PROBE_SIZE", "evaluate", "train_epoch", "fit",
           "make_optimizer", "make_scheduler", "param_groups", "layer_preact_var", "metrics_to_dict"]

RECENT_STEPS = 20  # the steps before a divergence whose losses (and grad norms) it keeps
PROBE_SIZE = 256  # the probe batch of the per-layer diagnostics: the first 256 test examples


@dataclass
class EpochMetrics:
    """What one epoch records (one line of ``metrics.jsonl``).

    Sparsities are fractions of exact zeros over all hidden-layer outputs and all
    examples of the split; ``train_sparsity`` is metered on the training forward
    passes of the epoch itself (no extra pass), so it averages over the epoch's
    weight updates. ``test_layer_sparsity`` has one entry per hidden layer, i.e. per
    activation site (a residual network: depth + 1 for ``resmlp``, 2 depth + 1 for ``rescnn``,
    the head site last; docs/theory.md section 8.1).

    With per-layer diagnostics on (``fit(..., layer_stats=True)``), two more lists of
    L floats, one per hidden layer l = 1..L (None otherwise, and then absent from
    ``metrics.jsonl``); for a residual network, ``layer_grad_norm`` has one entry per weight
    layer of ``model.hidden`` (the stem, then the branch layers) and ``layer_preact_var`` one
    per activation site:

    - ``layer_grad_norm[l-1]``: the mean over the epoch's optimiser steps of
      ||dLoss/dW^l||_2 (Frobenius norm of the weight gradient; for a conv layer over
      all of its out x in x k x k entries), Loss being the training loss (with label
      smoothing, if any).
    - ``layer_preact_var[l-1]``: the variance of the pre-activations h^l over all
      entries (examples, units, positions) of the probe batch, after the epoch
      (:func:`layer_preact_var`).
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
    layer_grad_norm: list[float] | None = None
    layer_preact_var: list[float] | None = None


_OPTIONAL_METRICS = ("layer_grad_norm", "layer_preact_var")


def metrics_to_dict(metrics: EpochMetrics) -> dict:
    """The ``metrics.jsonl`` line of an epoch: its fields, without the diagnostics that are off (None)."""
    line = dataclasses.asdict(metrics)
    for key in _OPTIONAL_METRICS:
        if line[key] is None:
            del line[key]
    return line


@dataclass
class Divergence:
    """Where training stopped on a non-finite loss."""

    epoch: int  # 1-based epoch in which it happened
    step: int  # 1-based step within that epoch
    loss: float  # the offending loss (nan or inf)
    recent_losses: list[float] = field(default_factory=list)  # the finite losses before it
    partial_train_loss: float | None = None  # mean finite loss of that epoch's steps before it
    partial_train_sparsity: list[float] | None = None  # per-layer zeros of that epoch's forwards
    # With layer statistics on: ||dLoss/dW^l||_2 of the L hidden layers at each of the last
    # RECENT_STEPS steps before it, oldest first, (steps, L); the blow-up as it happened.
    recent_layer_grad_norm: list[list[float]] | None = None
    recent_steps: list[int] | None = None  # their 1-based step numbers within the epoch


def make_optimizer(name: str, params, *, lr: float, momentum: float, weight_decay: float):
    """SGD (with momentum) or Adam over ``params``: tensors, or param-group dicts whose own
    ``lr`` overrides ``lr`` (see :func:`param_groups`)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")



def param_groups(model, readout_lr_scale: float, lr: float) -> list[dict]:
    """The optimiser's parameter groups: all hidden layers at ``lr``; the readout at
    ``lr * readout_lr_scale`` (one group when the scale is 1).

    Why a readout scale: behind global average pooling the readout sees channel means
    of a sparse, clipped feature map, which barely vary between images at the EoC
    initialisation. With the readout at the common lr, the top conv layers supply the
    missing signal by densifying (their sparsity fell to 0.67 / 0.56 against a target of
    0.85 in two epochs of ``cnn-mnist-cpu``); a readout that learns faster takes part
    of that work (docs/theory.md section 6: a readout at 10x held the sparsity, 30x diverged,
    5x held it less well).

    Args:
        model: a SparseMLP, SparseCNN, ResMLP or ResCNN (``hidden`` and ``readout``).
        readout_lr_scale: > 0.
        lr: the hidden layers' learning rate, > 0.
    """
    if readout_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    readout = {id(p) for p in model.readout.parameters()}
    hidden = [p for p in model.parameters() if id(p) not in readout]
    return [{"params": hidden}, {"params": list(model.readout.parameters()), "lr": lr * readout_lr_scale}]


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


@torch.no_grad()
def layer_preact_var(model, x: torch.Tensor) -> list[float]:
    """The variance of each hidden layer's pre-activations h^l on the inputs ``x``.

    For each of the L hidden layers (a residual network: each activation site), the
    population variance (divisor n) of h^l over all its entries: examples x units for the
    MLP, examples x channels x positions for the CNN. At the EoC initialisation it is close
    to q* (paper Section 2, the variance map's fixed point; it differs from the mean square
    q^l by the squared mean of h^l; a residual network's grows as docs/theory.md section 8.2
    predicts); a layer whose value runs away with depth or with training is exploding.

    Args:
        model: a SparseMLP, SparseCNN, ResMLP or ResCNN (anything with ``hidden_states``), evaluated in
            eval mode without gradients; its training mode is restored.
        x: inputs, (B, in_features) or (B, C, H, W), on the model's device; B >= 1.

    Returns:
        L floats (inf or nan if h^l overflowed); one host sync.
    """
    was_training = model.training
    model.eval()
    variances = [h.var(correction=0) for h, _ in model.hidden_states(x)]  # L scalars, on device
    model.train(was_training)
    return torch.stack(variances).double().tolist()


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
    label_smoothing: float = 0.0,
    grad_norm_sum: torch.Tensor | None = None,
) -> tuple[float, float, Divergence | None]:
    """One pass over shuffled (x, y) in minibatches; cross-entropy, one optimiser step each.

    Args:
        x: (N, in_features) or (N, C, H, W), y: (N,), on the model's device.
        generator: a CPU generator drawing the shuffling permutation (explicit randomness).
        meter: reset, then filled with the zeros of the training forward passes.
        progress: a callable wrapping the step range (e.g. a tqdm factory) or None.
        augment: applied to each training batch of inputs (e.g. random crop and flip).
        scheduler: a learning-rate schedule stepped after every optimiser step.
        label_smoothing: epsilon in [0, 1) of the training loss,
            ``F.cross_entropy(..., label_smoothing=epsilon)`` (0: plain cross-entropy).
        grad_norm_sum: a float64 tensor of shape (L,) on the model's device, or None;
            each optimiser step adds ||dLoss/dW^l||_2 of the L hidden layers
            (``model.hidden``) to it, on the device (no host sync); the last
            RECENT_STEPS of them go into a divergence's ``recent_layer_grad_norm``.

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
    recent_norms: collections.deque = collections.deque(maxlen=RECENT_STEPS)  # (L,) tensors, on the device
    with _metering(model, meter):
        for step, start in enumerate(bar, 1):
            idx = perm[start : start + batch_size]
            xb, yb = x[idx], y[idx]  # (B, in_features) or (B, C, H, W); (B,)
            if augment is not None:
                xb = augment(xb)
            logits = model(xb)  # (B, classes)
            loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
            value = loss.item()  # one sync per step: the divergence check and the bar need it
            if not math.isfinite(value):
                div = Divergence(epoch, step, value, losses[-RECENT_STEPS:], partial_train_loss=_mean(losses))
                if recent_norms:
                    div.recent_layer_grad_norm = torch.stack(list(recent_norms)).tolist()  # (steps, L)
                    div.recent_steps = list(range(step - len(recent_norms), step))
                return _mean(losses), correct.item() / max(seen, 1), div
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_norm_sum is not None:
                norms = torch.stack([torch.linalg.vector_norm(layer.weight.grad, dtype=torch.float64)
                                     for layer in model.hidden])  # (L,); float64: no overflow as it blows up
                grad_norm_sum += norms
                recent_norms.append(norms)
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
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    start_epoch: int = 1,
    history: list[EpochMetrics] | None = None,
    label_smoothing: float = 0.0,
    layer_stats: bool = False,
) -> tuple[list[EpochMetrics], Divergence | None]:
    """Train epochs ``start_epoch..epochs``; evaluate ``test`` (and ``val`` if present) after each.

    Args:
        splits: ``{"train": (x, y), "test": (x, y), "val": (x, y)}`` on the model's device.
        epochs: the last epoch (1-based), i.e. the run's total number of epochs.
        generator: the CPU generator of the shuffling permutations.
        on_epoch: called with each epoch's metrics as soon as they exist (the run
            directory appends them to ``metrics.jsonl`` and writes a checkpoint).
        lr_schedule: ``none`` (constant) or ``cosine`` (per-step cosine decay from the
            optimiser's lr to 0 over all ``epochs``); built here, for a fresh run.
        scheduler: an already built schedule to step instead (e.g. one restored from a
            checkpoint, or whose state the caller saves); exclusive with ``lr_schedule``.
        start_epoch: the first epoch to run, 1 <= start_epoch <= epochs + 1; the epochs
            before it are done, and the model, optimiser, scheduler and generator
            states must be those they left.
        history: the metrics of the epochs before ``start_epoch`` (their number must
            be start_epoch - 1); the returned history starts with them.
        label_smoothing: epsilon in [0, 1) of the training loss only; evaluation
            losses stay plain cross-entropy.
        layer_stats: record ``layer_grad_norm`` and ``layer_preact_var`` per epoch (see
            EpochMetrics); the probe batch is the first PROBE_SIZE test inputs. Needs
            ``model.hidden`` and ``model.hidden_states``. Off, the loop does no extra work.

    Returns:
        (history, divergence): the metrics of every completed epoch, and where
        training diverged (None if it did not).

    Raises:
        ValueError: both ``lr_schedule`` and ``scheduler``; ``start_epoch`` out of range
            or ``history`` of the wrong length; ``label_smoothing`` outside [0, 1).
    """
    if scheduler is not None and lr_schedule != "none":
        raise ValueError(f"give lr_schedule or scheduler, not both (lr_schedule={lr_schedule!r})")
    if not 1 <= start_epoch <= epochs + 1:
        raise ValueError(f"start_epoch must be in [1, epochs + 1 = {epochs + 1}], got start_epoch={start_epoch!r}")
    history = list(history or [])
    if len(history) != start_epoch - 1:
        raise ValueError(f"history must hold the {start_epoch - 1} epoch(s) before start_epoch={start_epoch}, "
                         f"got {len(history)}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got label_smoothing={label_smoothing!r}")
    meter = SparsityMeter()
    x_train, y_train = splits["train"]
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    if scheduler is None:
        scheduler = make_scheduler(lr_schedule, optimizer, total_steps=epochs * steps_per_epoch)
    probe = splits["test"][0][:PROBE_SIZE] if layer_stats else None
    for epoch in range(start_epoch, epochs + 1):
        start = time.perf_counter()
        progress = None
        if show_progress:
            progress = lambda it: tqdm(it, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False)  # noqa: E731
        grad_norm_sum = None
        if layer_stats:
            grad_norm_sum = torch.zeros(len(model.hidden), dtype=torch.float64, device=x_train.device)  # (L,)
        loss, acc, divergence = train_epoch(
            model, optimizer, x_train, y_train, batch_size=batch_size,
            generator=generator, meter=meter, progress=progress, epoch=epoch, augment=augment,
            scheduler=scheduler, label_smoothing=label_smoothing, grad_norm_sum=grad_norm_sum,
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
        )
        if layer_stats:
            metrics.layer_grad_norm = (grad_norm_sum / steps_per_epoch).tolist()  # one host sync
            metrics.layer_preact_var = layer_preact_var(model, probe)
        metrics.seconds = time.perf_counter() - start
        history.append(metrics)
        on_epoch(metrics)
    return history, None
