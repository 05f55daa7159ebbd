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

Residual networks (``resmlp``, ``rescnn``; docs/theory.md section 8) are initialised by
:func:`sparse_eoc.gp.residual_init` (``residual_scale``, ``thresholds``) and measured at every
activation site, the head site included (depth + 1 sites for ``resmlp``, 2 depth + 1 for
``rescnn``): ``q_theory`` is the residual recursion q^{l+1} = q^l + alpha^2 V(q^l) from each
input's q^1 (:func:`sparse_eoc.gp.residual_variances`), ``sparsity_theory`` the fraction of zeros
it predicts at each site; with the per-layer thresholds the latter is the target at every site.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import norm

from sparse_eoc.activations import get_activation
from sparse_eoc.checks import check_int
from sparse_eoc.gp import THRESHOLDS, iterate_variance, residual_init, residual_variances, solve_eoc
from sparse_eoc.nn.build import build_model, check_fits, init_from_point_
from sparse_eoc.nn.device import resolve_device
from sparse_eoc.nn.init import input_weight_variance
from sparse_eoc.runs.config import (
    CONV_MODELS,
    DENSE_MODELS,
    MODELS,
    RESIDUAL_MODELS,
)
from sparse_eoc.runs.network import NetworkSpec

__all__ = ["Propagation", "propagate", "BLOW_UP"]

#: A median variance above this counts as blown up.
BLOW_UP = 1e30


