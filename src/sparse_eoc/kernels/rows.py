"""Row kernels on W^T, shared by the sparse inference engine and sparse training (numba, no torch).

Layouts: activations ``a`` are (B, N_in) row-major; weights ``wt`` = W^T are (N_in, N_out)
row-major, so ``wt[j]`` is the contiguous row of the weights leaving input unit j. A
batch's nonzeros are held as CSR: ``indptr`` (B + 1,), ``idx`` and ``vals`` (nnz,),
example b's nonzeros at ``indptr[b]:indptr[b + 1]``, sorted by unit.

Every product of a layer with a sparse input is a sum of weighted rows: the engine's
forward (y[b] = sum_j a[b, j] W^T[j]) and, in training, the forward, the weight gradient
(dW^T[j] = sum_b a[b, j] dy[b]: rows of dy) and the input gradient (dot products with the
rows W^T[j] of the active units). :func:`axpy_rows` adds weighted rows in fixed groups of
four with a software prefetch of the rows further on; :func:`csr_rows_tile` blocks a batch
so that the examples share each block of rows while it is in cache. Additions are never
reordered across rows beyond the fixed groups of four, so results are deterministic whatever the
thread count. The multiply-adds are not fused: numba compiles an ``inline="always"`` helper with
its caller's fastmath flags, not its own, and these kernels are bound by loads, not by the
arithmetic (fusing them measured no faster at width 4096). Every kernel takes float32 or
float64 arrays (one compilation each), except :func:`compact_row`: contiguous float32 only.

Weight rows are read in groups of four, and the rows ``PREFETCH_AHEAD`` further on are
prefetched meanwhile (a software prefetch hint): the hardware prefetcher follows a row once
it has started, but cannot guess which row comes next, and a narrow layer's rows are short
(1.2 KB at width 300), so without the hint every row begins with a cache miss. The hint fetches
into L2, not L1 (``prefetcht1`` on x86). The likely reason it pays: a hint for L1 holds one of
the core's few L1 miss buffers until its line arrives from memory, so the row adds' own loads
queued behind the hints in flight. The inference engine at batch 1, s = 0.85, weights from memory
(the benchmark's warm protocol, interleaved in one process, 2026-12-01): width 300 x 100
0.30 ms against 0.40-0.58 with L1 hints, 1024 x 8 0.20 against 0.23, 4096 x 8 3.45 against
3.77; at batch 64 (``csr``) no change.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit, types
from numba.core import cgutils, errors
from numba.extending import intrinsic

__all__ = ["PRANGE_ONLY", "axpy_rows", "compact_row", "csr_rows_tile", "gather_rows_tile", "to_csr", "split_columns",
           "csr_tiling"]

_U = np.uint64
#: ``njit(parallel=PRANGE_ONLY)``: only the explicit prange loops run in parallel. Numba would
#: otherwise make parallel regions of the array expressions too (np.zeros, counts.sum()), each a
#: fork and join of the threads for a few microseconds of work (a depth-8, width-300 network at
#: batch 4 took 2.6x its one-thread time on 2 threads).
PRANGE_ONLY = {"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
               "setitem": False, "numpy": False, "stencil": False, "fusion": False}
PREFETCH_AHEAD = 16  # rows: four groups of four ahead (8: the same at width 300, 6-12 % slower above)
PREFETCH_FLOATS = 320  # of each upcoming row: a whole width-300 row (1200 bytes)


# The inner loops index flat (ravelled) arrays with unsigned offsets: numba then drops its
# negative-index wraparound, and LLVM vectorises the loops after they are inlined into the
# row loop (no array views, hence no reference counting, per group of rows).


@njit(inline="always")
def _group4(yf, wf, yoff, o0, o1, o2, o3, v0, v1, v2, v3, n):
    """yf[yoff:yoff+n] += (v0 wf[o0:o0+n] + v1 wf[o1:o1+n]) + (v2 wf[o2:o2+n] + v3 wf[o3:o3+n])."""
    for c in range(n):
        yf[_U(yoff + c)] += ((v0 * wf[_U(o0 + c)] + v1 * wf[_U(o1 + c)])
                             + (v2 * wf[_U(o2 + c)] + v3 * wf[_U(o3 + c)]))


@njit(inline="always")
def _group1(yf, wf, yoff, o0, v0, n):
    """yf[yoff:yoff+n] += v0 wf[o0:o0+n]."""
    for c in range(n):
        yf[_U(yoff + c)] += v0 * wf[_U(o0 + c)]


# The intrinsic's name carries its pointer type: "p0" since LLVM 17 (opaque pointers only),
# "p0i8" before (numba 0.60 and 0.61 bundle LLVM 14 and 15).
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, offset):
    """Hint the CPU to fetch the cache line of arr[offset] into L2 (llvm.prefetch: read, locality 2, data;
    see the module docstring)."""
    sig = types.void(arr, offset)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            _PREFETCH_NAME)
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), i8p), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _nonzero_mask16(typingctx, arr, offset):
    """Bit i set where arr[offset + i] != 0 (NaN included), i < 16, as uint64: one vector load and compare
    (LLVM: <16 x float> fcmp une 0, bitcast to i16). ``arr``: a contiguous 1-D float32 array (anything
    else is a typing error: the load reads 16 consecutive float32); the 16 floats must lie inside it."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1 and arr.layout == "C"):
        raise errors.TypingError(f"_nonzero_mask16 takes a contiguous 1-D float32 array, got {arr}")
    sig = types.uint64(arr, offset)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        vec = ir.VectorType(ir.FloatType(), 16)
        ptr = builder.bitcast(builder.gep(data, [args[1]]), vec.as_pointer())
        v = builder.load(ptr, align=4)
        nz = builder.fcmp_unordered("!=", v, ir.Constant(vec, None))  # NaN != 0: unordered
        return builder.zext(builder.bitcast(nz, ir.IntType(16)), ir.IntType(64))

    return sig, codegen


