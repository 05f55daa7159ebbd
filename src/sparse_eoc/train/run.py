"""A training run and its directory: resolve the config, train, write the results.

A run directory ``RUN`` holds::

    config.json        the settings (TrainConfig) and what they resolved to: the EoC
                       point (tau, m, sigma_w2, sigma_b2, slope, ...), the first layer's
                       weight variance, the network ("network"), the data statistics
    metrics.jsonl      one JSON object per completed epoch (see EpochMetrics); with
                       log_layer_stats also layer_grad_norm and layer_preact_var
    result.json        status (completed | diverged), final metrics, wall time; a diverged run
                       records where (epoch, step), its last finite losses and the partial
                       epoch's loss and per-layer sparsity (with log_layer_stats also the
                       per-layer gradient norms of its last steps, recent_layer_grad_norm
                       at recent_steps); its final metrics are those of the last completed
                       epoch (null if none); with log_layer_stats also init_layer_preact_var
                       (the pre-activation variances at init)
    model.safetensors  the trained weights (load_run rebuilds the model from config.json);
                       for a diverged run, those of its last completed epoch (absent if none)
    checkpoint.pt      while the run is unfinished: the state after its last completed
                       epoch (see sparse_eoc.train.checkpoint); deleted once result.json
                       is written (a finished run is recognised by result.json)

Every JSON file is strict JSON (no NaN/Infinity: non-finite numbers are null) and
is written atomically (temporary file, then rename).

``train(config, RUN, resume=True)`` continues an interrupted run from its checkpoint;
on the same device and CPU thread count the result is bit-identical to an
uninterrupted run (weights, metrics, result.json apart from wall and epoch seconds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparse_eoc import __version__
from sparse_eoc.data import load_image_dataset
from sparse_eoc.train.augment import random_crop_flip
from sparse_eoc.gp import check_clip, fixed_points, solve_eoc
from sparse_eoc.jsonio import append_jsonl, json_line, to_json_safe, write_json, write_text_atomic
from sparse_eoc.nn import SparseMLP, init_eoc_, input_weight_variance
from sparse_eoc.nn.cnn import SparseCNN
from sparse_eoc.nn.device import resolve_device
from sparse_eoc.train.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    settings_differences,
)
from sparse_eoc.runs.config import TrainConfig
from sparse_eoc.train.loop import PROBE_SIZE, EpochMetrics, fit, layer_preact_var, make_optimizer, \
    make_scheduler, metrics_to_dict, param_groups

__all__ = ["train", "load_run", "write_json", "to_json_safe", "RESUME_FREE_SETTINGS"]

MODEL_FILE = "model.safetensors"
FINISHED = ("completed", "diverged")  # result.json statuses of a finished run
# Settings that say how a run executes, not what it computes: a resume may change them.
RESUME_FREE_SETTINGS = ("device", "threads")


def _model_config(config: TrainConfig, point, image_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """What ``config.json["network"]`` records: enough to rebuild the network."""
    common = {"kind": config.model, "image_shape": list(image_shape), "num_classes": int(num_classes),
              "depth": config.depth, "activation": point.activation, "tau": point.tau, "m": point.m}
    if config.model == "mlp":
        return {**common, "in_features": int(math.prod(image_shape)), "width": config.width}
    return {**common, "in_channels": int(image_shape[0]), "channels": config.channels,
            "kernel_size": config.kernel_size, "padding_mode": config.padding_mode}


def _build_model(model_cfg: dict[str, Any]) -> SparseMLP | SparseCNN:
    m = math.inf if model_cfg["m"] is None else model_cfg["m"]
    act = (model_cfg["activation"], model_cfg["tau"], m)
    if model_cfg.get("kind", "mlp") == "mlp":
        return SparseMLP(model_cfg["in_features"], model_cfg["num_classes"], model_cfg["depth"],
                         model_cfg["width"], *act)
    return SparseCNN(model_cfg["in_channels"], model_cfg["num_classes"], model_cfg["depth"],
                     model_cfg["channels"], *act, kernel_size=model_cfg["kernel_size"],
                     padding_mode=model_cfg["padding_mode"])


def _saved_settings(out: Path) -> dict[str, Any]:
    """The settings in ``out/config.json``, defaults filled in for settings added since it was written."""
    path = out / "config.json"
    try:
        return TrainConfig.from_dict(json.loads(path.read_text())).to_dict()
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the run's settings ({err})") from err


def _check_same_settings(saved: dict[str, Any], config: TrainConfig, where: Path) -> None:
    differing = settings_differences(saved, config.to_dict(), ignore=RESUME_FREE_SETTINGS)
    if differing:
        details = ", ".join(f"{k}={saved.get(k)!r} there, {getattr(config, k, None)!r} here" for k in differing)
        raise ValueError(f"cannot resume {where}: its settings differ in {', '.join(differing)} ({details})")


def _finished_result(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The result of a finished run in ``out`` with these settings, or None if it is not finished."""
    path = out / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if result.get("status") not in FINISHED:
        return None
    _check_same_settings(_saved_settings(out), config, out / "config.json")
    return result


