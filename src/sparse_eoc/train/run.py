"""A training run and its directory: resolve the settings, train, write the results.

The run-directory format (file names, what each holds, status, the lock) is
:mod:`sparse_eoc.runs.files`; this module writes it. In short: ``config.json`` (the
settings and what they resolved to), ``metrics.jsonl`` (one line per completed epoch),
``result.json`` (written last: a run is finished when it holds status completed or
diverged), ``model.safetensors`` (for a diverged run, the weights of its last completed
epoch; absent if none), and ``checkpoint.pt`` while the run is unfinished.

What ``train(config, RUN)`` does with a directory that already holds a run:

- nothing there, or only unrelated files: a new run;
- a finished run: refused, unless ``overwrite=True`` (then replaced);
- an unfinished run (interrupted, or half written): refused, unless ``resume=True``
  (continue from its checkpoint) or ``overwrite=True`` (start afresh);
- a run another process is training: always refused (the directory's lock).

Replacing a run deletes its ``result.json`` and weights before anything new is written, so a
crash part-way never leaves new settings beside old weights. On the same device and CPU thread
count, a resumed run is bit-identical to an uninterrupted one (weights, metrics,
``result.json`` apart from wall and epoch seconds).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from sparse_eoc import __version__
from sparse_eoc.data import ImageDataset, load_image_dataset
from sparse_eoc.gp import ClipAnalysis, EoCPoint, ResidualInit, analyse_clip, residual_init, solve_eoc
from sparse_eoc.jsonio import append_jsonl, json_line, to_json_safe, write_atomic, write_json, write_text_atomic
from sparse_eoc.nn.build import build_model, check_fits, init_from_point_, load_run
from sparse_eoc.nn.device import resolve_device
from sparse_eoc.nn.init import input_weight_variance
from sparse_eoc.nn.sparse_linear import set_kernels_
from sparse_eoc.runs.config import (
    CONV_MODELS,
    DENSE_MODELS,
    Q_STAR_RANGE,
    RESIDUAL_MODELS,
    RESUME_FREE_SETTINGS,
    TrainConfig,
    check_same_settings,
    read_config_file,
)
from sparse_eoc.runs.files import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FINISHED,
    METRICS_FILE,
    MODEL_FILE,
    RESULT_FILE,
    read_json,
    read_result,
    run_lock,
    unfinished_run_files,
)
from sparse_eoc.runs.network import NetworkSpec
from sparse_eoc.train.augment import random_crop_flip
from sparse_eoc.train.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from sparse_eoc.train.loop import (
    PROBE_SIZE,
    EpochMetrics,
    fit,
    layer_preact_var,
    make_optimizer,
    make_scheduler,
    metrics_to_dict,
    param_groups,
)

__all__ = ["train", "load_run", "write_json", "to_json_safe", "RESUME_FREE_SETTINGS", "MODEL_FILE", "FINISHED"]


@dataclass(frozen=True)
class Resolved:
    """What a run's settings resolve to before any training: the EoC point, the data, the network."""

    config: TrainConfig
    point: EoCPoint
    data: ImageDataset
    spec: NetworkSpec
    input_sigma_w2: float
    device: torch.device
    clip: ClipAnalysis  # the fixed points and the warnings (computed once)
    residual: ResidualInit | None = None  # a residual model's sites (docs/theory.md section 8)

    def record(self) -> dict[str, Any]:
        """What ``config.json`` holds: the settings, then the resolved sections (a residual model's
        per-site thresholds and predicted variances in ``eoc.residual``)."""
        data = self.data
        residual = {} if self.residual is None else {"residual": self.residual.to_dict()}
        return {
            **self.config.to_dict(),
            "eoc": {
                **self.point.to_dict(),
                "fixed_points": [{"q": f.q, "stability": f.stability} for f in self.clip.fixed_points],
                "input_sigma_w2": self.input_sigma_w2,
                **residual,
            },
            "network": self.spec.to_dict(),
            "data": {
                "n_train": len(data.x_train), "n_val": len(data.x_val), "n_test": len(data.x_test),
                "image_shape": list(data.image_shape), "mean": list(data.mean), "std": list(data.std),
                "mean_square_input": data.mean_square_input,
            },
            "sparse_eoc_version": __version__,
            "torch_version": torch.__version__,
            "device_resolved": str(self.device),
        }


