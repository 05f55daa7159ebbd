"""Finite-width signal propagation at initialisation, held against the infinite-width theory.

Draws ``seeds`` EoC-initialised random networks (float64), feeds each the same
kind of input batch, and records per hidden layer the empirical pre-activation
variance q^l = mean(h^2) over units (and positions) and examples, and the
fraction of exact zeros of phi(h). The theory's q^l is the variance map V iterated
from the first-layer variance of the inputs actually fed (paper Section 4, docs/theory.md
sections 1.3 and 4.1):

- Gaussian inputs (the default): q^1 = q* for every input in the infinite-width limit
  (their mean square tends to 1 as the input width grows), so the theory stays at q*
  on the EoC and any drift of the measured q^l is a finite-width effect;
- given inputs (e.g. MNIST images): input i has its own q^1_i = sigma_w2_in |x_i|^2 / N_0
  + sigma_b2, around q* (sigma_w2_in sets their mean to q*). The theory column is the
  mean over inputs of V^(l-1)(q^1_i), as the measured q^l is a mean over examples. Inputs
  above q* run off ReLU_tau's half-stable fixed point in the theory itself, so the
  unclipped networks blow up in theory too, not only at finite width.

For the CNN this is exact for stationary inputs (the default: i.i.d. Gaussian images with
circular padding, where every position's variance follows the DNN map V). Real images
with zero padding are not stationary: there ``q_theory`` is the same position-averaged
approximation, and :func:`sparse_eoc.gp.iterate_cnn_covariance` gives the full
spatial covariance map for a given input covariance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sparse_eoc.checks import check_int
from sparse_eoc.gp import iterate_variance, solve_eoc
from sparse_eoc.nn.build import build_model, check_fits, init_from_point_
from sparse_eoc.nn.device import resolve_device
from sparse_eoc.nn.init import input_weight_variance
from sparse_eoc.runs.config import MODELS
from sparse_eoc.runs.network import NetworkSpec

__all__ = ["Propagation", "propagate", "BLOW_UP"]

#: A median variance above this counts as blown up.
BLOW_UP = 1e30


@dataclass(frozen=True)
class Propagation:
    """Per-layer statistics over seeds; lists of length ``depth``, layer l at index l - 1.

    Attributes:
        layer: 1..L.
        q_median, q_p10, q_p90: median and 10/90 % quantiles over seeds of the
            empirical q^l; None where a value overflowed (inf or nan in float64).
        sparsity: mean over seeds of the fraction of exact zeros of phi(h^l).
        q_theory: the infinite-width q^l: from q^1 = q* for Gaussian inputs, else the mean
            over the given inputs of V iterated from each one's q^1_i (module docstring);
            None past overflow.
        blown_up_at_layer: the first layer whose median passed 1e30 or
            overflowed; None if never.
    """

    layer: list[int]
    q_median: list[float | None]
    q_p10: list[float | None]
    q_p90: list[float | None]
    sparsity: list[float | None]
    q_theory: list[float | None]
    blown_up_at_layer: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def propagate(
    activation: str,
    sparsity: float | None = None,
    *,
    q_star: float = 1.0,
    m: float | None = None,
    slope: float | None = None,
    model: str = "mlp",
    width: int = 300,
    channels: int = 64,
    kernel_size: int = 3,
    padding_mode: str = "circular",
    image_size: int = 8,
    depth: int = 100,
    seeds: int = 8,
    batch_size: int = 64,
    inputs: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Propagation:
    """Propagate inputs through ``seeds`` random EoC networks and summarise each layer.

    Args:
        activation, sparsity, q_star, m, slope: the EoC point, as for
            :func:`sparse_eoc.gp.solve_eoc`.
        model: ``mlp`` (``depth`` x ``width``) or ``cnn`` (``depth`` conv layers
            of ``channels`` channels, ``kernel_size``, ``padding_mode``).
        image_size: side of the random input images for the CNN.
        depth: hidden layers L >= 1.  seeds: networks drawn, >= 1.
        batch_size: random inputs per network (ignored when ``inputs`` is given).
        inputs: a fixed batch, e.g. standardised MNIST images: (B, in_features) for
            the MLP, (B, C, H, W) for the CNN. None: standard Gaussian inputs,
            (B, width) or (B, 3, image_size, image_size).
        seed: seed s draws network s + seed and its inputs (explicit randomness).

    Returns:
        A :class:`Propagation`.

    Raises:
        ValueError: an unknown model, non-positive sizes, or bad EoC inputs.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got model={model!r}")
    for name, value in (("depth", depth), ("seeds", seeds), ("batch_size", batch_size), ("width", width),
                        ("channels", channels), ("kernel_size", kernel_size), ("image_size", image_size)):
        check_int(name, value)
    check_int("seed", seed, minimum=0)
    if seed + seeds > 2**63:
        raise ValueError(f"seed + seeds must be at most 2**63 (torch seeds), got seed={seed!r}, seeds={seeds!r}")
    point = solve_eoc(activation, sparsity, q_star, m=m, slope=slope)
    device = resolve_device(device) if isinstance(device, str) else device
    if inputs is not None:
        batch_size = len(inputs)
    image_shape = ((1, width) if model == "mlp" else (3, image_size, image_size)) if inputs is None else (
        (1, inputs[0].numel()) if model == "mlp" else tuple(inputs.shape[1:]))
    spec = NetworkSpec(kind=model, image_shape=image_shape, num_classes=10, depth=depth, activation=point.activation,
                       tau=point.tau, m=point.m, width=width if model == "mlp" else None,
                       channels=channels if model == "cnn" else None,
                       kernel_size=kernel_size if model == "cnn" else None,
                       padding_mode=padding_mode if model == "cnn" else None)
    check_fits(spec, device, batch_size=batch_size, training=False, bytes_per_value=8,
               option="--depth/--width/--batch-size" if model == "mlp" else "--depth/--channels/--batch-size")
    q = np.full((seeds, depth), np.nan)  # (seeds, L)
    zeros = np.full((seeds, depth), np.nan)  # (seeds, L)
    for s in range(seeds):
        gen = torch.Generator().manual_seed(seed + s)
        x = inputs
        if x is None:
            x = torch.randn((batch_size, *image_shape[1:]) if model == "mlp" else (batch_size, *image_shape),
                            generator=gen, dtype=torch.float64)  # (B, width) or (B, 3, H, W)
        x = x.to(torch.float64)
        net = build_model(spec).double()
        init_from_point_(net, point, mean_square_input=float((x**2).mean()), generator=gen)
        net.to(device)
        with torch.no_grad(), np.errstate(over="ignore", invalid="ignore"):
            for l, (h, a) in enumerate(net.hidden_states(x.to(device))):
                q[s, l] = (h**2).mean().item()  # over units (positions) and examples
                zeros[s, l] = (a == 0).double().mean().item()
                if not math.isfinite(q[s, l]):
                    break  # everything deeper is inf/nan too

    with np.errstate(invalid="ignore"):
        q_inf = np.where(np.isfinite(q), q, np.inf)  # nan (inf - inf) counts as overflowed
        median, p10, p90 = (np.quantile(q_inf, p, axis=0) for p in (0.5, 0.1, 0.9))
    blown = np.nonzero(~(median <= BLOW_UP))[0]
    theory = _theory(point, q_star, depth, inputs)
    return Propagation(
        layer=list(range(1, depth + 1)),
        q_median=_finite_or_none(median),
        q_p10=_finite_or_none(p10),
        q_p90=_finite_or_none(p90),
        sparsity=_finite_or_none(_masked_mean(zeros, q)),
        q_theory=_finite_or_none(np.asarray(theory, dtype=float)),
        blown_up_at_layer=int(blown[0]) + 1 if blown.size else None,
    )


