"""Numba kernels of the sparse engine: the whole network in one compiled call.

Imported only when numba is installed (a dependency wherever numba ships wheels); the
engine falls back to its NumPy path otherwise. Three drivers run every layer in one call (no
Python between layers), each layer's strategy picked from its measured nonzeros and union
(:func:`sparse_eoc.infer.plan.choose_strategy`, compiled here as it is):

- :func:`forward_fused`, what the engine runs on one thread (any batch) and on each part of a
  batch split across threads: each layer's activation pass also counts, and lists as CSR, the
  next layer's nonzeros, in two buffers allocated once per call;
- :func:`forward_parallel`, batch 1 with large layers on several threads: per-layer kernels
  (:func:`_layer`), their output column tiles across numba's threads;
- :func:`forward_serial`, the same per-layer kernels on one thread: the reference that
  ``forward_fused`` equals bit for bit (the tests hold them to it).

The row kernels (weighted sums of W^T rows, prefetching, CSR) are :mod:`sparse_eoc.kernels.rows`,
shared with sparse training; the ``block`` strategy's register-blocked kernel is
:mod:`sparse_eoc.kernels.block`.

Layouts: activations ``a`` are (B, N_in) float32 row-major; weights ``wt`` = W^T are
(N_in, N_out) float32 row-major, so ``wt[j]`` is the contiguous row of the weights
leaving input unit j. A batch's nonzeros are held as CSR: ``indptr`` (B + 1,), ``idx``
and ``vals`` (nnz,), example b's nonzeros at ``indptr[b]:indptr[b + 1]``, sorted by unit.

Two compilations of one layer function: serial (used by :func:`forward_serial`, cached on
disk) and parallel, its prange loops only (used by :func:`forward_parallel`: output column
tiles across threads; compiled on first use). Additions are never reordered
across rows beyond the fixed groups of four (:mod:`sparse_eoc.kernels.rows`), and a union
layer's BLAS products are cut into the same column tiles on any number of threads
(:func:`union_tiles`), so results are deterministic, and the same on any number of threads
(a batch split across threads, ``SparseEngine``'s ``threads``: the same wherever its parts
choose each layer's strategy as the whole batch does and no ``union`` or ``dense`` layer runs).
The BLAS library must run single-threaded during a call (the engine sees to it:
``sparse_eoc.infer.engine._blas_on_caller``), so that numba's threads are the only ones.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from sparse_eoc.kernels.block import GROUP, block_rows, group_inputs, group_lanes, group_union
from sparse_eoc.kernels.rows import (PRANGE_ONLY, compact_row, csr_rows_tile, csr_tiling, gather_rows_tile, split_columns,
                                     to_csr)
from sparse_eoc.infer.plan import (ACT_IDENTITY, ACT_ONE_SIDED, ACT_TWO_SIDED, AUTO, BLOCK, BLOCK_MIN_COLUMNS, CSR,
                                   DENSE, GATHER, UNION, _cost, block_lanes, choose_strategy)

__all__ = ["forward_fused", "forward_serial", "forward_parallel"]

# The cost model and the strategy choice are written once, in plan.py (the NumPy backend calls
# them there); registered here, numba compiles those same functions into _layer and forward_fused,
# constants included (SMALL_BATCH). numba's disk cache checks only this file's timestamp: after
# editing any of them in plan.py, or the block kernel's intrinsics in sparse_eoc.kernels.block
# (inlined here), touch this file.
register_jitable(block_lanes)
register_jitable(_cost)
register_jitable(choose_strategy)



@njit(cache=True)
def _act(v, kind, tau, m):
    """phi of one float32 pre-activation (bias already added; NaN passes through); ``kind``, ``tau``
    and ``m`` as :func:`sparse_eoc.infer.plan.layer_activations` gives them."""
    if kind == ACT_ONE_SIDED:
        if v > 0:
            return v if v < m else m
        return v if v != v else np.float32(0.0)
    if kind == ACT_TWO_SIDED:
        if v > tau:
            s = v - tau
            return s if s < m else m
        if v < -tau:
            s = v + tau
            return s if s > -m else -m
        return v if v != v else np.float32(0.0)
    return v


@njit(cache=True)
def _bias_act_tile(y, bias, c0, c1, kind, tau, m):
    """y[:, c0:c1] = phi(y[:, c0:c1] + bias[c0:c1]) in place."""
    for b in range(y.shape[0]):
        for c in range(c0, c1):
            y[b, c] = _act(y[b, c] + bias[c], kind, tau, m)


@njit(cache=True)
def _gather_tile(y, bias, wt, indptr, idx, vals, c0, c1, kind, tau, m):
    """Output columns c0:c1 of every example from its own nonzero rows (strategy gather)."""
    gather_rows_tile(y, bias, wt, indptr, idx, vals, c0, c1)
    for b in range(y.shape[0]):
        for c in range(c0, c1):
            y[b, c] = _act(y[b, c], kind, tau, m)


@njit(cache=True)
def _csr_tile(y, bias, wt, indptr, idx, vals, c0, c1, row_block, kind, tau, m):
    """Output columns c0:c1 of the batch, input rows in blocks of ``row_block`` (strategy csr)."""
    csr_rows_tile(y, bias, wt, indptr, idx, vals, c0, c1, row_block)
    for b in range(y.shape[0]):
        for c in range(c0, c1):
            y[b, c] = _act(y[b, c], kind, tau, m)


UNION_TILE = 128  # columns of a union product's tile, at most


@njit(cache=True)
def union_tiles(n_out):
    """Column tiles of a union layer's product: 1 up to UNION_TILE columns, else an even number
    of tiles of at most UNION_TILE columns (even: balanced across 2 or 4 threads)."""
    if n_out <= UNION_TILE:
        return 1
    return 2 * ((n_out + 2 * UNION_TILE - 1) // (2 * UNION_TILE))


@njit(cache=True)
def _union_input(a, mark, n_union, skip):
    """(rows, a_u) of a ``union`` layer: the union U ascending (every unit when not ``skip``), int64
    (|U|,), from ``mark`` (the units nonzero for some example, ``n_union`` of them), and a[:, U]
    (B, |U|)."""
    batch, n_in = a.shape
    n_rows = n_union if skip else n_in
    rows = np.empty(n_rows, np.int64)
    k = 0
    for j in range(n_in):
        if mark[j] or not skip:
            rows[k] = j
            k += 1
    a_u = np.empty((batch, n_rows), np.float32)
    for b in range(batch):
        for k in range(n_rows):
            a_u[b, k] = a[b, rows[k]]
    return rows, a_u


@njit(cache=True)
def _union_tile(y, a_u, wt, rows, c0, c1):
    """y[:, c0:c1] = a_u W^T[rows, c0:c1]: one BLAS product on a copy of that block of W^T."""
    w_t = np.empty((len(rows), c1 - c0), np.float32)  # (|U|, T) = W^T[U, c0:c1]
    for k in range(len(rows)):
        w_t[k] = wt[rows[k], c0:c1]
    if len(rows) and c1 > c0:
        y[:, c0:c1] = np.dot(a_u, w_t)  # (B, |U|) @ (|U|, T), BLAS
    else:
        y[:, c0:c1] = 0


@njit(cache=True)
def _group_unions(a, skip, rows, sizes):
    """The unions of the ``block`` strategy's groups of GROUP consecutive examples of ``a`` (B, N_in)
    (:func:`sparse_eoc.kernels.block.group_union`): group g's into ``rows[g]`` ((G, N_in) int64),
    its size into ``sizes[g]`` (G,), G = ceil(B / GROUP); returns their sum R."""
    batch = a.shape[0]
    total = 0
    for g in range((batch + GROUP - 1) // GROUP):
        g0 = g * GROUP
        sizes[g] = group_union(a, g0, min(GROUP, batch - g0), skip, rows[g])
        total += sizes[g]
    return total


@njit(cache=True)
def _group_inputs(a, rows, sizes, p):
    """Each group's inputs at its union into ``p[g]`` ((G, GROUP N_in) float32), for
    :func:`sparse_eoc.kernels.block.group_lanes` of its examples."""
    batch = a.shape[0]
    for g in range((batch + GROUP - 1) // GROUP):
        g0 = g * GROUP
        n_ex = min(GROUP, batch - g0)
        group_inputs(a, g0, n_ex, group_lanes(n_ex), rows[g], sizes[g], p[g])


@njit(cache=True)
def _block_columns(y, bias, wt, rows, p, sizes, c0, c1):
    """Columns c0:c1 of every group's ``block`` product (:func:`sparse_eoc.kernels.block.block_rows`)."""
    batch = y.shape[0]
    for g in range(len(sizes)):
        g0 = g * GROUP
        n_ex = min(GROUP, batch - g0)
        block_rows(y, bias, wt, g0, n_ex, group_lanes(n_ex), rows[g], sizes[g], p[g], c0, c1)


