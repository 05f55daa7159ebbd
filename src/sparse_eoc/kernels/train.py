"""The three products of a training step for a layer whose input is a sparse activation (numba, no torch).

For a hidden layer y = a W^T + b with a = phi(h_prev) (B, N_in) mostly exact zeros, with
W^T held row-major (``wt``, (N_in, N_out)) and the output gradient dy (B, N_out):

- forward: y[b] = b + sum_{j: a[b, j] != 0} a[b, j] W^T[j]            (:func:`forward_tile`)
- backward by weights: dW^T[j] = sum_{b: a[b, j] != 0} a[b, j] dy[b]    (:func:`grad_weight_tile`)
- backward by input, only where phi'(h_prev) != 0 (for the activations here: a != 0 and
  |a| < m, i.e. neither zeroed nor clipped): da[b, j] = dy[b] . W^T[j]  (:func:`grad_input_tile`);
  every other entry of da is multiplied by phi' = 0 before it reaches anything, so it is
  left 0.

Each is a sum of weighted rows or of dot products with rows, over the nonzeros only, with
the multiply-adds of the dense product where a is zero skipped: the exact gradients, no
approximation. Each kernel fills a disjoint part of its output (a column tile of y, a range
of rows of dW^T or of columns of da), so callers may run parts on several threads
(``nogil``) and the result does not depend on the split. float32 and float64 alike.

Loops are blocked for the cache: a (B, T) tile of y or dy and a block of weight rows are
reused by every example while they are in cache (see :func:`sparse_eoc.kernels.rows.csr_rows_tile`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sparse_eoc.kernels.rows import PRANGE_ONLY, axpy_rows, csr_rows_tile, split_columns

__all__ = ["IDENTITY", "ONE_SIDED", "TWO_SIDED", "activation_nonzeros", "activation_patterns", "input_patterns",
           "forward_tile", "grad_weight_tile", "grad_input_tile"]

_U = np.uint64


#: ``kind`` of :func:`activation_patterns`: the input is already the activation a = phi(h).
IDENTITY = 0
#: ``kind``: a one-sided activation on h - tau (relu_tau, crelu, relu): a = min(max(x, 0), m).
ONE_SIDED = 1
#: ``kind``: a two-sided activation on h (st_tau, cst): a = clip(softshrink(x, tau), -m, m).
TWO_SIDED = 2


@njit(inline="always")
def _phi(x, kind, tau, m):
    """The activation's value at an x where it is nonzero (see :func:`_nonzero_active`), as the
    torch modules compute it (relu/hardtanh/softshrink are exact, so bit for bit); NaN stays NaN."""
    if kind == TWO_SIDED:
        if x > tau:
            x = x - tau
        elif x < -tau:
            x = x + tau
        if x < -m:
            return -m
    if x > m:
        return m
    return x


@njit(inline="always")
def _nonzero_active(x, kind, tau, m):
    """(phi(x) != 0, phi(x) != 0 and |phi(x)| < m): whether a = phi(x) is stored, and whether
    phi'(x) != 0 there. Branch-free; NaN counts as nonzero (never active), as in count_nonzero."""
    if kind == ONE_SIDED:
        return not (x <= 0), (x > 0) & (x < m)
    if kind == TWO_SIDED:
        r = abs(x)
        return not (r <= tau), (r > tau) & (r - tau < m)
    return x != 0, (x != 0) & (abs(x) < m)