@dataclass(frozen=True)
class Propagation:
    """Per-layer statistics over seeds; one entry per activation site, site l at index l - 1:
    ``depth`` entries for ``mlp`` and ``cnn``, depth + 1 for ``resmlp``, 2 depth + 1 for ``rescnn``.

    Attributes:
        layer: 1..n_sites (a residual network's last is the head site).
        q_median, q_p10, q_p90: median and 10/90 % quantiles over seeds of the
            empirical q^l; None where a value overflowed (inf or nan in float64).
        sparsity: mean over seeds of the fraction of exact zeros of phi(h^l).
        q_theory: the infinite-width q^l: from q^1 = q* for Gaussian inputs, else the mean
            over the given inputs of the map iterated from each one's q^1_i (module docstring);
            None past overflow.
        blown_up_at_layer: the first layer whose median passed 1e30 or
            overflowed; None if never.
        sparsity_theory: the infinite-width fraction of zeros at each site, P(phi(h) = 0) for
            h ~ N(0, q^l) (the mean over the given inputs); past overflow its q -> inf limit.
    """

    layer: list[int]
    q_median: list[float | None]
    q_p10: list[float | None]
    q_p90: list[float | None]
    sparsity: list[float | None]
    q_theory: list[float | None]
    blown_up_at_layer: int | None
    sparsity_theory: list[float] | None = None

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
    residual_scale: float | None = None,
    thresholds: str = "per-layer",
) -> Propagation:
    """Propagate inputs through ``seeds`` random EoC networks and summarise each activation site.

    Args:
        activation, sparsity, q_star, m, slope: the EoC point, as for
            :func:`sparse_eoc.gp.solve_eoc`.
        model: ``mlp`` (``depth`` x ``width``), ``cnn`` (``depth`` conv layers
            of ``channels`` channels, ``kernel_size``, ``padding_mode``), ``resmlp`` or
            ``rescnn`` (``depth`` residual blocks of the same sizes).
        image_size: side of the random input images for the (residual) CNN.
        depth: hidden layers, or residual blocks, L >= 1.  seeds: networks drawn, >= 1.
        batch_size: random inputs per network (ignored when ``inputs`` is given).
        inputs: a fixed batch, e.g. standardised MNIST images: (B, in_features) for
            the (residual) MLP, (B, C, H, W) for the (residual) CNN. None: standard Gaussian
            inputs, (B, width) or (B, 3, image_size, image_size).
        seed: seed s draws network s + seed and its inputs (explicit randomness).
        residual_scale: alpha of a residual model, > 0; None: 2 / sqrt(depth).
        thresholds: ``per-layer`` or ``fixed``, of a residual model (:func:`sparse_eoc.gp.residual_init`).

    Returns:
        A :class:`Propagation`.

    Raises:
        ValueError: an unknown model, non-positive sizes, bad EoC inputs, or residual
            settings for a plain model.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got model={model!r}")
    if thresholds not in THRESHOLDS:
        raise ValueError(f"thresholds must be one of {', '.join(THRESHOLDS)}, got thresholds={thresholds!r}")
    if model not in RESIDUAL_MODELS and (residual_scale is not None or thresholds != "per-layer"):
        raise ValueError(f"residual_scale and thresholds apply to resmlp and rescnn only, not to model={model!r}")
    for name, value in (("depth", depth), ("seeds", seeds), ("batch_size", batch_size), ("width", width),
                        ("channels", channels), ("kernel_size", kernel_size), ("image_size", image_size)):
        check_int(name, value)
    check_int("seed", seed, minimum=0)
    if seed + seeds > 2**63:
        raise ValueError(f"seed + seeds must be at most 2**63 (torch seeds), got seed={seed!r}, seeds={seeds!r}")
    point = solve_eoc(activation, sparsity, q_star, m=m, slope=slope)
    residual = None
    if model in RESIDUAL_MODELS:
        residual = residual_init(point, depth, residual_scale=residual_scale, thresholds=thresholds,
                                 convs_per_block=2 if model == "rescnn" else 1)
    device = resolve_device(device) if isinstance(device, str) else device
    if inputs is not None:
        batch_size = len(inputs)
    dense, conv = model in DENSE_MODELS, model in CONV_MODELS
    image_shape = ((1, width) if dense else (3, image_size, image_size)) if inputs is None else (
        (1, inputs[0].numel()) if dense else tuple(inputs.shape[1:]))
    sites = {} if residual is None else {"residual_scale": residual.residual_scale,
                                         "site_taus": residual.site_taus, "site_ms": residual.site_ms}
    spec = NetworkSpec(kind=model, image_shape=image_shape, num_classes=10, depth=depth, activation=point.activation,
                       tau=point.tau, m=point.m, width=width if dense else None,
                       channels=channels if conv else None, kernel_size=kernel_size if conv else None,
                       padding_mode=padding_mode if conv else None, **sites)
    check_fits(spec, device, batch_size=batch_size, training=False, bytes_per_value=8,
               option="--depth/--width/--batch-size" if dense else "--depth/--channels/--batch-size")
    n_sites = spec.n_sites
    q = np.full((seeds, n_sites), np.nan)  # (seeds, n_sites)
    zeros = np.full((seeds, n_sites), np.nan)  # (seeds, n_sites)
    for s in range(seeds):
        gen = torch.Generator().manual_seed(seed + s)
        x = inputs
        if x is None:
            x = torch.randn((batch_size, *image_shape[1:]) if dense else (batch_size, *image_shape),
                            generator=gen, dtype=torch.float64)  # (B, width) or (B, 3, H, W)
        x = x.to(torch.float64)
        net = build_model(spec).double()
        init_from_point_(net, point if residual is None else residual, mean_square_input=float((x**2).mean()),
                         generator=gen)
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
    theory, sparsity_theory = _theory(point, q_star, depth, inputs, residual)
    return Propagation(
        layer=list(range(1, n_sites + 1)),
        q_median=_finite_or_none(median),
        q_p10=_finite_or_none(p10),
        q_p90=_finite_or_none(p90),
        sparsity=_finite_or_none(_masked_mean(zeros, q)),
        q_theory=_finite_or_none(theory),
        blown_up_at_layer=int(blown[0]) + 1 if blown.size else None,
        sparsity_theory=[float(v) for v in sparsity_theory],
    )


def _theory(point, q_star: float, depth: int, inputs: torch.Tensor | None,
            residual) -> tuple[np.ndarray, np.ndarray]:
    """The infinite-width q and sparsity of every site, shapes (n_sites,): from q* for Gaussian
    inputs, else the mean over the inputs of the map iterated from each one's first-layer variance
    (module docstring)."""
    if inputs is None:
        q1 = np.array([q_star])  # (1,)
    else:
        x = inputs.detach().to("cpu", torch.float64)
        per_input = (x**2).flatten(1).mean(dim=1).numpy()  # (B,): |x_i|^2 / N_0
        mean_square = float((x**2).mean())  # what init_eoc_'s input_weight_variance is given
        q1 = input_weight_variance(q_star, point.sigma_b2, mean_square) * per_input + point.sigma_b2  # (B,)
    sites = [point] * depth if residual is None else list(residual.sites)
    q = np.zeros((len(sites), q1.size))  # (n_sites, B); an all-zero input with sigma_b2 = 0 stays at 0
    live = q1 > 0
    if np.any(live):
        if residual is None:
            q[:, live] = iterate_variance(q1[live], point, depth - 1)
        else:
            q[:, live] = residual_variances(q1[live], residual)[0]
    zero_fraction = np.stack([_zero_fraction(p, row) for p, row in zip(sites, q)])  # (n_sites, B)
    return q.mean(axis=1), zero_fraction.mean(axis=1)


def _zero_fraction(point, q: np.ndarray) -> np.ndarray:
    """P(phi(h) = 0) for h ~ N(0, q), vectorised over q >= 0 (docs/theory.md section 2): 1 at q = 0
    (tau >= 0 zeroes h = 0), its q -> inf limit (0.5 one-sided, 0 two-sided) where q overflowed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = point.tau / np.sqrt(q)  # inf at q = 0 (nan for tau = 0: h = 0 is zeroed too)
    a = np.where(np.isnan(a), np.inf, a)
    return 2 * norm.cdf(a) - 1 if get_activation(point.activation).two_sided else norm.cdf(a)


def _masked_mean(zeros: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Mean over seeds of the sparsity where q is finite; nan where no seed is."""
    ok = np.isfinite(q)
    count = ok.sum(axis=0)
    total = np.where(ok, zeros, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
