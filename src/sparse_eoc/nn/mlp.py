"""The fully connected network of the paper's DNN experiments (paper Section 5).

**Depth** is the number of hidden layers, i.e. the number of activation
applications; the linear readout is not counted. Example, depth=3, width=300,
MNIST::

    Linear(784, 300) -> phi -> Linear(300, 300) -> phi -> Linear(300, 300) -> phi -> Linear(300, 10)

so a depth-L model has L + 1 ``nn.Linear`` layers: ``hidden[0]`` (in_features ->
width), ``hidden[1..L-1]`` (width -> width) and ``readout`` (width -> num_classes).
In the paper's notation (docs/theory.md section 1.1) ``hidden[l-1]`` holds W^l and b^l
and computes h^l = phi(h^{l-1}) W^l^T + b^l, with phi(h^0) = x.

**Width** is the number of units of every hidden layer (N_l = width).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_eoc.checks import check_int
from sparse_eoc.nn.activations import SparseActivation, make_activation
from sparse_eoc.nn.sparse_linear import _sparse_linear_input, fused_forward_hidden
from sparse_eoc.nn.sparsity import SparsityMeter

__all__ = ["SparseMLP", "forward_hidden", "plain_hidden_states"]


def _linear(layer: nn.Linear, x: Tensor, bias: Tensor) -> Tensor:
    return F.linear(x, layer.weight, bias)  # (B, out_features)


def forward_hidden(
    layers: Sequence[nn.Module],
    x: Tensor,
    act: SparseActivation,
    meter: SparsityMeter | None,
    pre_activation: Callable[[nn.Module, Tensor, Tensor], Tensor],
) -> Tensor:
    """Run the hidden layers fast: x -> phi(h^1) -> ... -> phi(h^L), metering zeros if asked.

    Each layer computes h^l - shift = pre_activation(layer, x, b^l - shift), folding the
    activation's constant shift (tau for the one-sided activations) into the bias, then
    one fused in-place tail (``act.forward_shifted_``). With a ``meter``, one
    :meth:`~sparse_eoc.nn.sparsity.SparsityMeter.count_nonzero` per layer stays on the device; the counts are stacked and added
    once per forward (no host sync).

    Args:
        layers: the L hidden layers (``nn.Linear`` or ``nn.Conv2d``), each with a bias.
        x: the network input, shaped as the first layer expects.
        act: the activation phi; its ``bias_shift`` is folded into every bias.
        meter: where to add each layer's exact-zero counts, or None (no counting).
        pre_activation: ``(layer, x, bias) -> x W^T + bias`` for that layer type.

    Returns:
        phi(h^L), shape ``(B, width)`` or ``(B, C, H, W)``.
    """
    shift = act.bias_shift
    counts: list[Tensor] = []
    for layer in layers:
        b = layer.bias - shift if shift else layer.bias  # (out,): b^l - tau
        x = act.forward_shifted_(pre_activation(layer, x, b))  # phi(h^l)
        if meter is not None:
            counts.append(meter.count_nonzero(x))  # () int64, stays on device
    if meter is not None:
        meter.add_counts(torch.stack(counts), x.numel(), x.shape[0])  # (L,)
    return x


def plain_hidden_states(layers: Sequence[nn.Module], act: nn.Module, x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The L pairs (h^l, phi(h^l)) computed the plain way: each layer with its own bias,
    then phi; no folding, no in-place ops, no metering; any dtype and grad mode."""
    states = []
    for layer in layers:
        h = layer(x)  # (B, width) or (B, C, H, W)
        x = act(h)
        states.append((h, x))
    return states