def train(
    config: TrainConfig, out_dir: str | os.PathLike, *, progress: bool = True, log=print, resume: bool = False
) -> dict[str, Any]:
    """Train one EoC-initialised sparse MLP or CNN and write its run directory.

    After every completed epoch the run writes ``out_dir/checkpoint.pt`` (see
    :mod:`sparse_eoc.train.checkpoint`); it is deleted once ``result.json`` is written.

    Args:
        config: the run's settings; ``config.data_dir`` must hold the dataset's files.
        out_dir: the run directory (created; without ``resume``, existing result files
            and any checkpoint are overwritten).
        progress: show a progress bar per epoch.
        log: where one-line messages go (the divergence notice among them).
        resume: continue the run in ``out_dir`` instead of starting afresh:

            - a finished run there (``result.json`` with status completed or diverged)
              with these settings: return its result, train nothing;
            - a ``checkpoint.pt`` with these settings: restore the model, optimiser,
              lr schedule and RNG states after its epoch k, rewrite ``metrics.jsonl``
              to its k lines (dropping any line of an epoch after the checkpoint) and
              train epochs k + 1..epochs; ``wall_seconds`` adds up the pieces;
            - neither: start afresh.

            "These settings" means all of TrainConfig (``data_dir`` resolved) except
            ``device`` and ``threads``, which a resume may change (then the numbers are
            no longer guaranteed bit-identical).

    Returns:
        The contents of ``result.json`` (non-finite numbers as None).

    Raises:
        ValueError: bad settings (see TrainConfig, solve_eoc) or a missing ``data_dir``;
            with ``resume``, settings that differ from the run's (the message names
            them) or an unreadable checkpoint (the message names the file).
        sparse_eoc.data.DataFileError: a missing or corrupt data file.
    """
    if config.data_dir is None:
        raise ValueError(f"data_dir is required: the directory with the {config.dataset} files")
    config = config.replace(data_dir=str(Path(config.data_dir).resolve()))  # reruns work from anywhere
    device = resolve_device(config.device)
    out = Path(out_dir)
    checkpoint_path = out / CHECKPOINT_FILE
    checkpoint = None
    if resume:
        finished = _finished_result(out, config)
        if finished is not None:
            log(f"{out}: already finished ({finished['status']}), nothing to resume")
            return finished
        if checkpoint_path.is_file():
            checkpoint = load_checkpoint(checkpoint_path)
            _check_same_settings(checkpoint["settings"], config, checkpoint_path)
            log(f"resuming {out} after epoch {checkpoint['epoch']} of {config.epochs}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter() - (checkpoint["wall_seconds"] if checkpoint else 0.0)

    point = solve_eoc(config.activation, config.sparsity, config.q_star, m=config.m, slope=config.slope)
    for warning in check_clip(point.activation, point.sparsity, point.q_star, point.m):
        log(f"warning: {warning}")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    data = load_image_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed)
    input_sigma_w2 = input_weight_variance(config.q_star, point.sigma_b2, data.mean_square_input)
    model_cfg = _model_config(config, point, data.image_shape, data.num_classes)
    resolved = {
        **config.to_dict(),
        "eoc": {
            **point.to_dict(),
            "fixed_points": [{"q": f.q, "stability": f.stability} for f in fixed_points(point)],
            "input_sigma_w2": input_sigma_w2,
        },
        "network": model_cfg,
        "data": {
            "n_train": len(data.x_train),
            "n_val": len(data.x_val),
            "n_test": len(data.x_test),
            "image_shape": list(data.image_shape),
            "mean": list(data.mean),
            "std": list(data.std),
            "mean_square_input": data.mean_square_input,
        },
        "sparse_eoc_version": __version__,
        "torch_version": torch.__version__,
        "device_resolved": str(device),
    }
    write_json(out / "config.json", resolved)
    metrics_path = out / "metrics.jsonl"
    # The history, one line per completed epoch: empty, or the checkpoint's epochs.
    history = [EpochMetrics(**line) for line in checkpoint["history"]] if checkpoint else []
    write_text_atomic(metrics_path, "".join(json_line(metrics_to_dict(m)) for m in history))
    (out / "result.json").unlink(missing_ok=True)
    if checkpoint is None:
        checkpoint_path.unlink(missing_ok=True)  # a fresh run: another run's state must not be resumed

    torch.manual_seed(config.seed)
    init_gen = torch.Generator().manual_seed(config.seed)
    model = _build_model(model_cfg)
    init_eoc_(model, point.sigma_w2, point.sigma_b2, input_sigma_w2=input_sigma_w2, generator=init_gen,
                  weight_init=config.weight_init)
    model.to(device)
    optimizer = make_optimizer(
        config.optimizer, param_groups(model, config.readout_lr_scale, config.lr), lr=config.lr,
        momentum=config.momentum, weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)
    scheduler = make_scheduler(config.lr_schedule, optimizer, total_steps=config.epochs * steps_per_epoch)

    shape = (-1,) if config.model == "mlp" else tuple(data.image_shape)

    def split(x, y):  # (N, C*H*W) -> (N, C*H*W) for the MLP, (N, C, H, W) for the CNN
        return torch.from_numpy(x).view(len(x), *shape).to(device), torch.from_numpy(y).to(device)

    splits = {"train": split(data.x_train, data.y_train), "test": split(data.x_test, data.y_test)}
    if len(data.x_val):
        splits["val"] = split(data.x_val, data.y_val)

    shuffle_gen = torch.Generator().manual_seed(config.seed + 1)
    augment = augment_gen = None
    if config.augment:
        augment_gen = torch.Generator().manual_seed(config.seed + 2)
        augment = lambda xb: random_crop_flip(xb, padding=4, generator=augment_gen)  # noqa: E731

    def model_state() -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    init_preact_var = None
    if checkpoint is not None:
        restore_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                               shuffle_generator=shuffle_gen, augment_generator=augment_gen)
        init_preact_var = checkpoint["init_layer_preact_var"]
    elif config.log_layer_stats:
        init_preact_var = layer_preact_var(model, splits["test"][0][:PROBE_SIZE])
    # The weights after the last completed epoch (those a diverged run keeps).
    last_good: dict[str, torch.Tensor] = model_state() if history else {}

    def on_epoch(metrics) -> None:
        append_jsonl(metrics_path, metrics_to_dict(metrics))
        if progress:
            log(f"epoch {metrics.epoch}/{config.epochs}: train loss {metrics.train_loss:.4f}, "
                f"test accuracy {metrics.test_accuracy:.4f}, sparsity train {metrics.train_sparsity:.4f} "
                f"/ test {metrics.test_sparsity:.4f} ({metrics.seconds:.0f} s)")
        last_good.update(model_state())
        done.append(metrics)
        save_checkpoint(
            checkpoint_path, epoch=metrics.epoch, settings=config.to_dict(), model_state=last_good,
            optimizer=optimizer, scheduler=scheduler, shuffle_generator=shuffle_gen, augment_generator=augment_gen,
            history=[metrics_to_dict(m) for m in done], wall_seconds=time.perf_counter() - started,
            init_layer_preact_var=init_preact_var,
        )

    done = list(history)  # the completed epochs, for the checkpoints
    history, divergence = fit(
        model, optimizer, splits, epochs=config.epochs, batch_size=config.batch_size, generator=shuffle_gen,
        on_epoch=on_epoch, show_progress=progress, augment=augment, scheduler=scheduler,
        start_epoch=len(history) + 1, history=history, label_smoothing=config.label_smoothing,
        layer_stats=config.log_layer_stats,
    )
    # A diverged run keeps the weights of its last completed epoch (none if it diverged in the first).
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()} if divergence is None else last_good
    (out / MODEL_FILE).unlink(missing_ok=True)
    if weights:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(out / MODEL_FILE))

    last = history[-1] if history else None
    result: dict[str, Any] = {
        "status": "diverged" if divergence is not None else "completed",
        "test_accuracy": last.test_accuracy if last else None,
        "train_sparsity": last.train_sparsity if last else None,
        "test_sparsity": last.test_sparsity if last else None,
        "layer_sparsity": last.test_layer_sparsity if last else None,
        "val_accuracy": last.val_accuracy if last else None,
        "epochs_completed": len(history),
        "model_epoch": len(history) if weights else None,  # the epoch whose weights model.safetensors holds
        "wall_seconds": time.perf_counter() - started,
        "diverged": dataclasses.asdict(divergence) if divergence is not None else None,
    }
    if config.log_layer_stats:
        result["init_layer_preact_var"] = init_preact_var
    write_json(out / "result.json", result)
    checkpoint_path.unlink(missing_ok=True)  # finished: result.json marks it
    if divergence is not None:
        log(
            f"diverged: non-finite training loss ({divergence.loss}) at epoch {divergence.epoch}, "
            f"step {divergence.step}; {len(history)} epoch(s) completed, history kept in {out}"
            + ("" if weights else " (no weights saved: no epoch completed)")
        )
    return to_json_safe(result)  # what result.json holds (non-finite numbers as None), as a resume returns it


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu") -> tuple[SparseMLP | SparseCNN, dict[str, Any]]:
    """Rebuild a trained model from a run directory.

    Returns:
        (model in eval mode on ``device``, the parsed ``config.json``).

    Raises:
        FileNotFoundError: if ``config.json`` or ``model.safetensors`` is missing.
        ValueError: if ``config.json`` is not valid JSON or lacks the ``network`` section the
            model is rebuilt from, or if ``model.safetensors`` is corrupt or holds weights of
            another shape (each names the file).
    """
    run = Path(run_dir)
    for name in ("config.json", MODEL_FILE):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name}: not found (is {run} a sparse-eoc run directory?)")
    try:
        config = json.loads((run / "config.json").read_text())
        model = _build_model(config["network"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run / 'config.json'}: cannot rebuild the model: the run's config must be JSON with a "
                         f"'network' section naming the architecture ({type(err).__name__}: {err})") from err
    try:
        model.load_state_dict(load_file(str(run / MODEL_FILE)))
    except Exception as err:  # safetensors' own error type for a corrupt file; RuntimeError for a mismatch
        raise ValueError(f"{run / MODEL_FILE}: corrupt or not the weights of the network in config.json "
                         f"({type(err).__name__}: {err})") from err
    return model.to(resolve_device(device)).eval(), config
