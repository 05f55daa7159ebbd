"""Register-blocked kernel: a group of up to eight examples against the rows of their union.

Layouts as in :mod:`sparse_eoc.kernels.rows`: activations ``a`` (B, N_in) float32 row-major,
weights ``wt`` = W^T (N_in, N_out) float32 row-major.

The row kernels there read a weight once for every multiply-add (each example adds its own
rows), so a small batch runs at the rate weights come from L1/L2 (13-26 G multiply-adds/s
on one core here) however many examples share a row. This kernel reads each weight once per
group of examples. A group of ``lanes`` = 8 examples (a smaller last group runs as 1, 2 or 4:
:func:`group_lanes`) keeps 8 sums of 16 floats in vector registers, lanes examples x 8 / lanes
vectors of 16 columns; for each row j of the group's union U it loads those columns of
W^T[j] once and adds them, times each example's a[e, j] (broadcast), into that example's sums
with fused multiply-adds. It does lanes x |U| multiply-adds per output column, zeros included
(an example's a[e, j] is often 0 for a row of the union), at the rate of the vector unit
(37-42 G/s on one core here with the weights in cache).

The union's rows go in chunks (:data:`CHUNK_BYTES`): every column tile runs over a chunk before
the next chunk starts, so the weights stream from memory a few rows at a time, which the
hardware prefetcher follows; a chunk after the first restarts each sum from y.

LLVM IR through numba intrinsics (numba has no vector types): one loop over the rows of a
chunk, the sums as vector phi nodes, ``llvm.fma.v16f32``; compiled for the host CPU like every
numba kernel, so it runs wherever numba does (AVX-512 here; LLVM splits the 16-float vectors
on narrower units). Every output column gets the same arithmetic whatever the tiling and the
chunks: its sum starts from the bias and adds the rows of U in order, one fused multiply-add
each. A row of U that an example does not use adds an exact 0 (a[e, j] = 0, finite weights),
so an example's result does not depend on which group it is in either, up to the sign of a
zero (fma(0, w, -0.0) is +0.0: a -0.0 bias stays -0.0 only where no row was added).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit, types
from numba.core import cgutils, errors
from numba.extending import intrinsic

from sparse_eoc.kernels.rows import _U, _cttz, _nonzero_mask16

__all__ = ["BLOCK_COLUMNS", "GROUP", "LANES", "block_rows", "group_inputs", "group_lanes", "group_union"]

#: Examples per group, at most: eight sums of 16 floats in registers (AVX-512 has 32 vector registers).
GROUP = 8
#: The group sizes a kernel exists for (a group of n examples uses the smallest that holds it).
LANES = (1, 2, 4, 8)
#: Output columns per vector: a layer needs N_out >= 16.
BLOCK_COLUMNS = 16
#: How far on in its row each weight load prefetches (floats: two tiles of 16 columns).
PREFETCH_COLUMNS = 32
#: The union's rows go in chunks of about CHUNK_BYTES of weights (the L1 data cache), CHUNK_MIN to
#: CHUNK_MAX rows: every column tile runs over a chunk before the next chunk starts, so the
#: weights stream from memory as a few rows at a time, which the hardware prefetcher follows
#: (measured, one layer, s = 0.85, weights from memory: width 4096 at batch 8 1.27 ms with
#: chunks of 8 rows, 1.42 with 16, 1.69 with 4, 3.87 unchunked, 2.10 for per-example gathers;
#: width 1024 0.10 ms, 0.17 unchunked, 0.13 gathers; width 300, 0.015 ms with 24-32 rows).
CHUNK_BYTES = 32 << 10
CHUNK_MIN, CHUNK_MAX = 8, 32

# The intrinsic's name carries its pointer type: "p0" since LLVM 17 (opaque pointers only),
# "p0i8" before.
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"


def _check_arrays(yf, wf, rows, p, bias):
    """A typing error unless yf, wf, p, bias are contiguous 1-D float32 and rows contiguous 1-D int64
    (the kernel reads them through their data pointers)."""
    for arr, name, dtype in ((yf, "yf", types.float32), (wf, "wf", types.float32), (p, "p", types.float32),
                             (bias, "bias", types.float32), (rows, "rows", types.int64)):
        if not (isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1 and arr.layout == "C"):
            raise errors.TypingError(f"block tile: {name} must be a contiguous 1-D {dtype} array, got {arr}")


def _tile_kernel(lanes, vectors):
    """The tile intrinsic for groups of ``lanes`` examples and tiles of ``vectors`` x 16 columns
    (lanes x vectors sums in registers, at most 8)."""

    @intrinsic
    def tile(typingctx, yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi):
        """One tile of T = 16 ``vectors`` output columns of a group: for e < n_ex (<= lanes), with
        Y = yf[yoff + e n_out + c0 : +T],
        Y = S + sum_{k0 <= k < k1} p[lanes k + e] wf[rows[k] n_out + c0 : +T], k ascending, one fused
        multiply-add per term, S = Y (``from_y`` != 0) or bias[c0:c0+T]; only columns lo <= i < hi
        of the tile are written (0 and T: all). yf, wf, p, bias: contiguous 1-D float32, rows
        contiguous 1-D int64 (anything else is a typing error); the other arguments int64. Every
        range read or written must lie inside its array (unchecked). Each row's weight load also
        prefetches the line PREFETCH_COLUMNS floats past the tile (hints never fault)."""
        _check_arrays(yf, wf, rows, p, bias)
        i64t = types.int64
        sig = types.void(yf, i64t, wf, i64t, rows, i64t, i64t, p, bias, i64t, i64t, i64t, i64t, i64t)

        def codegen(context, builder, signature, args):
            i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
            v16, i8p, vi16 = ir.VectorType(f32, 16), ir.IntType(8).as_pointer(), ir.VectorType(i32, 16)
            y_d, w_d, rows_d, p_d, bias_d = (context.make_array(signature.args[i])(context, builder, args[i]).data
                                             for i in (0, 2, 4, 7, 8))
            yoff, n_out, k0, k1, c0, n_ex, from_y, lo, hi = (args[i] for i in (1, 3, 5, 6, 9, 10, 11, 12, 13))
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16, v16, v16]),
                                                 "llvm.fma.v16f32")
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), _PREFETCH_NAME)
            splat_mask = ir.Constant(vi16, None)  # every lane from lane 0

            def vptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), v16.as_pointer())

            def y_at(e, v):
                return vptr(y_d, builder.add(yoff, builder.add(builder.mul(n_out, i64(e)),
                                                               builder.add(c0, i64(16 * v)))))

            def splat(value, vector_type):
                one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, i32(0))
                return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), splat_mask)

            bias_v = [builder.load(vptr(bias_d, builder.add(c0, i64(16 * v))), align=4) for v in range(vectors)]
            use_y = builder.icmp_signed("!=", from_y, i64(0))
            starts = []
            for e in range(lanes):  # each sum starts from Y (from_y, examples < n_ex) or the bias
                before = builder.basic_block
                with builder.if_then(builder.and_(use_y, builder.icmp_signed(">", n_ex, i64(e)))):
                    loaded = [builder.load(y_at(e, v), align=4) for v in range(vectors)]
                    then = builder.basic_block
                row = []
                for v in range(vectors):
                    phi = builder.phi(v16)
                    phi.add_incoming(loaded[v], then)
                    phi.add_incoming(bias_v[v], before)
                    row.append(phi)
                starts.append(row)
            entry = builder.basic_block
            head = builder.append_basic_block("block.head")
            body = builder.append_basic_block("block.body")
            done = builder.append_basic_block("block.done")
            builder.branch(head)
            builder.position_at_end(head)  # k and the sums, carried round the loop
            k = builder.phi(i64)
            k.add_incoming(k0, entry)
            sums = []
            for e in range(lanes):
                row_sums = []
                for v in range(vectors):
                    phi = builder.phi(v16)
                    phi.add_incoming(starts[e][v], entry)
                    row_sums.append(phi)
                sums.append(row_sums)
            builder.cbranch(builder.icmp_signed("<", k, k1), body, done)
            builder.position_at_end(body)
            w_at = builder.add(builder.mul(builder.load(builder.gep(rows_d, [k])), n_out), c0)
            # W^T[rows[k], c0:c0+T], read once for the group
            ws = [builder.load(vptr(w_d, builder.add(w_at, i64(16 * v))), align=4) for v in range(vectors)]
            ahead = builder.gep(w_d, [builder.add(w_at, i64(PREFETCH_COLUMNS + 16 * (vectors - 1)))])
            builder.call(prefetch, [builder.bitcast(ahead, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
            pk = builder.mul(k, i64(lanes))
            new = []
            for e in range(lanes):
                pe = splat(builder.load(builder.gep(p_d, [builder.add(pk, i64(e))])), v16)
                new.append([builder.call(fma, [pe, ws[v], sums[e][v]]) for v in range(vectors)])
            latch = builder.basic_block
            k.add_incoming(builder.add(k, i64(1)), latch)
            for e in range(lanes):
                for v in range(vectors):
                    sums[e][v].add_incoming(new[e][v], latch)
            builder.branch(head)
            builder.position_at_end(done)
            partial = builder.or_(builder.icmp_signed(">", lo, i64(0)), builder.icmp_signed("<", hi, i64(16 * vectors)))
            for e in range(lanes):
                with builder.if_then(builder.icmp_signed(">", n_ex, i64(e))):
                    for v in range(vectors):
                        ptr = y_at(e, v)
                        with builder.if_else(partial) as (blend, whole):
                            with blend:  # keep Y outside columns lo..hi-1
                                iota = ir.Constant(vi16, list(range(16 * v, 16 * v + 16)))
                                inside = builder.and_(
                                    builder.icmp_signed(">=", iota, splat(builder.trunc(lo, i32), vi16)),
                                    builder.icmp_signed("<", iota, splat(builder.trunc(hi, i32), vi16)))
                                builder.store(builder.select(inside, sums[e][v], builder.load(ptr, align=4)), ptr,
                                              align=4)
                            with whole:
                                builder.store(sums[e][v], ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# Whole tiles (lanes x vectors = 8 sums) and the 16-column tiles that finish a row of tiles.
_tile_1, _tile_2, _tile_4, _tile_8 = (_tile_kernel(n, GROUP // n) for n in LANES)
_tail_1, _tail_2, _tail_4, _tail_8 = (_tile_kernel(n, 1) for n in LANES)


@njit(inline="always")
def _tile(lanes, whole, yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi):
    """The tile of ``lanes`` (1, 2, 4 or 8) from column c0: 16 GROUP / lanes columns (``whole``) or 16."""
    if lanes == 8:
        if whole:
            _tile_8(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)
        else:
            _tail_8(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)
    elif lanes == 4:
        if whole:
            _tile_4(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)
        else:
            _tail_4(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)
    elif lanes == 2:
        if whole:
            _tile_2(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)
        else:
            _tail_2(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)
    elif whole:
        _tile_1(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)
    else:
        _tail_1(yf, yoff, wf, n_out, rows, k0, k1, p, bias, c0, n_ex, from_y, lo, hi)


@njit(cache=True)
def group_union(a, g0, n_ex, skip, rows):
    """The units nonzero for some example of a[g0:g0+n_ex] (every unit when not ``skip``), ascending,
    into ``rows`` (>= N_in,) int64; returns how many. ``a``: (B, N_in) C-contiguous float32. NaN
    counts as nonzero."""
    n_in = a.shape[1]
    if not skip:
        for j in range(n_in):
            rows[j] = j
        return n_in
    k = 0
    c0 = 0
    while c0 + 16 <= n_in:
        mask = _U(0)
        for e in range(g0, g0 + n_ex):
            mask |= _nonzero_mask16(a[e], _U(c0))
        while mask:
            rows[k] = c0 + np.int64(_cttz(mask))
            k += 1
            mask &= mask - _U(1)
        c0 += 16
    for j in range(c0, n_in):
        for e in range(g0, g0 + n_ex):
            if a[e, j] != 0:
                rows[k] = j
                k += 1
                break
    return k


@njit(cache=True)
def group_lanes(n_ex):
    """The group size a kernel exists for that holds n_ex (1..GROUP) examples: 1, 2, 4 or 8."""
    if n_ex <= 2:
        return n_ex
    return 4 if n_ex <= 4 else GROUP


@njit(cache=True)
def group_inputs(a, g0, n_ex, lanes, rows, nrows, p):
    """p[lanes k + e] = a[g0 + e, rows[k]] for k < nrows, e < lanes (0 for e >= n_ex): the group's
    inputs at its union, example-minor. p: (>= lanes nrows,) float32; n_ex <= lanes."""
    for k in range(nrows):
        j = rows[k]
        for e in range(lanes):
            p[_U(k * lanes + e)] = a[g0 + e, j] if e < n_ex else np.float32(0.0)


@njit(cache=True)
def block_rows(y, bias, wt, g0, n_ex, lanes, rows, nrows, p, c0, c1, chunk_rows=0):
    """y[g0+e, c0:c1] = bias[c0:c1] + sum_k p[lanes k + e] W^T[rows[k], c0:c1] for e < n_ex <= lanes,
    k ascending (:func:`group_inputs` gives p; ``lanes`` from :func:`group_lanes`).

    y (B, N_out) and wt (N_in, N_out): C-contiguous float32, 0 <= c0 <= c1 <= N_out. The rows go
    in chunks of ``chunk_rows`` (0: the CHUNK_BYTES rule); each chunk runs every column tile: tiles
    of 16 GROUP / lanes columns (``lanes`` x that many sums in registers), then tiles of 16; where
    c1 - c0 is not a multiple of 16, the last tile is the 16 columns that end at c1 (or start at
    0) and writes only its columns in c0..c1-1 (it reads the others and writes them back: not
    for column ranges that other threads write at the same time). A chunk after the first starts
    each sum from y. The sums, and so the bits, are the same whatever the chunks and the column
    ranges. Narrower than 16 columns in all (N_out < 16, e.g. a readout of 10 classes): the same
    sums, one column at a time (unfused multiply-adds).
    """
    n_out = wt.shape[1]
    if n_out < BLOCK_COLUMNS:
        for e in range(n_ex):
            for c in range(c0, c1):
                acc = bias[c]
                for k in range(nrows):
                    acc += p[_U(k * lanes + e)] * wt[rows[k], c]
                y[g0 + e, c] = acc
        return
    if c1 <= c0:
        return
    yf, wf = y.reshape(y.size), wt.reshape(wt.size)
    yoff = g0 * n_out
    width = BLOCK_COLUMNS * (GROUP // lanes)
    chunk = chunk_rows if chunk_rows > 0 else min(CHUNK_MAX, max(CHUNK_MIN, CHUNK_BYTES // (4 * (c1 - c0))))
    for k0 in range(0, max(nrows, 1), chunk):
        k1 = min(k0 + chunk, nrows)
        from_y = 1 if k0 > 0 else 0
        c = c0
        while c + width <= c1:
            _tile(lanes, True, yf, yoff, wf, n_out, rows, k0, k1, p, bias, c, n_ex, from_y, 0, width)
            c += width
        while c + BLOCK_COLUMNS <= c1:
            _tile(lanes, False, yf, yoff, wf, n_out, rows, k0, k1, p, bias, c, n_ex, from_y, 0, BLOCK_COLUMNS)
            c += BLOCK_COLUMNS
        if c < c1:  # the 16 columns that end at c1 (or start at 0), writing c..c1-1 only
            last = max(0, c1 - BLOCK_COLUMNS)
            _tile(lanes, False, yf, yoff, wf, n_out, rows, k0, k1, p, bias, last, n_ex, from_y, c - last, c1 - last)