@intrinsic
def _cttz(typingctx, x):
    """The number of trailing zero bits of a nonzero uint64 (llvm.cttz)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]),
                                            "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

    return sig, codegen


@njit(cache=True)
def compact_row(row, n, skip, idx, vals, k):
    """Append the nonzeros of row[:n] (every entry when not ``skip``) to idx/vals from slot k, in
    ascending order; returns the next free slot. NaN counts as nonzero. ``row``: a contiguous 1-D
    float32 array (numba raises a typing error for any other), n <= len(row).

    Sixteen entries at a time: one vector compare gives their nonzero bits, and only the set bits
    are visited, so a 15 %-dense row costs about a cycle per nonzero rather than per entry (a
    branch-free scalar compaction measured 1.0 ns an entry, this one a quarter of that).
    """
    if not skip:
        for c in range(n):
            idx[_U(k + c)] = c
            vals[_U(k + c)] = row[_U(c)]
        return k + n
    c0 = 0
    while c0 + 16 <= n:
        mask = _nonzero_mask16(row, _U(c0))
        while mask:
            c = c0 + np.int64(_cttz(mask))
            idx[_U(k)] = c
            vals[_U(k)] = row[_U(c)]
            k += 1
            mask &= mask - _U(1)
        c0 += 16
    for c in range(c0, n):
        v = row[_U(c)]
        if v != 0:  # NaN is nonzero
            idx[_U(k)] = c
            vals[_U(k)] = v
            k += 1
    return k


@njit(inline="always")
def _prefetch_rows(wf, n_out, idx, k, q, c0, n):
    """Prefetch the first PREFETCH_FLOATS of rows idx[k:k+4] (those that exist), columns from c0.

    One hint per 16 floats (a 64-byte line) and one at the last float: rows need not start
    on a line boundary, so their last line may begin less than 16 floats from the end.
    """
    span = min(n, PREFETCH_FLOATS)
    for r in range(k, min(k + 4, q)):
        base = idx[r] * n_out + c0
        for c in range(0, span, 16):
            _prefetch(wf, _U(base + c))
        if span > 0:
            _prefetch(wf, _U(base + span - 1))


@njit(cache=True)
def axpy_rows(yf, yoff, wf, n_out, idx, vals, p, q, c0, c1, prefetch=True):
    """y[c0:c1] += sum_{k in p..q-1} vals[k] W^T[idx[k], c0:c1], rows in groups of four.

    ``yf`` is the flat output with y[c] at ``yf[yoff + c]``; ``wf`` the flat W^T (N_in * N_out,).
    ``prefetch``: hint the rows further on (for rows that are likely not in cache; a row set that
    stays in L2, as a narrow layer's weights or dy do at batch 128, runs faster without the hints).
    """
    n = c1 - c0
    yo = yoff + c0
    k = p
    if prefetch:
        for r in range(k, min(k + PREFETCH_AHEAD, q), 4):
            _prefetch_rows(wf, n_out, idx, r, q, c0, n)
    while k + 4 <= q:
        if prefetch:
            _prefetch_rows(wf, n_out, idx, k + PREFETCH_AHEAD, q, c0, n)  # rows further on, while these add
        _group4(yf, wf, yo, idx[k] * n_out + c0, idx[k + 1] * n_out + c0, idx[k + 2] * n_out + c0,
                idx[k + 3] * n_out + c0, vals[k], vals[k + 1], vals[k + 2], vals[k + 3], n)
        k += 4
    while k < q:
        _group1(yf, wf, yo, idx[k] * n_out + c0, vals[k], n)
        k += 1


@njit(cache=True)
def split_columns(n, parts, t):
    """Columns [c0, c1) of part t of ``parts`` near-equal parts of n, boundaries at multiples of 16."""
    chunk = ((n + parts - 1) // parts + 15) // 16 * 16
    c0 = min(t * chunk, n)
    return c0, min(c0 + chunk, n)


@njit(cache=True)
def csr_tiling(batch, n_in, n_out, ntiles, tile_bytes):
    """(columns per tile T, rows per block R) of the csr kernel for a layer.

    The (B, T) output tile and an (R, T) block of weights each get about ``tile_bytes``:
    T = tile_bytes / (4 B), at least 256 and at most N_out, then cut to give ``ntiles`` tiles
    (one per thread); R = tile_bytes / (4 T), at least 16, from T before the cut, so the row
    blocks (which set the order of the additions) do not depend on the thread count. The
    inference engine's 2 MiB (whole rows up to width 4096 at batch 128, R = 128 there) measured
    faster than an L2-sized share (256 KiB: R = 16 at width 4096, where an example rarely has
    four nonzeros in a block to add together): the row blocks come from L3 and memory either way.
    """
    t = min(n_out, max(256, tile_bytes // (4 * batch)) // 16 * 16)
    r = max(16, min(n_in, tile_bytes // (4 * t)))
    t = max(16, min(t, ((n_out + ntiles - 1) // ntiles + 15) // 16 * 16))
    return t, r


@njit(cache=True)
def to_csr(a, counts, skip):
    """(indptr, idx, vals) of ``a`` (B, N_in): its nonzeros, or every entry when not ``skip``."""
    batch, n_in = a.shape
    indptr = np.zeros(batch + 1, np.int64)
    for b in range(batch):
        indptr[b + 1] = indptr[b] + (counts[b] if skip else n_in)
    idx = np.empty(indptr[batch], np.int64)
    vals = np.empty(indptr[batch], a.dtype)
    for b in range(batch):
        k = indptr[b]
        for j in range(n_in):
            v = a[b, j]
            if v != 0 or not skip:
                idx[k] = j
                vals[k] = v
                k += 1
    return indptr, idx, vals


@njit(cache=True)
def gather_rows_tile(y, bias, wt, indptr, idx, vals, c0, c1):
    """y[b, c0:c1] = bias[c0:c1] + sum_k vals[k] W^T[idx[k], c0:c1] over example b's nonzeros, every
    example on its own (each reads its own rows)."""
    n_out = wt.shape[1]
    yf, wf = y.reshape(y.size), wt.reshape(wt.size)  # flat views
    for b in range(y.shape[0]):
        yo = b * n_out
        for c in range(c0, c1):
            yf[_U(yo + c)] = bias[_U(c)]
        axpy_rows(yf, yo, wf, n_out, idx, vals, indptr[b], indptr[b + 1], c0, c1)


@njit(cache=True)
def csr_rows_tile(y, bias, wt, indptr, idx, vals, c0, c1, row_block, prefetch=True):
    """y[:, c0:c1] = bias[c0:c1] + a W^T[:, c0:c1] for the CSR batch a, input rows in blocks of ``row_block``.

    For each block of rows, every example adds the rows of the block it needs; the
    block's (row_block, c1 - c0) weights stay in cache while the examples take turns,
    and the (B, c1 - c0) output tile stays in cache throughout.
    """
    batch, n_in, n_out = y.shape[0], wt.shape[0], wt.shape[1]
    yf, wf = y.reshape(y.size), wt.reshape(wt.size)  # flat views
    ptr = indptr[:batch].copy()  # (B,): each example's next nonzero
    for b in range(batch):
        yo = b * n_out
        for c in range(c0, c1):
            yf[_U(yo + c)] = bias[_U(c)]
    for r1 in range(row_block, n_in + row_block, row_block):
        for b in range(batch):
            p = ptr[b]
            q, end = p, indptr[b + 1]
            while q < end and idx[q] < r1:
                q += 1
            if q > p:
                axpy_rows(yf, b * n_out, wf, n_out, idx, vals, p, q, c0, c1, prefetch)
            ptr[b] = q
