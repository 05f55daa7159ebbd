"""From a run's description to a module: build, initialise on the EoC, load trained weights.

The one recipe "solve -> build -> initialise at the EoC" that training, the propagation
experiment, the inference benchmark and the tests share::

    point = solve_eoc("crelu", 0.85, slope=0.7)
    spec = NetworkSpec(kind="mlp", image_shape=(1, 28, 28), num_classes=10, depth=30,
                       activation=point.activation, tau=point.tau, m=point.m, width=300)
    model = build_model(spec)
    init_from_point_(model, point, mean_square_input=data.mean_square_input,
                     generator=torch.Generator().manual_seed(0))

A residual network (docs/theory.md section 8) takes its sites' parameters from a
:class:`~sparse_eoc.gp.ResidualInit` instead of the point::

    residual = residual_init(point, depth=100)          # per-layer thresholds, alpha = 2 / sqrt(100)
    spec = NetworkSpec(kind="resmlp", ..., depth=100, residual_scale=residual.residual_scale,
                       site_taus=residual.site_taus, site_ms=residual.site_ms, width=300)
    init_from_point_(build_model(spec), residual, mean_square_input=..., generator=...)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sparse_eoc.checks import physical_memory_bytes
from sparse_eoc.nn.cnn import SparseCNN
from sparse_eoc.nn.device import resolve_device
from sparse_eoc.nn.init import init_eoc_, input_weight_variance
from sparse_eoc.nn.mlp import SparseMLP
from sparse_eoc.nn.resnet import ResCNN, ResMLP, init_residual_
from sparse_eoc.runs.files import CONFIG_FILE, MODEL_FILE, RESULT_FILE, read_json, read_result
from sparse_eoc.runs.network import NetworkSpec

__all__ = ["build_model", "init_from_point_", "check_fits", "device_memory_bytes", "load_run"]


Model = SparseMLP | SparseCNN | ResMLP | ResCNN


def build_model(spec: NetworkSpec) -> Model:
    """The untrained module a :class:`NetworkSpec` describes (PyTorch's default init)."""
    act = (spec.activation, spec.tau, spec.m)
    if spec.kind == "mlp":
        return SparseMLP(spec.in_features, spec.num_classes, spec.depth, spec.width, *act)
    if spec.kind == "cnn":
        return SparseCNN(spec.image_shape[0], spec.num_classes, spec.depth, spec.channels, *act,
                         kernel_size=spec.kernel_size, padding_mode=spec.padding_mode)
    sites = (spec.activation, spec.site_taus, spec.site_ms)
    if spec.kind == "resmlp":
        return ResMLP(spec.in_features, spec.num_classes, spec.depth, spec.width, *sites,
                      residual_scale=spec.residual_scale, tracked_sparsity=spec.tracked_sparsity)
    return ResCNN(spec.image_shape[0], spec.num_classes, spec.depth, spec.channels, *sites,
                  kernel_size=spec.kernel_size, padding_mode=spec.padding_mode, residual_scale=spec.residual_scale,
                  tracked_sparsity=spec.tracked_sparsity)


def init_from_point_(
    model: Model,
    point,
    *,
    mean_square_input: float,
    weight_init: str = "gaussian",
    generator: torch.Generator | None = None,
) -> float:
    """Initialise ``model`` in place at the EoC point ``point`` (a ``sparse_eoc.gp.EoCPoint``), or a
    residual network by its :class:`~sparse_eoc.gp.ResidualInit`.

    Hidden layers get (sigma_w2, sigma_b2) of the point (a residual network: of each site,
    :func:`~sparse_eoc.nn.resnet.init_residual_`); the first layer's (the stem's) weight variance
    is chosen so that its pre-activations have variance q* on inputs of mean square
    ``mean_square_input`` (:func:`~sparse_eoc.nn.init.input_weight_variance`; paper Section 5).

    Returns:
        The first layer's sigma_w^2 (what ``config.json["eoc"]["input_sigma_w2"]`` records).

    Raises:
        ValueError: as :func:`~sparse_eoc.nn.init.init_eoc_`, ``init_residual_`` and
            ``input_weight_variance``; a residual network given a plain point, or the reverse.
    """
    residual = isinstance(model, (ResMLP, ResCNN))
    if residual != hasattr(point, "sites"):
        raise ValueError(f"a {type(model).__name__} is initialised from "
                         f"{'a ResidualInit (sparse_eoc.gp.residual_init)' if residual else 'an EoCPoint'}, "
                         f"got a {type(point).__name__}")
    base = point.base if residual else point
    input_sigma_w2 = input_weight_variance(base.q_star, base.sigma_b2, mean_square_input)
    if residual:
        init_residual_(model, point, input_sigma_w2=input_sigma_w2, weight_init=weight_init, generator=generator)
    else:
        init_eoc_(model, point.sigma_w2, point.sigma_b2, input_sigma_w2=input_sigma_w2, generator=generator,
                  weight_init=weight_init)
    return input_sigma_w2


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device``: a GPU's total memory, or the machine's physical memory (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return physical_memory_bytes()


def check_fits(spec: NetworkSpec, device: torch.device, *, batch_size: int, option: str = "--depth/--width",
               training: bool = True, bytes_per_value: int = 4) -> None:
    """Refuse, before anything is built, a network that cannot fit in ``device``'s memory.

    The estimate is a lower bound (:meth:`NetworkSpec.memory_bytes` of a training step, or of
    a forward pass with ``training=False``), so only what cannot fit is refused; the paper's
    sizes (depth 100 x width 300; depth 50 x 300 channels on 32 x 32 images, batch 128) pass
    on a 24 GiB machine.

    Raises:
        ValueError: naming ``option`` (the sizes to lower), the estimate and the memory.
    """
    need = spec.memory_bytes(batch_size, training=training, bytes_per_value=bytes_per_value)
    have = device_memory_bytes(device)
    if have is not None and need > have:
        size = f"{spec.channels} channels" if spec.channels is not None else f"width {spec.width}"
        raise ValueError(f"{option}: a depth-{spec.depth}, {size} {spec.kind} at batch {batch_size} needs at least "
                         f"{need / 2**30:.3g} GiB to {'train' if training else 'run'}, more than the "
                         f"{have / 2**30:.3g} GiB of {device}")


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu") -> tuple[Model, dict[str, Any]]:
    """Rebuild a finished run's trained model from its directory.

    Returns:
        (model in eval mode on ``device``, the parsed ``config.json``).

    Raises:
        FileNotFoundError: ``config.json`` is missing, or ``model.safetensors`` of a completed run.
        ValueError: the run is not finished (no ``result.json`` with status completed or
            diverged: it may be training, interrupted, or half overwritten), it diverged
            before any epoch completed (no weights), ``config.json`` is not valid JSON or
            lacks the ``network`` section, or ``model.safetensors`` is corrupt or holds
            weights of another shape (each names the file).
    """
    from safetensors.torch import load_file

    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run / CONFIG_FILE}: not found (is {run} a sparse-eoc run directory?)")
    result = read_result(run)
    if result is None:
        raise ValueError(f"{run}: not a finished run ({RESULT_FILE} with status completed or diverged is missing: "
                         "the run is still training, was interrupted (resume it with sparse-eoc train --resume), "
                         "or failed)")
    if not (run / MODEL_FILE).is_file():
        if result["status"] == "diverged":
            raise ValueError(f"{run}: the run diverged before its first epoch completed, so it has no weights")
        raise FileNotFoundError(f"{run / MODEL_FILE}: not found")
    config = read_json(run / CONFIG_FILE, what="a run's settings (a JSON object)")
    try:
        model = build_model(NetworkSpec.from_dict(config.get("network")))
    except ValueError as err:
        raise ValueError(f"{run / CONFIG_FILE}: cannot rebuild the model from its 'network' section: {err}") from err
    try:
        model.load_state_dict(load_file(str(run / MODEL_FILE)))
    except Exception as err:  # safetensors' own error type for a corrupt file; RuntimeError for a mismatch
        raise ValueError(f"{run / MODEL_FILE}: corrupt or not the weights of the network in {CONFIG_FILE} "
                         f"({type(err).__name__}: {err})") from err
    return model.to(resolve_device(device)).eval(), config