@njit(cache=True, nogil=True)
def activation_patterns(x, kind, tau, m):
    """The sparsity patterns of a layer's input a = phi(x) (B, N) that its three products read, in two passes over x.

    ``x`` is a itself (``kind`` IDENTITY), or the previous layer's pre-activation: h - tau for a
    ONE_SIDED activation, h for a TWO_SIDED one (then a = phi(x) is never stored whole). ``tau``
    and ``m`` in x's dtype (m = inf: unclipped). Returns ``(indptr, idx, vals, colptr, rows, tvals,
    act_ptr, act_idx)``:

    - the nonzeros of a as CSR: indptr (B + 1,), idx (nnz,) units ascending, vals (nnz,);
    - the same nonzeros as CSC (the CSR of a^T): colptr (N + 1,), rows (nnz,) examples
      ascending, tvals (nnz,);
    - the entries where the activation's derivative is nonzero, a != 0 and |a| < m (m = inf:
      every nonzero), as CSR without values: act_ptr (B + 1,), act_idx (n_active,).
    """
    batch, n = x.shape
    indptr = np.zeros(batch + 1, np.int64)
    act_ptr = np.zeros(batch + 1, np.int64)
    colptr = np.zeros(n + 1, np.int64)
    for b in range(batch):  # pass 1: counts per example, per unit, and of the active entries
        c = 0
        c_act = 0
        for j in range(n):
            nz, active = _nonzero_active(x[b, j], kind, tau, m)
            c += nz
            c_act += active
            colptr[j + 1] += nz
        indptr[b + 1] = indptr[b] + c
        act_ptr[b + 1] = act_ptr[b] + c_act
    for j in range(n):
        colptr[j + 1] += colptr[j]
    nnz = indptr[batch]
    idx = np.empty(nnz, np.int64)
    vals = np.empty(nnz, x.dtype)
    rows = np.empty(nnz, np.int64)
    tvals = np.empty(nnz, x.dtype)
    act_idx = np.empty(act_ptr[batch], np.int64)
    fill = colptr[:n].copy()  # each unit's next slot in the CSC
    for b in range(batch):  # pass 2: fill all three, examples in order (so each column's rows ascend)
        k = indptr[b]
        k_act = act_ptr[b]
        for j in range(n):
            nz, active = _nonzero_active(x[b, j], kind, tau, m)
            if nz:
                v = _phi(x[b, j], kind, tau, m)
                idx[k] = j
                vals[k] = v
                k += 1
                rows[fill[j]] = b
                tvals[fill[j]] = v
                fill[j] += 1
                if active:
                    act_idx[k_act] = j
                    k_act += 1
    return indptr, idx, vals, colptr, rows, tvals, act_ptr, act_idx


@njit(cache=True, nogil=True)
def activation_nonzeros(x, kind, tau, m):
    """The number of nonzeros of a = phi(x) (see :func:`activation_patterns`), one branch-free pass."""
    count = 0
    for b in range(x.shape[0]):
        for j in range(x.shape[1]):
            count += _nonzero_active(x[b, j], kind, tau, m)[0]
    return count


@njit(cache=True, nogil=True)
def input_patterns(a, m):
    """:func:`activation_patterns` of an activation a (B, N) itself; m in a's dtype."""
    return activation_patterns(a, IDENTITY, a.dtype.type(0), m)


@njit(cache=True, nogil=True)
def forward_tile(y, bias, wt, indptr, idx, vals, c0, c1, row_block, prefetch):
    """y[:, c0:c1] = bias[c0:c1] + a W^T[:, c0:c1] for a given by its CSR (see csr_rows_tile; ``prefetch``
    hints the weight rows ahead, which the training step runs without: at batch 128 the examples
    share the rows, and the hints measured 5-15 % slower at widths 300 to 4096)."""
    csr_rows_tile(y, bias, wt, indptr, idx, vals, c0, c1, row_block, prefetch)


