"""The inference benchmark: dense PyTorch and ONNX Runtime vs the engine's dense-own and sparse runs.

For each width (and its depth), target sparsity s and batch size B: a freshly
EoC-initialised CReLU MLP (V'(q*) = 0.7, q* = 1; paper Section 4) whose hidden layers are
s sparse, fed real MNIST test images (the first layer is the network's own projection
784 -> width). Three or four ways to get the logits of the same batch are timed in one
process, interleaved (their order rotates each repeat, and every repeat takes the next B
test images), and the median of ``repeats`` is reported. Before timing, each method's logits
of the first batch are checked against the torch model's (:data:`LOGIT_RTOL`). Two cache
protocols:

- ``cache="warm"`` (default): each timed call follows one untimed call of the same method
  on the previous repeat's images (other rows of the weights, so nothing is replayed): the
  steady-state latency of a model that is serving, its weights as cached as they get.
- ``cache="cold"``: before each timed call a 64 MiB buffer is read through, which evicts
  every weight from the caches (twice this CPU's 32 MiB L3): the latency of a model whose
  weights come from main memory, e.g. one that shares the machine with others.

Every method gets the same treatment. With more than one thread, each method's turn (its warm
call or the flush, then the timed call) starts after a busy wait of :data:`SETTLE_S`, so that the
previous method's thread pool has stopped spinning (:func:`settle`).

The methods:

- ``dense_torch`` (baseline ``torch``): ``model(x)`` under ``torch.inference_mode()``;
- ``dense_ort`` (baseline ``ort``): the same network exported to ONNX and run by ONNX
  Runtime (:class:`~sparse_eoc.infer.ort.OrtModel`: CPU, ``threads`` intra-op threads,
  ``ORT_ENABLE_ALL``); needs ``pip install 'sparse-eoc[bench]'``;
- ``dense_own``: the engine with ``skip_zeros=False`` (its own kernels, no skipping);
- ``sparse``: the engine (``auto`` strategy unless told otherwise).

Reported per row: ``width, depth, batch, sparsity`` (the target s), ``dense_torch_ms,
dense_own_ms, sparse_ms``, ``speedup_vs_torch`` and ``speedup_vs_own`` (their ratios to
``sparse_ms``), ``ideal`` = 1 / (1 - s), ``flop_reduction`` (dense / done multiply-adds, whole
network, summed over repeats), ``strategy`` (the sparse run's per-layer choices, e.g.
``gather:8,dense:1``), ``union_density`` (mean over the layers fed by hidden activations of
the fraction of input units nonzero for at least one example of the batch), plus
``measured_sparsity`` (zeros of those inputs), ``threads``, ``backend``, ``cache`` and
``huge_pages`` (whether the engine's weights were advised for huge pages,
:func:`sparse_eoc.infer.engine.pack_weights`). With
the ``ort`` baseline also ``dense_ort_ms`` and ``speedup_vs_ort``; without the ``torch``
baseline, no ``dense_torch_ms`` and ``speedup_vs_torch`` (:data:`BASELINE_KEYS`).

``threads`` sets torch's, ONNX Runtime's and the engine's threads (the engine runs its BLAS
products on its own threads: :class:`~sparse_eoc.infer.SparseEngine`); NumPy's BLAS library
keeps the thread count it loaded with (``benchmarks/inference.py`` pins it to ``--threads``).

:func:`check_threads` is the thread check: the engine on ``threads`` threads against one
thread, each strategy, failing when more threads are much slower (``--check-threads``).
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparse_eoc.infer.plan import flop_reduction

__all__ = ["BASELINES", "BASELINE_KEYS", "BENCH_KEYS", "CACHE_PROTOCOLS", "DEFAULT_BATCHES", "DEFAULT_SPARSITIES",
           "DEFAULT_WIDTHS", "LOGIT_RTOL", "SETTLE_S", "THREAD_CHECK_ATTEMPTS", "THREAD_CHECK_LIMIT", "check_baselines",
           "check_memory", "check_output_file", "check_threads", "default_baselines", "default_depth", "format_row",
           "format_thread_row", "memory_needed", "run_benchmark", "settle"]

DEFAULT_WIDTHS = (300, 1024, 4096)
DEFAULT_BATCHES = (1, 8, 64)
DEFAULT_SPARSITIES = (0.5, 0.7, 0.85, 0.9)
CACHE_PROTOCOLS = ("cold", "warm")
FLUSH_BYTES = 64 << 20  # the cold protocol's cache-evicting read
BENCH_KEYS = ("width", "depth", "batch", "sparsity", "dense_torch_ms", "dense_own_ms", "sparse_ms",
              "speedup_vs_torch", "speedup_vs_own", "ideal", "flop_reduction", "strategy", "union_density")
#: The dense baselines: ``torch`` (the model itself) and ``ort`` (ONNX Runtime).
BASELINES = ("torch", "ort")
#: The row keys each baseline adds (``torch``'s are in :data:`BENCH_KEYS`).
BASELINE_KEYS = {"torch": ("dense_torch_ms", "speedup_vs_torch"), "ort": ("dense_ort_ms", "speedup_vs_ort")}
#: Before timing, every method's logits of the first batch must be within LOGIT_RTOL x the
#: largest |logit| of the torch model's: float32 sums in other orders differ by ~1e-6 of it
#: (sparse_eoc.infer.verify), so only a wrong result comes near.
LOGIT_RTOL = 1e-3
#: Time the calling thread busy-waits before each method's turn when timing on more than one
#: thread. ONNX Runtime's intra-op workers keep spinning about 40 ms after a call returns (its
#: default, kept: its own timed call follows its warm call while they spin), and a spinning
#: worker holds one of the cores the next method's threads need: the engine timed just after ONNX
#: Runtime (2 threads, 2-core CPU) took 9.3 ms against 5.0 ms with this wait at 1024 x 8, batch 64,
#: and 2.1 against 1.1 ms at 300 x 100, batch 8 (50 ms was not always enough). The wait is busy,
#: not a sleep: after 100 ms asleep every method ran up to 2x slower for several calls (this
#: virtual machine's cores are slow to wake). torch's and the engine's pools go idle within 10 ms.
SETTLE_S = 0.1
#: check_threads fails when T threads take more than this many times one thread's time in each
#: of THREAD_CHECK_ATTEMPTS timings: a machine shared with others (or a virtual one whose host
#: is busy) can slow the threads of one timing now and then; a real regression fails every time.
THREAD_CHECK_LIMIT = 1.5
THREAD_CHECK_ATTEMPTS = 3



def settle(threads: int) -> None:
    """Busy-wait :data:`SETTLE_S` when ``threads`` > 1 (one thread: no pool to spin, no wait)."""
    if threads > 1:
        end = time.perf_counter() + SETTLE_S
        while time.perf_counter() < end:
            pass


def benchmark_inputs(data_dir, *, images: bool = False):
    """The MNIST test split of ``data_dir`` as the inference benchmarks' inputs, with the engine's
    input offset (the standardised zero pixel, :func:`~sparse_eoc.infer.engine.zero_pixel_offset`).

    Returns:
        (data, x, offset): the ``ImageDataset``, x ``(N, 784)`` float32 and offset ``(784,)``;
        with ``images``, x ``(N, C, H, W)`` and offset ``(C,)`` (one zero pixel per channel).

    Raises:
        ValueError: an empty test split (naming ``--data-dir``).
        sparse_eoc.data.DataFileError: a missing or corrupt data file.
    """
    from sparse_eoc.data import load_image_dataset
    from sparse_eoc.infer.engine import zero_pixel_offset

    data = load_image_dataset("mnist", data_dir)
    n_images = len(data.x_test)
    if n_images == 0:
        raise ValueError(f"--data-dir {data_dir}: the test split holds no images (the benchmark's inputs)")
    if images:
        x = np.ascontiguousarray(data.x_test.reshape(n_images, *data.image_shape))
        return data, x, zero_pixel_offset(data.mean, data.std, (data.image_shape[0], 1, 1))
    return data, np.ascontiguousarray(data.x_test), zero_pixel_offset(data.mean, data.std, data.image_shape)

def default_depth(width: int) -> int:
    """The benchmark's depth for a width: 100 at width 300 (the paper's deep MLP), else 8."""
    return 100 if width == 300 else 8


def memory_needed(width: int, depth: int, batch: int, *, input_dim: int = 784, num_classes: int = 10,
                  copies: int = 2) -> int:
    """A lower estimate of the bytes one benchmark row holds at once.

    The network's float32 weights and biases ``copies`` times (2: the torch model and the
    engine's W^T copy; the ``ort`` baseline adds its ONNX file's and its session's), plus a
    batch's inputs (this repeat's and the previous one's, (B, input_dim) each), six float32
    (B, width) arrays' worth of activations (torch's layer output, the engine's two activation
    buffers, its nonzero lists: int64 units and float32 values, room for every entry) and the
    ``block`` strategy's buffers, per group of eight examples 8 width float32 inputs and width
    int64 units.

    Args:
        width: N, >= 1.  depth: hidden layers L, >= 1.  batch: B, >= 1.
        input_dim, num_classes: the data's (MNIST: 784 and 10).  copies: of the weights, >= 1.
    """
    params = (input_dim + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_classes
    groups = -(-batch // 8)
    return 4 * (copies * params + batch * (2 * input_dim + 6 * max(width, num_classes)) + 10 * groups * width)


def check_memory(widths: Sequence[int], depth: int | None, batches: Sequence[int], *,
                 memory: int | None = None, copies: int = 2) -> None:
    """Refuse, before anything is built, a grid whose networks or batches cannot fit in memory.

    Each width (at ``depth``, or :func:`default_depth` when None) with the largest batch is
    compared, by :func:`memory_needed` (MNIST's 784 inputs and 10 classes), with ``memory``.
    The defaults (widths 300, 1024, 4096; batches up to 64) need under 1 GiB.

    Args:
        widths, depth, batches: as in :func:`run_benchmark` (already checked >= 1).
        memory: bytes available; None: the machine's physical memory
            (:func:`~sparse_eoc.checks.physical_memory_bytes`; unknown: no check).
        copies: of the weights held at once (:func:`memory_needed`).

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
        need = memory_needed(width, layers, 1, copies=copies)
        if need > have:
            option = "--widths" if depth is None else "--widths/--depth"
            held = {2: "twice: the torch model and the engine's copy",
                    3: "3 times: the torch model and two engines' copies",
                    4: "4 times: the torch model, the engine's copy, the ONNX file and ONNX Runtime's session",
                    }.get(copies, f"{copies} times")
            raise ValueError(f"{option}: a depth-{layers}, width-{width} MLP needs at least {need / gib:.3g} GiB "
                             f"(its weights {held}), more than the {have / gib:.3g} GiB of memory of this machine")
        batch = max(batches)
        need = memory_needed(width, layers, batch, copies=copies)
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


def default_baselines() -> tuple[str, ...]:
    """``("torch", "ort")`` when ONNX Runtime is installed, else ``("torch",)``."""
    from sparse_eoc.infer.ort import ort_unavailable_reason

    return BASELINES if ort_unavailable_reason() is None else ("torch",)


def check_baselines(baselines: Sequence[str] | None) -> tuple[str, ...]:
    """The baselines to run, in :data:`BASELINES` order: ``baselines``, or :func:`default_baselines` when None.

    Raises:
        ValueError: naming ``--baselines``: none given, an unknown name, or ``ort`` without
            ONNX Runtime (the reason, and ``pip install 'sparse-eoc[bench]'``).
    """
    from sparse_eoc.infer.ort import ort_unavailable_reason

    if baselines is None:
        return default_baselines()
    names = set(baselines)
    if not names or not names <= set(BASELINES):
        raise ValueError(f"--baselines must name one or more of {', '.join(BASELINES)}, got "
                         f"{','.join(baselines) or 'none'}")
    if "ort" in names and (reason := ort_unavailable_reason()) is not None:
        raise ValueError(f"--baselines ort: {reason}")
    return tuple(name for name in BASELINES if name in names)


def _strategy_summary(strategies: Sequence[str]) -> str:
    counts = Counter(strategies)
    return ",".join(f"{name}:{n}" for name, n in counts.most_common())


def _fresh_mlp(data, point, width: int, depth: int, seed: int):
    """A CReLU MLP for ``data``'s images at the EoC point ``point``, initialised from ``seed``, in eval mode."""
    import torch

    from sparse_eoc.nn.build import build_model, init_from_point_
    from sparse_eoc.runs.network import NetworkSpec

    spec = NetworkSpec(kind="mlp", image_shape=data.image_shape, num_classes=data.num_classes,
                       depth=depth, activation="crelu", tau=point.tau, m=point.m, width=width)
    model = build_model(spec).eval()
    init_from_point_(model, point, mean_square_input=data.mean_square_input,
                     generator=torch.Generator().manual_seed(seed))
    return model


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
    baselines: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark grid; one dict per (width, sparsity, batch).

    Args:
        data_dir: an MNIST-format directory (its test images are the inputs).
        widths: hidden widths, each >= 1.  depth: hidden layers for every width, or None
            for :func:`default_depth`.
        batches: batch sizes, each >= 1.  sparsities: target sparsities of CReLU at the EoC.
        repeats: timed repeats per row, >= 1 (the median is reported).
        threads: torch, ONNX Runtime and engine threads, >= 1.
        slope: V'(q*) of the clipped activation, in (0, 1).
        strategy, backend: of the engine.  seed: the networks' initialisation.
        cache: ``cold`` or ``warm``, the protocol (module docstring).
        baselines: names from :data:`BASELINES`; None: :func:`default_baselines` (both
            when ONNX Runtime is installed).
        log: called with one line per row (None: silent).

    Returns:
        Rows with the keys of :data:`BENCH_KEYS` (less ``torch``'s when it is not among the
        baselines), those of the other baselines (:data:`BASELINE_KEYS`) and
        ``measured_sparsity, threads, backend, cache, huge_pages``.

    Raises:
        ValueError: bad sizes or options (named; :func:`check_baselines`), sizes that
            cannot fit in memory (:func:`check_memory`), no test images in ``data_dir``; an
            unreachable sparsity (from ``solve_eoc``).
        RuntimeError: a method's logits differ from the torch model's (:data:`LOGIT_RTOL`),
            or the ONNX export fails.
    """
    import torch

    from sparse_eoc.checks import check_int
    from sparse_eoc.gp import solve_eoc
    from sparse_eoc.infer.engine import SparseEngine

    widths = [check_int("width", w) for w in widths]
    batches = [check_int("batch", b) for b in batches]
    repeats = check_int("repeats", repeats)
    threads = check_int("threads", threads)
    depth = None if depth is None else check_int("depth", depth)
    if cache not in CACHE_PROTOCOLS:
        raise ValueError(f"cache must be one of {', '.join(CACHE_PROTOCOLS)}, got cache={cache!r}")
    if not widths or not batches or not sparsities:
        raise ValueError("widths, batches and sparsities must each name at least one value")
    baselines = check_baselines(baselines)
    check_memory(widths, depth, batches, copies=4 if "ort" in baselines else 2)
    points = {s: solve_eoc("crelu", s, slope=slope) for s in sparsities}  # checks s and slope first
    data, x_all, offset = benchmark_inputs(data_dir)
    n_images = len(x_all)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for width in widths:
            layers = default_depth(width) if depth is None else depth
            for s in sparsities:
                p = points[s]
                model = _fresh_mlp(data, p, width, layers, seed)
                engine = SparseEngine.from_model(model, input_offset=offset, strategy=strategy, threads=threads,
                                                 backend=backend)
                ort_model = None
                if "ort" in baselines:
                    from sparse_eoc.infer.ort import OrtModel

                    ort_model = OrtModel(model, torch.from_numpy(x_all[:1]), threads)
                skipped = {key for name in BASELINES if name not in baselines for key in BASELINE_KEYS[name]}
                keys = [k for k in BENCH_KEYS if k not in skipped] + [
                    k for name in baselines if name != "torch" for k in BASELINE_KEYS[name]]
                for batch in batches:
                    row = _time_one(model, engine, x_all, batch, repeats, n_images, warm=cache == "warm",
                                    ort_model=ort_model, torch_baseline="torch" in baselines, threads=threads)
                    row = {"width": width, "depth": layers, "batch": batch, "sparsity": s, **row,
                           "ideal": 1.0 / (1.0 - s), "threads": threads, "backend": engine.backend,
                           "cache": cache, "huge_pages": engine.huge_pages_advised}
                    rows.append({k: row[k] for k in (*keys, "measured_sparsity", "threads", "backend", "cache",
                                                     "huge_pages")})
                    if log is not None:
                        log(format_row(row))
                del model, engine, ort_model
                gc.collect()
    finally:
        torch.set_num_threads(previous_threads)
    return rows


def _check_logits(name: str, out, ref: np.ndarray) -> None:
    """Raise if ``out`` is not within LOGIT_RTOL x max |ref| of the torch model's logits ``ref``."""
    out = np.asarray(out, dtype=np.float64)
    scale = max(float(np.abs(ref).max()), np.finfo(np.float32).tiny)
    error = float(np.abs(out - ref).max()) / scale if out.shape == ref.shape else math.inf
    if not error <= LOGIT_RTOL:  # NaN fails too
        raise RuntimeError(f"{name}: its logits differ from the torch model's by {error:.3g} x the largest |logit| "
                           f"(more than {LOGIT_RTOL:g}); its timings would not mean anything")


def _time_one(model, engine, x_all: np.ndarray, batch: int, repeats: int, n_images: int, *,
              warm: bool = False, ort_model=None, torch_baseline: bool = True, threads: int = 1) -> dict[str, Any]:
    """Interleaved timings of one (network, batch): medians in ms and the sparse run's statistics."""
    import torch

    flush = None if warm else np.ones(FLUSH_BYTES // 4, np.float32)  # read through: evicts the caches

    def inputs(r: int) -> np.ndarray:  # the r-th batch of test images, wrapping around
        idx = (np.arange(batch) + r * batch) % n_images
        return np.ascontiguousarray(x_all[idx])  # (B, 784)

    runs = {}
    if torch_baseline:
        runs["dense_torch"] = lambda x, xt: model(xt)
    if ort_model is not None:
        runs["dense_ort"] = lambda x, xt: ort_model(x)
    runs["dense_own"] = lambda x, xt: engine(x, skip_zeros=False)
    runs["sparse"] = lambda x, xt: engine(x)
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    done = dense = 0
    union, zeros, strategies = [], [], []
    with torch.inference_mode():
        x0 = inputs(0)
        ref = model(torch.from_numpy(x0)).double().numpy()  # (B, classes)
        for name in names:  # warm-up (numba compiles on first use) and the check of the logits
            _check_logits(name, runs[name](x0, torch.from_numpy(x0)), ref)
        for r in range(repeats):
            x, x_prev = inputs(r + 1), inputs(r)
            xt, xt_prev = torch.from_numpy(x), torch.from_numpy(x_prev)
            shift = r % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                settle(threads)
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
    row = {f"{name}_ms": value for name, value in ms.items()}
    for baseline, name in (("torch", "dense_torch"), ("ort", "dense_ort"), ("own", "dense_own")):
        if name in ms:
            row[f"speedup_vs_{baseline}"] = ms[name] / ms["sparse"]
    return {
        **row,
        "flop_reduction": flop_reduction(dense, done),
        "strategy": _strategy_summary(strategies),
        "union_density": float(np.mean(union)),
        "measured_sparsity": float(np.mean(zeros)),
    }


def format_row(row: dict[str, Any]) -> str:
    """One human-readable line of a benchmark row (the baselines it has)."""
    dense = [f"{label} {row[key]:.3f} ms" for label, key in (("torch", "dense_torch_ms"), ("ORT", "dense_ort_ms"),
                                                              ("own dense", "dense_own_ms")) if key in row]
    speedups = [f"{row[key]:.2f}x vs {label}" for label, key in (("torch", "speedup_vs_torch"),
                                                                 ("ORT", "speedup_vs_ort"),
                                                                 ("own", "speedup_vs_own")) if key in row]
    return (f"width {row['width']:>5} depth {row['depth']:>3} batch {row['batch']:>3} s {row['sparsity']:.2f} "
            f"(measured {row['measured_sparsity']:.3f}, union {row['union_density']:.3f}): "
            f"{', '.join(dense)}, sparse {row['sparse_ms']:.3f} ms; speedup {', '.join(speedups)} "
            f"(ideal {row['ideal']:.2f}x, flops /{row['flop_reduction']:.2f}); {row['strategy']}")


def check_threads(
    data_dir,
    *,
    widths: Sequence[int] = (300,),
    depth: int | None = None,
    batches: Sequence[int] = (64,),
    sparsities: Sequence[float] = (0.85,),
    threads: int = 2,
    repeats: int = 20,
    slope: float = 0.7,
    backend: str = "auto",
    seed: int = 0,
    limit: float = THREAD_CHECK_LIMIT,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The thread check: the sparse engine on ``threads`` threads against one thread.

    For each network and batch of the grid (as in :func:`run_benchmark`: EoC CReLU MLPs,
    MNIST test images) and each strategy of :data:`~sparse_eoc.infer.plan.STRATEGY_CHOICES`,
    the two engines are timed interleaved under the warm protocol, and the medians compared.
    More threads should never be much slower than one: on a machine with as many cores as
    threads, two thread pools spin-waiting beside each other once made a depth-100,
    width-300 network at batch 64 take ~1 s a call on 2 threads against 6 ms on one
    (:class:`~sparse_eoc.infer.SparseEngine` now runs its BLAS products on its own threads).
    A case over the limit is timed again, up to :data:`THREAD_CHECK_ATTEMPTS` times in all,
    and fails only if every timing is over it. A benchmark check, not a timed test: run it
    on an otherwise idle machine.

    Args:
        data_dir, widths, depth, batches, sparsities, repeats, slope, backend, seed: as in
            :func:`run_benchmark` (defaults: the case above).
        threads: the thread count checked against one, >= 2.
        limit: the largest acceptable ratio of the ``threads``-thread time to the one-thread
            time, > 0 (default :data:`THREAD_CHECK_LIMIT`).
        log: called with one line per row (None: silent).

    Returns:
        Rows with ``width, depth, batch, sparsity, strategy, threads, one_thread_ms,
        threads_ms, ratio`` (threads_ms / one_thread_ms, of the last timing), ``ok``
        (ratio <= limit), ``attempts`` (timings made) and ``backend``. The caller decides
        what a failure does (the CLI exits with 1).

    Raises:
        ValueError: ``threads < 2``, a ``limit`` not > 0, or as :func:`run_benchmark`.
    """
    from sparse_eoc.checks import check_int
    from sparse_eoc.gp import solve_eoc
    from sparse_eoc.infer.engine import SparseEngine
    from sparse_eoc.infer.plan import STRATEGY_CHOICES

    widths = [check_int("width", w) for w in widths]
    batches = [check_int("batch", b) for b in batches]
    repeats = check_int("repeats", repeats)
    threads = check_int("threads", threads, minimum=2)
    depth = None if depth is None else check_int("depth", depth)
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"limit must be a finite number > 0, got limit={limit!r}")
    if not widths or not batches or not sparsities:
        raise ValueError("widths, batches and sparsities must each name at least one value")
    check_memory(widths, depth, batches, copies=3)  # the model and two engines
    points = {s: solve_eoc("crelu", s, slope=slope) for s in sparsities}
    data, x_all, offset = benchmark_inputs(data_dir)
    n_images = len(x_all)
    rows = []
    for width in widths:
        layers = default_depth(width) if depth is None else depth
        for s in sparsities:
            p = points[s]
            model = _fresh_mlp(data, p, width, layers, seed)
            for strategy in STRATEGY_CHOICES:
                engines = {n: SparseEngine.from_model(model, input_offset=offset, strategy=strategy, threads=n,
                                                      backend=backend) for n in (1, threads)}
                for batch in batches:
                    for attempt in range(1, THREAD_CHECK_ATTEMPTS + 1):  # a slow case is timed again
                        ms = _time_engines(engines, x_all, batch, repeats, n_images)
                        ratio = ms[threads] / ms[1]
                        if ratio <= limit:
                            break
                    row = {"width": width, "depth": layers, "batch": batch, "sparsity": s, "strategy": strategy,
                           "threads": threads, "one_thread_ms": ms[1], "threads_ms": ms[threads], "ratio": ratio,
                           "ok": bool(ratio <= limit), "attempts": attempt, "backend": engines[1].backend}
                    rows.append(row)
                    if log is not None:
                        log(format_thread_row(row, limit))
            del model
            gc.collect()
    return rows


def _time_engines(engines: dict, x_all: np.ndarray, batch: int, repeats: int, n_images: int) -> dict:
    """Median ms of each engine on the same batches, interleaved, each timed call after an untimed one."""
    def inputs(r: int) -> np.ndarray:
        idx = (np.arange(batch) + r * batch) % n_images
        return np.ascontiguousarray(x_all[idx])  # (B, 784)

    keys = list(engines)
    times = {key: [] for key in keys}
    for engine in engines.values():  # warm-up (numba compiles on first use)
        engine(inputs(0))
    for r in range(repeats):
        x, x_prev = inputs(r + 1), inputs(r)
        for key in (keys if r % 2 == 0 else keys[::-1]):
            engines[key](x_prev)
            start = time.perf_counter()
            engines[key](x)
            times[key].append(time.perf_counter() - start)
    return {key: 1e3 * float(np.median(t)) for key, t in times.items()}


def format_thread_row(row: dict[str, Any], limit: float = THREAD_CHECK_LIMIT) -> str:
    """One human-readable line of a thread-check row."""
    verdict = "ok" if row["ok"] else f"FAIL (more than {limit:g}x)"
    if row["attempts"] > 1:
        verdict += f" (timing {row['attempts']})"
    return (f"width {row['width']:>5} depth {row['depth']:>3} batch {row['batch']:>3} s {row['sparsity']:.2f} "
            f"{row['strategy']:>6}: 1 thread {row['one_thread_ms']:.3f} ms, {row['threads']} threads "
            f"{row['threads_ms']:.3f} ms, ratio {row['ratio']:.2f} {verdict}")
