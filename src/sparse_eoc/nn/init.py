"""In-place Edge-of-Chaos initialisers, in the style of ``torch.nn.init``.

The paper's Gaussian initialisation (docs/theory.md section 1.1):
W^l_ij ~ N(0, sigma_w^2 / fan_in) and b^l_i ~ N(0, sigma_b^2), where fan_in is
the number of inputs of one unit (N_{l-1} for a dense layer, channels x kernel
area for a convolution). (sigma_w^2, sigma_b^2) on the EoC come from
``sparse_eoc.gp`` (docs/theory.md section 3.3).

The first layer sees data, not phi(h): its weight variance is chosen so that
q^1 = q* (paper Section 5; docs/theory.md section 5.3), see :func:`input_weight_variance`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparse_eoc.runs.config import WEIGHT_INITS

__all__ = ["eoc_normal_", "delta_orthogonal_", "init_eoc_", "input_weight_variance", "WEIGHT_INITS"]


def _check_variances(sigma_w2: float, sigma_b2: float, prefix: str = "") -> tuple[float, float]:
    sigma_w2, sigma_b2 = float(sigma_w2), float(sigma_b2)
    if not (math.isfinite(sigma_w2) and sigma_w2 > 0.0):
        raise ValueError(f"{prefix}sigma_w2 must be finite and > 0, got {prefix}sigma_w2={sigma_w2!r}")
    if not (math.isfinite(sigma_b2) and sigma_b2 >= 0.0):
        raise ValueError(f"{prefix}sigma_b2 must be finite and >= 0, got {prefix}sigma_b2={sigma_b2!r}")
    return sigma_w2, sigma_b2


def eoc_normal_(
    target: nn.Module | Tensor,
    sigma_w2: float,
    sigma_b2: float = 0.0,
    *,
    bias: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module | Tensor:
    """Fill a layer in place: W ~ N(0, sigma_w2 / fan_in), b ~ N(0, sigma_b2).

    Implements the paper's initialisation (docs/theory.md section 1.1). ``sigma_b2 = 0``
    sets the bias to exactly 0.

    Args:
        target: a layer with ``.weight`` and optional ``.bias`` (``nn.Linear``,
            ``nn.Conv2d``, ...), or a weight tensor of shape ``(out, in, *kernel)``.
            fan_in = ``in * prod(kernel)`` = ``weight[0].numel()``.
        sigma_w2: sigma_w^2 > 0, weight variance times fan_in.
        sigma_b2: sigma_b^2 >= 0, bias variance.
        bias: with a tensor ``target`` only: the bias tensor, shape ``(out,)``,
            to fill too. A module's own ``.bias`` is used otherwise.
        generator: random source, on the parameters' device; None = global RNG.

    Returns:
        ``target``, filled.

    Raises:
        ValueError: if ``sigma_w2 <= 0``, ``sigma_b2 < 0`` (or either not finite),
            or the weight has fewer than 2 dimensions.
    """
    sigma_w2, sigma_b2 = _check_variances(sigma_w2, sigma_b2)
    if isinstance(target, Tensor):
        weight = target
    else:
        if bias is not None:
            raise ValueError("bias must be None when target is a module (its .bias is used)")
        weight, bias = target.weight, getattr(target, "bias", None)
    if weight.dim() < 2:
        raise ValueError(f"weight must have shape (out, in, *kernel), got shape {tuple(weight.shape)}")
    fan_in = weight[0].numel()
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(sigma_w2 / fan_in), generator=generator)
        if bias is not None:
            if sigma_b2 > 0.0:
                bias.normal_(0.0, math.sqrt(sigma_b2), generator=generator)
            else:
                bias.zero_()
    return target


def delta_orthogonal_(
    conv: nn.Module,
    sigma_w2: float,
    sigma_b2: float = 0.0,
    *,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Delta-orthogonal initialisation of a k x k convolution (Xiao et al. 2018, Algorithm 2).

    Every tap is zero except the centre one, which is a random (semi-)orthogonal
    (C_out, C_in) matrix scaled to the Gaussian initialisation's signal gain: each
    output channel's mean squared pre-activation is sigma_w2 times the mean square of
    its input channels at that position, as with W ~ N(0, sigma_w2 / fan_in) on a
    stationary input. Rows are orthonormal when C_out <= C_in (gain sqrt(sigma_w2));
    columns are when C_out > C_in (gain sqrt(sigma_w2 C_out / C_in)). The bias is
    N(0, sigma_b2) as for the Gaussian initialisation.

    Args:
        conv: an ``nn.Conv2d`` (weight (C_out, C_in, k, k), k odd) with optional bias.
        sigma_w2: sigma_w^2 > 0.  sigma_b2: sigma_b^2 >= 0.
        generator: random source; None = global RNG.

    Returns:
        ``conv``, filled.

    Raises:
        ValueError: a bad variance, a weight that is not 4-D, or an even kernel.
    """
    sigma_w2, sigma_b2 = _check_variances(sigma_w2, sigma_b2)
    weight = conv.weight
    if weight.dim() != 4 or weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0:
        raise ValueError(f"delta_orthogonal_ needs a conv weight (C_out, C_in, k, k) with odd k, "
                         f"got shape {tuple(weight.shape)}")
    c_out, c_in, kh, kw = weight.shape
    gain = math.sqrt(sigma_w2 * max(1.0, c_out / c_in))
    with torch.no_grad():
        # QR of a Gaussian matrix: Q has orthonormal columns (tall) or rows (wide, via the transpose).
        tall = c_out >= c_in
        a = torch.randn((c_out, c_in) if tall else (c_in, c_out), generator=generator,
                        dtype=weight.dtype, device=weight.device)
        q, r = torch.linalg.qr(a)  # (rows, min) with orthonormal columns
        q = q * torch.sign(torch.diagonal(r))  # Haar-distributed (Mezzadri 2007)
        centre = q if tall else q.T  # (C_out, C_in)
        weight.zero_()
        weight[:, :, kh // 2, kw // 2] = gain * centre
        if conv.bias is not None:
            if sigma_b2 > 0:
                conv.bias.normal_(0.0, math.sqrt(sigma_b2), generator=generator)
            else:
                conv.bias.zero_()
    return conv


def input_weight_variance(q_star: float, sigma_b2: float, mean_square_input: float) -> float:
    """First-layer sigma_w^2 that puts the first pre-activation variance at q*.

    For an input x in R^{N_0}, h^1_i = sum_j W_ij x_j + b_i has variance
    ``sigma_w2_in * mean_square_input + sigma_b2`` with
    ``mean_square_input = E ||x||^2 / N_0``; setting it to q* gives
    ``sigma_w2_in = (q* - sigma_b2) / mean_square_input`` (paper Section 5;
    docs/theory.md section 5.3).

    Args:
        q_star: fixed-point variance q* > 0.
        sigma_b2: bias variance, 0 <= sigma_b2 < q_star.
        mean_square_input: average squared input coordinate over the data, > 0
            (e.g. 1 for standardised pixels).

    Raises:
        ValueError: if any argument is out of range or not finite.
    """
    q_star, sigma_b2, msi = float(q_star), float(sigma_b2), float(mean_square_input)
    if not (math.isfinite(q_star) and q_star > 0.0):
        raise ValueError(f"q_star must be finite and > 0, got q_star={q_star!r}")
    if not (math.isfinite(sigma_b2) and 0.0 <= sigma_b2 < q_star):
        raise ValueError(f"sigma_b2 must be in [0, q_star={q_star!r}), got sigma_b2={sigma_b2!r}")
    if not (math.isfinite(msi) and msi > 0.0):
        raise ValueError(f"mean_square_input must be finite and > 0, got mean_square_input={msi!r}")
    return (q_star - sigma_b2) / msi


def init_eoc_(
    model: nn.Module,
    sigma_w2: float,
    sigma_b2: float,
    *,
    input_sigma_w2: float | None = None,
    readout_sigma_w2: float = 1.0,
    weight_init: str = "gaussian",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise a :class:`~sparse_eoc.nn.mlp.SparseMLP` or :class:`~sparse_eoc.nn.cnn.SparseCNN`
    in place on the EoC.

    - hidden layers 2..L: W ~ N(0, sigma_w2 / width), b ~ N(0, sigma_b2);
    - hidden layer 1: W ~ N(0, input_sigma_w2 / in_features), b ~ N(0, sigma_b2)
      (see :func:`input_weight_variance` for q^1 = q*);
    - readout: W ~ N(0, readout_sigma_w2 / width), b = 0. The readout is not part
      of the signal-propagation analysis; with unit variance each logit's
      variance equals the mean square of phi(h^L) (small at high sparsity, so
      the initial softmax is near uniform) and a zero bias favours no class.

    Args:
        model: a model with ``hidden`` (a sequence of ``nn.Linear``) and ``readout``.
        sigma_w2: sigma_w^2 > 0 of the hidden layers (EoC value from ``sparse_eoc.gp``).
        sigma_b2: sigma_b^2 >= 0 of all hidden layers.
        input_sigma_w2: first-layer sigma_w^2 > 0; None = ``sigma_w2``.
        readout_sigma_w2: readout sigma_w^2 > 0.
        weight_init: ``gaussian`` (the paper's) or ``delta_orthogonal`` (conv layers
            only, :func:`delta_orthogonal_`, with the same sigma_w2).
        generator: random source on the model's device; None = global RNG.
            Layers are filled in order (first hidden layer to readout), so the same
            generator state gives the same network.

    Returns:
        ``model``.

    Raises:
        ValueError: if a variance is out of range (the message names it).
    """
    sigma_w2, sigma_b2 = _check_variances(sigma_w2, sigma_b2)
    input_sigma_w2 = sigma_w2 if input_sigma_w2 is None else input_sigma_w2
    _check_variances(input_sigma_w2, sigma_b2, prefix="input_")
    _check_variances(readout_sigma_w2, 0.0, prefix="readout_")
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got weight_init={weight_init!r}")
    fill = eoc_normal_ if weight_init == "gaussian" else delta_orthogonal_
    for i, layer in enumerate(model.hidden):
        fill(layer, input_sigma_w2 if i == 0 else sigma_w2, sigma_b2, generator=generator)
    eoc_normal_(model.readout, readout_sigma_w2, 0.0, generator=generator)
    return model
