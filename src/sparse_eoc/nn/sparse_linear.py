"""Exact sparse training kernels for the MLP's hidden layers, behind a ``torch.autograd.Function``.

A hidden layer l >= 2 of :class:`~sparse_eoc.nn.mlp.SparseMLP` computes h^l = a W^T + b from
a = phi(h^{l-1}), mostly exact zeros. :class:`SparseLinearFunction` computes its forward and
both backward products over the nonzeros only (:mod:`sparse_eoc.kernels.train`): the same
values as the dense products up to the order of the floating-point additions, with no
approximation and no predictor. Optimisers, lr schedules, weight decay, checkpoints and the
run files see ordinary parameters and gradients.

``set_kernels_(model, kernels)`` chooses, for a model about to be trained:

- ``dense``: plain torch ops (the behaviour of a run without this setting);
- ``sparse``: every hidden layer after the first (whose input is the data, not an
  activation) runs the sparse kernels while training;
- ``auto``: per layer and step, the sparse kernels where the input's measured density and
  the layer's shape say they pay (:func:`sparse_pays`), plain torch ops elsewhere: decided
  from density and shape only, never from timings, so a seed still fixes the run.

A SparseMLP fuses its activation into the next layer's kernels while training
(:func:`fused_forward_hidden`, :class:`SparseActivationLinearFunction`): the nonzeros of phi(h) are
read straight off h and the input gradient is phi'(h) (dy W), so the activation adds no pass of
its own. Products big enough run over Python threads (PARALLEL_MIN_MACS a thread), smaller ones
over numba's (NUMBA_PARALLEL_MIN_MACS), both with the one-thread result bit for bit. README
"Sparse training kernels" has the measurements.

In eval mode or under ``torch.no_grad()`` the model runs plain torch ops whatever the choice
(so it exports to ONNX and evaluates exactly as a dense-trained model). The sparse kernels
read W^T row by row, so ``set_kernels_`` stores those layers' weights transposed in memory
(``weight`` keeps its shape (out, in), its values, its ``state_dict`` key; saved weights are
made contiguous as always); call it before the optimiser is built.
"""

from __future__ import annotations

import contextlib
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from sparse_eoc.runs.config import KERNEL_CHOICES

__all__ = ["KERNEL_CHOICES", "SparseActivationLinearFunction", "SparseLinearFunction", "fused_forward_hidden",
           "set_kernels_", "sparse_pays", "kernels_available"]

# Cache blocking, chosen on the 2-core CPU this project is developed on (1 MiB L2 per core) at
# batch 128 and width 4096 (the larger of a tile and the layer is used):
FORWARD_COL_TILE = 2048  # output columns per tile of the forward: the (B, T) tile of y
FORWARD_ROW_BLOCK = 64  # weight rows per block of the forward, shared by the batch while in cache
CACHED_WEIGHT_BYTES = 1 << 20  # a weight this small stays in L2 for the whole batch: one row block
WEIGHT_COL_TILE = 4096  # columns per tile of dW^T: the (B, T) tile of dy every row j reads
INPUT_COL_TILE = 2048  # columns per tile of the input gradient's dot products
INPUT_ROW_BLOCK = 128  # weight rows per block of the input gradient (1024 x 16: 27 ms at width 4096, this: 20)
PARALLEL_MIN_MACS = 4_000_000  # multiply-adds per Python thread of a product below which numba's threads run it
NUMBA_PARALLEL_MIN_MACS = 1 << 19  # multiply-adds below which a product runs on one thread


def kernels_available() -> bool:
    """Whether numba (the sparse kernels' compiler) is installed."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _kernels():
    from sparse_eoc.kernels import train as kernels  # numba: imported on first use

    return kernels


_POOL: ThreadPoolExecutor | None = None

# One dW^T buffer per weight, reused by the next backward once no tensor wraps it any more (the
# previous step's gradient was set to None, or accumulated elsewhere): a fresh buffer of a wide
# layer is mapped anew by every step (glibc maps allocations over 32 MiB directly), and the page
# faults of a width-4096 layer's 64 MiB cost about 4-5 ms (benchmarks/train_step.py at 4096 x 8, one
# thread: the sparse backward went from 295 to 260 ms a step; page faults a step: 126, the dense step 115k).
_GRAD_BUFFERS = WeakIdKeyDictionary()  # weight -> (its dW^T buffer, its reference count when free); by identity


def _references(array: np.ndarray) -> int:
    return sys.getrefcount(array)


def _grad_weight_buffer(weight: Tensor, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised (N_in, N_out) array for weight's dW^T: the cached one if nothing else holds it.

    A tensor made by torch.from_numpy (the gradient, or any view of it) holds a reference to the
    array while it lives. The count to compare with is taken when the buffer is made, the same way
    (the interpreter's own references, e.g. to a call's argument, then count the same)."""
    cached = _GRAD_BUFFERS.get(weight)
    if cached is not None:
        buffer, free = cached
        if buffer.shape == shape and buffer.dtype == dtype and _references(buffer) <= free:
            return buffer
    buffer = np.empty(shape, dtype)
    _GRAD_BUFFERS[weight] = (buffer, 0)
    free = _references(buffer)  # held by the cache's tuple and this local, as in the check above
    _GRAD_BUFFERS[weight] = (buffer, free)
    return buffer


