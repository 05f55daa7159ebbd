"""Torch versions of the registered sparsity-inducing activations.

Each function here is the torch twin of the NumPy function of the same name in
:mod:`sparse_eoc.activations` (paper Section 2; docs/theory.md section 2)::

    relu_tau(x, tau)   = max(0, x - tau)                        F.relu(x - tau)
    st_tau(x, tau)     = sign(x) max(0, |x| - tau)              F.softshrink(x, tau)
    crelu(x, tau, m)   = min(max(x - tau, 0), m)                F.hardtanh(x - tau, 0, m)
    cst(x, tau, m)     = sign(x) min(max(|x| - tau, 0), m)      F.hardtanh(F.softshrink(x, tau), -m, m)

Each is one fused torch op (two for ``cst``) with an exact a.e. gradient that
equals the registry's ``derivative`` everywhere, kinks included: 1 on the linear
pieces, 0 on the zero set (``x <= tau``, resp. ``|x| <= tau``) and on the
saturated set (``x >= tau + m``, resp. ``|x| >= tau + m``). ``hardtanh`` is used
rather than ``clamp`` because its backward is one fused kernel with strict
inequalities (``clamp``'s backward passes the gradient at the clip points).

``m = inf`` is allowed for ``crelu``/``cst`` and then equals ``relu_tau``/``st_tau``;
all four take ``(x, tau, m)`` like their NumPy twins, and the unclipped
``relu_tau``/``st_tau`` require ``m = inf``. All shapes are elementwise: input and
output have the same shape ``(*)``, dtype and device.

Every module also exposes the split used by :class:`~sparse_eoc.nn.mlp.SparseMLP`
to fold the threshold into the preceding bias: ``phi(h) == forward_shifted_(h -
bias_shift)``. For the one-sided activations ``bias_shift = tau`` and the rest is
one op; the two-sided ones cannot fold (``bias_shift = 0``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_eoc.activations import canonical_name, get_activation

__all__ = [
    "relu_tau",
    "st_tau",
    "crelu",
    "cst",
    "SparseActivation",
    "ReLUTau",
    "STTau",
    "CReLU",
    "CST",
    "make_activation",
    "MODULES",
]


# --------------------------------------------------------------------------- functions


def relu_tau(x: Tensor, tau: float = 0.0, m: float = math.inf) -> Tensor:
    """ReLU_tau(x) = max(0, x - tau), elementwise.

    Args:
        x: pre-activation h, any shape ``(*)``.
        tau: threshold, finite and >= 0 (tau = 0 is plain ReLU).
        m: must be ``inf`` (unclipped); accepted for the registry's common signature.

    Returns:
        Tensor of the shape, dtype and device of ``x``.

    Raises:
        ValueError: if ``tau`` is not finite and >= 0, or ``m`` is not inf.
    """
    tau, _ = get_activation("relu_tau").check_params(tau, m)
    return torch.relu(x - tau) if tau else torch.relu(x)


def st_tau(x: Tensor, tau: float = 0.0, m: float = math.inf) -> Tensor:
    """ST_tau(x) = sign(x) max(0, |x| - tau) (soft thresholding), elementwise.

    Args:
        x: pre-activation h, any shape ``(*)``.
        tau: threshold, finite and >= 0.
        m: must be ``inf`` (unclipped); accepted for the registry's common signature.

    Raises:
        ValueError: if ``tau`` is not finite and >= 0, or ``m`` is not inf.
    """
    tau, _ = get_activation("st_tau").check_params(tau, m)
    return F.softshrink(x, tau)


def crelu(x: Tensor, tau: float = 0.0, m: float = math.inf) -> Tensor:
    """CReLU_{tau,m}(x) = min(max(x - tau, 0), m) (clipped shifted ReLU), elementwise.

    Args:
        x: pre-activation h, any shape ``(*)``.
        tau: threshold, finite and >= 0.
        m: clip, > 0; ``m = inf`` gives ``relu_tau``.

    Raises:
        ValueError: if ``tau`` is not finite and >= 0 or ``m`` is not > 0.
    """
    tau, m = get_activation("crelu").check_params(tau, m)
    return _crelu_shifted(x - tau, m, inplace=True) if tau else _crelu_shifted(x, m, inplace=False)


def cst(x: Tensor, tau: float = 0.0, m: float = math.inf) -> Tensor:
    """CST_{tau,m}(x) = sign(x) min(max(|x| - tau, 0), m) (clipped soft thresholding).

    Args:
        x: pre-activation h, any shape ``(*)``.
        tau: threshold, finite and >= 0.
        m: clip, > 0; ``m = inf`` gives ``st_tau``.

    Raises:
        ValueError: if ``tau`` is not finite and >= 0 or ``m`` is not > 0.
    """
    tau, m = get_activation("cst").check_params(tau, m)
    return _clip_(F.softshrink(x, tau), m)


# Tails applied after the shift. The in-place variants (only ever on a fresh
# tensor) save only their output for backward, like torch.relu_, so no extra
# activation-sized tensor is kept alive.


class _Hardtanh_(torch.autograd.Function):
    """``F.hardtanh_(h, lo, hi)`` in place, saving only its output for backward.

    Under autograd torch's own ``hardtanh_`` first clones its input (an extra
    activation-sized allocation and copy per layer); on the depth-10, 32-channel
    MNIST CNN that made a CReLU training step 27 % slower than ReLU_tau's, and
    this saves all but 2-5 % of it (``benchmarks/train_step.py --model cnn``).
    The gradient is torch's ``hardtanh_backward`` evaluated on the output, which
    equals the one on the input: ``lo < out < hi`` iff ``lo < h < hi``.
    """

    @staticmethod
    def forward(ctx, h: Tensor, lo: float, hi: float) -> Tensor:
        ctx.mark_dirty(h)
        out = F.hardtanh_(h, lo, hi)
        ctx.save_for_backward(out)
        ctx.lo, ctx.hi = lo, hi
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, out, ctx.lo, ctx.hi), None, None


def _hardtanh_(h: Tensor, lo: float, hi: float) -> Tensor:
    """Clip the fresh tensor ``h`` to [lo, hi] in place (the a.e. gradient of hardtanh)."""
    return _Hardtanh_.apply(h, lo, hi) if torch.is_grad_enabled() and h.requires_grad else F.hardtanh_(h, lo, hi)


def _crelu_shifted(h: Tensor, m: float, inplace: bool) -> Tensor:
    """min(max(h, 0), m) for h = x - tau; overwrites ``h`` if ``inplace``."""
    if m == math.inf:
        return torch.relu_(h) if inplace else torch.relu(h)
    return _hardtanh_(h, 0.0, m) if inplace else F.hardtanh(h, 0.0, m)


def _clip_(s: Tensor, m: float) -> Tensor:
    """Clip the fresh soft-thresholded ``s`` to [-m, m], overwriting it."""
    return s if m == math.inf else _hardtanh_(s, -m, m)


# --------------------------------------------------------------------------- modules


class SparseActivation(nn.Module):
    """Base class: an activation from the registry with fixed (tau, m).

    Subclasses are built as ``cls(tau=0.0, m=inf)``; the unclipped ones require
    ``m = inf``. Raises ValueError for invalid (tau, m), naming the argument.

    Attributes:
        name: registry name (``relu_tau``, ``st_tau``, ``crelu``, ``cst``).
        tau: threshold, >= 0.
        m: clip, > 0 (``inf`` = unclipped).
        bias_shift: the constant that can be folded into the preceding bias:
            ``phi(h) == forward_shifted_(h - bias_shift)``; ``tau`` for the
            one-sided activations, 0 for the two-sided ones.
    """

    name: str = ""

    def __init__(self, tau: float = 0.0, m: float = math.inf) -> None:
        super().__init__()
        self.tau, self.m = get_activation(self.name).check_params(tau, m)
        self.bias_shift = 0.0 if get_activation(self.name).two_sided else self.tau

    def forward_shifted_(self, h_shifted: Tensor) -> Tensor:
        """phi(h_shifted + bias_shift); may overwrite ``h_shifted`` (pass a fresh tensor).

        Args:
            h_shifted: ``h - bias_shift``, any shape ``(*)``; consumed.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        clip = "" if not get_activation(self.name).clipped else f", m={self.m:g}"
        return f"tau={self.tau:g}{clip}"