@njit(cache=True)
def _block_macs(batch, sizes, n_out):
    """The multiply-adds of a ``block`` layer: examples x their group's union x N_out, summed."""
    macs = 0
    for g in range(len(sizes)):
        macs += min(GROUP, batch - g * GROUP) * sizes[g] * n_out
    return macs


def _layer(a, wt, bias, kind, tau, m, strategy, skip, costs, ntiles, tile_bytes, stats_row):
    """phi(a W^T + bias) of one layer: a (B, N_in) -> (B, N_out), float32.

    Args:
        a: the layer's input (B, N_in).  wt: W^T (N_in, N_out).  bias: effective bias (N_out,).
        kind, tau, m: the activation (an ``ACT_*`` code of :mod:`sparse_eoc.infer.plan`) and its
            float32 tau and m.
        strategy: a strategy code, or AUTO (chosen here from the measured nnz and union).
        skip: skip zero inputs (False: the same kernels with every input treated as nonzero).
        costs: the cost model (9,) float64.  ntiles: column tiles of dense, gather and block (= threads).
        tile_bytes: cache share of each csr tile (see :func:`_csr_tiling`).
        stats_row: (4,) int64, filled with (strategy, nnz, |union|, multiply-adds done; block: examples x
            each group's union x N_out).
    """
    batch, n_in = a.shape
    n_out = wt.shape[1]
    counts = np.zeros(batch, np.int64)
    mark = np.zeros(n_in, np.bool_)
    for b in range(batch):
        n = 0
        for j in range(n_in):
            if a[b, j] != 0:
                n += 1
                mark[j] = True
        counts[b] = n
    nnz = counts.sum()
    n_union = 0
    for j in range(n_in):
        n_union += mark[j]
    s = strategy
    weigh_block = s == BLOCK or (s == AUTO and batch > 1 and n_out >= BLOCK_MIN_COLUMNS)
    n_groups = (batch + GROUP - 1) // GROUP if weigh_block else 0
    rows_g = np.empty((n_groups, n_in), np.int64)  # block: each group's union, sizes and inputs
    sizes = np.zeros(n_groups, np.int64)
    unions = 0  # the sum of the block groups' measured unions, where block is run or weighed
    if weigh_block:
        unions = _group_unions(a, True, rows_g, sizes)
    if s == AUTO:
        s = choose_strategy(batch, n_in, n_out, nnz, n_union, costs, unions)
    if s == DENSE:
        y = np.dot(a, wt)  # (B, N_out), BLAS, on this thread (SparseEngine: _blas_on_caller)
        for t in prange(ntiles):
            c0, c1 = split_columns(n_out, ntiles, t)
            _bias_act_tile(y, bias, c0, c1, kind, tau, m)
        macs = batch * n_in * n_out
    elif s == UNION:
        rows, a_u = _union_input(a, mark, n_union, skip)
        n_rows = len(rows)
        # One BLAS product per column tile, the tiles across numba's threads (the BLAS library
        # runs single-threaded: SparseEngine's _blas_on_caller). The tiles depend on N_out
        # only, not on the thread count: the same BLAS calls, the same bits, on any number
        # of threads.
        y = np.empty((batch, n_out), np.float32)
        ptiles = union_tiles(n_out)
        for t in prange(ptiles):
            c0, c1 = split_columns(n_out, ptiles, t)
            _union_tile(y, a_u, wt, rows, c0, c1)
            _bias_act_tile(y, bias, c0, c1, kind, tau, m)
        macs = batch * n_rows * n_out
    elif s == BLOCK:
        p = np.empty((n_groups, GROUP * n_in), np.float32)
        if not skip:  # the dense-own baseline: every row
            _group_unions(a, False, rows_g, sizes)
        _group_inputs(a, rows_g, sizes, p)
        y = np.empty((batch, n_out), np.float32)
        # Column tiles across the threads; a tile narrower than 16 columns (other than the first)
        # reads and writes back some of the tile before it (sparse_eoc.kernels.block.block_rows),
        # so those run after the others, on the calling thread.
        for t in prange(ntiles):
            c0, c1 = split_columns(n_out, ntiles, t)
            if c1 - c0 >= 16 or c0 == 0:
                _block_columns(y, bias, wt, rows_g, p, sizes, c0, c1)
        for t in range(ntiles):
            c0, c1 = split_columns(n_out, ntiles, t)
            if c1 - c0 < 16 and c0 > 0:
                _block_columns(y, bias, wt, rows_g, p, sizes, c0, c1)
        for t in prange(ntiles):
            c0, c1 = split_columns(n_out, ntiles, t)
            for b in range(batch):
                for c in range(c0, c1):
                    y[b, c] = _act(y[b, c], kind, tau, m)
        macs = _block_macs(batch, sizes, n_out)
    else:
        indptr, idx, vals = to_csr(a, counts, skip)
        y = np.empty((batch, n_out), np.float32)
        if s == GATHER:
            for t in prange(ntiles):
                c0, c1 = split_columns(n_out, ntiles, t)
                _gather_tile(y, bias, wt, indptr, idx, vals, c0, c1, kind, tau, m)
        else:
            col_tile, row_block = csr_tiling(batch, n_in, n_out, ntiles, tile_bytes)
            for t in prange((n_out + col_tile - 1) // col_tile):
                c0 = t * col_tile
                _csr_tile(y, bias, wt, indptr, idx, vals, c0, min(c0 + col_tile, n_out), row_block,
                          kind, tau, m)
        macs = indptr[batch] * n_out
    stats_row[0] = s
    stats_row[1] = nnz
    stats_row[2] = n_union
    stats_row[3] = macs
    return y


_layer_serial = njit(cache=True)(_layer)
_layer_parallel = njit(parallel=PRANGE_ONLY)(_layer)  # the prange loops only (PRANGE_ONLY)


@njit(cache=True)
def _shift(x, offset):
    """x - offset: (B, N_0) - (N_0,) -> a fresh (B, N_0)."""
    a = np.empty_like(x)
    for b in range(x.shape[0]):
        for j in range(x.shape[1]):
            a[b, j] = x[b, j] - offset[j]
    return a


@njit(cache=True)
def _act_pass(y, bias, add_bias, kind, tau, m, mark, listing, skip, indptr, idx, vals):
    """y = phi(y + bias) (``add_bias``) or phi(y), (B, N) in place, in one pass that also counts the
    nonzeros and marks the units nonzero for some example in ``mark`` (>= N,) bool (all False
    in; the caller clears it) and, with ``listing``, writes the CSR of the result as
    :func:`_compact_csr` does. Returns (nnz, |union|)."""
    batch, n = y.shape
    nnz = 0
    n_union = 0
    if listing:
        indptr[0] = 0
    for b in range(batch):
        if listing:  # phi, then the entries kept (compact_row); nnz and the union from those
            row = y[b]
            for c in range(n):
                row[c] = _act(row[c] + bias[c] if add_bias else row[c], kind, tau, m)
            p = indptr[b]
            q = compact_row(row, n, skip, idx, vals, p)
            for i in range(p, q):
                if vals[i] != 0:  # NaN is nonzero, as in compact_row
                    nnz += 1
                    j = idx[i]
                    if not mark[j]:
                        mark[j] = True
                        n_union += 1
            indptr[b + 1] = q
        else:
            for c in range(n):
                v = _act(y[b, c] + bias[c] if add_bias else y[b, c], kind, tau, m)
                y[b, c] = v
                nz = v != 0  # NaN is nonzero: it propagates, as in the dense forward
                nnz += nz  # branch-free: a 15 %-dense output would mispredict a branch at every nonzero
                mark[c] |= nz
    if not listing:
        for c in range(n):
            n_union += mark[c]
    return nnz, n_union


@njit(cache=True)
def _compact_csr(a, skip, indptr, idx, vals):
    """The CSR of ``a`` (B, N) float32: its nonzeros (every entry when not ``skip``), examples one
    after another (:func:`sparse_eoc.kernels.rows.compact_row` each), into ``indptr`` (B + 1,) and
    ``idx``/``vals`` (>= B N,)."""
    indptr[0] = 0
    for b in range(a.shape[0]):
        indptr[b + 1] = compact_row(a[b], a.shape[1], skip, idx, vals, indptr[b])


@njit(cache=True, nogil=True)
def forward_fused(x, offset, wts, biases, kinds, taus, ms, strategies, skip, costs, tile_bytes, stats):
    """Logits (B, N_L+1) of x (B, N_0): the whole network on one thread, without the per-layer scans
    and buffers of :func:`forward_serial`.

    Every strategy, every batch size. Two activation buffers are allocated once per call and
    used in turn (layer l reads one as its dense input (B, N_in) and writes the other), with
    the nonzero lists and the union; a layer's pass over its output applies the bias (where the
    product did not start from it) and phi, counts the nonzeros and the union that the next
    layer's choice needs and, after a ``gather`` or ``csr`` layer, lists the nonzeros (CSR) in
    the same pass (:func:`sparse_eoc.kernels.rows.compact_row`; a ``gather`` or ``csr`` layer
    after one that did not lists them itself, one more pass: listing costs a write per
    nonzero, which a ``union`` or ``dense`` layer does not need). Each layer runs the same
    kernels in the same order as :func:`forward_serial` (``gather``: one column tile; ``csr``:
    ``csr_tiling`` with one tile per row of tiles; ``union``: :func:`union_tiles`; ``dense``: one
    BLAS product; ``block``: groups of eight examples, the whole width), so the result and
    ``stats`` are bit-identical to ``forward_serial``'s with ``ntiles`` = 1; against it, this path
    saves the per-layer count, list and allocation (width 1024 x 8 at batch 64: 4.9 ms against
    5.2-5.6).

    ``stats`` (L + 1, 4) int64 gets (strategy, nnz, |union|, multiply-adds) per layer, as in
    ``_layer``; ``skip=False`` is the dense-own baseline (every row read). Compiled ``nogil``:
    the engine runs the parts of a split batch on several Python threads at once.
    """
    n_layers = len(wts)
    batch = x.shape[0]
    width = x.shape[1]
    for layer in range(n_layers):
        width = max(width, wts[layer].shape[1])
    bufs = np.empty((2, batch * width), np.float32)  # the activations, in turn
    idx = np.empty(batch * width, np.int64)
    vals = np.empty(batch * width, np.float32)
    indptr = np.empty(batch + 1, np.int64)
    mark = np.zeros(width, np.bool_)
    n_groups = (batch + GROUP - 1) // GROUP
    group_rows = np.empty((n_groups, width), np.int64)  # the block strategy's unions, sizes and inputs
    group_sizes = np.zeros(n_groups, np.int64)
    group_p = np.empty((n_groups, GROUP * width), np.float32)
    n_in = x.shape[1]
    a = bufs[0, :batch * n_in].reshape(batch, n_in)
    for b in range(batch):  # the first layer's input x - offset, counted like any layer's output
        for j in range(n_in):
            a[b, j] = x[b, j] - offset[j]
    listing = True  # whether the activation pass lists the nonzeros (guessed from the layer before)
    nnz, n_union = _act_pass(a, offset, False, ACT_IDENTITY, taus[0], ms[0], mark, listing, skip, indptr, idx, vals)
    for layer in range(n_layers):
        wt = wts[layer]
        n_out = wt.shape[1]
        bias = biases[layer]
        y = bufs[(layer + 1) % 2, :batch * n_out].reshape(batch, n_out)
        s = strategies[layer]
        unions = 0  # the sum of the block groups' measured unions, where block is run or weighed
        if s == BLOCK or (s == AUTO and batch > 1 and n_out >= BLOCK_MIN_COLUMNS):
            unions = _group_unions(a, True, group_rows, group_sizes)
        if s == AUTO:
            s = choose_strategy(batch, n_in, n_out, nnz, n_union, costs, unions)
        if s == DENSE:
            y[:, :] = np.dot(a, wt)  # (B, N_out), BLAS, on this thread (SparseEngine: _blas_on_caller)
            macs = batch * n_in * n_out
        elif s == UNION:
            rows, a_u = _union_input(a, mark, n_union, skip)
            n_rows = len(rows)
            ptiles = union_tiles(n_out)
            for t in range(ptiles):
                c0, c1 = split_columns(n_out, ptiles, t)
                _union_tile(y, a_u, wt, rows, c0, c1)
            macs = batch * n_rows * n_out
        elif s == BLOCK:
            if not skip:  # the dense-own baseline: every row
                _group_unions(a, False, group_rows, group_sizes)
            _group_inputs(a, group_rows, group_sizes, group_p)
            _block_columns(y, bias, wt, group_rows, group_p, group_sizes, 0, n_out)
            macs = _block_macs(batch, group_sizes, n_out)
        else:
            if not listing:
                _compact_csr(a, skip, indptr, idx, vals)
            if s == GATHER:
                gather_rows_tile(y, bias, wt, indptr, idx, vals, 0, n_out)
            else:
                col_tile, row_block = csr_tiling(batch, n_in, n_out, 1, tile_bytes)
                for c0 in range(0, n_out, col_tile):
                    csr_rows_tile(y, bias, wt, indptr, idx, vals, c0, min(c0 + col_tile, n_out), row_block)
            macs = indptr[batch] * n_out
        stats[layer, 0] = s
        stats[layer, 1] = nnz
        stats[layer, 2] = n_union
        stats[layer, 3] = macs
        mark[:n_in] = False
        listing = s == GATHER or s == CSR  # the next layer most likely chooses as this one did
        add_bias = s == DENSE or s == UNION  # the other kernels start each sum from the bias
        nnz, n_union = _act_pass(y, bias, add_bias, kinds[layer], taus[layer], ms[layer], mark, listing, skip,
                                 indptr, idx, vals)
        a = y
        n_in = n_out
    return a.copy()


# Logits (B, N_out of the last layer) of inputs x (B, N_0), float32, in one call:
#   x: inputs (B, N_0); the first layer sees x - offset (offset (N_0,)).
#   wts, biases: typed lists of W^T (N_in, N_out) and effective biases (N_out,), one per layer.
#   kinds, taus, ms, strategies: per-layer arrays of the _layer arguments of those names.
#   stats: (L + 1, 4) int64, row l filled by layer l (see _layer).
# Two drivers, identical but for the layer function: numba's parallel array analysis
# mishandles a loop-carried array of changing shape, so prange lives in _layer only.


@njit(cache=True)
def forward_serial(x, offset, wts, biases, kinds, taus, ms, strategies, skip, costs, ntiles, tile_bytes,
                   stats):
    """The whole network on one thread (cached on disk)."""
    a = _shift(x, offset)
    for layer in range(len(wts)):
        a = _layer_serial(a, wts[layer], biases[layer], kinds[layer], taus[layer], ms[layer], strategies[layer],
                          skip, costs, ntiles, tile_bytes, stats[layer])
    return a


@njit(cache=False)
def forward_parallel(x, offset, wts, biases, kinds, taus, ms, strategies, skip, costs, ntiles, tile_bytes,
                     stats):
    """The whole network, column tiles across ``numba.get_num_threads()`` threads (compiled on first use)."""
    a = _shift(x, offset)
    for layer in range(len(wts)):
        a = _layer_parallel(a, wts[layer], biases[layer], kinds[layer], taus[layer], ms[layer],
                            strategies[layer], skip, costs, ntiles, tile_bytes, stats[layer])
    return a