def resolve(config: TrainConfig) -> Resolved:
    """Solve the EoC point, load the data and describe the network of ``config``; build nothing.

    Raises:
        ValueError: settings without an EoC point (see solve_eoc), a missing ``data_dir``, a
            network too large for the device's memory, a residual scale that takes the predicted
            variance out of ``Q_STAR_RANGE``.
        sparse_eoc.data.DataFileError: a missing or corrupt data file.
    """
    if config.data_dir is None:
        raise ValueError(f"--data-dir is required: the directory with the {config.dataset} files")
    device = resolve_device(config.device)
    if config.kernels == "sparse" and device.type != "cpu":
        raise ValueError(f"--kernels sparse runs on the CPU only, not on --device {config.device}; use --kernels "
                         "dense or auto (auto runs dense there)")
    point = solve_eoc(config.activation, config.sparsity, config.q_star, m=config.m, slope=config.slope)
    clip = analyse_clip(point)
    residual = None
    if config.model in RESIDUAL_MODELS:
        residual = residual_init(point, config.depth, residual_scale=config.residual_scale,
                                 thresholds="fixed" if config.thresholds == "fixed" else "per-layer",
                                 convs_per_block=2 if config.model == "rescnn" else 1)
        if max(residual.site_q) > Q_STAR_RANGE[1]:
            raise ValueError(f"--residual-scale {residual.residual_scale:g} over {config.depth} blocks takes the "
                             f"predicted variance to {max(residual.site_q):.3g}, past {Q_STAR_RANGE[1]:g} (float32 "
                             "training); use a smaller --residual-scale")
    data = load_image_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed)
    spec = NetworkSpec.from_config(config, point, data.image_shape, data.num_classes, residual=residual)
    if config.model in CONV_MODELS and config.kernel_size > min(data.image_shape[1:]):
        raise ValueError(f"--kernel-size must be at most the image side {min(data.image_shape[1:])}, "
                         f"got --kernel-size {config.kernel_size}")
    check_fits(spec, device, batch_size=config.batch_size,
               option="--depth/--width" if config.model in DENSE_MODELS else "--depth/--channels")
    input_sigma_w2 = input_weight_variance(config.q_star, point.sigma_b2, data.mean_square_input)
    return Resolved(config, point, data, spec, input_sigma_w2, device, clip, residual)