def _run_parts(fn: Callable[[int, int], None], n: int, threads: int) -> None:
    """fn(lo, hi) over ``threads`` near-equal parts of range(n), the first on this thread.

    The kernels release the GIL, so the parts run at once; their outputs are disjoint, so the
    result does not depend on the split.
    """
    global _POOL
    parts = max(1, min(threads, n))
    bounds = [n * t // parts for t in range(parts + 1)]
    if parts == 1:
        fn(0, n)
        return
    if _POOL is None or _POOL._max_workers < parts - 1:
        _POOL = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="sparse-eoc-kernel")
    futures = [_POOL.submit(fn, bounds[t], bounds[t + 1]) for t in range(1, parts)]
    fn(bounds[0], bounds[1])
    for future in futures:
        future.result()


@contextlib.contextmanager
def _numba_threads(threads: int):
    """Run numba's parallel kernels on ``threads`` threads (at most its pool's size); yields that number."""
    import numba

    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    if previous != threads:
        numba.set_num_threads(threads)
    try:
        yield threads
    finally:
        if previous != threads:
            numba.set_num_threads(previous)


def _transposed(weight: Tensor) -> np.ndarray:
    """W^T (N_in, N_out) row-major as a NumPy view of the weight's memory (a copy only if the
    weight lost the layout ``set_kernels_`` gave it, e.g. replaced by a contiguous tensor)."""
    wt = weight.detach().t()
    return (wt if wt.is_contiguous() else wt.contiguous()).numpy()


