"""The sparse inference engine: a trained sparse MLP evaluated exactly, skipping zero inputs.

A hidden layer of a :class:`~sparse_eoc.nn.SparseMLP` computes h^l = phi(h^{l-1}) W^l^T + b^l
(paper Section 5). At sparsity s only a fraction 1 - s of phi(h^{l-1}) is nonzero, and

    h^l = sum_{j: phi(h^{l-1})_j != 0} phi(h^{l-1})_j W^l^T[j] + b^l

needs only the rows W^l^T[j] of those inputs: (1 - s) of the weights and of the
multiply-adds. The engine stores every W^l^T row-major, so each such row is one contiguous
read, and picks per layer how to share rows across a batch (:mod:`sparse_eoc.infer.plan`).
Nothing is approximated: the result equals the dense forward up to float32 round-off (the
order of the additions; with an input offset, also the rounding of x - c and b + c W^T).

The first layer sees the data, which is rarely sparse; but standardised images are mostly
one background value c (a zero pixel), and x W^T + b = (x - c) W^T + (b + c W^T) turns that
background into exact zeros (``input_offset``; :meth:`SparseEngine.from_run` sets it from the
run's data statistics).

Backends: ``numba`` (:mod:`sparse_eoc.infer.kernels`, the whole network in one compiled call)
when numba is installed, else ``numpy`` (a per-layer NumPy/SciPy loop: the reference). Both
run the same strategies and report the same statistics.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from sparse_eoc.activations import get_activation
from sparse_eoc.checks import check_int
from sparse_eoc.infer.plan import (ACT_ONE_SIDED, ACT_TWO_SIDED, AUTO, BLOCK, BLOCK_GROUP, BLOCK_MIN_COLUMNS, CSR,
                                   DENSE, GATHER, SMALL_BATCH, STRATEGIES, UNION, CostModel, choose_strategy,
                                   flop_reduction, layer_activations, strategy_code)

__all__ = ["SparseEngine", "EngineStats", "BACKENDS", "HUGE_PAGE_MIN_BYTES", "PARALLEL_MIN_MACS",
           "SMALL_PARALLEL_MIN_MACS", "numba_available", "pack_weights", "zero_pixel_offset"]

#: What a ``backend=`` argument accepts.
BACKENDS = ("auto", "numba", "numpy")
#: A numba call of more than ``SMALL_BATCH`` examples runs on one thread when B x (mean N_in N_out
#: of the layers) is below this, and is split across the threads otherwise (see ``threads`` of
#: SparseEngine): handing a part to another thread costs tens of microseconds, more than it
#: saves on so little work.
PARALLEL_MIN_MACS = 1 << 19
#: A batch of one that the fused one-thread kernel can run stays on it unless N_in N_out, averaged
#: over the layers, reaches this: the fused kernel has no per-layer allocation or choice, which more
#: than pays for a second thread below it (2 threads, 2-core CPU, s = 0.85, per-layer kernels on 2
#: threads against the fused one on one: width 1024 0.20 ms against 0.15), not above it (width 4096,
#: 13.4M multiply-adds a layer: 2.48 ms against 3.70). A batch of 2 or more examples on more than
#: one thread is split across the threads instead (see ``threads`` of SparseEngine).
SMALL_PARALLEL_MIN_MACS = 1 << 23
_warned_no_numba = False


def _import_kernels():
    """The numba kernels module, or None with the reason when numba cannot be imported."""
    try:
        from sparse_eoc.infer import kernels
    except ImportError as err:
        return None, f"numba is not available ({err}); pip install 'numba>=0.60' for the compiled kernels"
    return kernels, ""


_blas_libs: list | None = None  # threadpoolctl's controllers of the loaded BLAS libraries


@contextmanager
def _blas_on_caller():
    """Within: every loaded BLAS library runs single-threaded, on the thread that calls it.

    The numba kernels' ``dense`` and ``union`` products are BLAS calls (scipy's BLAS, which
    numba's ``np.dot`` calls). Left to its own threads, the BLAS library runs a second pool
    beside numba's OpenMP pool, and each pool's idle threads spin-wait after their work
    (libgomp 300,000 spins by default, OpenBLAS up to 2^28 cycles): with as many cores as
    threads, the threads one pool needs wait for a scheduler time slice behind the other's
    spinning ones, at every layer. A depth-100, width-300 network at batch 64 took 0.6-0.9 s
    a call on 2 threads (``union``; ``dense`` 1.2-1.3 s) against 7 ms (12 ms) on one, the
    slowdown growing with ``GOMP_SPINCOUNT`` (2-core CPU). So the engine uses one pool,
    numba's: a ``union`` layer's product is cut into column tiles across its threads
    (:func:`sparse_eoc.infer.kernels.union_tiles`), a ``dense`` one runs on the calling
    thread, and ``threads=1`` means one thread for the products too. The thread counts are
    restored on exit (so this is not for concurrent use from several Python threads).
    """
    global _blas_libs
    if _blas_libs is None:
        import scipy.linalg.cython_blas  # noqa: F401  (numba's BLAS: loaded before the libraries are listed)
        from threadpoolctl import ThreadpoolController

        _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
    previous = [lib.get_num_threads() for lib in _blas_libs]
    for lib, n in zip(_blas_libs, previous):
        if n != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_blas_libs, previous):
            if n != 1:
                lib.set_num_threads(n)


_pool: ThreadPoolExecutor | None = None  # the split small batches' helper threads, shared by all engines
_pool_workers = 0
_pool_lock = threading.Lock()


def _split_pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of at least ``workers`` threads for :meth:`SparseEngine._forward_split` (grown,
    never shrunk: idle threads block on a queue, they do not spin)."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)  # its threads finish what they hold, then exit
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sparse-eoc-split")
            _pool_workers = workers
        return _pool


def numba_available() -> bool:
    """True when the numba kernels can be imported."""
    return _import_kernels()[0] is not None


def run_input_offset(config: dict, input_offset: Any, image_shape: Sequence[int]) -> Any:
    """The ``input_offset`` of an engine built from a run: ``"data"`` becomes the standardised zero
    pixel of the run's data (``config["data"]``'s mean and std, broadcast to ``image_shape``); any
    other value is returned as given (the engine checks it).

    Raises:
        ValueError: a string other than ``"data"``.
    """
    if not isinstance(input_offset, str):
        return input_offset
    if input_offset != "data":
        raise ValueError(f"input_offset must be 'data', None, a float or an array, got {input_offset!r}")
    data = config["data"]
    return zero_pixel_offset(data["mean"], data["std"], image_shape)


#: Weights that take fewer bytes than this stay in ordinary pages (``huge_pages`` of SparseEngine):
#: they fit the TLB's reach of 4 KiB pages, and a 2 MiB page per small engine would waste memory.
HUGE_PAGE_MIN_BYTES = 4 << 20
#: The transparent huge page of x86-64 and of arm64 with 4 KiB base pages: the advised buffer's
#: alignment and rounding (a kernel with another huge page size gets the same advice).
HUGE_PAGE_BYTES = 2 << 20


def pack_weights(arrays: Sequence[np.ndarray], *, huge_pages: bool = True) -> tuple[list[np.ndarray], bool]:
    """Copies of float32 arrays, C-contiguous, one after another in one buffer (each starting on a
    64-byte cache line), and whether that buffer was advised for huge pages.

    With ``huge_pages`` (on Linux, for ``HUGE_PAGE_MIN_BYTES`` or more in all) the buffer is an
    anonymous mapping aligned to 2 MiB and advised ``MADV_HUGEPAGE``, so that the kernel backs it
    with transparent huge pages where it can: a sparse call reads rows scattered over the
    weights (1.2 KB rows at width 300), and with 4 KiB pages each row is its own TLB miss, whose
    page walk comes from memory when other work has run in between. Anywhere else, one NumPy buffer.

    Args:
        arrays: the arrays (any shapes; cast to float32).
        huge_pages: ask for huge pages (ignored where ``mmap.MADV_HUGEPAGE`` does not exist).

    Returns:
        (views, advised): the copies, in order (views of the buffer, which they keep alive), and
        True when the buffer was advised for huge pages. Advised, it takes whole 2 MiB pages: at
        most 2 MiB more than the arrays.

    Raises:
        Nothing of its own: where the mapping or the advice fails (``OSError``, e.g. a kernel
        without transparent huge pages), it falls back to the NumPy buffer and returns False.
    """
    arrays = [np.asarray(a) for a in arrays]
    slots = [(a.size * 4 + 63) // 64 * 64 for a in arrays]  # bytes of each, to the next cache line
    total = sum(slots)
    advised = huge_pages and total >= HUGE_PAGE_MIN_BYTES and hasattr(mmap, "MADV_HUGEPAGE")
    raw = None
    if advised:
        pages = (total + HUGE_PAGE_BYTES - 1) // HUGE_PAGE_BYTES
        try:
            # Private: a shared anonymous mapping is shmem, which gets huge pages only where
            # /sys/kernel/mm/transparent_hugepage/shmem_enabled allows (rarely). One page spare:
            # the start is aligned below.
            buffer = mmap.mmap(-1, (pages + 1) * HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            raw = np.frombuffer(buffer, np.uint8)
            start = -raw.ctypes.data % HUGE_PAGE_BYTES
            raw = raw[start:start + pages * HUGE_PAGE_BYTES]
            buffer.madvise(mmap.MADV_HUGEPAGE, start, len(raw))  # before the copies below touch the pages
        except OSError:  # a kernel built without transparent huge pages refuses the advice (EINVAL)
            raw, advised = None, False
    if raw is None:
        raw = np.empty(total + 64, np.uint8)
        raw = raw[-raw.ctypes.data % 64:]
    views, offset = [], 0
    for a, slot in zip(arrays, slots):
        view = raw[offset:offset + a.size * 4].view(np.float32).reshape(a.shape)
        view[...] = a
        views.append(view)
        offset += slot
    return views, advised


def zero_pixel_offset(mean: Sequence[float], std: Sequence[float], image_shape: Sequence[int]) -> np.ndarray:
    """The standardised value of a zero pixel, per input feature: the engine's ``input_offset``.

    Computed exactly as the data loaders standardise (float32 (0 - mean[c]) / std[c]), so a
    zero pixel of the data minus this offset is an exact 0.

    Args:
        mean, std: per-channel training statistics, C floats each (``config.json["data"]``).
        image_shape: (C, H, W).

    Returns:
        float32 (C*H*W,), flattened in (C, H, W) order.

    Raises:
        ValueError: if the lengths do not match ``C`` or a std is not > 0.
    """
    channels = int(image_shape[0])
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std must have C={channels} entries, got {len(mean)} and {len(std)}")
    if not all(float(s) > 0 for s in std):
        raise ValueError(f"std must be > 0 in every channel, got std={list(std)!r}")
    per_channel = (np.float32(0.0) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # (C,)
    return np.repeat(per_channel, math.prod(int(s) for s in image_shape[1:]))  # (C*H*W,)


@dataclass(frozen=True)
class EngineStats:
    """What one engine call did, per layer (hidden layers 1..L, then the readout).

    Attributes:
        batch: examples B in the call.
        n_in, n_out: each layer's N_in and N_out.
        strategies: the strategy each layer ran (``auto`` resolved).
        nnz: nonzero inputs of each layer, summed over the batch (layer 1: of x - offset).
        union: input units nonzero for at least one example of the batch (of a call split
            across threads, see ``threads`` of :class:`SparseEngine`: the largest part's union,
            a lower bound).
        macs: multiply-adds done (``block``: examples x each group's union x N_out, the zeros of a
            group's union included, not the padding of a last group of fewer than 8).
        skip_zeros: False for the dense-own baseline (zeros multiplied, not skipped).
    """

    batch: int
    n_in: tuple[int, ...]
    n_out: tuple[int, ...]
    strategies: tuple[str, ...]
    nnz: tuple[int, ...]
    union: tuple[int, ...]
    macs: tuple[int, ...]
    skip_zeros: bool

    @property
    def dense_macs(self) -> tuple[int, ...]:
        """Multiply-adds of the dense forward, B N_in N_out per layer."""
        return tuple(self.batch * i * o for i, o in zip(self.n_in, self.n_out))

    @property
    def flop_reduction(self) -> float:
        """Dense multiply-adds / multiply-adds done, whole network (>= 1 when zeros are skipped)."""
        return flop_reduction(sum(self.dense_macs), sum(self.macs))

    @property
    def density(self) -> tuple[float, ...]:
        """Fraction of nonzero inputs of each layer, nnz / (B N_in)."""
        return tuple(z / (self.batch * i) for z, i in zip(self.nnz, self.n_in))

    @property
    def union_density(self) -> tuple[float, ...]:
        """Fraction of input units nonzero for at least one example, |U| / N_in."""
        return tuple(u / i for u, i in zip(self.union, self.n_in))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, with the derived ones."""
        return {"batch": self.batch, "strategies": list(self.strategies), "nnz": list(self.nnz),
                "union": list(self.union), "macs": list(self.macs), "dense_macs": list(self.dense_macs),
                "density": list(self.density), "union_density": list(self.union_density),
                "flop_reduction": self.flop_reduction, "skip_zeros": self.skip_zeros}


class SparseEngine:
    """Exact inference of a sparse MLP that reads only the weights meeting nonzero inputs.

    Build it with :meth:`from_model` or :meth:`from_run`; call it on a batch.

    Args:
        weights: the L + 1 weight matrices W^1..W^L, W_readout, each (N_out, N_in) as in
            ``nn.Linear`` (any float dtype); consecutive shapes must chain.
        biases: the L + 1 biases (N_out,), the paper's b^l (not b^l - tau).
        activation: registry name (``relu_tau``, ``st_tau``, ``crelu``, ``cst``, ``relu``) of
            phi, applied after every hidden layer; the readout has none.
        tau, m: phi's threshold and clip (``m = inf``: unclipped).
        input_offset: None, a float, or (N_0,) floats c: the first layer computes
            (x - c) W^T + (b + c W^T), exact zeros wherever x equals c (see the module docstring).
        strategy: ``auto`` (per layer and call, from the measured sparsity, see
            :mod:`sparse_eoc.infer.plan`; ``gather`` at batch 1, ``gather``, ``block`` (``csr`` for
            a layer larger than the last-level cache) or ``dense`` up to ``SMALL_BATCH`` = 16
            examples), ``dense``, ``gather``, ``union``, ``csr`` or ``block``; or a sequence of
            L + 1 of these, one per layer. With numba, one thread runs the whole network as one fused kernel
            (``sparse_eoc.infer.kernels.forward_fused``).
        threads: CPU threads of the numba kernels, >= 1. A batch of 2 or more examples is split
            into up to ``threads`` parts of consecutive examples, each part the fused kernel on
            its own thread through the whole network, with no barrier per layer (2 threads, 2-core
            CPU, s = 0.85, batch 8: width 300 x 100 0.86 ms against 1.09 on one thread and 1.37 as
            column tiles; width 1024 x 8 0.57 against 0.69 and 0.60; width 4096 x 8 8.3 against
            14.5 and 8.9; batch 64: width 1024 x 8 2.7 ms against 5.2 and 3.8, 300 x 100 4.4
            against 5.5 and 8.4, 4096 x 8 39 against 74 and 45); a batch of more than
            ``SMALL_BATCH`` examples with too little work to share (:data:`PARALLEL_MIN_MACS`) stays
            on one thread. Batch 1 runs its layers' output columns in tiles across the threads
            where the layers are large (:data:`SMALL_PARALLEL_MIN_MACS`), else on one thread. The
            logits are the same bits as on one thread wherever each part chooses its layers'
            strategies as the whole batch does and runs no ``union`` or ``dense`` layer (a
            ``gather`` layer computes each example on its own, so always for
            ``strategy="gather"``; a ``block`` layer adds exact zeros (finite weights) for the rows of
            its group's union that an example does not need, so the grouping does not change the
            bits, up to the sign of a zero; a ``csr`` layer adds each example's rows in blocks that do not
            depend on the batch size while B <= ``tile_bytes`` / (4 N_out), at the default 128
            examples at width 4096, see ``sparse_eoc.kernels.rows.csr_tiling``); a
            ``union`` or ``dense`` layer's BLAS product over part of the batch may add in another
            order (float32 round-off).
            The BLAS library runs on the calling thread during a numba call, whatever its own
            thread count (see :func:`_blas_on_caller`); the NumPy backend uses only the
            BLAS library's threads.
        backend: ``auto`` (numba when installed), ``numba`` or ``numpy``.
        cost: the :class:`~sparse_eoc.infer.plan.CostModel` of ``auto``; None = defaults.
        tile_bytes: numba ``csr`` only, in bytes (>= 1024): its (B, T) output tile and each block
            of weight rows it keeps for the batch get about this much (default 2 MiB, measured
            best: at width 4096 x 8, batch 64, 77 ms against 90 with 256 KiB; see
            ``sparse_eoc.kernels.rows.csr_tiling``).
        huge_pages: keep the weights in one buffer advised for 2 MiB pages (Linux transparent huge
            pages; :func:`pack_weights`) when they take ``HUGE_PAGE_MIN_BYTES`` or more, so that the
            scattered rows a sparse call reads do not each cost a TLB miss (s = 0.85, benchmark
            protocol, 1 thread: width 300 x 100 at batch 1 0.49-0.67 ms against 0.60-0.90, 1024 x 8
            at batch 8 0.77-0.91 against 0.80-1.03). False: one ordinary buffer.

    Attributes:
        backend: the backend in use, ``numba`` or ``numpy``.
        huge_pages_advised: whether the OS was asked for huge pages for the weights (it may still
            give ordinary ones: ``/sys/kernel/mm/transparent_hugepage/enabled`` set to ``never``, or
            no free 2 MiB page).
        backend_note: why ``numpy`` was used under ``backend="auto"`` ("" otherwise).
        bias_shift: what is subtracted from each hidden bias (tau for a one-sided phi, else
            0; :func:`~sparse_eoc.infer.plan.layer_activations`), as the model's own ``act.bias_shift``.
        last_stats: the :class:`EngineStats` of the last call (None before the first);
            ``last_strategies``: its per-layer strategies.

    Raises:
        ValueError: shapes that do not chain, an unknown activation, strategy or backend,
            a strategy list of the wrong length, ``threads < 1``, ``backend="numba"``
            without numba, or an ``input_offset`` of the wrong shape.
    """

    def __init__(
        self,
        weights: Sequence[Any],
        biases: Sequence[Any],
        activation: str,
        tau: float = 0.0,
        m: float = math.inf,
        *,
        input_offset: float | Sequence[float] | np.ndarray | None = None,
        strategy: str | Sequence[str] = "auto",
        threads: int = 1,
        backend: str = "auto",
        cost: CostModel | None = None,
        tile_bytes: int = 1 << 21,
        huge_pages: bool = True,
    ) -> None:
        act = get_activation(activation)
        tau, m = act.check_params(tau, m)
        if len(weights) != len(biases) or len(weights) < 2:
            raise ValueError(f"weights and biases must be L + 1 >= 2 matching lists, got {len(weights)} weights "
                             f"and {len(biases)} biases")
        ws = [np.asarray(w) for w in weights]  # any float dtype; cast once, to float32, below
        bs = [np.asarray(b, dtype=np.float64) for b in biases]
        for i, (w, b) in enumerate(zip(ws, bs)):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {i}: weight must be (N_out, N_in) and bias (N_out,), got weight "
                                 f"{w.shape} and bias {b.shape}")
            if i and w.shape[1] != ws[i - 1].shape[0]:
                raise ValueError(f"layer {i}: weight {w.shape} does not take the previous layer's "
                                 f"{ws[i - 1].shape[0]} outputs")
        self.in_features = ws[0].shape[1]
        self.num_classes = ws[-1].shape[0]
        self.activation, self.tau, self.m = act.name, tau, m
        self.input_offset = self._check_offset(input_offset)
        # The first layer absorbs the offset: b + W c, in float64, rounded once.
        if self.input_offset is not None:
            bs[0] = bs[0] + ws[0].astype(np.float64) @ self.input_offset.astype(np.float64)
        n_layers = len(ws)
        self._kinds, self._taus, self._ms, self.bias_shift = layer_activations(act.name, tau, m, n_layers)
        if not isinstance(huge_pages, (bool, np.bool_)):
            raise ValueError(f"huge_pages must be True or False, got huge_pages={huge_pages!r}")
        self.huge_pages = bool(huge_pages)
        # W^T (N_in, N_out) float32 of each layer, one buffer (pack_weights)
        self._wts, self.huge_pages_advised = pack_weights([w.T for w in ws], huge_pages=self.huge_pages)
        self._biases = [b.astype(np.float32) for b in bs]
        for i in range(n_layers - 1):
            self._biases[i] -= np.float32(self.bias_shift)  # b - tau for a one-sided phi, as SparseMLP folds it
        self.strategy = strategy
        self._codes = self._check_strategy(strategy, n_layers)
        self.threads = check_int("threads", threads)
        self.tile_bytes = check_int("tile_bytes", tile_bytes, minimum=1024)
        self.cost = CostModel() if cost is None else cost
        if not isinstance(self.cost, CostModel):
            raise ValueError(f"cost must be a CostModel or None, got cost={cost!r}")
        self._costs = self.cost.as_array()
        self.backend, self.backend_note, self._kernels = self._pick_backend(backend)
        self._offset32 = (np.zeros(self.in_features, np.float32) if self.input_offset is None
                          else self.input_offset)
        self._typed = None  # numba typed lists, built on first use
        self._shapes = (tuple(w.shape[0] for w in self._wts), tuple(w.shape[1] for w in self._wts))
        self._layer_macs = float(np.mean([w.size for w in self._wts]))  # mean N_in N_out per example
        self._last: tuple[np.ndarray, int, bool] | EngineStats | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_model(cls, model, **options) -> "SparseEngine":
        """An engine with the weights of a :class:`~sparse_eoc.nn.SparseMLP` (copied, float32).

        Args:
            model: a ``SparseMLP`` (any device; its weights are copied to the CPU).
            **options: ``input_offset``, ``strategy``, ``threads``, ``backend``, ``cost``,
                ``tile_bytes``, ``huge_pages`` as in :class:`SparseEngine`.

        Raises:
            ValueError: if ``model`` is not a ``SparseMLP`` (e.g. a ``SparseCNN``: see
                :func:`sparse_eoc.infer.cnn_flop_report`).
        """
        import torch

        from sparse_eoc.nn import SparseMLP

        if not isinstance(model, SparseMLP):
            raise ValueError(f"model must be a SparseMLP, got {type(model).__name__} (for a SparseCNN, "
                             "use sparse_eoc.infer.SparseCNNEngine)")
        if isinstance(model.act, torch.nn.ModuleList):
            raise ValueError("model's activation was split into one site per layer (sparse_eoc.sparsify); "
                             "the engine needs one (tau, m) for every layer")
        layers = [*model.hidden, model.readout]
        with torch.no_grad():
            weights = [layer.weight.detach().cpu().numpy() for layer in layers]  # (N_out, N_in), no copy
            biases = [layer.bias.detach().cpu().double().numpy() for layer in layers]
        act = model.act
        engine = cls(weights, biases, act.name, act.tau, act.m, **options)
        assert engine.bias_shift == act.bias_shift, "the engine folds tau into the bias as the model does"
        return engine

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, *, input_offset: Any = "data", **options) -> "SparseEngine":
        """An engine for the trained MLP of a ``sparse-eoc train`` run directory.

        Args:
            run_dir: the run directory (``config.json`` and ``model.safetensors``).
            input_offset: ``"data"`` (default): the standardised zero pixel of the run's data
                (:func:`zero_pixel_offset` of ``config.json["data"]``); or as in
                :class:`SparseEngine`.
            **options: ``strategy``, ``threads``, ``backend``, ``cost``, ``tile_bytes``, ``huge_pages``.

        Raises:
            FileNotFoundError: if the run's files are missing.
            ValueError: if the run is not an MLP run, or not finished (see
                :func:`sparse_eoc.nn.build.load_run`).
        """
        from sparse_eoc.nn.build import load_run

        model, config = load_run(run_dir)
        offset = run_input_offset(config, input_offset, config["data"]["image_shape"])
        return cls.from_model(model, input_offset=offset, **options)

    def _check_offset(self, offset) -> np.ndarray | None:
        if offset is None:
            return None
        c = np.asarray(offset, dtype=np.float32)
        if c.ndim == 0:
            c = np.full(self.in_features, c, dtype=np.float32)
        if c.shape != (self.in_features,) or not np.all(np.isfinite(c)):
            raise ValueError(f"input_offset must be a finite float or ({self.in_features},) floats, "
                             f"got shape {c.shape}")
        return np.ascontiguousarray(c)

    @staticmethod
    def _check_strategy(strategy, n_layers: int) -> np.ndarray:
        names = [strategy] * n_layers if isinstance(strategy, str) else list(strategy)
        if len(names) != n_layers:
            raise ValueError(f"strategy must be one name or {n_layers} (one per layer incl. the readout), "
                             f"got {len(names)}")
        return np.array([strategy_code(n) for n in names], dtype=np.int64)

    @staticmethod
    def _pick_backend(backend: str):
        global _warned_no_numba
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got backend={backend!r}")
        if backend == "numpy":
            return "numpy", "", None
        kernels, reason = _import_kernels()
        if kernels is not None:
            return "numba", "", kernels
        if backend == "numba":
            raise ValueError(f"backend='numba': {reason}")
        if not _warned_no_numba:
            warnings.warn(f"SparseEngine uses the NumPy path: {reason}", RuntimeWarning, stacklevel=3)
            _warned_no_numba = True
        return "numpy", reason, None

    # ------------------------------------------------------------------ inference

    @property
    def depth(self) -> int:
        """Hidden layers L."""
        return len(self._wts) - 1

    @property
    def last_stats(self) -> EngineStats | None:
        """The :class:`EngineStats` of the last call (None before the first); built on first
        access, so that a call costs no Python work per layer."""
        if isinstance(self._last, tuple):
            stats, batch, skip = self._last
            self._last = EngineStats(
                batch=batch, n_in=self._shapes[0], n_out=self._shapes[1],
                strategies=tuple(STRATEGIES[s] for s in stats[:, 0].tolist()), nnz=tuple(stats[:, 1].tolist()),
                union=tuple(stats[:, 2].tolist()), macs=tuple(stats[:, 3].tolist()), skip_zeros=skip)
        return self._last

    @property
    def last_strategies(self) -> tuple[str, ...] | None:
        """The strategy each layer ran in the last call (hidden layers, then the readout)."""
        return None if self.last_stats is None else self.last_stats.strategies

    def __call__(self, x, *, skip_zeros: bool = True):
        """Logits of a batch.

        Args:
            x: inputs, NumPy array or torch tensor, shape (B, N_0) or (B, *) with
                prod(*) = N_0 (e.g. (B, 1, 28, 28)); converted to float32.
            skip_zeros: False runs the dense-own baseline: the same strategies (``auto``
                decides on the measured sparsity as usual; at batch 1 it is ``gather``) with
                every input treated as nonzero, i.e. the same kernels without skipping.

        Returns:
            Logits (B, num_classes), float32: a NumPy array, or a CPU torch tensor when
            ``x`` is a tensor. ``last_stats`` describes the call.

        Raises:
            ValueError: if ``x`` does not have B >= 1 rows of N_0 features.
        """
        is_torch = type(x).__module__.split(".")[0] == "torch"
        arr = x.detach().cpu().numpy() if is_torch else np.asarray(x)
        if arr.ndim > 2:
            arr = arr.reshape(arr.shape[0], -1)  # (B, *) -> (B, N_0)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (B, {self.in_features}) with B >= 1, got {tuple(np.shape(x))}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if self.backend == "numba":
            logits, stats = self._forward_numba(arr, bool(skip_zeros))
        else:
            logits, stats = self._forward_numpy(arr, bool(skip_zeros))
        self._last = (stats, arr.shape[0], bool(skip_zeros))
        if is_torch:
            import torch

            return torch.from_numpy(logits)
        return logits

    def _forward_numba(self, x: np.ndarray, skip: bool) -> tuple[np.ndarray, np.ndarray]:
        k = self._kernels
        if self._typed is None:
            from numba import float32, typed

            wts = typed.List.empty_list(float32[:, ::1])
            biases = typed.List.empty_list(float32[::1])
            for wt, b in zip(self._wts, self._biases):
                wts.append(wt)
                biases.append(b)
            self._typed = (wts, biases)
        wts, biases = self._typed
        batch = x.shape[0]
        work = batch * self._layer_macs
        if batch > 1 and self.threads > 1 and (batch <= SMALL_BATCH or work >= PARALLEL_MIN_MACS):
            return self._forward_split(x, skip, wts, biases)
        stats = np.zeros((len(self._wts), 4), dtype=np.int64)
        # Batch 1 runs its layers' column tiles across the threads where they are large enough.
        threads = self.threads if batch == 1 and work >= SMALL_PARALLEL_MIN_MACS else 1
        args = (x, self._offset32, wts, biases, self._kinds, self._taus, self._ms, self._codes, skip, self._costs)
        with _blas_on_caller():  # one thread pool: numba's (see _blas_on_caller)
            if threads == 1:
                # One thread: the fused kernel (compaction fused with each activation, no per-layer scans).
                logits = k.forward_fused(*args, self.tile_bytes, stats)
            else:
                import numba

                previous = numba.get_num_threads()
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                try:
                    logits = k.forward_parallel(*args, threads, self.tile_bytes, stats)
                finally:
                    numba.set_num_threads(previous)
        return logits, stats

    def _forward_split(self, x: np.ndarray, skip: bool, wts, biases) -> tuple[np.ndarray, np.ndarray]:
        """A batch split into up to ``threads`` parts of consecutive examples, each part the fused
        kernel (compiled ``nogil``) on its own thread: the calling thread runs the first part, the
        shared helper pool (:func:`_split_pool`) the others. Statistics: strategies of the first
        part, nnz and multiply-adds summed, union the parts' largest."""
        k = self._kernels
        bounds = np.linspace(0, x.shape[0], min(self.threads, x.shape[0]) + 1).round().astype(int)
        parts = [x[p0:p1] for p0, p1 in itertools.pairwise(bounds)]  # contiguous row slices
        stats = [np.zeros((len(self._wts), 4), dtype=np.int64) for _ in parts]
        common = (self._offset32, wts, biases, self._kinds, self._taus, self._ms, self._codes, skip, self._costs,
                  self.tile_bytes)
        pool = _split_pool(len(parts) - 1)
        with _blas_on_caller():  # each part's BLAS products (dense layers) on its own thread
            futures = [pool.submit(k.forward_fused, part, *common, st) for part, st in zip(parts[1:], stats[1:])]
            logits = [k.forward_fused(parts[0], *common, stats[0])]
            logits += [f.result() for f in futures]
        total = stats[0].copy()
        for st in stats[1:]:
            total[:, 1] += st[:, 1]
            total[:, 2] = np.maximum(total[:, 2], st[:, 2])
            total[:, 3] += st[:, 3]
        return np.concatenate(logits), total

    def _forward_numpy(self, x: np.ndarray, skip: bool) -> tuple[np.ndarray, np.ndarray]:
        """The reference path: one NumPy/SciPy product per layer, same strategies and statistics."""
        a = x - self._offset32  # (B, N_0)
        batch = a.shape[0]
        stats = np.zeros((len(self._wts), 4), dtype=np.int64)
        for layer, (wt, bias) in enumerate(zip(self._wts, self._biases)):
            n_in, n_out = wt.shape
            nonzero = a != 0  # (B, N_in)
            nnz, in_union = int(nonzero.sum()), nonzero.any(axis=0)  # (N_in,)
            n_union = int(in_union.sum())
            s = int(self._codes[layer])
            group_rows = []  # block: each group's measured union (kernels: _group_unions), if run or weighed
            if s == BLOCK or (s == AUTO and batch > 1 and n_out >= BLOCK_MIN_COLUMNS):
                group_rows = [np.flatnonzero(nonzero[g:g + BLOCK_GROUP].any(axis=0))
                              for g in range(0, batch, BLOCK_GROUP)]
            if s == AUTO:
                s = choose_strategy(batch, n_in, n_out, nnz, n_union, self._costs, sum(map(len, group_rows)))
            if not skip:
                nonzero[:] = True
                in_union[:] = True
            if s == DENSE:
                y = a @ wt  # (B, N_out)
                macs = batch * n_in * n_out
            elif s == GATHER:
                y = np.empty((batch, n_out), np.float32)
                for b in range(batch):
                    rows = np.flatnonzero(nonzero[b])  # example b's nonzero inputs
                    # every row: the product itself, not a copy of W^T first
                    y[b] = a[b] @ wt if len(rows) == n_in else a[b, rows] @ wt[rows]  # (n_b,) @ (n_b, N_out)
                macs = int(nonzero.sum()) * n_out
            elif s == UNION:
                rows = np.flatnonzero(in_union)  # U
                y = a[:, rows] @ wt[rows]  # (B, |U|) @ (|U|, N_out)
                macs = batch * len(rows) * n_out
            elif s == BLOCK:  # groups of BLOCK_GROUP examples, each against its own union's rows
                y = np.empty((batch, n_out), np.float32)
                macs = 0
                for g0, rows in zip(range(0, batch, BLOCK_GROUP), group_rows):
                    rows = rows if skip else np.arange(n_in)  # the group's union; every row for dense-own
                    y[g0:g0 + BLOCK_GROUP] = a[g0:g0 + BLOCK_GROUP, rows] @ wt[rows]  # (G, |U_g|) @ (|U_g|, N_out)
                    macs += len(y[g0:g0 + BLOCK_GROUP]) * len(rows) * n_out
            else:
                assert s == CSR
                r, c = np.nonzero(nonzero)  # row-major order: CSR
                indptr = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))])  # (B + 1,)
                y = np.asarray(scipy.sparse.csr_array((a[r, c], c, indptr), shape=a.shape) @ wt,
                               dtype=np.float32)  # (B, N_out)
                macs = len(c) * n_out
            y = y + bias
            _activation_(y, int(self._kinds[layer]), self._taus[layer], self._ms[layer])
            stats[layer] = (s, nnz, n_union, macs)
            a = y
        return a, stats


def _activation_(y: np.ndarray, kind: int, tau: np.float32, m: np.float32) -> None:
    """phi in place on float32 ``y`` with the bias added (NumPy twin of the numba kernels' ``_act``)."""
    if kind == ACT_ONE_SIDED:  # the threshold is in the bias: min(max(y, 0), m)
        np.maximum(y, 0, out=y)
        np.minimum(y, m, out=y)
    elif kind == ACT_TWO_SIDED:  # sign(y) min(max(|y| - tau, 0), m)
        mag = np.minimum(np.maximum(np.abs(y) - tau, 0), m)
        np.copysign(mag, y, out=y)
        y[mag == 0] = 0.0  # no -0.0