class RunFiles:
    """The files of one run directory while it trains (see :mod:`sparse_eoc.runs.files`)."""

    def __init__(self, out: Path):
        self.out = out
        self.checkpoint = out / CHECKPOINT_FILE
        self.metrics = out / METRICS_FILE

    def finished_result(self, config: TrainConfig) -> dict[str, Any] | None:
        """The result of a finished run here with these settings, or None if it is not finished.

        Raises:
            ValueError: the finished run's settings differ (naming them).
        """
        result = read_result(self.out)
        if result is not None:
            check_same_settings(read_config_file(self.out / CONFIG_FILE, option="--resume"), config,
                                self.out / CONFIG_FILE)
        return result

    def clear(self) -> None:
        """Remove a previous run's files, the result and the weights first (a crash part-way
        leaves an unfinished run, never a finished-looking mix)."""
        for name in (RESULT_FILE, MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE, CONFIG_FILE):
            (self.out / name).unlink(missing_ok=True)

    def start(self, record: dict[str, Any], history: list[EpochMetrics]) -> None:
        """Write ``config.json`` and ``metrics.jsonl`` (the history so far) of a starting run."""
        write_json(self.out / CONFIG_FILE, record)
        write_text_atomic(self.metrics, "".join(json_line(metrics_to_dict(m)) for m in history))

    def finish(self, result: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        """Write the weights (if any), then ``result.json``, then drop the checkpoint."""
        (self.out / MODEL_FILE).unlink(missing_ok=True)
        if weights:
            tensors = {k: v.contiguous() for k, v in weights.items()}
            write_atomic(self.out / MODEL_FILE, lambda tmp: save_file(tensors, str(tmp)))
        write_json(self.out / RESULT_FILE, result)
        self.checkpoint.unlink(missing_ok=True)  # finished: result.json marks it


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train one EoC-initialised sparse MLP or CNN (or residual MLP or CNN) and write its run directory.

    After every completed epoch the run writes ``out_dir/checkpoint.pt`` (see
    :mod:`sparse_eoc.train.checkpoint`); it is deleted once ``result.json`` is written. The
    directory is locked while the run trains (:func:`sparse_eoc.runs.files.run_lock`).

    Args:
        config: the run's settings; ``config.data_dir`` must hold the dataset's files.
        out_dir: the run directory (created).
        progress: show a progress bar per epoch.
        log: where one-line messages go (the divergence notice among them).
        resume: continue the run in ``out_dir`` instead of starting afresh:

            - a finished run there with these settings: return its result, train nothing;
            - a ``checkpoint.pt`` with these settings: restore the model, optimiser,
              lr schedule and RNG states after its epoch k, rewrite ``metrics.jsonl``
              to its k lines and train epochs k + 1..epochs; ``wall_seconds`` adds up the pieces;
            - neither: start afresh.

            "These settings" means all of TrainConfig (``data_dir`` resolved) except
            ``device`` and ``threads``, which a resume may change (then the numbers are
            no longer guaranteed bit-identical).
        overwrite: replace a finished or unfinished run in ``out_dir`` (without it, and
            without ``resume``, such a directory is refused).

    Returns:
        The contents of ``result.json`` (non-finite numbers as None).

    Raises:
        ValueError: bad settings (see TrainConfig, solve_eoc) or a missing ``data_dir``;
            a run already in ``out_dir`` (see the module docstring) or another process
            training there (:class:`~sparse_eoc.runs.files.RunLockedError`); with
            ``resume``, settings that differ from the run's (the message names them) or an
            unreadable checkpoint (the message names the file).
        OSError: a file could not be written (a full disk, say); the message names it, and
            no partial file is left behind.
        sparse_eoc.data.DataFileError: a missing or corrupt data file.
    """
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
    if config.data_dir is None:
        raise ValueError(f"--data-dir is required: the directory with the {config.dataset} files")
    config = config.replace(data_dir=str(Path(config.data_dir).resolve()))  # reruns work from anywhere
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    _check_existing_run(out, resume=resume, overwrite=overwrite)  # before anything is created or locked
    with run_lock(out):
        files = RunFiles(out)
        _check_existing_run(out, resume=resume, overwrite=overwrite)  # again, now that no one else can write
        checkpoint = None
        if resume:
            finished = files.finished_result(config)
            if finished is not None:
                log(f"{out}: already finished ({finished['status']}), nothing to resume")
                return to_json_safe(finished)
            if files.checkpoint.is_file():
                checkpoint = load_checkpoint(files.checkpoint)
                check_same_settings(checkpoint["settings"], config, files.checkpoint)
                log(f"resuming {out} after epoch {checkpoint['epoch']} of {config.epochs}")
        run = resolve(config)
        if checkpoint is not None:
            _check_same_network(run.spec, out / CONFIG_FILE)
        for warning in run.clip.warnings:
            log(f"warning: {warning}")
        if checkpoint is None:
            files.clear()  # a fresh run: another run's state must not be resumed nor its weights kept
        return _fit_run(run, files, checkpoint, progress=progress, log=log)


def _check_same_network(spec: NetworkSpec, config_file: Path) -> None:
    """Refuse to resume a checkpoint into another network than the one it was trained as (the same
    settings can build another one when a default changes, e.g. the residual scale's)."""
    try:
        trained = NetworkSpec.from_dict(read_json(config_file, what="a run's settings (a JSON object)").get("network"))
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume: {config_file}: cannot read the network the checkpoint was trained as "
                         f"({err})") from err
    if trained != spec:
        changed = [f.name for f in dataclasses.fields(spec) if getattr(trained, f.name) != getattr(spec, f.name)]
        again = f" with --residual-scale {trained.residual_scale!r}" if "residual_scale" in changed else ""
        raise ValueError(f"--resume: these settings build another network than the one {config_file} records "
                         f"(it differs in {', '.join(changed)}; a default has changed since it was started); nothing "
                         f"was changed: its checkpoint cannot be resumed, start it afresh with --overwrite{again}")


def _check_existing_run(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse what a run directory holds (see ``train``): a result.json that is not a finished
    run's (unreadable, or another status) unless overwriting; without resume or overwrite, a
    finished or an unfinished run."""
    result_path = out / RESULT_FILE
    if not overwrite and result_path.exists() and read_result(out) is None:
        try:
            status = read_json(result_path).get("status")
            problem = f"its status is {status!r}, not one of {', '.join(FINISHED)}"
        except (OSError, ValueError) as err:
            problem = str(err)
        raise ValueError(f"--out {out}: {result_path} is not a finished run's result ({problem}); nothing was "
                         "changed: move it aside, or pass --overwrite to replace the run")
    if resume or overwrite:
        return
    result = read_result(out)
    if result is not None:
        raise ValueError(f"--out {out}: holds a finished run ({result['status']}); pass --overwrite to replace "
                         "it, or choose another --out")
    present = unfinished_run_files(out)
    if present:
        raise ValueError(f"--out {out}: holds an unfinished run ({', '.join(present)}); pass --resume to continue "
                         "it or --overwrite to start afresh")


def _fit_run(run: Resolved, files: RunFiles, checkpoint: dict[str, Any] | None, *, progress: bool,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Build, initialise (or restore), train and record the run; the directory's lock is held."""
    config, device, data, out = run.config, run.device, run.data, files.out
    started = time.perf_counter() - (checkpoint["wall_seconds"] if checkpoint else 0.0)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    # The history, one line per completed epoch: empty, or the checkpoint's epochs.
    history = [EpochMetrics(**line) for line in checkpoint["history"]] if checkpoint else []
    files.start(run.record(), history)

    torch.manual_seed(config.seed)
    model = build_model(run.spec)
    init_from_point_(model, run.point if run.residual is None else run.residual,
                     mean_square_input=data.mean_square_input, weight_init=config.weight_init,
                     generator=torch.Generator().manual_seed(config.seed))
    model.to(device)
    set_kernels_(model, config.kernels if device.type == "cpu" else "dense")  # before the optimiser: layouts
    optimizer = make_optimizer(
        config.optimizer, param_groups(model, config.readout_lr_scale, config.lr), lr=config.lr,
        momentum=config.momentum, weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)
    scheduler = make_scheduler(config.lr_schedule, optimizer, total_steps=config.epochs * steps_per_epoch)

    shape = (-1,) if config.model in DENSE_MODELS else tuple(data.image_shape)

    def split(x, y):  # (N, C*H*W) -> (N, C*H*W) for the (residual) MLP, (N, C, H, W) for the (residual) CNN
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
        try:
            restore_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                                   shuffle_generator=shuffle_gen, augment_generator=augment_gen)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{files.checkpoint}: does not fit this run ({type(err).__name__}: {err}); "
                             "delete it to restart the run from scratch") from err
        init_preact_var = checkpoint["init_layer_preact_var"]
    elif config.log_layer_stats:
        init_preact_var = layer_preact_var(model, splits["test"][0][:PROBE_SIZE])
    # The weights after the last completed epoch (those a diverged run keeps).
    last_good: dict[str, torch.Tensor] = model_state() if history else {}
    done = list(history)  # the completed epochs, for the checkpoints

    def on_epoch(metrics: EpochMetrics) -> None:
        append_jsonl(files.metrics, metrics_to_dict(metrics))
        if progress:
            log(f"epoch {metrics.epoch}/{config.epochs}: train loss {metrics.train_loss:.4f}, "
                f"test accuracy {metrics.test_accuracy:.4f}, sparsity train {metrics.train_sparsity:.4f} "
                f"/ test {metrics.test_sparsity:.4f} ({metrics.seconds:.0f} s)")
        last_good.update(model_state())
        done.append(metrics)
        save_checkpoint(
            files.checkpoint, epoch=metrics.epoch, settings=config.to_dict(), model_state=last_good,
            optimizer=optimizer, scheduler=scheduler, shuffle_generator=shuffle_gen, augment_generator=augment_gen,
            history=[metrics_to_dict(m) for m in done], wall_seconds=time.perf_counter() - started,
            init_layer_preact_var=init_preact_var,
        )

    history, divergence = fit(
        model, optimizer, splits, epochs=config.epochs, batch_size=config.batch_size, generator=shuffle_gen,
        on_epoch=on_epoch, show_progress=progress, augment=augment, scheduler=scheduler,
        start_epoch=len(history) + 1, history=history, label_smoothing=config.label_smoothing,
        layer_stats=config.log_layer_stats,
    )
    # A diverged run keeps the weights of its last completed epoch (none if it diverged in the first).
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()} if divergence is None else last_good
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
    tracker = getattr(model, "tracker", None)
    if tracker is not None and weights:  # the thresholds the weights were trained to (and evaluate with)
        taus = weights["tracker.running_tau"].tolist()
        result["tracked_thresholds"] = {"tau": taus, "m": [m0 * t / t0 for t, (t0, m0) in zip(taus, tracker.initial)]}
    files.finish(result, weights)
    if divergence is not None:
        log(
            f"diverged: non-finite training loss ({divergence.loss}) at epoch {divergence.epoch}, "
            f"step {divergence.step}; {len(history)} epoch(s) completed, history kept in {out}"
            + ("" if weights else " (no weights saved: no epoch completed)")
        )
    return to_json_safe(result)  # what result.json holds (non-finite numbers as None), as a resume returns it
