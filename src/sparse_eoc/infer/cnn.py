"""Multiply-adds a sparse CNN's zeros make skippable, from its measured per-layer sparsity.

A stride-1 "same" convolution (paper Section 5; :class:`~sparse_eoc.nn.SparseCNN`) with
kernel k x k, C_in -> C_out channels on an H x W input does B H W C_out C_in k^2
multiply-adds when run densely (zero padding included). An input entry (c, i, j) meets
C_out times the kernel taps that read it from inside the image: with zero padding
t(i) t(j) taps, t(i) = min(i, r) + min(H - 1 - i, r) + 1 for r = k // 2; with circular
padding all k^2. Skipping the zero inputs leaves C_out sum_{nonzero (c, i, j)} taps(i, j).
This only counts; :class:`~sparse_eoc.infer.SparseCNNEngine` skips them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sparse_eoc.infer.cnn_plan import taps_per_position
from sparse_eoc.infer.plan import flop_reduction

__all__ = ["CNNFlopReport", "cnn_flop_report"]


@dataclass(frozen=True)
class CNNFlopReport:
    """Per layer (conv layers 1..L, then the readout on the pooled features).

    Attributes:
        input_sparsity: fraction of exact zeros of each layer's input (layer 1: the images).
        dense_macs: multiply-adds of the dense layer over the batch.
        macs: multiply-adds whose input is nonzero (what a zero-skipping kernel would do).
    """

    input_sparsity: tuple[float, ...]
    dense_macs: tuple[int, ...]
    macs: tuple[int, ...]

    @property
    def flop_reduction(self) -> float:
        """Total dense multiply-adds / total nonzero-input multiply-adds."""
        return flop_reduction(sum(self.dense_macs), sum(self.macs))

    @property
    def layer_flop_reduction(self) -> tuple[float, ...]:
        """dense / nonzero-input multiply-adds of each layer."""
        return tuple(flop_reduction(d, m) for d, m in zip(self.dense_macs, self.macs))

    def to_dict(self) -> dict[str, Any]:
        return {"input_sparsity": list(self.input_sparsity), "dense_macs": list(self.dense_macs),
                "macs": list(self.macs), "layer_flop_reduction": list(self.layer_flop_reduction),
                "flop_reduction": self.flop_reduction}


def cnn_flop_report(model, x) -> CNNFlopReport:
    """Count the multiply-adds of a :class:`~sparse_eoc.nn.SparseCNN` on inputs ``x`` with and
    without skipping zero inputs.

    Args:
        model: a ``SparseCNN`` (evaluated as is, under ``torch.no_grad``).
        x: images (B, C, H, W), a tensor on the model's device.

    Returns:
        A :class:`CNNFlopReport` (L + 1 entries: the convs, then the readout).

    Raises:
        ValueError: if ``model`` is not a ``SparseCNN`` or ``x`` is not (B, C, H, W).
    """
    import torch

    from sparse_eoc.nn import SparseCNN

    if not isinstance(model, SparseCNN):
        raise ValueError(f"model must be a SparseCNN, got {type(model).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be images (B, C, H, W), got shape {tuple(x.shape)}")
    sparsity, dense, done = [], [], []
    with torch.no_grad():
        states = model.hidden_states(x)  # L pairs (h, phi(h)), each (B, C, H, W)
        inputs = [x] + [phi for _, phi in states[:-1]]
        for conv, a in zip(model.hidden, inputs):
            batch, c_in, h, w = a.shape
            kh, kw = conv.kernel_size
            nonzero = (a != 0).sum(dim=1).cpu().numpy().astype(np.int64)  # (B, H, W): nonzero channels
            if conv.padding_mode == "circular":
                taps = np.full((h, w), kh * kw, dtype=np.int64)
            else:
                taps = np.outer(taps_per_position(h, kh, False), taps_per_position(w, kw, False))  # (H, W)
            sparsity.append(1.0 - nonzero.sum() / a.numel())
            dense.append(batch * h * w * conv.out_channels * c_in * kh * kw)
            done.append(int(conv.out_channels * (nonzero * taps).sum()))
        pooled = states[-1][1].mean(dim=(2, 3))  # (B, C)
        nonzero = int((pooled != 0).sum())
        sparsity.append(1.0 - nonzero / pooled.numel())
        dense.append(pooled.numel() * model.readout.out_features)
        done.append(nonzero * model.readout.out_features)
    return CNNFlopReport(tuple(float(s) for s in sparsity), tuple(int(d) for d in dense), tuple(done))
