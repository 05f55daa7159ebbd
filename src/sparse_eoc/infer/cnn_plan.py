"""How the sparse CNN engine runs one conv layer: dense or sparse, the cost model that picks one, and
what a call did (:class:`CNNEngineStats`).

A stride-1 "same" k x k convolution of a (B, H, W, C_in) input (paper Section 5) runs either

- ``dense``  -- im2col and one BLAS product: B H W k^2 C_in C_out multiply-adds, zeros included;
- ``sparse`` -- :mod:`sparse_eoc.kernels.conv`: each nonzero input adds the tap rows of the taps
  that read it, C_out multiply-adds a tap; zeros cost nothing but their visit.

``auto`` picks per layer and per call, from the nonzeros counted in the layer's input, the one
:class:`ConvCostModel` predicts faster (never from timings). NumPy only: no torch, no numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sparse_eoc.infer.plan import flop_reduction

__all__ = ["CONV_STRATEGIES", "CONV_STRATEGY_CHOICES", "DENSE_CONV", "SPARSE_CONV", "CNNEngineStats", "ConvCostModel",
           "choose_conv_strategy", "taps_per_position"]

#: How a conv layer can run, indexed by code; ``auto`` picks one per layer and call.
CONV_STRATEGIES = ("dense", "sparse")
DENSE_CONV, SPARSE_CONV = 0, 1
CONV_STRATEGY_CHOICES = ("auto", *CONV_STRATEGIES)


@dataclass(frozen=True)
class ConvCostModel:
    """Predicted time of a conv layer (nanoseconds), dense or sparse; ``auto`` runs the cheaper.

    With P = B H W output positions, C_in and C_out the stored (padded) channels, ``nnz`` the
    nonzero inputs and ``taps`` the taps the sparse kernel adds (the sum over the nonzero
    inputs of the taps that read them, at most k^2 each), both counted from the input before
    the layer runs::

        dense  = dense_mac P k^2 C_in C_out + dense_copy P k^2 C_in
        sparse = sparse_mac taps C_out + sparse_row nnz k + sparse_visit P k

    (:mod:`sparse_eoc.kernels.conv`: a tap row per nonzero input and kernel row, the input
    positions of each output row visited once per kernel row). Bias, phi and the compaction of
    the output cost the same either way and are left out. The defaults were fitted to single
    layers of 16 to 300 channels, batches 1 and 8, densities 0.03 to 0.4 on 28 x 28 images, on one
    AMD EPYC (Zen 4) core with OpenBLAS; they pick the faster path wherever the two differ by more
    than the timing noise. Only their ratios matter.

    Attributes:
        dense_mac: one multiply-add of the BLAS product, > 0.
        dense_copy: one im2col entry copied, > 0.
        sparse_mac: one multiply-add of a tap row, > 0.
        sparse_row: one tap row started (its channel, value, address), > 0.
        sparse_visit: one input position visited for one output row and kernel row, > 0.
    """

    dense_mac: float = 0.02
    dense_copy: float = 0.8
    sparse_mac: float = 0.05
    sparse_row: float = 2.0
    sparse_visit: float = 20.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{f.name} must be a finite number > 0, got {f.name}={value!r}")


def choose_conv_strategy(positions: int, k: int, c_in: int, c_out: int, nnz: int, taps: int,
                         cost: ConvCostModel) -> int:
    """``DENSE_CONV`` or ``SPARSE_CONV``, whichever :class:`ConvCostModel` predicts faster (ties: sparse).

    Args:
        positions: P = B H W.  k: kernel size.  c_in, c_out: stored channels.
        nnz: nonzero inputs.  taps: taps the sparse kernel would add (see :class:`ConvCostModel`).
    """
    dense = positions * k * k * c_in * (cost.dense_mac * c_out + cost.dense_copy)
    sparse = cost.sparse_mac * taps * c_out + cost.sparse_row * nnz * k + cost.sparse_visit * positions * k
    return SPARSE_CONV if sparse <= dense else DENSE_CONV


def taps_per_position(n: int, k: int, circular: bool) -> np.ndarray:
    """Taps of a size-k same window that read position i (n,): all k inside, fewer at a zero-padded border."""
    if circular:
        return np.full(n, k, np.int64)
    r = k // 2
    i = np.arange(n)
    return np.minimum(i, r) + np.minimum(n - 1 - i, r) + 1


@dataclass(frozen=True)
class CNNEngineStats:
    """What one engine call did, per layer (conv layers 1..L, then the readout).

    Attributes:
        batch: examples B.  image: (H, W).  kernel_size: k.
        c_in, c_out: each layer's channels (the readout: C_L and the classes).
        strategies: what each layer ran (``dense``/``sparse``; the readout ``dense``).
        nnz: nonzero inputs of each layer over the batch (layer 1: of x - offset).
        macs: multiply-adds done (sparse: C_out per weight row added).
    """

    batch: int
    image: tuple[int, int]
    kernel_size: int
    c_in: tuple[int, ...]
    c_out: tuple[int, ...]
    strategies: tuple[str, ...]
    nnz: tuple[int, ...]
    macs: tuple[int, ...]

    @property
    def dense_macs(self) -> tuple[int, ...]:
        """Multiply-adds of the dense forward: B H W C_out C_in k^2 per conv (padding included), B C_L
        classes for the readout (as :func:`~sparse_eoc.infer.cnn_flop_report` counts them)."""
        hw = self.image[0] * self.image[1]
        per_conv = self.batch * hw * self.kernel_size**2
        convs = tuple(per_conv * i * o for i, o in zip(self.c_in[:-1], self.c_out[:-1]))
        return (*convs, self.batch * self.c_in[-1] * self.c_out[-1])

    @property
    def flop_reduction(self) -> float:
        """Dense multiply-adds / multiply-adds done, whole network."""
        return flop_reduction(sum(self.dense_macs), sum(self.macs))

    @property
    def density(self) -> tuple[float, ...]:
        """Fraction of nonzero inputs of each conv layer, nnz / (B H W C_in)."""
        hw = self.image[0] * self.image[1]
        return tuple(z / (self.batch * hw * i) for z, i in zip(self.nnz[:-1], self.c_in[:-1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, with the derived ones."""
        return {"batch": self.batch, "image": list(self.image), "strategies": list(self.strategies),
                "nnz": list(self.nnz), "macs": list(self.macs), "dense_macs": list(self.dense_macs),
                "density": list(self.density), "flop_reduction": self.flop_reduction}