@njit(cache=True, nogil=True)
def grad_weight_tile(dwt, dy, colptr, rows, vals, j0, j1, col_tile, prefetch):
    """dW^T[j] = sum_k vals[k] dy[rows[k]] over column j of a (its CSC), for rows j0 <= j < j1.

    Columns in tiles of ``col_tile``: the (B, col_tile) tile of dy stays in cache while every
    row j of the range takes its weighted sum of dy's rows. ``prefetch``: as :func:`forward_tile`
    (dy's B rows are read by every j, so they stay in cache without the hints).
    """
    n_out = dy.shape[1]
    dwf, dyf = dwt.reshape(dwt.size), dy.reshape(dy.size)  # flat views
    for c0 in range(0, n_out, col_tile):
        c1 = min(c0 + col_tile, n_out)
        for j in range(j0, j1):
            base = j * n_out
            p, q = colptr[j], colptr[j + 1]
            if q == p:
                for c in range(c0, c1):
                    dwf[_U(base + c)] = 0
                continue
            v, o = vals[p], rows[p] * n_out  # the first row is written, not added (no zeroing pass)
            for c in range(c0, c1):
                dwf[_U(base + c)] = v * dyf[_U(o + c)]
            if q > p + 1:
                axpy_rows(dwf, base, dyf, n_out, rows, vals, p + 1, q, c0, c1, prefetch)


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def grad_input_tile(da, dy, wt, indptr, idx, j0, j1, col_tile, row_block):
    """da[b, j] = dy[b] . W^T[j] at the active entries (CSR indptr/idx) with j0 <= j < j1; ``da`` must
    be zero elsewhere (it is not written there).

    Columns of dy and W^T in tiles of ``col_tile``, rows of W^T in blocks of ``row_block``: a
    block of weight rows stays in cache while every example takes the dot products it needs
    with it, two rows at a time (sharing the loads of dy[b]). Partial sums are added tile after
    tile in a fixed order; within a tile the compiler may reorder the sum (vectorised partial
    sums) the same way on every call, so the result is deterministic and does not depend on
    the thread split.
    """
    batch, n_out = dy.shape
    dyf, wf = dy.reshape(dy.size), wt.reshape(wt.size)  # flat views
    start = np.empty(batch, np.int64)  # each example's first active unit >= j0
    for b in range(batch):
        k = indptr[b]
        while k < indptr[b + 1] and idx[k] < j0:
            k += 1
        start[b] = k
    ptr = np.empty(batch, np.int64)
    for c0 in range(0, n_out, col_tile):
        c1 = min(c0 + col_tile, n_out)
        ptr[:] = start
        for r0 in range(j0, j1, row_block):
            r1 = min(r0 + row_block, j1)
            for b in range(batch):
                yo = b * n_out
                k = ptr[b]
                end = indptr[b + 1]
                while k + 1 < end and idx[k + 1] < r1:
                    w0, w1 = idx[k] * n_out, idx[k + 1] * n_out
                    s0 = dy.dtype.type(0)
                    s1 = dy.dtype.type(0)
                    for c in range(c0, c1):
                        g = dyf[_U(yo + c)]
                        s0 += g * wf[_U(w0 + c)]
                        s1 += g * wf[_U(w1 + c)]
                    da[b, idx[k]] += s0
                    da[b, idx[k + 1]] += s1
                    k += 2
                if k < end and idx[k] < r1:
                    w0 = idx[k] * n_out
                    s0 = dy.dtype.type(0)
                    for c in range(c0, c1):
                        s0 += dyf[_U(yo + c)] * wf[_U(w0 + c)]
                    da[b, idx[k]] += s0
                    k += 1
                ptr[b] = k


# Numba's threads for the products too small to split over Python threads (a width-300 layer at
# batch 128: each thread's share is 50-100 us, which a hand-off between Python threads costs).
# Only the explicit prange loops run in parallel (see sparse_eoc.kernels.rows.PRANGE_ONLY).


def _forward_parts(y, bias, wt, indptr, idx, vals, parts, row_block):
    """forward_tile over ``parts`` column ranges (multiples of 16), one per prange task."""
    n_out = wt.shape[1]
    for t in prange(parts):
        c0, c1 = split_columns(n_out, parts, t)
        if c1 > c0:
            csr_rows_tile(y, bias, wt, indptr, idx, vals, c0, c1, row_block, False)


def _backward_parts(dwt, da, dy, wt, colptr, rows, tvals, act_ptr, act_idx, parts, weight_col_tile,
                    input_col_tile, input_row_block):
    """grad_weight_tile and grad_input_tile, each over ``parts`` row ranges, as 2 x parts prange tasks
    (a weight or input gradient not wanted is passed as an empty array and skipped)."""
    n_in = wt.shape[0]
    for t in prange(2 * parts):
        p = t % parts
        j0, j1 = n_in * p // parts, n_in * (p + 1) // parts
        if t < parts:
            if dwt.size > 0:
                grad_weight_tile(dwt, dy, colptr, rows, tvals, j0, j1, weight_col_tile, False)
        elif da.size > 0:
            grad_input_tile(da, dy, wt, act_ptr, act_idx, j0, j1, input_col_tile, input_row_block)


forward_parallel = njit(cache=True, nogil=True, parallel=PRANGE_ONLY)(_forward_parts)
backward_parallel = njit(cache=True, nogil=True, parallel=PRANGE_ONLY)(_backward_parts)
