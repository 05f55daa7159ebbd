"""The vanilla deep CNN of the paper's CNN experiments (paper Section 5; Xiao et al. 2018).

**Depth** is the number of convolutional hidden layers, i.e. of activation
applications; global average pooling and the linear readout are not counted.
Example, depth=3, channels=300, kernel 3, a CIFAR-10 image (B, 3, 32, 32)::

    Conv(3->300, 3x3) -> phi -> Conv(300->300, 3x3) -> phi -> Conv(300->300, 3x3) -> phi
    -> mean over (H, W) -> Linear(300, 10)

All convolutions have stride 1 and "same" padding (zeros, or circular as in the
mean-field theory of CNNs, so that every position sees the same statistics); no
normalisation layers. In the paper's notation the l-th conv holds W^l (shape
(C_out, C_in, k, k)) and b^l, and h^l = conv(phi(h^{l-1}), W^l) + b^l.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from sparse_eoc.nn.activations import SparseActivation, make_activation
from sparse_eoc.checks import check_int
from sparse_eoc.nn.mlp import forward_hidden, plain_hidden_states
from sparse_eoc.nn.sparsity import SparsityMeter
from sparse_eoc.runs.config import PADDING_MODES

__all__ = ["SparseCNN", "PADDING_MODES"]


class SparseCNN(nn.Module):
    """A deep vanilla CNN with a sparsity-inducing activation after every conv layer.

    Args:
        in_channels: channels of the input image (1 for MNIST, 3 for CIFAR-10).
        num_classes: output dimension (logits), >= 1.
        depth: number of conv layers L (= activation applications), >= 1.
        channels: channels of every hidden layer, >= 1.
        activation: registry name (``relu_tau``, ``st_tau``, ``crelu``, ``cst``, ``relu``).
        tau: threshold tau >= 0.  m: clip m > 0 (``inf`` = unclipped).
        kernel_size: odd k >= 1 (k x k kernels).
        padding_mode: ``zeros`` (default) or ``circular``.

    Attributes:
        hidden: ``nn.ModuleList`` of the L ``nn.Conv2d``; ``bias`` holds the paper's b^l.
        readout: ``nn.Linear(channels, num_classes)`` after global average pooling.
        meter: a :class:`~sparse_eoc.nn.sparsity.SparsityMeter` or None; while set,
            every forward counts the exact zeros of every hidden output over all
            positions and channels.

    Raises:
        ValueError: a non-positive size, an even kernel, an unknown padding mode,
            or an invalid activation / (tau, m).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int,
        channels: int,
        activation: str,
        tau: float = 0.0,
        m: float = math.inf,
        *,
        kernel_size: int = 3,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("depth", depth), ("channels", channels), ("kernel_size", kernel_size)):
            check_int(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got kernel_size={kernel_size!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        self.act: SparseActivation = make_activation(activation, tau, m)
        self.hidden = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size,
                      padding=kernel_size // 2, padding_mode=padding_mode)
            for i in range(depth)
        )
        self.readout = nn.Linear(channels, num_classes)
        self.meter: SparsityMeter | None = None

    @property
    def depth(self) -> int:
        """Number of conv layers L."""
        return len(self.hidden)

    @property
    def channels(self) -> int:
        """Channels of every conv layer."""
        return self.readout.in_features

    @staticmethod
    def _pre_activation(layer: nn.Conv2d, x: Tensor, bias: Tensor) -> Tensor:
        # nn.Conv2d's own forward with a substituted bias: applies its padding mode.
        return layer._conv_forward(x, layer.weight, bias)  # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of images ``(B, in_channels, H, W)`` -> ``(B, num_classes)``."""
        x = forward_hidden(self.hidden, x, self.act, self.meter, self._pre_activation)  # (B, C, H, W)
        return self.readout(x.mean(dim=(2, 3)))  # (B, C) -> (B, classes)

    def hidden_states(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """L pairs ``(h^l, phi(h^l))``, each ``(B, channels, H, W)``, computed the plain way."""
        return plain_hidden_states(self.hidden, self.act, x)

    def extra_repr(self) -> str:
        k = self.hidden[0].kernel_size[0]
        return f"depth={self.depth}, channels={self.channels}, kernel_size={k}"
