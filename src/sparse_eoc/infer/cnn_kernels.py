"""Numba kernels of the sparse CNN engine: one layer's tiles, fused with the bias, phi and the compaction.

Imported only when numba is installed (the engine falls back to its NumPy path otherwise).
The convolution itself is :func:`sparse_eoc.kernels.conv.conv_tile`; here each tile of
output positions (``rows_per_tile`` image rows of one example) is filled with the bias, gets
the convolution added, then one pass applies phi to its real channels and writes their
nonzeros (:func:`sparse_eoc.kernels.conv.compact_positions`' layout) for the next layer. Tiles
fill disjoint positions, so the engine may run ranges of tiles on several threads (``nogil``).

Layouts as in :mod:`sparse_eoc.kernels.conv`: activations channels-last (P, C), P = B H W;
the bias as ``bias`` (R, C_out) with R = 1 (the same at every position) or R = H W (the first
layer with an input offset, whose folded-in offset depends on the position near the border).
"""

from __future__ import annotations

from numba import njit

from sparse_eoc.infer.kernels import _act
from sparse_eoc.kernels.conv import compact_positions, conv_tile

__all__ = ["bias_act_compact", "compact_positions", "sparse_layer"]


@njit(cache=True, nogil=True)
def _finish_positions(y, bias, n_real, kind, tau, m, nidx, nvals, ncnt, p0, p1, height, width, k, circular,
                      add_bias, stats):
    """Positions p0..p1-1 of y (P, C_out): (+ bias), phi on channels 0..n_real-1, their nonzeros to
    (nidx, nvals, ncnt). Channels from n_real on (the padding) are left as they are (zeros).

    ``stats[1]`` += the nonzeros, ``stats[2]`` += the taps that will read them in the next layer
    (each nonzero at (y, x) is read by t(y) t(x) taps: k with circular padding, fewer at a
    zero-padded border), what the next layer's strategy is chosen from.
    """
    n_out = y.shape[1]
    hw = height * width
    r = k // 2
    per_position = bias.shape[0] > 1
    nonzero = 0
    taps = 0
    for p in range(p0, p1):
        yx = p % hw
        brow = yx if per_position else 0
        j = p * n_out
        start = j
        for c in range(n_real):
            v = y[p, c] + bias[brow, c] if add_bias else y[p, c]
            v = _act(v, kind, tau, m)
            y[p, c] = v
            nidx[j] = c
            nvals[j] = v
            j += 1 if v != 0 else 0  # NaN is nonzero: it propagates, as in the dense forward
        n = j - start
        ncnt[p] = n
        nonzero += n
        if circular:
            taps += n * k * k
        else:
            yy, xx = yx // width, yx % width
            taps += n * ((min(yy, r) + min(height - 1 - yy, r) + 1) * (min(xx, r) + min(width - 1 - xx, r) + 1))
    stats[1] += nonzero
    stats[2] += taps


@njit(cache=True, nogil=True)
def bias_act_compact(y, bias, n_real, kind, tau, m, nidx, nvals, ncnt, p0, p1, height, width, k, circular, stats):
    """y = phi(y + bias) over positions p0..p1-1 of a dense layer's output, and their nonzeros
    (``stats`` as in :func:`sparse_layer`)."""
    _finish_positions(y, bias, n_real, kind, tau, m, nidx, nvals, ncnt, p0, p1, height, width, k, circular, True,
                      stats)


@njit(cache=True, nogil=True)
def sparse_layer(y, bias, wr, n_in, idx, vals, cnt, height, width, k, circular, kind, tau, m, n_real,
                 nidx, nvals, ncnt, tile0, tile1, rows_per_tile, stats):
    """phi(conv(a) + bias) over tiles tile0..tile1-1, from the input's nonzeros (idx, vals, cnt).

    Args:
        y: the output (P, C_out) float32 (written whole over the tiles' positions).
        bias: (1 or H W, C_out) float32, the bias to start from (padding channels: 0).
        wr: the tap rows (k, C_in, k, C_out) flat (:func:`sparse_eoc.kernels.conv.tap_rows_layout`).
        n_in: C_in.
        idx, vals, cnt: the input's nonzeros.  height, width, k, circular: the convolution.
        kind, tau, m: phi (``ACT_*`` of :mod:`sparse_eoc.infer.plan`).  n_real: the real C_out.
        nidx, nvals, ncnt: where the output's nonzeros go.
        tile0, tile1: the tiles; tile t is example t // tiles_per_image, image rows from
            (t % tiles_per_image) rows_per_tile, rows_per_tile of them (fewer at the bottom).
        stats: (3,) int64, gets += (taps added, output nonzeros, taps that will read them).
    """
    n_out = y.shape[1]
    hw = height * width
    yf = y.reshape(y.size)  # flat view
    per_position = bias.shape[0] > 1
    tiles_per_image = (height + rows_per_tile - 1) // rows_per_tile
    for t in range(tile0, tile1):
        b = t // tiles_per_image
        y0 = (t % tiles_per_image) * rows_per_tile
        y1 = min(height, y0 + rows_per_tile)
        p0, p1 = (b * height + y0) * width, (b * height + y1) * width
        for p in range(p0, p1):
            brow = p % hw if per_position else 0
            for c in range(n_out):
                y[p, c] = bias[brow, c]
        stats[0] += conv_tile(yf, wr, n_in, n_out, idx, vals, cnt, b, y0, y1, height, width, k, circular)
        _finish_positions(y, bias, n_real, kind, tau, m, nidx, nvals, ncnt, p0, p1, height, width, k, circular,
                          False, stats)
