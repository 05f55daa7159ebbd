"""The sparse CNN engine: a trained sparse CNN evaluated exactly, skipping the taps of zero inputs.

A conv layer of a :class:`~sparse_eoc.nn.SparseCNN` (stride 1, "same" k x k, zero or
circular padding; paper Section 5) computes

    h^l[y, x, :] = b^l + sum_{dy, dx} sum_c phi(h^{l-1})[y + dy - r, x + dx - r, c] W^l[dy, dx][c, :]

(r = k // 2). At sparsity s only a fraction 1 - s of phi(h^{l-1}) is nonzero, and a nonzero
input meets only the k^2 weight vectors W[dy, dx][c, :] of the taps that read it (fewer at a
zero-padded border): (1 - s) of the multiply-adds remain. The ``sparse`` kernel
(:mod:`sparse_eoc.kernels.conv`) scatters each nonzero input into the outputs it reaches, one
contiguous row of k C_out weights per kernel row. Nothing is approximated: the result equals
the dense forward up to float32 round-off (the order of the additions).

Each layer runs ``sparse`` or ``dense`` (im2col and one BLAS product), chosen per layer and
call from the measured nonzeros of its input by a fixed cost model
(:class:`~sparse_eoc.infer.cnn_plan.ConvCostModel`; never from timings). The first layer sees
the image: with one input channel its multiply-adds are a few per mille of a hidden layer's,
and ``auto`` runs it dense unless the image is very sparse. An ``input_offset`` c (the
standardised zero pixel, :meth:`SparseCNNEngine.from_run`) makes the background exact zeros:
the first layer computes conv(x - c) + (b + conv(c)), where conv(c) of the constant image c,
zero-padded, is smaller near the border (a per-position bias map; constant with circular
padding).

Activations are held channels-last, (B, H, W, C) as (P, C) with P = B H W positions, C
padded to a multiple of 16 (zero weights, zero outputs: 64-byte rows); the global average
pooling and the readout run in NumPy. Backends: ``numba`` (:mod:`sparse_eoc.infer.cnn_kernels`)
when installed, else ``numpy`` (the sparse product as a SciPy CSR matrix of the sparse im2col:
the reference). Both run the same strategies and report the same statistics. The weights are
held twice (im2col's layout and the kernel's tap rows), in float32.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse

from sparse_eoc.activations import get_activation
from sparse_eoc.checks import check_int
from sparse_eoc.infer.cnn_plan import (CONV_STRATEGIES, CONV_STRATEGY_CHOICES, SPARSE_CONV, CNNEngineStats,
                                       ConvCostModel, choose_conv_strategy, taps_per_position)
from sparse_eoc.infer.engine import BACKENDS, _activation_, run_input_offset
from sparse_eoc.infer.plan import layer_activations

__all__ = ["PADDING_MODES", "SparseCNNEngine"]

PADDING_MODES = ("zeros", "circular")
LANES = 16  # channels are padded to a multiple of this (64-byte rows of float32)


_POOL: ThreadPoolExecutor | None = None


def _run_parts(fn: Callable[[int, int, int], None], n: int, threads: int) -> None:
    """fn(part, lo, hi) over ``threads`` near-equal parts of range(n), the first on this thread (the
    kernels release the GIL; the parts write disjoint outputs)."""
    global _POOL
    parts = max(1, min(threads, n))
    bounds = [n * t // parts for t in range(parts + 1)]
    if parts == 1:
        fn(0, 0, n)
        return
    if _POOL is None or _POOL._max_workers < parts - 1:
        _POOL = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="sparse-eoc-cnn")
    futures = [_POOL.submit(fn, t, bounds[t], bounds[t + 1]) for t in range(1, parts)]
    fn(0, bounds[0], bounds[1])
    for future in futures:
        future.result()


def _pick_backend(backend: str):
    """(backend in use, why numpy was used under auto, the numba kernels module or None)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got backend={backend!r}")
    if backend == "numpy":
        return "numpy", "", None
    try:
        from sparse_eoc.infer import cnn_kernels
    except ImportError as err:
        reason = f"numba is not available ({err}); pip install 'numba>=0.60' for the compiled kernels"
        if backend == "numba":
            raise ValueError(f"backend='numba': {reason}") from None
        warnings.warn(f"SparseCNNEngine uses the NumPy path: {reason}", RuntimeWarning, stacklevel=3)
        return "numpy", reason, None
    return "numba", "", cnn_kernels


