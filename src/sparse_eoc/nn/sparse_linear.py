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

In eval mode or under ``torch.no_grad()`` the model runs plain torch ops whatever the choice
(so it exports to ONNX and evaluates exactly as a dense-trained model). The sparse kernels
read W^T row by row, so ``set_kernels_`` stores those layers' weights transposed in memory
(``weight`` keeps its shape (out, in), its values, its ``state_dict`` key; saved weights are
made contiguous as always); call it before the optimiser is built.
"""

from __future__ import annotations

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

__all__ = ["KERNEL_CHOICES", "SparseLinearFunction", "set_kernels_", "sparse_pays", "kernels_available"]

# Cache blocking, chosen on the 2-core CPU this project is developed on (1 MiB L2 per core) at
# batch 128 and width 4096 (the larger of a tile and the layer is used):
FORWARD_COL_TILE = 2048  # output columns per tile of the forward: the (B, T) tile of y
FORWARD_ROW_BLOCK = 64  # weight rows per block of the forward, shared by the batch while in cache
WEIGHT_COL_TILE = 4096  # columns per tile of dW^T: the (B, T) tile of dy every row j reads
INPUT_COL_TILE = 2048  # columns per tile of the input gradient's dot products
INPUT_ROW_BLOCK = 128  # weight rows per block of the input gradient (1024 x 16: 27 ms at width 4096, this: 20)
PARALLEL_MIN_MACS = 4_000_000  # multiply-adds per thread of a product below which it runs on one thread


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


def _transposed(weight: Tensor) -> np.ndarray:
    """W^T (N_in, N_out) row-major as a NumPy view of the weight's memory (a copy only if the
    weight lost the layout ``set_kernels_`` gave it, e.g. replaced by a contiguous tensor)."""
    wt = weight.detach().t()
    return (wt if wt.is_contiguous() else wt.contiguous()).numpy()


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
        k = _kernels()
        a_np = a.detach().numpy()  # (B, N_in)
        wt = _transposed(weight)  # (N_in, N_out) row-major: W^T
        b_np = bias.detach().numpy()  # (N_out,)
        batch, n_out = a_np.shape[0], wt.shape[1]
        # The nonzeros as CSR (forward) and CSC (dW), and where phi' != 0 (da); m in a's dtype, as the clip applied it.
        patterns = k.input_patterns(a_np, a_np.dtype.type(m))
        indptr, idx, vals = patterns[:3]
        # More threads only where each gets enough work to pay for waking it (a width-300 layer does not).
        threads = max(1, min(torch.get_num_threads(), int(indptr[-1]) * n_out // PARALLEL_MIN_MACS))
        y = np.empty((batch, n_out), a_np.dtype)  # (B, N_out)
        def part(g0, g1):  # output columns 16 g0 .. 16 g1, in tiles
            c_end = min(16 * g1, n_out)
            for c0 in range(16 * g0, c_end, FORWARD_COL_TILE):
                k.forward_tile(y, b_np, wt, indptr, idx, vals, c0, min(c0 + FORWARD_COL_TILE, c_end),
                               FORWARD_ROW_BLOCK)

        _run_parts(part, -(-n_out // 16), threads)  # in groups of 16 columns (64-byte lines)
        ctx.save_for_backward(a, weight)
        ctx.patterns, ctx.threads = patterns, threads
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx, dy: Tensor):
        k = _kernels()
        a, weight = ctx.saved_tensors
        a_np = a.detach().numpy()  # (B, N_in)
        wt = _transposed(weight)  # (N_in, N_out)
        dy_np = dy.contiguous().numpy()  # (B, N_out)
        n_in = a_np.shape[1]
        grad_a = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            colptr, rows, tvals = ctx.patterns[3:6]
            dwt = _grad_weight_buffer(weight, wt.shape, dy_np.dtype)  # (N_in, N_out): dW^T, written whole
            _run_parts(lambda j0, j1: k.grad_weight_tile(dwt, dy_np, colptr, rows, tvals, j0, j1,
                                                                WEIGHT_COL_TILE),
                       n_in, ctx.threads)
            grad_w = torch.from_numpy(dwt).t()  # (N_out, N_in), laid out like the weight
        if ctx.needs_input_grad[2]:
            grad_b = dy.sum(0)
        if ctx.needs_input_grad[0]:
            indptr, idx = ctx.patterns[6:]
            da = np.zeros(a_np.shape, dy_np.dtype)  # (B, N_in): 0 where phi' = 0
            _run_parts(lambda j0, j1: k.grad_input_tile(da, dy_np, wt, indptr, idx, j0, j1, INPUT_COL_TILE,
                                                               INPUT_ROW_BLOCK),
                       n_in, ctx.threads)
            grad_a = torch.from_numpy(da)
        ctx.patterns = None
        return grad_a, grad_w, grad_b, None


#: The cost model of :func:`sparse_pays`: a sparse training step costs about
#: SPARSE_MAC_COST x density + SPARSE_FIXED_COST / sqrt(width) x sqrt(128 / batch) of the dense
#: one (the fixed part: building the nonzero lists, the dW^T write, the Python around each
#: kernel, which a narrow layer does not amortise). Fitted to whole-step ratios measured with
#: benchmarks/train_step.py on the 2-core CPU this project is developed on, at batch 128:
#: 0.79 and 1.11 at density 0.15 and 0.30 at width 300; 0.54 and 0.84 at width 1024; 0.41
#: and 0.71 at width 4096. Constants, not timings at run time: a seed still fixes the run.
SPARSE_MAC_COST = 2.0
SPARSE_FIXED_COST = 7.5


def sparse_pays(batch: int, n_in: int, n_out: int, density: float, threads: int = 1) -> bool:
    """Whether the sparse kernels beat the dense ones for a layer of this shape whose input has
    this fraction of nonzeros (the ``auto`` choice; see SPARSE_MAC_COST). With ``threads`` > 1 a
    product too small to split (PARALLEL_MIN_MACS a thread) runs the kernels on one thread while
    the dense one uses them all, so its cost counts ``threads`` times."""
    fixed = SPARSE_FIXED_COST / math.sqrt(min(n_in, n_out)) * math.sqrt(128.0 / batch)
    split = batch * n_in * n_out * density >= PARALLEL_MIN_MACS * threads
    return (SPARSE_MAC_COST * density + fixed) * (1 if split else threads) < 1.0


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
