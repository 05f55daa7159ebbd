"""The CNN inference benchmark: dense PyTorch and ONNX Runtime vs the sparse CNN engine.

For each channel count C, target sparsity s and batch size B: a freshly EoC-initialised CReLU
CNN (V'(q*) = 0.7, q* = 1; paper Sections 4-5) of ``depth`` 3 x 3 zero-padded convolutions,
global average pooling and a linear readout, fed real MNIST test images (B, 1, 28, 28). Three
ways to get the logits of the same batch are timed in one process, interleaved (their order
rotates each repeat, and every repeat takes the next B test images), with the warm protocol of
:mod:`sparse_eoc.infer.bench`: each timed call follows one untimed call of the same method on the
previous repeat's images, and on more than one thread each method's turn starts after the busy
wait :data:`sparse_eoc.infer.bench.SETTLE_S` (:func:`~sparse_eoc.infer.bench.settle`); the median
of ``repeats`` is reported.

The methods:

- ``dense_torch``: ``model(x)`` under ``torch.inference_mode()`` (oneDNN convolutions);
- ``dense_ort``: the model exported to ONNX and run by ONNX Runtime
  (:class:`sparse_eoc.infer.ort.OrtModel`; by default when installed);
- ``sparse``: :class:`~sparse_eoc.infer.SparseCNNEngine` (``auto`` strategy unless told
  otherwise; the input offset is the standardised zero pixel).

Reported per row: ``channels, depth, batch, sparsity`` (the target s), ``dense_torch_ms,
dense_ort_ms, sparse_ms``, ``speedup_vs_torch`` and ``speedup_vs_ort`` (their ratios to
``sparse_ms``; None without ONNX Runtime), ``flop_reduction`` (dense / done multiply-adds,
whole network, over the timed calls), plus ``measured_sparsity`` (zeros of the inputs of the
conv layers fed by hidden activations), ``strategy`` (the sparse run's per-layer choices, e.g.
``sparse:10,dense:1``), ``max_rel_logit_diff`` (engine vs torch, per example |diff| / max
|logit|, over the timed calls), ``threads``, ``backend``, ``ort_version`` and ``ort_note``
(why ONNX Runtime was not timed; "" when it was). ``threads`` sets torch's, ONNX Runtime's and
the engine's threads.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sparse_eoc.infer.bench import settle
from sparse_eoc.infer.plan import flop_reduction

__all__ = ["CNN_BENCH_KEYS", "DEFAULT_CHANNELS", "DEFAULT_CNN_BATCHES", "DEFAULT_CNN_DEPTH", "cnn_memory_needed",
           "format_cnn_row", "run_cnn_benchmark"]

DEFAULT_CHANNELS = (32, 300)  # cnn-mnist-cpu's width, and the paper's
DEFAULT_CNN_DEPTH = 10
DEFAULT_CNN_BATCHES = (1, 8)
CNN_BENCH_KEYS = ("channels", "depth", "batch", "sparsity", "dense_torch_ms", "dense_ort_ms", "sparse_ms",
                  "speedup_vs_torch", "speedup_vs_ort", "flop_reduction")
_EXTRA_KEYS = ("measured_sparsity", "strategy", "max_rel_logit_diff", "threads", "backend", "ort_version", "ort_note")


def cnn_memory_needed(channels: int, depth: int, batch: int, *, image: tuple[int, int, int] = (1, 28, 28),
                      num_classes: int = 10) -> int:
    """A lower estimate of the bytes one benchmark row holds at once.

    The float32 weights four times (torch, ONNX Runtime, the engine's two layouts), and the
    activations of a batch: torch's two (B, C, H, W) layer outputs, ONNX Runtime's two, and the
    engine's input and output with their nonzeros (indices and values): ten in all.

    Args:
        channels: C, >= 1.  depth: conv layers L, >= 1.  batch: B, >= 1.
        image: (C_0, H, W) of the inputs (MNIST: (1, 28, 28)).  num_classes: of the readout.
    """
    c0, h, w = image
    params = (c0 * 9 + 1) * channels + (depth - 1) * (channels * 9 + 1) * channels + (channels + 1) * num_classes
    return 4 * (4 * params + 10 * batch * h * w * (-(-channels // 16) * 16))


def _check_memory(channels: Sequence[int], depth: int, batches: Sequence[int]) -> None:
    """Refuse a grid whose largest row cannot fit in memory, before anything is built.

    Raises:
        ValueError: naming ``--channels/--depth`` or ``--batches``, the estimate and the memory.
    """
    from sparse_eoc.checks import physical_memory_bytes

    have = physical_memory_bytes()
    if have is None:
        return
    gib = 2**30
    for c in channels:
        need = cnn_memory_needed(c, depth, 1)
        if need > have:
            raise ValueError(f"--channels/--depth: a depth-{depth} CNN with {c} channels needs at least "
                             f"{need / gib:.3g} GiB, more than the {have / gib:.3g} GiB of memory of this machine")
        need = cnn_memory_needed(c, depth, max(batches))
        if need > have:
            raise ValueError(f"--batches: batch {max(batches)} with {c} channels needs at least {need / gib:.3g} GiB, "
                             f"more than the {have / gib:.3g} GiB of memory of this machine")


def _ort(wanted: bool | None):
    """(OrtModel class or None, its version or None, why it is not timed or "").

    Raises:
        ValueError: ``wanted`` True and ONNX Runtime not installed (the reason and the install hint).
    """
    from sparse_eoc.infer.ort import OrtModel, ort_unavailable_reason, ort_version

    if wanted is False:
        return None, None, "not asked for"
    reason = ort_unavailable_reason()
    if reason is not None:
        if wanted:
            raise ValueError(f"--baselines ort: {reason}")
        return None, None, reason
    return OrtModel, ort_version(), ""


def run_cnn_benchmark(
    data_dir,
    *,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    depth: int = DEFAULT_CNN_DEPTH,
    batches: Sequence[int] = DEFAULT_CNN_BATCHES,
    sparsities: Sequence[float] = (0.85,),
    repeats: int = 10,
    threads: int = 1,
    slope: float = 0.7,
    strategy: str = "auto",
    backend: str = "auto",
    seed: int = 0,
    ort: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the CNN benchmark grid; one dict per (channels, sparsity, batch).

    Args:
        data_dir: an MNIST-format directory (its test images are the inputs).
        channels: channels C of every conv layer, each >= 1.  depth: conv layers L, >= 1.
        batches: batch sizes, each >= 1.  sparsities: target sparsities of CReLU at the EoC.
        repeats: timed repeats per row, >= 1 (the median is reported).
        threads: torch, ONNX Runtime and engine threads, >= 1.
        slope: V'(q*) of the clipped activation, in (0, 1).
        strategy, backend: of the engine (strategy ``auto``, ``dense`` or ``sparse``).
        seed: the networks' initialisation.
        ort: time ONNX Runtime: None (default) when it is installed, True always (an error
            without it), False never (``dense_ort_ms`` and ``speedup_vs_ort`` are then None).
        log: called with one line per row (None: silent).

    Returns:
        Rows with the keys of :data:`CNN_BENCH_KEYS` and ``measured_sparsity, strategy,
        max_rel_logit_diff, threads, backend, ort_version, ort_note``.

    Raises:
        ValueError: bad sizes or options (named), sizes that cannot fit in memory, ``ort=True``
            without ONNX Runtime, no test images in ``data_dir``; an unreachable sparsity (from
            ``solve_eoc``).
    """
    import torch

    from sparse_eoc.checks import check_int
    from sparse_eoc.gp import solve_eoc
    from sparse_eoc.infer.bench import benchmark_inputs
    from sparse_eoc.infer.cnn_engine import SparseCNNEngine
    from sparse_eoc.infer.cnn_plan import CONV_STRATEGY_CHOICES
    from sparse_eoc.nn.build import build_model, init_from_point_
    from sparse_eoc.runs.network import NetworkSpec

    channels = [check_int("channels", c) for c in channels]
    batches = [check_int("batch", b) for b in batches]
    depth = check_int("depth", depth)
    repeats = check_int("repeats", repeats)
    threads = check_int("threads", threads)
    if strategy not in CONV_STRATEGY_CHOICES:
        raise ValueError(f"strategy must be one of {', '.join(CONV_STRATEGY_CHOICES)} for a CNN, got {strategy!r}")
    if not channels or not batches or not sparsities:
        raise ValueError("channels, batches and sparsities must each name at least one value")
    _check_memory(channels, depth, batches)
    ort_model, ort_version, ort_note = _ort(ort)
    points = {s: solve_eoc("crelu", s, slope=slope) for s in sparsities}  # checks s and slope first
    data, images, offset = benchmark_inputs(data_dir, images=True)  # (N, 1, 28, 28), (C_0,): a zero pixel
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for c in channels:
            for s in sparsities:
                p = points[s]
                spec = NetworkSpec(kind="cnn", image_shape=data.image_shape, num_classes=data.num_classes,
                                   depth=depth, activation="crelu", tau=p.tau, m=p.m, channels=c, kernel_size=3,
                                   padding_mode="zeros")
                model = build_model(spec).eval()
                init_from_point_(model, p, mean_square_input=data.mean_square_input,
                                 generator=torch.Generator().manual_seed(seed))
                engine = SparseCNNEngine.from_model(model, input_offset=offset, strategy=strategy, threads=threads,
                                                    backend=backend)
                session = None if ort_model is None else ort_model(model, torch.from_numpy(images[:1]), threads)
                for batch in batches:
                    row = _time_one(model, engine, session, images, batch, repeats, threads)
                    row = {"channels": c, "depth": depth, "batch": batch, "sparsity": s, **row, "threads": threads,
                           "backend": engine.backend, "ort_version": ort_version, "ort_note": ort_note}
                    rows.append({k: row[k] for k in (*CNN_BENCH_KEYS, *_EXTRA_KEYS)})
                    if log is not None:
                        log(format_cnn_row(row))
                del model, engine, session
                gc.collect()
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def _time_one(model, engine, ort, images: np.ndarray, batch: int, repeats: int, threads: int = 1) -> dict[str, Any]:
    """Interleaved warm timings of one (network, batch): medians in ms and the sparse run's statistics."""
    import torch

    n_images = len(images)

    def inputs(r: int) -> np.ndarray:  # the r-th batch of test images, wrapping around
        return np.ascontiguousarray(images[(np.arange(batch) + r * batch) % n_images])  # (B, 1, H, W)

    runs = {"dense_torch": lambda x, xt: model(xt).numpy(), "sparse": lambda x, xt: engine(x)}
    if ort is not None:
        runs["dense_ort"] = lambda x, xt: ort(x)
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    done = dense = 0
    zeros, worst = [], 0.0
    strategies: tuple[str, ...] = ()
    with torch.inference_mode():
        x0 = inputs(0)
        for name in names:  # warm-up (numba compiles on first use; ONNX Runtime plans)
            runs[name](x0, torch.from_numpy(x0))
        for r in range(repeats):
            x, x_prev = inputs(r + 1), inputs(r)
            xt, xt_prev = torch.from_numpy(x), torch.from_numpy(x_prev)
            order = names[r % len(names):] + names[:r % len(names)]
            out = {}
            for name in order:
                settle(threads)
                runs[name](x_prev, xt_prev)  # warm: the same method just ran, on other images
                start = time.perf_counter()
                out[name] = runs[name](x, xt)
                times[name].append(time.perf_counter() - start)
            stats = engine.last_stats
            done += sum(stats.macs)
            dense += sum(stats.dense_macs)
            zeros.append(1.0 - float(np.mean(stats.density[1:])))  # conv layers fed by hidden activations
            strategies = stats.strategies
            ref = out["dense_torch"]
            scale = np.maximum(np.abs(ref).max(axis=1), np.finfo(np.float32).tiny)  # (B,)
            worst = max(worst, float((np.abs(out["sparse"] - ref).max(axis=1) / scale).max()))
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    ort_ms = ms.get("dense_ort")
    return {
        "dense_torch_ms": ms["dense_torch"],
        "dense_ort_ms": ort_ms,
        "sparse_ms": ms["sparse"],
        "speedup_vs_torch": ms["dense_torch"] / ms["sparse"],
        "speedup_vs_ort": None if ort_ms is None else ort_ms / ms["sparse"],
        "flop_reduction": flop_reduction(dense, done),
        "measured_sparsity": float(np.mean(zeros)),
        "strategy": ",".join(f"{name}:{n}" for name, n in Counter(strategies).most_common()),
        "max_rel_logit_diff": worst,
    }


def format_cnn_row(row: dict[str, Any]) -> str:
    """One human-readable line of a CNN benchmark row."""
    ort = ("ONNX Runtime n/a" if row["dense_ort_ms"] is None else
           f"ONNX Runtime {row['dense_ort_ms']:.2f} ms")
    vs_ort = "" if row["speedup_vs_ort"] is None else f", {row['speedup_vs_ort']:.2f}x vs ONNX Runtime"
    return (f"channels {row['channels']:>4} depth {row['depth']:>3} batch {row['batch']:>3} s {row['sparsity']:.2f} "
            f"(measured {row['measured_sparsity']:.3f}): torch {row['dense_torch_ms']:.2f} ms, {ort}, "
            f"sparse {row['sparse_ms']:.2f} ms; speedup {row['speedup_vs_torch']:.2f}x vs torch{vs_ort} "
            f"(flops /{row['flop_reduction']:.2f}, logits within {row['max_rel_logit_diff']:.1e}); {row['strategy']}")