class ReLUTau(SparseActivation):
    """ReLU_tau(x) = max(0, x - tau); see :func:`relu_tau`. Shape ``(*) -> (*)``."""

    name = "relu_tau"

    def forward(self, x: Tensor) -> Tensor:
        return relu_tau(x, self.tau)

    def forward_shifted_(self, h_shifted: Tensor) -> Tensor:
        return torch.relu_(h_shifted)


class STTau(SparseActivation):
    """ST_tau(x) = sign(x) max(0, |x| - tau); see :func:`st_tau`. Shape ``(*) -> (*)``."""

    name = "st_tau"

    def forward(self, x: Tensor) -> Tensor:
        return st_tau(x, self.tau)

    forward_shifted_ = forward


class CReLU(SparseActivation):
    """CReLU_{tau,m}(x) = min(max(x - tau, 0), m); see :func:`crelu`. Shape ``(*) -> (*)``."""

    name = "crelu"

    def forward(self, x: Tensor) -> Tensor:
        return crelu(x, self.tau, self.m)

    def forward_shifted_(self, h_shifted: Tensor) -> Tensor:
        return _crelu_shifted(h_shifted, self.m, inplace=True)


class CST(SparseActivation):
    """CST_{tau,m}(x) = sign(x) min(max(|x| - tau, 0), m); see :func:`cst`. Shape ``(*) -> (*)``."""

    name = "cst"

    def forward(self, x: Tensor) -> Tensor:
        return cst(x, self.tau, self.m)

    forward_shifted_ = forward


#: Registry name -> module class (same keys as :data:`sparse_eoc.activations.ACTIVATIONS`).
MODULES: dict[str, type[SparseActivation]] = {
    "relu_tau": ReLUTau,
    "st_tau": STTau,
    "crelu": CReLU,
    "cst": CST,
}


def make_activation(name: str, tau: float = 0.0, m: float = math.inf) -> SparseActivation:
    """Build the activation module registered under ``name``.

    Args:
        name: ``relu_tau``, ``st_tau``, ``crelu``, ``cst`` or the alias ``relu``
            (= ``relu_tau`` with tau = 0).
        tau: threshold, finite and >= 0 (must be 0 for ``relu``).
        m: clip, > 0; must be ``inf`` for the unclipped ``relu``/``relu_tau``/``st_tau``.

    Returns:
        A :class:`SparseActivation` mapping shape ``(*)`` to ``(*)``.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), or
            invalid ``tau``/``m`` for this activation (the message names the argument).
    """
    key = canonical_name(name)
    tau, m = get_activation(key).check_params(tau, m)
    if key != name and tau != 0.0:
        raise ValueError(f"tau must be 0 for the alias {name!r} (plain ReLU), got tau={tau!r}; "
                         f"use {key!r} for a threshold")
    return MODULES[key](tau, m)