class SparseMLP(nn.Module):
    """MLP with a sparsity-inducing activation after every hidden layer.

    Args:
        in_features: input dimension N_0 (784 for MNIST); inputs of shape
            ``(B, *)`` are flattened to ``(B, in_features)``.
        num_classes: output dimension (logits), >= 1.
        depth: number of hidden layers L (= activation applications), >= 1;
            see the module docstring for an example.
        width: units per hidden layer N, >= 1.
        activation: registry name: ``relu_tau``, ``st_tau``, ``crelu``, ``cst``
            or ``relu`` (see :func:`sparse_eoc.nn.activations.make_activation`).
        tau: threshold tau >= 0 of the activation.
        m: clip m > 0 (``inf`` = unclipped; must be inf for unclipped activations).

    Attributes:
        hidden: ``nn.ModuleList`` of the L hidden ``nn.Linear`` layers.
            ``bias`` holds the paper's b^l (not b^l - tau), so initialisers and
            saved weights mean what the paper says.
        readout: ``nn.Linear(width, num_classes)``, no activation after it.
        act: the activation module phi.
        meter: a :class:`~sparse_eoc.nn.sparsity.SparsityMeter` or None; while
            set, every forward pass adds the exact zeros of each hidden output.

    The default parameters are ``nn.Linear``'s; use
    :func:`sparse_eoc.nn.init.init_eoc_` for the paper's EoC initialisation.

    Speed: for the one-sided activations (``relu_tau``, ``crelu``) the forward
    folds tau into the bias, h^l - tau = x W^T + (b - tau), one ``addmm``, then one
    fused in-place op (``relu_`` or ``hardtanh_(., 0, m)``); the two-sided ones
    use ``softshrink`` (+ ``hardtanh_(., -m, m)`` for ``cst``).

    Raises:
        ValueError: for a non-positive size, an unknown activation or an invalid
            (tau, m); the message names the argument.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int,
        width: int,
        activation: str,
        tau: float = 0.0,
        m: float = math.inf,
    ) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features)
        num_classes = check_int("num_classes", num_classes)
        depth = check_int("depth", depth)
        width = check_int("width", width)
        self.act: SparseActivation = make_activation(activation, tau, m)
        self.hidden = nn.ModuleList(
            nn.Linear(in_features if i == 0 else width, width) for i in range(depth)
        )
        self.readout = nn.Linear(width, num_classes)
        self.meter: SparsityMeter | None = None
        self.kernels = "dense"  # the training kernels: see sparse_eoc.nn.sparse_linear.set_kernels_

    @property
    def depth(self) -> int:
        """Number of hidden layers L."""
        return len(self.hidden)

    @property
    def width(self) -> int:
        """Units per hidden layer."""
        return self.readout.in_features

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch.

        Args:
            x: inputs, shape ``(B, in_features)`` or ``(B, *)`` with
                ``prod(*) == in_features`` (e.g. ``(B, 1, 28, 28)``).

        Returns:
            Logits, shape ``(B, num_classes)``.
        """
        if x.dim() > 2:
            x = x.flatten(1)  # (B, *) -> (B, in_features)
        if self.kernels != "dense":
            a = fused_forward_hidden(self, x)  # (B, width), or None outside training on the CPU
            if a is not None:
                return self.readout(a)
        pre_activation = _linear if self.kernels == "dense" else _sparse_linear_input(self)
        x = forward_hidden(self.hidden, x, self.act, self.meter, pre_activation)  # (B, width)
        return self.readout(x)

    def hidden_states(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Pre-activations and outputs of every hidden layer, for analysis.

        Computed the plain way, h^l = phi(h^{l-1}) W^l^T + b^l and phi(h^l)
        (no bias folding, no in-place ops, not metered); works in any dtype
        (e.g. after ``model.double()``) and grad mode.

        Args:
            x: inputs, shape ``(B, in_features)`` or ``(B, *)``.

        Returns:
            L pairs ``(h^l, phi(h^l))``, each of shape ``(B, width)``.
        """
        if x.dim() > 2:
            x = x.flatten(1)  # (B, *) -> (B, in_features)
        return plain_hidden_states(self.hidden, self.act, x)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}"