def _sparse_forward(ctx, weight: Tensor, bias: np.ndarray, patterns: tuple) -> Tensor:
    """y = a W^T + bias (B, N_out) from a's patterns; saves what the backward reads on ``ctx``."""
    k = _kernels()
    wt = _transposed(weight)  # (N_in, N_out) row-major: W^T
    indptr, idx, vals = patterns[:3]
    batch, n_out = indptr.shape[0] - 1, wt.shape[1]
    macs, available = int(indptr[-1]) * n_out, torch.get_num_threads()
    # Python threads where each gets enough work to pay for waking it (a width-4096 layer);
    # numba's (a fork and join of spinning threads) for products too small for that (width 300).
    threads = max(1, min(available, macs // PARALLEL_MIN_MACS))
    numba_threads = available if threads == 1 and available > 1 and macs >= NUMBA_PARALLEL_MIN_MACS else 1
    y = np.empty((batch, n_out), wt.dtype)  # (B, N_out)
    row_block = wt.shape[0] if wt.nbytes <= CACHED_WEIGHT_BYTES else FORWARD_ROW_BLOCK
    if numba_threads > 1:
        with _numba_threads(numba_threads) as parts:
            k.forward_parallel(y, bias, wt, indptr, idx, vals, parts, row_block)
    else:
        def part(g0, g1):  # output columns 16 g0 .. 16 g1, in tiles
            c_end = min(16 * g1, n_out)
            for c0 in range(16 * g0, c_end, FORWARD_COL_TILE):
                k.forward_tile(y, bias, wt, indptr, idx, vals, c0, min(c0 + FORWARD_COL_TILE, c_end), row_block,
                               False)

        _run_parts(part, -(-n_out // 16), threads)  # in groups of 16 columns (64-byte lines)
    ctx.save_for_backward(weight)
    ctx.patterns, ctx.threads, ctx.numba_threads, ctx.n_in = patterns, threads, numba_threads, wt.shape[0]
    return torch.from_numpy(y)


def _sparse_backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(d input, dW, d bias) of :func:`_sparse_forward`'s product: d input only where phi' != 0."""
    k = _kernels()
    (weight,) = ctx.saved_tensors
    wt = _transposed(weight)  # (N_in, N_out)
    dy_np = dy.contiguous().numpy()  # (B, N_out)
    n_in = ctx.n_in
    grad_b = dy.sum(0) if ctx.needs_input_grad[2] else None
    dwt = _grad_weight_buffer(weight, wt.shape, dy_np.dtype) if ctx.needs_input_grad[1] else None  # dW^T, written whole
    dx = np.zeros((dy_np.shape[0], n_in), dy_np.dtype) if ctx.needs_input_grad[0] else None  # 0 where phi' = 0
    colptr, rows, tvals, act_ptr, act_idx = ctx.patterns[3:]
    if ctx.numba_threads > 1:  # both products at once, across numba's threads (an empty array: not wanted)
        empty = np.empty((0, 0), dy_np.dtype)
        with _numba_threads(ctx.numba_threads) as parts:
            k.backward_parallel(empty if dwt is None else dwt, empty if dx is None else dx, dy_np, wt, colptr, rows,
                                tvals, act_ptr, act_idx, parts, WEIGHT_COL_TILE, INPUT_COL_TILE, INPUT_ROW_BLOCK)
    else:
        if dwt is not None:
            _run_parts(lambda j0, j1: k.grad_weight_tile(dwt, dy_np, colptr, rows, tvals, j0, j1, WEIGHT_COL_TILE,
                                                         False),
                       n_in, ctx.threads)
        if dx is not None:
            _run_parts(lambda j0, j1: k.grad_input_tile(dx, dy_np, wt, act_ptr, act_idx, j0, j1, INPUT_COL_TILE,
                                                        INPUT_ROW_BLOCK),
                       n_in, ctx.threads)
    ctx.patterns = None
    grad_w = None if dwt is None else torch.from_numpy(dwt).t()  # (N_out, N_in), laid out like the weight
    grad_x = None if dx is None else torch.from_numpy(dx)  # (B, N_in)
    return grad_x, grad_w, grad_b


class SparseLinearFunction(torch.autograd.Function):
    """y = a W^T + bias with the exact sparse kernels; a (B, N_in) the previous layer's activation.

    Args of ``apply(a, weight, bias, m)``:
        a: (B, N_in) float32 or float64, CPU, contiguous: phi(h^{l-1}), mostly exact zeros.
        weight: (N_out, N_in), stored transposed (``weight.t()`` contiguous, see ``set_kernels_``).
        bias: (N_out,), the bias the layer adds (the shift of the activation folded in).
        m: the clip of the previous layer's activation (inf when unclipped): its derivative
            is nonzero exactly where a != 0 and |a| < m (the torch modules' convention at the
            kinks h = tau and h = tau + m, where the derivative is 0).

    Returns:
        y (B, N_out). Backward returns the exact gradients: dW = dy^T a over the nonzeros of a,
        d(bias) = sum of dy, and da = dy W where phi'(h^{l-1}) != 0 and 0 elsewhere (where the
        previous activation's backward multiplies it by 0).
    """

    @staticmethod
    def forward(ctx, a: Tensor, weight: Tensor, bias: Tensor, m: float) -> Tensor:
        a_np = a.detach().numpy()  # (B, N_in)
        # The nonzeros as CSR (forward) and CSC (dW), and where phi' != 0 (da); m in a's dtype, as the clip applied it.
        patterns = _kernels().input_patterns(a_np, a_np.dtype.type(m))
        return _sparse_forward(ctx, weight, bias.detach().numpy(), patterns)

    @staticmethod
    def backward(ctx, dy: Tensor):
        return (*_sparse_backward(ctx, dy), None)


class SparseActivationLinearFunction(torch.autograd.Function):
    """y = phi(x) W^T + bias - shift with the exact sparse kernels, the activation fused in.

    The activation's output is never stored whole: its nonzeros are read off the previous
    layer's pre-activation by :func:`~sparse_eoc.kernels.train.activation_patterns`, and the
    backward returns d x = phi'(x) (dy W) directly (phi' is 1 where it is nonzero, for every
    activation here), so the activation adds no pass of its own, forward or backward.

    Args of ``apply(x, weight, bias, shift, patterns)``:
        x: (B, N_in) float32 or float64, CPU: the previous layer's pre-activation, shifted as the
            activation module's ``forward_shifted_`` takes it (h - tau for relu_tau and crelu, h
            for st_tau and cst).
        weight: (N_out, N_in), stored transposed (see ``set_kernels_``).
        bias: (N_out,), the layer's bias b; the layer adds b - shift.
        shift: the activation's ``bias_shift`` that this layer's output is shifted by (a float).
        patterns: ``activation_patterns(x, kind, tau, m)`` of x (computed by the caller, which
            reads the density off it).

    Returns:
        y (B, N_out). Backward: the exact gradients of x, weight and bias.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, shift: float, patterns: tuple) -> Tensor:
        b_np = bias.detach().numpy()
        return _sparse_forward(ctx, weight, b_np - b_np.dtype.type(shift) if shift else b_np, patterns)

    @staticmethod
    def backward(ctx, dy: Tensor):
        return (*_sparse_backward(ctx, dy), None, None)


#: The cost model of :func:`sparse_pays`: a sparse training step costs about
#: SPARSE_MAC_COST x density + SPARSE_FIXED_COST / sqrt(width) x sqrt(128 / batch) of the dense
#: one (the fixed part: building the nonzero lists, the dW^T write, the Python around each
#: kernel, which a narrow layer does not amortise). Fitted to whole-step ratios (sparse kernels /
#: dense kernels, the same CReLU network) measured with benchmarks/train_step.py on the 2-core
#: CPU this project is developed on, at batch 128 and one thread, with the activation fused into
#: the kernels (fused_forward_hidden): 0.58 and 0.86 at density 0.15 and 0.30 at width 300
#: (depth 30); 0.48 and 0.75 at width 1024 (depth 8). Constants, not timings at run time: a seed
#: still fixes the run.
SPARSE_MAC_COST = 2.0
SPARSE_FIXED_COST = 5.5
#: How much more a dense product gains from each thread past the first than the sparse kernels
#: do on a product too small to split over Python threads (PARALLEL_MIN_MACS a thread; numba's
#: threads run it): the width-300 CReLU step with 2 threads against 1 went from 34.1-34.7 to
#: 21.9-23.3 ms with dense kernels (x 1.53) and from 19.8 to 17.2 ms with sparse ones (x 1.15).
DENSE_THREAD_GAIN = 0.35


def sparse_pays(batch: int, n_in: int, n_out: int, density: float, threads: int = 1) -> bool:
    """Whether the sparse kernels beat the dense ones for a layer of this shape whose input has
    this fraction of nonzeros (the ``auto`` choice; see SPARSE_MAC_COST). With ``threads`` > 1 a
    product too small to split over Python threads (PARALLEL_MIN_MACS a thread) gains less from
    them than the dense one (DENSE_THREAD_GAIN)."""
    fixed = SPARSE_FIXED_COST / math.sqrt(min(n_in, n_out)) * math.sqrt(128.0 / batch)
    split = batch * n_in * n_out * density >= PARALLEL_MIN_MACS * threads
    return (SPARSE_MAC_COST * density + fixed) * (1 if split else 1 + DENSE_THREAD_GAIN * (threads - 1)) < 1.0


def _sparse_linear_input(model) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The pre-activation of the hidden layers of a SparseMLP or ResMLP under its ``kernels`` choice.

    ``hidden[i]`` (i >= 1) reads an activation's output, whose clip m (where the input gradient
    is 0) is ``model.act.m`` for the SparseMLP and that of ``model.sites[i - 1]`` for the ResMLP
    (one (tau, m) per activation site), or of ``model.act[i - 1]`` for a SparseMLP whose
    activation ``sparse_eoc.sparsify`` split into one site per layer.
    """
    sites = getattr(model, "sites", None)
    if sites is None and isinstance(model.act, nn.ModuleList):
        sites = model.act
    reads = {id(layer): model.act if sites is None else sites[i - 1] for i, layer in enumerate(model.hidden) if i > 0}

    def pre_activation(layer: nn.Linear, x: Tensor, bias: Tensor) -> Tensor:
        if (getattr(layer, "sparse_input", False) and torch.is_grad_enabled() and model.training
                and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)):
            if model.kernels == "sparse" or sparse_pays(x.shape[0], x.shape[1], layer.out_features,
                                                        float(torch.count_nonzero(x)) / x.numel(),
                                                        torch.get_num_threads()):
                return SparseLinearFunction.apply(x.contiguous(), layer.weight, bias, float(reads[id(layer)].m))
        return F.linear(x, layer.weight, bias)  # (B, out_features)

    return pre_activation


def fused_forward_hidden(model, x: Tensor) -> Tensor | None:
    """phi(h^L) (B, width) of a training :class:`~sparse_eoc.nn.mlp.SparseMLP` under sparse or auto
    kernels, with its activation fused into the next layer's sparse kernels; None where that does
    not apply (eval mode or no grad, not CPU float32/float64, an activation split into per-layer
    sites by ``sparse_eoc.sparsify``): the caller then runs the layer-by-layer path.

    Each hidden layer after the first reads the nonzeros of phi(h^{l-1}) straight off h^{l-1}
    (:class:`SparseActivationLinearFunction`), and its input gradient is already phi' (dy W), so
    the activation costs no torch op, autograd node or metering pass there: the meter's count is
    the number of nonzeros found. Under ``auto`` a layer that :func:`sparse_pays` says no to applies
    the activation and a dense product, as the layer-by-layer path does. The values are those of
    that path (the same activation values, products up to the order of the additions).
    """
    from sparse_eoc.activations import get_activation
    from sparse_eoc.nn.activations import SparseActivation

    act = model.act
    if not (isinstance(act, SparseActivation) and torch.is_grad_enabled() and model.training
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)):
        return None
    k = _kernels()
    kind = k.TWO_SIDED if get_activation(act.name).two_sided else k.ONE_SIDED
    scalar = np.float32 if x.dtype == torch.float32 else np.float64
    tau, m = scalar(act.tau), scalar(act.m)
    shift, meter, threads = act.bias_shift, model.meter, torch.get_num_threads()
    counts: list[int] = []
    first = model.hidden[0]
    h = F.linear(x, first.weight, first.bias - shift if shift else first.bias)  # (B, width): h^1 - shift
    for layer in model.hidden[1:]:
        h = h.contiguous()
        h_np = h.detach().numpy()  # (B, width)
        if model.kernels == "sparse":
            patterns = k.activation_patterns(h_np, kind, tau, m)
            nnz = int(patterns[0][-1])
        else:  # auto: count first (one cheap pass), build the nonzero lists only for a sparse layer
            nnz, patterns = int(k.activation_nonzeros(h_np, kind, tau, m)), None
            if sparse_pays(h.shape[0], h.shape[1], layer.out_features, nnz / h.numel(), threads):
                patterns = k.activation_patterns(h_np, kind, tau, m)
        counts.append(nnz)
        if patterns is not None:
            h = SparseActivationLinearFunction.apply(h, layer.weight, layer.bias, shift, patterns)
        else:
            a = act.forward_shifted_(h)  # phi(h^{l-1})
            h = F.linear(a, layer.weight, layer.bias - shift if shift else layer.bias)
    a = act.forward_shifted_(h)  # (B, width): phi(h^L)
    if meter is not None:
        nonzero = torch.cat([torch.tensor(counts, dtype=torch.int64), meter.count_nonzero(a).reshape(1)])
        meter.add_counts(nonzero, a.numel(), a.shape[0])  # (L,)
    return a


def set_kernels_(model, kernels: str):
    """Choose the training kernels of a :class:`~sparse_eoc.nn.mlp.SparseMLP` or
    :class:`~sparse_eoc.nn.resnet.ResMLP`, in place; returns it.

    Args:
        model: a SparseMLP or ResMLP (its ``hidden`` layers after the first take activations
            as input: the ResMLP's block layers read their sites' outputs).
        kernels: ``dense``, ``sparse`` or ``auto`` (see the module docstring).

    Raises:
        ValueError: an unknown choice, ``sparse`` without numba installed, or ``sparse`` for a
            model that is neither (the message names ``--kernels``).
    """
    from sparse_eoc.nn.mlp import SparseMLP
    from sparse_eoc.nn.resnet import ResMLP

    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, got --kernels {kernels!r}")
    dense_layers = isinstance(model, (SparseMLP, ResMLP))
    if kernels == "sparse" and not dense_layers:
        raise ValueError(f"--kernels sparse applies to the MLP only (SparseMLP, ResMLP), not to a "
                         f"{type(model).__name__}; use --kernels dense or auto")
    if kernels == "sparse" and not kernels_available():
        raise ValueError("--kernels sparse needs numba (pip install 'numba>=0.60'); use --kernels dense")
    if not dense_layers or not kernels_available():
        kernels = "dense"
    model.kernels = kernels
    for i, layer in enumerate(model.hidden):
        layer.sparse_input = kernels != "dense" and i > 0
        if layer.sparse_input and not layer.weight.t().is_contiguous():
            with torch.no_grad():  # the same values, stored as W^T row-major
                layer.weight = nn.Parameter(layer.weight.t().contiguous().t(),
                                            requires_grad=layer.weight.requires_grad)
    return model