def _theory(point, q_star: float, depth: int, inputs: torch.Tensor | None) -> np.ndarray:
    """The infinite-width q^1..q^L, shape (L,): from q* for Gaussian inputs, else the mean over
    the inputs of V iterated from each one's first-layer variance (module docstring)."""
    if inputs is None:
        return np.asarray(iterate_variance(q_star, point, depth - 1), dtype=float)  # (L,)
    x = inputs.detach().to("cpu", torch.float64)
    per_input = (x**2).flatten(1).mean(dim=1).numpy()  # (B,): |x_i|^2 / N_0
    mean_square = float((x**2).mean())  # what init_eoc_'s input_weight_variance is given
    q1 = input_weight_variance(q_star, point.sigma_b2, mean_square) * per_input + point.sigma_b2  # (B,)
    q = np.zeros((depth, q1.size))  # (L, B); an all-zero input with sigma_b2 = 0 stays at 0
    live = q1 > 0
    if np.any(live):
        q[:, live] = iterate_variance(q1[live], point, depth - 1)
    return q.mean(axis=1)


def _masked_mean(zeros: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Mean over seeds of the sparsity where q is finite; nan where no seed is."""
    ok = np.isfinite(q)
    count = ok.sum(axis=0)
    total = np.where(ok, zeros, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
