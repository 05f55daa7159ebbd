"""The inference benchmark: dense PyTorch vs the engine's dense-own and sparse runs.

For each width (and its depth), target sparsity s and batch size B: a freshly
EoC-initialised CReLU MLP (V'(q*) = 0.7, q* = 1; paper Section 4) whose hidden layers are
s sparse, fed real MNIST test images (the first layer is the network's own projection
784 -> width). Three ways to get the logits of the same batch are timed in one process,
interleaved (their order rotates each repeat, and every repeat takes the next B test
images), and the median of ``repeats`` is reported. Two cache protocols:

- ``cache="warm"`` (default): each timed call follows one untimed call of the same method
  on the previous repeat's images (other rows of the weights, so nothing is replayed): the
  steady-state latency of a model that is serving, its weights as cached as they get.
- ``cache="cold"``: before each timed call a 64 MiB buffer is read through, which evicts
  every weight from the caches (twice this CPU's 32 MiB L3): the latency of a model whose
  weights come from main memory, e.g. one that shares the machine with others.

Every method gets the same treatment.

The methods:

- ``dense_torch``: ``model(x)`` under ``torch.inference_mode()``;
- ``dense_own``: the engine with ``skip_zeros=False`` (its own kernels, no skipping);
- ``sparse``: the engine (``auto`` strategy unless told otherwise).

Reported per row: ``width, depth, batch, sparsity`` (the target s), ``dense_torch_ms,
dense_own_ms, sparse_ms``, ``speedup_vs_torch`` and ``speedup_vs_own`` (their ratios to
``sparse_ms``), ``ideal`` = 1 / (1 - s), ``flop_reduction`` (dense / done multiply-adds, whole
network, summed over repeats), ``strategy`` (the sparse run's per-layer choices, e.g.
``gather:8,dense:1``), ``union_density`` (mean over the layers fed by hidden activations of
the fraction of input units nonzero for at least one example of the batch), plus
``measured_sparsity`` (zeros of those inputs), ``threads``, ``backend`` and ``cache``.

``threads`` sets torch's and the engine's threads; the BLAS library behind the engine's
``dense`` and ``union`` strategies keeps the thread count it loaded with
(``benchmarks/inference.py`` pins it to ``--threads``).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparse_eoc.infer.plan import flop_reduction

__all__ = ["run_benchmark", "format_row", "DEFAULT_WIDTHS", "DEFAULT_BATCHES", "DEFAULT_SPARSITIES", "default_depth",
           "BENCH_KEYS", "CACHE_PROTOCOLS", "memory_needed", "check_memory", "check_output_file"]

DEFAULT_WIDTHS = (300, 1024, 4096)
DEFAULT_BATCHES = (1, 8, 64)
DEFAULT_SPARSITIES = (0.5, 0.7, 0.85, 0.9)
CACHE_PROTOCOLS = ("cold", "warm")
FLUSH_BYTES = 64 << 20  # the cold protocol's cache-evicting read
BENCH_KEYS = ("width", "depth", "batch", "sparsity", "dense_torch_ms", "dense_own_ms", "sparse_ms",
              "speedup_vs_torch", "speedup_vs_own", "ideal", "flop_reduction", "strategy", "union_density")


def default_depth(width: int) -> int:
    """The benchmark's depth for a width: 100 at width 300 (the paper's deep MLP), else 8."""
    return 100 if width == 300 else 8


def memory_needed(width: int, depth: int, batch: int, *, input_dim: int = 784, num_classes: int = 10) -> int:
    """A lower estimate of the bytes one benchmark row holds at once.

    The network's float32 weights and biases twice (the torch model and the engine's W^T
    copy), plus a batch's inputs (this repeat's and the previous one's, (B, input_dim) each)
    and three layer outputs ((B, width) each: torch's, the engine's and its input).

    Args:
        width: N, >= 1.  depth: hidden layers L, >= 1.  batch: B, >= 1.
        input_dim, num_classes: the data's (MNIST: 784 and 10).
    """
    params = (input_dim + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_classes
    return 4 * (2 * params + batch * (2 * input_dim + 3 * max(width, num_classes)))


def check_memory(widths: Sequence[int], depth: int | None, batches: Sequence[int], *,
                 memory: int | None = None) -> None:
    """Refuse, before anything is built, a grid whose networks or batches cannot fit in memory.

    Each width (at ``depth``, or :func:`default_depth` when None) with the largest batch is
    compared, by :func:`memory_needed` (MNIST's 784 inputs and 10 classes), with ``memory``.
    The defaults (widths 300, 1024, 4096; batches up to 64) need under 1 GiB.

    Args:
        widths, depth, batches: as in :func:`run_benchmark` (already checked >= 1).
        memory: bytes available; None: the machine's physical memory
            (:func:`~sparse_eoc.checks.physical_memory_bytes`; unknown: no check).

    Raises:
        ValueError: naming ``--widths`` (and ``--depth`` when given) or ``--batches``, the
            estimate and the memory.
    """
    from sparse_eoc.checks import physical_memory_bytes

    have = physical_memory_bytes() if memory is None else memory
    if have is None:
        return
    gib = 2**30
    for width in widths:
        layers = default_depth(width) if depth is None else depth
        need = memory_needed(width, layers, 1)
        if need > have:
            option = "--widths" if depth is None else "--widths/--depth"
            raise ValueError(f"{option}: a depth-{layers}, width-{width} MLP needs at least {need / gib:.3g} GiB "
                             f"(its weights twice: the torch model and the engine's copy), more than the "
                             f"{have / gib:.3g} GiB of memory of this machine")
        batch = max(batches)
        need = memory_needed(width, layers, batch)
        if need > have:
            raise ValueError(f"--batches: batch {batch} at width {width} needs at least {need / gib:.3g} GiB, "
                             f"more than the {have / gib:.3g} GiB of memory of this machine")


def check_output_file(path, option: str = "--out") -> None:
    """Refuse at once an output file that could not be written later, so that a long run is
    not lost at the end: ``path`` a directory, its directory missing, or no file can be
    created there (tried with a temporary file: the JSON is written next to ``path``, then
    renamed over it, so the directory must take new files).

    Raises:
        ValueError: naming ``option``, the path and the cause.
    """
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory; give a file name")
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: the directory {parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot create a file in {parent} ({err.strerror or err})") from None


def _strategy_summary(strategies: Sequence[str]) -> str:
    counts = Counter(strategies)
    return ",".join(f"{name}:{n}" for name, n in counts.most_common())


def run_benchmark(
    data_dir,
    *,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    depth: int | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    repeats: int = 20,
    threads: int = 1,
    slope: float = 0.7,
    strategy: str = "auto",
    backend: str = "auto",
    seed: int = 0,
    cache: str = "warm",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark grid; one dict per (width, sparsity, batch).

    Args:
        data_dir: an MNIST-format directory (its test images are the inputs).
        widths: hidden widths, each >= 1.  depth: hidden layers for every width, or None
            for :func:`default_depth`.
        batches: batch sizes, each >= 1.  sparsities: target sparsities of CReLU at the EoC.
        repeats: timed repeats per row, >= 1 (the median is reported).
        threads: torch threads and engine threads, >= 1.
        slope: V'(q*) of the clipped activation, in (0, 1).
        strategy, backend: of the engine.  seed: the networks' initialisation.
        cache: ``cold`` or ``warm``, the protocol (module docstring).
        log: called with one line per row (None: silent).

    Returns:
        Rows with the keys of :data:`BENCH_KEYS` and ``measured_sparsity, threads, backend, cache``.

    Raises:
        ValueError: bad sizes or options (named), sizes that cannot fit in memory
            (:func:`check_memory`), no test images in ``data_dir``; an unreachable sparsity
            (from ``solve_eoc``).
    """
    import torch

    from sparse_eoc.checks import check_int
    from sparse_eoc.data import load_image_dataset
    from sparse_eoc.gp import solve_eoc
    from sparse_eoc.infer.engine import SparseEngine, zero_pixel_offset
    from sparse_eoc.nn.build import build_model, init_from_point_
    from sparse_eoc.runs.network import NetworkSpec

    widths = [check_int("width", w) for w in widths]
    batches = [check_int("batch", b) for b in batches]
    repeats = check_int("repeats", repeats)
    threads = check_int("threads", threads)
    depth = None if depth is None else check_int("depth", depth)
    if cache not in CACHE_PROTOCOLS:
        raise ValueError(f"cache must be one of {', '.join(CACHE_PROTOCOLS)}, got cache={cache!r}")
    if not widths or not batches or not sparsities:
        raise ValueError("widths, batches and sparsities must each name at least one value")
    check_memory(widths, depth, batches)
    points = {s: solve_eoc("crelu", s, slope=slope) for s in sparsities}  # checks s and slope first
    data = load_image_dataset("mnist", data_dir)
    x_all = np.ascontiguousarray(data.x_test)  # (N, 784) float32
    n_images = len(x_all)
    if n_images == 0:
        raise ValueError(f"--data-dir {data_dir}: the test split holds no images (the benchmark's inputs)")
    offset = zero_pixel_offset(data.mean, data.std, data.image_shape)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for width in widths:
            layers = default_depth(width) if depth is None else depth
            for s in sparsities:
                p = points[s]
                spec = NetworkSpec(kind="mlp", image_shape=data.image_shape, num_classes=data.num_classes,
                                   depth=layers, activation="crelu", tau=p.tau, m=p.m, width=width)
                model = build_model(spec).eval()
                init_from_point_(model, p, mean_square_input=data.mean_square_input,
                                 generator=torch.Generator().manual_seed(seed))
                engine = SparseEngine.from_model(model, input_offset=offset, strategy=strategy, threads=threads,
                                                 backend=backend)
                for batch in batches:
                    row = _time_one(model, engine, x_all, batch, repeats, n_images, warm=cache == "warm")
                    row = {"width": width, "depth": layers, "batch": batch, "sparsity": s, **row,
                           "ideal": 1.0 / (1.0 - s), "threads": threads, "backend": engine.backend,
                           "cache": cache}
                    rows.append({k: row[k] for k in (*BENCH_KEYS, "measured_sparsity", "threads", "backend",
                                                     "cache")})
                    if log is not None:
                        log(format_row(row))
                del model, engine
                gc.collect()
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def _time_one(model, engine, x_all: np.ndarray, batch: int, repeats: int, n_images: int, *,
              warm: bool = False) -> dict[str, Any]:
    """Interleaved timings of one (network, batch): medians in ms and the sparse run's statistics."""
    import torch

    flush = None if warm else np.ones(FLUSH_BYTES // 4, np.float32)  # read through: evicts the caches

    def inputs(r: int) -> np.ndarray:  # the r-th batch of test images, wrapping around
        idx = (np.arange(batch) + r * batch) % n_images
        return np.ascontiguousarray(x_all[idx])  # (B, 784)

    runs = {
        "dense_torch": lambda x, xt: model(xt),
        "dense_own": lambda x, xt: engine(x, skip_zeros=False),
        "sparse": lambda x, xt: engine(x),
    }
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    done = dense = 0
    union, zeros, strategies = [], [], []
    with torch.inference_mode():
        x0 = inputs(0)
        for name in names:  # warm-up (numba compiles on first use)
            runs[name](x0, torch.from_numpy(x0))
        for r in range(repeats):
            x, x_prev = inputs(r + 1), inputs(r)
            xt, xt_prev = torch.from_numpy(x), torch.from_numpy(x_prev)
            order = names[r % 3:] + names[:r % 3]
            for name in order:
                if warm:
                    runs[name](x_prev, xt_prev)
                else:
                    flush.sum()
                start = time.perf_counter()
                runs[name](x, xt)
                times[name].append(time.perf_counter() - start)
                if name == "sparse":
                    stats = engine.last_stats
            done += sum(stats.macs)
            dense += sum(stats.dense_macs)
            union.append(np.mean(stats.union_density[1:]))  # layers fed by hidden activations
            zeros.append(1.0 - np.mean(stats.density[1:]))
            strategies = stats.strategies
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    return {
        "dense_torch_ms": ms["dense_torch"],
        "dense_own_ms": ms["dense_own"],
        "sparse_ms": ms["sparse"],
        "speedup_vs_torch": ms["dense_torch"] / ms["sparse"],
        "speedup_vs_own": ms["dense_own"] / ms["sparse"],
        "flop_reduction": flop_reduction(dense, done),
        "strategy": _strategy_summary(strategies),
        "union_density": float(np.mean(union)),
        "measured_sparsity": float(np.mean(zeros)),
    }


def format_row(row: dict[str, Any]) -> str:
    """One human-readable line of a benchmark row."""
    return (f"width {row['width']:>5} depth {row['depth']:>3} batch {row['batch']:>3} s {row['sparsity']:.2f} "
            f"(measured {row['measured_sparsity']:.3f}, union {row['union_density']:.3f}): "
            f"torch {row['dense_torch_ms']:.3f} ms, own dense {row['dense_own_ms']:.3f} ms, "
            f"sparse {row['sparse_ms']:.3f} ms; speedup {row['speedup_vs_torch']:.2f}x vs torch, "
            f"{row['speedup_vs_own']:.2f}x vs own (ideal {row['ideal']:.2f}x, flops /{row['flop_reduction']:.2f}); "
            f"{row['strategy']}")