_BLAS = None  # threadpoolctl's controller of the loaded BLAS libraries


def _blas_single_threaded():
    """A context within which every loaded BLAS library runs on one thread, the caller's.

    The engine's threads are its own pool's (:func:`_run_parts`): each part of a ``dense``
    layer is one BLAS call. A BLAS pool of its own beside it would leave its threads
    spin-waiting after each product, on the cores the engine's threads need.
    """
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _pad_to(n: int) -> int:
    return -(-n // LANES) * LANES


class SparseCNNEngine:
    """Exact inference of a sparse CNN that reads only the filter taps meeting nonzero inputs.

    Build it with :meth:`from_model` or :meth:`from_run`; call it on a batch of images.

    Args:
        weights: the L conv weights W^1..W^L, each (C_out, C_in, k, k) as in ``nn.Conv2d``
            (any float dtype), one odd k for all; consecutive channels must chain.
        biases: the L conv biases (C_out,), the paper's b^l (not b^l - tau).
        readout_weight, readout_bias: the readout after global average pooling,
            (classes, C_L) and (classes,).
        activation: registry name of phi (applied after every conv).  tau, m: its threshold and clip.
        padding_mode: ``zeros`` or ``circular``.
        input_offset: None, a float, or (C_0,) floats c, one per image channel: the first layer
            computes conv(x - c) + (b + conv(c)) (module docstring).
        strategy: ``auto`` (per layer and call, :func:`~sparse_eoc.infer.cnn_plan.choose_conv_strategy`),
            ``dense``, ``sparse``, or a sequence of L of these.
        threads: CPU threads, >= 1: tiles of output rows (``sparse``), or of im2col rows, each
            one single-threaded BLAS call (``dense``), across a pool of this many threads; the
            result does not depend on it. The NumPy backend's sparse product is one SciPy call.
        backend: ``auto`` (numba when installed), ``numba`` or ``numpy``.
        cost: the :class:`~sparse_eoc.infer.cnn_plan.ConvCostModel` of ``auto``; None = defaults.
        tile_bytes: the share of cache, in bytes (>= 1024), of each tile's outputs: a tile is
            max(1, tile_bytes / (4 W C_out)) image rows of one example (default 128 KiB).

    Attributes:
        backend, backend_note: as in :class:`~sparse_eoc.infer.SparseEngine`.
        bias_shift: what is subtracted from each conv bias (tau for a one-sided phi, else 0).
        last_stats: the :class:`~sparse_eoc.infer.cnn_plan.CNNEngineStats` of the last call (None before the
            first).

    Raises:
        ValueError: shapes that do not chain, an even or mixed kernel size, an unknown
            activation, padding mode, strategy or backend, a strategy list of the wrong length,
            ``threads < 1``, ``backend="numba"`` without numba, or a bad ``input_offset``.
    """

    def __init__(
        self,
        weights: Sequence[Any],
        biases: Sequence[Any],
        readout_weight: Any,
        readout_bias: Any,
        activation: str,
        tau: float = 0.0,
        m: float = math.inf,
        *,
        padding_mode: str = "zeros",
        input_offset: float | Sequence[float] | np.ndarray | None = None,
        strategy: str | Sequence[str] = "auto",
        threads: int = 1,
        backend: str = "auto",
        cost: ConvCostModel | None = None,
        tile_bytes: int = 1 << 17,
    ) -> None:
        act = get_activation(activation)
        tau, m = act.check_params(tau, m)
        ws = [np.asarray(w) for w in weights]
        bs = [np.asarray(b, dtype=np.float64) for b in biases]
        if len(ws) != len(bs) or not ws:
            raise ValueError(f"weights and biases must be L >= 1 matching lists, got {len(ws)} weights and "
                             f"{len(bs)} biases")
        k = ws[0].shape[-1] if ws[0].ndim == 4 else 0
        for i, (w, b) in enumerate(zip(ws, bs)):
            if w.ndim != 4 or w.shape[2:] != (k, k) or k % 2 == 0 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {i}: weight must be (C_out, C_in, k, k) with one odd k for all layers and "
                                 f"bias (C_out,), got weight {w.shape} and bias {b.shape}")
            if i and w.shape[1] != ws[i - 1].shape[0]:
                raise ValueError(f"layer {i}: weight {w.shape} does not take the previous layer's "
                                 f"{ws[i - 1].shape[0]} channels")
        wr = np.array(readout_weight, dtype=np.float32)  # copies: the model may change later
        br = np.array(readout_bias, dtype=np.float32)
        if wr.ndim != 2 or wr.shape[1] != ws[-1].shape[0] or br.shape != (wr.shape[0],):
            raise ValueError(f"the readout must be (classes, {ws[-1].shape[0]}) and (classes,), got {wr.shape} "
                             f"and {br.shape}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        self.backend, self.backend_note, self._kernels = _pick_backend(backend)
        self.activation, self.tau, self.m = act.name, tau, m
        self.padding_mode, self.circular, self.kernel_size = padding_mode, padding_mode == "circular", k
        self.in_channels, self.num_classes = ws[0].shape[1], wr.shape[0]
        self.channels = tuple(w.shape[0] for w in ws)  # C_out of each conv
        self.input_offset = self._check_offset(input_offset)
        kinds, taus, ms, self.bias_shift = layer_activations(act.name, tau, m, len(ws) + 1)
        self._act = [(int(kinds[i]), taus[i], ms[i]) for i in range(len(ws))]
        # Stored channels: C_out padded to a multiple of LANES; C_in is the previous layer's padded C_out
        # (the image's C_0 for layer 1). The padding's weights and biases are zeros, so its outputs are too.
        self._c_pad = [_pad_to(c) for c in self.channels]
        self._c_in_stored = [self.in_channels, *self._c_pad[:-1]]
        if self.backend == "numba":
            from sparse_eoc.kernels.conv import tap_rows_layout
        self._wf, self._wr, self._bias = [], [], []
        for i, (w, b) in enumerate(zip(ws, bs)):
            c_out, c_in = w.shape[:2]
            wf = np.zeros((k, k, self._c_in_stored[i], self._c_pad[i]), np.float32)
            wf[:, :, :c_in, :c_out] = w.transpose(2, 3, 1, 0)  # (C_out, C_in, k, k) -> (k, k, C_in, C_out)
            self._wf.append(wf.reshape(-1, self._c_pad[i]))  # (k^2 C_in, C_out): im2col's
            if self.backend == "numba":  # the sparse kernel's tap rows (k, C_in, k, C_out)
                self._wr.append(tap_rows_layout(w, self._c_in_stored[i], self._c_pad[i]))
            bias = np.zeros((1, self._c_pad[i]), np.float32)
            bias[0, :c_out] = b.astype(np.float32) - np.float32(self.bias_shift)  # b - tau, as SparseCNN folds it
            self._bias.append(bias)
        self._b1 = bs[0]  # float64, for the first layer's offset bias map
        self._w1 = ws[0].astype(np.float64)
        self._bias_maps: dict[tuple[int, int], np.ndarray] = {}
        self._taps_maps: dict[tuple[int, int], np.ndarray] = {}
        self._readout_wt = np.ascontiguousarray(wr.T)  # (C_L, classes)
        self._readout_bias = br
        self.strategy = strategy
        self._codes = self._check_strategy(strategy, len(ws))
        self.threads = check_int("threads", threads)
        self.tile_bytes = check_int("tile_bytes", tile_bytes, minimum=1024)
        self.cost = ConvCostModel() if cost is None else cost
        if not isinstance(self.cost, ConvCostModel):
            raise ValueError(f"cost must be a ConvCostModel or None, got cost={cost!r}")
        self.last_stats: CNNEngineStats | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_model(cls, model, **options) -> SparseCNNEngine:
        """An engine with the weights of a :class:`~sparse_eoc.nn.SparseCNN` (copied, float32).

        Args:
            model: a ``SparseCNN`` (any device; its weights are copied to the CPU).
            **options: ``input_offset``, ``strategy``, ``threads``, ``backend``, ``cost``,
                ``tile_bytes`` as in :class:`SparseCNNEngine`.

        Raises:
            ValueError: if ``model`` is not a ``SparseCNN`` (for a ``SparseMLP``:
                :class:`~sparse_eoc.infer.SparseEngine`).
        """
        import torch

        from sparse_eoc.nn import SparseCNN

        if not isinstance(model, SparseCNN):
            raise ValueError(f"model must be a SparseCNN, got {type(model).__name__} (for a SparseMLP, use "
                             "sparse_eoc.infer.SparseEngine)")
        with torch.no_grad():
            weights = [conv.weight.detach().cpu().numpy() for conv in model.hidden]  # (C_out, C_in, k, k)
            biases = [conv.bias.detach().cpu().double().numpy() for conv in model.hidden]
            wr = model.readout.weight.detach().cpu().numpy()  # (classes, C_L)
            br = model.readout.bias.detach().cpu().numpy()
        act = model.act
        engine = cls(weights, biases, wr, br, act.name, act.tau, act.m,
                     padding_mode=model.hidden[0].padding_mode, **options)
        assert engine.bias_shift == act.bias_shift, "the engine folds tau into the bias as the model does"
        return engine

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, *, input_offset: Any = "data", **options) -> SparseCNNEngine:
        """An engine for the trained CNN of a ``sparse-eoc train`` run directory.

        Args:
            run_dir: the run directory (``config.json`` and ``model.safetensors``).
            input_offset: ``"data"`` (default): the standardised zero pixel of each channel of
                the run's data (:func:`~sparse_eoc.infer.zero_pixel_offset`); or as in
                :class:`SparseCNNEngine`.
            **options: ``strategy``, ``threads``, ``backend``, ``cost``, ``tile_bytes``.

        Raises:
            FileNotFoundError: if the run's files are missing.
            ValueError: if the run is not a CNN run, or not finished (see
                :func:`sparse_eoc.nn.build.load_run`).
        """
        from sparse_eoc.nn.build import load_run

        model, config = load_run(run_dir)
        offset = run_input_offset(config, input_offset, (len(config["data"]["mean"]), 1, 1))  # (C_0,)
        return cls.from_model(model, input_offset=offset, **options)

    def _check_offset(self, offset) -> np.ndarray | None:
        if offset is None:
            return None
        c = np.asarray(offset, dtype=np.float32)
        if c.ndim == 0:
            c = np.full(self.in_channels, c, dtype=np.float32)
        if c.shape != (self.in_channels,) or not np.all(np.isfinite(c)):
            raise ValueError(f"input_offset must be a finite float or ({self.in_channels},) floats (one per image "
                             f"channel), got shape {c.shape}")
        return c

    @staticmethod
    def _check_strategy(strategy, n_layers: int) -> list[int | None]:
        names = [strategy] * n_layers if isinstance(strategy, str) else list(strategy)
        if len(names) != n_layers:
            raise ValueError(f"strategy must be one name or {n_layers} (one per conv layer), got {len(names)}")
        for name in names:
            if name not in CONV_STRATEGY_CHOICES:
                raise ValueError(f"strategy must be one of {', '.join(CONV_STRATEGY_CHOICES)}, got strategy={name!r}")
        return [None if n == "auto" else CONV_STRATEGIES.index(n) for n in names]

    # ------------------------------------------------------------------ inference

    @property
    def depth(self) -> int:
        """Conv layers L."""
        return len(self._wf)

    @property
    def last_strategies(self) -> tuple[str, ...] | None:
        """What each layer ran in the last call (conv layers, then the readout)."""
        return None if self.last_stats is None else self.last_stats.strategies

    def _bias_map(self, height: int, width: int) -> np.ndarray:
        """The first layer's bias with the offset folded in, (H W, C_out_pad) float32 (module docstring)."""
        key = (height, width)
        if key not in self._bias_maps:
            k, c_out = self.kernel_size, self.channels[0]
            w = self._w1 * self.input_offset.astype(np.float64)[None, :, None, None]  # (C_out, C_0, k, k): c W
            per_tap = w.sum(axis=1).transpose(1, 2, 0)  # (k, k, C_out): sum_c c_c W_t[c]
            if self.circular:
                inside = np.ones((height, width, k, k), bool)
            else:  # tap (dy, dx) of output (y, x) reads (y + dy - r, x + dx - r): inside the image?
                r = k // 2
                ys = np.arange(height)[:, None] + np.arange(k)[None, :] - r  # (H, k)
                xs = np.arange(width)[:, None] + np.arange(k)[None, :] - r  # (W, k)
                iy, ix = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
                inside = iy[:, None, :, None] & ix[None, :, None, :]  # (H, W, k, k)
            folded = self._b1 + np.einsum("yxij,ijc->yxc", inside.astype(np.float64), per_tap)  # (H, W, C_out)
            bias = np.zeros((height * width, self._c_pad[0]), np.float32)
            bias[:, :c_out] = folded.reshape(-1, c_out).astype(np.float32) - np.float32(self.bias_shift)
            self._bias_maps[key] = bias
        return self._bias_maps[key]

    def __call__(self, x):
        """Logits of a batch of images.

        Args:
            x: images (B, C_0, H, W), NumPy array or torch tensor; converted to float32.

        Returns:
            Logits (B, classes) float32: a NumPy array, or a CPU torch tensor when ``x`` is a
            tensor. ``last_stats`` describes the call.

        Raises:
            ValueError: if ``x`` is not (B, C_0, H, W) with B, H, W >= 1.
        """
        is_torch = type(x).__module__.split(".")[0] == "torch"
        arr = x.detach().cpu().numpy() if is_torch else np.asarray(x)
        if arr.ndim != 4 or arr.shape[1] != self.in_channels or min(arr.shape) < 1:
            raise ValueError(f"x must be images (B, {self.in_channels}, H, W) with B, H, W >= 1, "
                             f"got shape {tuple(np.shape(x))}")
        batch, _, height, width = arr.shape
        a = np.array(arr.transpose(0, 2, 3, 1), dtype=np.float32, order="C")  # (B, H, W, C_0), a copy
        if self.input_offset is not None:
            a -= self.input_offset
            bias0 = self._bias_map(height, width)
        else:
            bias0 = self._bias[0]
        a = a.reshape(batch * height * width, self.in_channels)  # (P, C_0)
        forward = self._forward_numba if self.backend == "numba" else self._forward_numpy
        with _blas_single_threaded():
            y, strategies, nnz, macs = forward(a, bias0, batch, height, width)
        c_last = self.channels[-1]
        pooled = y[:, :c_last].reshape(batch, height * width, c_last).mean(axis=1, dtype=np.float64)  # (B, C_L)
        logits = pooled.astype(np.float32) @ self._readout_wt + self._readout_bias  # (B, classes)
        self.last_stats = CNNEngineStats(
            batch=batch, image=(height, width), kernel_size=self.kernel_size,
            c_in=(self.in_channels, *self.channels), c_out=(*self.channels, self.num_classes),
            strategies=(*(CONV_STRATEGIES[s] for s in strategies), "dense"), nnz=(*nnz, int(np.count_nonzero(pooled))),
            macs=(*macs, batch * c_last * self.num_classes))
        if is_torch:
            import torch

            return torch.from_numpy(logits)
        return logits

    def _choose(self, layer: int, positions: int, nnz: int, taps: int) -> int:
        """The strategy of a layer whose input has ``nnz`` nonzeros read by ``taps`` taps in all."""
        code = self._codes[layer]
        if code is None:
            code = choose_conv_strategy(positions, self.kernel_size, self._c_in_stored[layer], self._c_pad[layer],
                                        nnz, taps, self.cost)
        return code

    def _taps_read(self, counts: np.ndarray, batch: int, height: int, width: int) -> int:
        """The taps that read nonzero inputs with ``counts`` (P,) per position: sum of counts x taps there."""
        key = (height, width)
        if key not in self._taps_maps:
            k = self.kernel_size
            self._taps_maps[key] = np.outer(taps_per_position(height, k, self.circular),
                                            taps_per_position(width, k, self.circular))  # (H, W)
        return int((counts.reshape(batch, height, width) * self._taps_maps[key]).sum())

    def _dense_conv(self, a: np.ndarray, layer: int, batch: int, height: int, width: int,
                    y: np.ndarray | None = None) -> np.ndarray:
        """conv(a) without bias by im2col and BLAS: a (P, C_in) -> (P, C_out_pad), into ``y`` if given.

        The image rows of the batch are split across ``threads`` parts, each building the im2col
        of its rows in chunks of at most ~16 MiB and multiplying them by one BLAS call (single-threaded:
        see :func:`_blas_single_threaded`).
        """
        k, r = self.kernel_size, self.kernel_size // 2
        c_in, wf = a.shape[1], self._wf[layer]
        padded = np.pad(a.reshape(batch, height, width, c_in), ((0, 0), (r, r), (r, r), (0, 0)),
                        mode="wrap" if self.circular else "constant")  # (B, H + 2r, W + 2r, C_in)
        y = np.empty((batch * height * width, wf.shape[1]), np.float32) if y is None else y
        chunk = max(1, (16 << 20) // (width * k * k * c_in * 4))  # image rows per im2col

        def part(t, u0, u1):  # image rows u = b H + y, u0 <= u < u1
            for c0 in range(u0, u1, chunk):
                c1 = min(u1, c0 + chunk)
                cols = np.empty((c1 - c0, width, k, k, c_in), np.float32)  # im2col, (dy, dx, c) fastest
                for b in range(c0 // height, (c1 - 1) // height + 1):  # the examples of rows c0..c1-1
                    y0, y1 = max(c0, b * height) - b * height, min(c1, (b + 1) * height) - b * height
                    dst = cols[b * height + y0 - c0:b * height + y1 - c0]  # (rows, W, k, k, C_in)
                    for dy in range(k):
                        for dx in range(k):
                            dst[:, :, dy, dx, :] = padded[b, y0 + dy:y1 + dy, dx:dx + width, :]
                np.matmul(cols.reshape(-1, k * k * c_in), wf, out=y[c0 * width:c1 * width])

        _run_parts(part, batch * height, self.threads)
        return y

    def _forward_numba(self, a, bias0, batch, height, width):
        kn = self._kernels
        positions = batch * height * width
        k = self.kernel_size
        idx = np.empty(a.size, np.int32)  # the image's nonzeros, a slot of C_0 per position
        vals = np.empty(a.size, np.float32)
        cnt = np.empty(positions, np.int64)
        nnz = [int(kn.compact_positions(a, a.shape[1], idx, vals, cnt, 0, positions))]
        taps = self._taps_read(cnt, batch, height, width)
        strategies, macs = [], []
        rows_per_tile = max(1, self.tile_bytes // (4 * width * max(self._c_pad)))
        tiles = batch * -(-height // rows_per_tile)
        for layer, (wr, (kind, tau, m)) in enumerate(zip(self._wr, self._act)):
            c_pad, c_real = self._c_pad[layer], self.channels[layer]
            bias = bias0 if layer == 0 else self._bias[layer]
            code = self._choose(layer, positions, nnz[-1], taps)
            y = np.empty((positions, c_pad), np.float32)  # phi(h), channels-last
            nidx = np.empty(positions * c_pad, np.int32)  # its nonzeros, for the next layer
            nvals = np.empty(positions * c_pad, np.float32)
            ncnt = np.empty(positions, np.int64)
            counts = np.zeros((self.threads, 3), np.int64)  # per thread: taps added, output nonzeros, their taps
            if code == SPARSE_CONV:
                args = (y, bias, wr, a.shape[1], idx, vals, cnt, height, width, k, self.circular,
                        kind, tau, m, c_real, nidx, nvals, ncnt)

                def tiles_part(t, lo, hi, args=args, counts=counts):
                    kn.sparse_layer(*args, lo, hi, rows_per_tile, counts[t])

                _run_parts(tiles_part, tiles, self.threads)
                macs.append(int(counts[:, 0].sum()) * c_real)
            else:
                self._dense_conv(a, layer, batch, height, width, y)
                args = (y, bias, c_real, kind, tau, m, nidx, nvals, ncnt)

                def finish(t, lo, hi, args=args, counts=counts):
                    kn.bias_act_compact(*args, lo, hi, height, width, k, self.circular, counts[t])

                _run_parts(finish, positions, self.threads)
                macs.append(positions * k * k * self._c_in_real(layer) * c_real)
            strategies.append(code)
            nnz.append(int(counts[:, 1].sum()))
            taps = int(counts[:, 2].sum())
            a, idx, vals, cnt = y, nidx, nvals, ncnt
        return a, strategies, nnz[:-1], macs

    def _c_in_real(self, layer: int) -> int:
        return self.in_channels if layer == 0 else self.channels[layer - 1]

    def _forward_numpy(self, a, bias0, batch, height, width):
        """The reference path: the sparse product as a SciPy CSR im2col, same strategies and statistics."""
        positions = batch * height * width
        k, r = self.kernel_size, self.kernel_size // 2
        strategies, nnz, macs = [], [], []
        for layer, (wf, (kind, tau, m)) in enumerate(zip(self._wf, self._act)):
            c_in, c_real = a.shape[1], self.channels[layer]
            bias = bias0 if layer == 0 else self._bias[layer]
            nonzero = a != 0  # (P, C_in)
            nnz.append(int(nonzero.sum()))
            code = self._choose(layer, positions, nnz[-1], self._taps_read(nonzero.sum(axis=1), batch, height, width))
            if code == SPARSE_CONV:
                b_, y_, x_, c_ = np.nonzero(nonzero.reshape(batch, height, width, c_in))  # the nonzero inputs
                v = a.reshape(batch, height, width, c_in)[b_, y_, x_, c_]
                out_rows, cols, data = [], [], []
                for dy in range(k):
                    for dx in range(k):
                        # tap (dy, dx) of output (yo, xo) reads input (yo + dy - r, xo + dx - r)
                        yo, xo = y_ - dy + r, x_ - dx + r
                        if self.circular:
                            yo, xo, keep = yo % height, xo % width, slice(None)
                        else:
                            keep = (yo >= 0) & (yo < height) & (xo >= 0) & (xo < width)
                        out_rows.append((b_[keep] * height + yo[keep]) * width + xo[keep])
                        cols.append((dy * k + dx) * c_in + c_[keep])
                        data.append(v[keep])
                im2col = scipy.sparse.csr_array(
                    (np.concatenate(data), (np.concatenate(out_rows), np.concatenate(cols))),
                    shape=(positions, k * k * c_in))  # (P, k^2 C_in), the nonzero patch entries only
                y = np.asarray(im2col @ wf, dtype=np.float32)  # (P, C_out_pad)
                macs.append(int(im2col.nnz) * c_real)
            else:
                y = self._dense_conv(a, layer, batch, height, width)
                macs.append(positions * k * k * self._c_in_real(layer) * c_real)
            if bias.shape[0] > 1:
                y = (y.reshape(batch, height * width, -1) + bias).reshape(positions, -1)  # per-position bias map
            else:
                y = y + bias
            out = y[:, :c_real]
            _activation_(out, kind, tau, m)
            y[:, c_real:] = 0.0
            strategies.append(code)
            a = y
        return a, strategies, nnz, macs
