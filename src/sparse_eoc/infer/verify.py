"""Checking the engine against the dense model: kinks, logits, accuracy, time.

Engine and dense model add the same float32 products in different orders, so a
pre-activation h within float32 round-off of a kink of phi (tau, tau + m, or their
negatives for the two-sided activations: :func:`sparse_eoc.gp.gaussian.kinks`) may fall on
different sides in the two: the unit is then zero in one and a tiny nonzero in the other.
phi is continuous, so the logits still agree to round-off, but the zero patterns (and so the
multiply-add counts) may not. :func:`near_kink` finds the examples where that can happen,
from h in float64.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparse_eoc.infer.plan import flop_reduction

__all__ = ["KinkReport", "near_kink", "compare_with_dense", "evaluate_run"]

EPS32 = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class KinkReport:
    """Which examples have a pre-activation within float32 round-off of a kink.

    Attributes:
        flagged: bool (B,), True where any hidden pre-activation of the example is near a kink.
        per_layer: flagged units per hidden layer, summed over the batch, L ints.
        tolerance_factor: the ``factor`` used (see :func:`near_kink`).
    """

    flagged: np.ndarray
    per_layer: tuple[int, ...]
    tolerance_factor: float

    @property
    def count(self) -> int:
        """Flagged examples."""
        return int(self.flagged.sum())


def near_kink(model, x, *, factor: float = 64.0) -> KinkReport:
    """Flag the examples whose float64 pre-activations lie within round-off of a kink.

    For hidden unit i of layer l, with a = phi(h^{l-1}) (x for l = 1), the float32 sum
    h_i = sum_j W_ij a_j + b_i is off by at most about ``eps32 * sqrt(N_in) * S_i`` where
    S_i = sum_j |W_ij a_j| + |b_i|, plus what earlier layers passed on; the tolerance is
    ``factor * eps32 * S_i`` and unit i is flagged when |h_i - k| < tolerance for a kink k.

    Args:
        model: a :class:`~sparse_eoc.nn.SparseMLP` (copied to float64 on the CPU; not changed).
        x: inputs (B, N_0) or (B, *), tensor or array.
        factor: tolerance in units of eps32 * S_i, > 0 (64 covers sums of a few thousand
            terms with room for the round-off carried from earlier layers).

    Returns:
        A :class:`KinkReport`.

    Raises:
        ValueError: if ``factor`` is not > 0.
    """
    import torch

    from sparse_eoc.gp.gaussian import kinks  # here: the engine alone need not load the theory (SciPy's quadrature)

    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a finite number > 0, got factor={factor!r}")
    m64 = copy.deepcopy(model).double().cpu()
    a = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double().cpu()
    a = a.reshape(a.shape[0], -1)  # (B, N_0)
    points = kinks(m64.act.name, m64.act.tau, m64.act.m)
    flagged = torch.zeros(a.shape[0], dtype=torch.bool)
    per_layer = []
    with torch.no_grad():
        for layer in m64.hidden:
            h = layer(a)  # (B, N_out)
            scale = a.abs() @ layer.weight.abs().T + layer.bias.abs()  # (B, N_out): S_i
            tol = factor * EPS32 * scale
            near = torch.zeros_like(h, dtype=torch.bool)
            for k in points:
                near |= (h - k).abs() < tol
            per_layer.append(int(near.sum()))
            flagged |= near.any(dim=1)
            a = m64.act(h)
    return KinkReport(flagged.numpy(), tuple(per_layer), float(factor))


def compare_with_dense(engine, model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1,
                       repeats: int = 1) -> dict[str, Any]:
    """Evaluate a dataset with the engine and with the dense model, batch by batch.

    Both run over the same batches, interleaved (engine, then dense, per batch), after one
    untimed warm-up call each (numba compiles on first use); each pass over the data is
    repeated ``repeats`` times and the median pass time taken.

    Args:
        engine: a :class:`~sparse_eoc.infer.SparseEngine` or
            :class:`~sparse_eoc.infer.SparseCNNEngine` built from ``model``.
        model: the :class:`~sparse_eoc.nn.SparseMLP` or :class:`~sparse_eoc.nn.SparseCNN`
            (run under ``torch.inference_mode``).
        x: inputs, float32 (N, N_0), or images (N, C, H, W) for a CNN.  y: labels, int (N,).
        batch_size: examples per call, >= 1.  repeats: passes, >= 1.

    Returns:
        ``test_accuracy`` (engine), ``dense_test_accuracy``, ``max_abs_logit_diff``,
        ``max_rel_logit_diff`` (per example, |diff| / max |dense logit|), ``speedup``
        (dense seconds / engine seconds), ``flop_reduction`` (dense / done multiply-adds over
        the data), ``engine_seconds``, ``dense_seconds``, ``n``, ``batch_size``, ``backend``,
        ``strategies`` (count of each strategy over layers and batches).
    """
    import torch

    from sparse_eoc.checks import check_int

    batch_size = check_int("batch_size", batch_size)
    repeats = check_int("repeats", repeats)
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"x and y must hold the same N >= 1 examples, got {len(x)} and {len(y)}")
    batches = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    engine_logits = np.empty((n, engine.num_classes), np.float32)
    dense_logits = np.empty((n, engine.num_classes), np.float32)
    t_engine, t_dense = np.zeros(repeats), np.zeros(repeats)
    done = dense = 0
    counts: dict[str, int] = {}
    model = model.eval()
    with torch.inference_mode():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        engine(x[:batch_size]), model(xt[:batch_size])  # warm-up
        for r in range(repeats):
            for s, e in batches:
                start = time.perf_counter()
                engine_logits[s:e] = engine(x[s:e])
                t_engine[r] += time.perf_counter() - start
                start = time.perf_counter()
                dense_logits[s:e] = model(xt[s:e]).numpy()
                t_dense[r] += time.perf_counter() - start
                if r == 0:
                    stats = engine.last_stats
                    done += sum(stats.macs)
                    dense += sum(stats.dense_macs)
                    for name in stats.strategies:
                        counts[name] = counts.get(name, 0) + 1
    diff = np.abs(engine_logits - dense_logits)  # (N, classes)
    scale = np.maximum(np.abs(dense_logits).max(axis=1), np.finfo(np.float32).tiny)  # (N,)
    engine_s, dense_s = float(np.median(t_engine)), float(np.median(t_dense))
    return {
        "test_accuracy": float(np.mean(engine_logits.argmax(axis=1) == y)),
        "dense_test_accuracy": float(np.mean(dense_logits.argmax(axis=1) == y)),
        "max_abs_logit_diff": float(diff.max()),
        "max_rel_logit_diff": float((diff.max(axis=1) / scale).max()),
        "speedup": dense_s / engine_s,
        "flop_reduction": flop_reduction(dense, done),
        "engine_seconds": engine_s,
        "dense_seconds": dense_s,
        "n": n,
        "batch_size": batch_size,
        "backend": engine.backend,
        "strategies": counts,
    }


def _network_that_fits(run_dir, batch_size: int = 1):
    """The :class:`~sparse_eoc.runs.network.NetworkSpec` of an MLP or CNN run whose weights (and, for
    a CNN, a batch's activations) fit in memory, read from ``config.json`` before the model is
    built (None without ``config.json``: ``load_run`` then says what is missing).

    Raises:
        ValueError: ``config.json`` unreadable or without a valid network section, a run of
            another kind (residual networks), or weights that cannot fit (an MLP's twice: the
            model and the engine's copy; for a CNN,
            :func:`~sparse_eoc.infer.bench_cnn.cnn_memory_needed`'s weights and activations).
    """
    from pathlib import Path

    from sparse_eoc.checks import physical_memory_bytes
    from sparse_eoc.runs.files import CONFIG_FILE, read_json
    from sparse_eoc.runs.network import NetworkSpec

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        spec = NetworkSpec.from_dict(read_json(path, what="a run's settings (a JSON object)").get("network"))
    except ValueError as err:
        raise ValueError(f"{path}: cannot rebuild the model: {err}") from err
    if spec.kind not in ("mlp", "cnn"):
        raise ValueError(f"{run_dir}: infer evaluates MLP and CNN runs; this is a {spec.kind} run")
    have = physical_memory_bytes()
    if spec.kind == "mlp":
        need, what = 2 * 4 * spec.n_parameters(), f"depth-{spec.depth}, width-{spec.width} MLP"
        why = "its float32 weights twice: the model and the engine's copy"
    else:
        from sparse_eoc.infer.bench_cnn import cnn_memory_needed

        need = cnn_memory_needed(spec.channels, spec.depth, batch_size, image=spec.image_shape,
                                 num_classes=spec.num_classes)
        what = f"depth-{spec.depth} CNN with {spec.channels} channels"
        why = f"its float32 weights several times and the activations of a batch of {batch_size}"
    if have is not None and need > have:
        raise ValueError(f"{run_dir}: its {what} needs at least {need / 2**30:.3g} GiB to evaluate ({why}), more "
                         f"than the {have / 2**30:.3g} GiB of memory of this machine")
    return spec


def _check_test_set(data, spec, run_dir, data_dir) -> None:
    """Refuse a test set the run's network cannot evaluate: empty, images of another shape, or
    labels outside 0..num_classes - 1 (they would silently count as wrong).

    Raises:
        ValueError: naming ``--data-dir`` and the run.
    """
    if len(data.x_test) == 0:
        raise ValueError(f"--data-dir {data_dir}: the test split holds no images")
    shape = tuple(int(d) for d in data.image_shape)
    # Configs older than image_shape record (1, in_features): then only the size can be compared.
    same = shape == spec.image_shape if len(spec.image_shape) == 3 else math.prod(shape) == spec.in_features
    if not same:
        raise ValueError(f"--data-dir {data_dir}: images of shape {shape}, but the run {run_dir} takes images of "
                         f"shape {spec.image_shape}; give the data the run was trained on")
    lo, hi = int(data.y_test.min()), int(data.y_test.max())
    if lo < 0 or hi >= spec.num_classes:
        raise ValueError(f"--data-dir {data_dir}: test labels {lo}..{hi}, but the run {run_dir} has "
                         f"{spec.num_classes} classes (labels 0..{spec.num_classes - 1})")


def evaluate_run(run_dir, data_dir, *, batch_size: int = 1, strategy: str = "auto", threads: int = 1,
                 backend: str = "auto", limit: int | None = None, repeats: int = 1) -> dict[str, Any]:
    """``sparse-eoc infer``: a run's test set through the engine and through the dense model.

    The test set is loaded as the run was trained (dataset, validation split and seed
    from ``config.json``, so the standardisation is the same); the engine
    (:class:`~sparse_eoc.infer.SparseEngine` for an MLP run,
    :class:`~sparse_eoc.infer.SparseCNNEngine` for a CNN run) takes the standardised zero
    pixel as its input offset. Torch runs with ``threads`` threads too.

    Args:
        run_dir: an MLP or CNN run directory.  data_dir: the dataset's files.
        batch_size: examples per call, >= 1.  strategy, threads, backend: of the engine
            (strategy: ``auto``, ``dense``, ``gather``, ``union``, ``csr`` for an MLP;
            ``auto``, ``dense``, ``sparse`` for a CNN).
        limit: evaluate only the first ``limit`` test examples (None: all).
        repeats: timed passes over the data (median), >= 1.

    Returns:
        :func:`compare_with_dense`'s dict plus ``run`` and ``threads``.

    Raises:
        ValueError: bad options (checked before the run is read; a strategy of the other kind
            of network, before the model is built); a run of another kind (residual networks);
            a network that cannot fit in memory (checked before it is built); an unfinished run or
            one that diverged before any epoch completed (no weights); a test set that is
            empty, of another image shape, or with labels outside the run's classes.
        FileNotFoundError: missing run files.
    """
    import torch

    from sparse_eoc.checks import check_int
    from sparse_eoc.data import load_image_dataset
    from sparse_eoc.infer.cnn_engine import SparseCNNEngine
    from sparse_eoc.infer.cnn_plan import CONV_STRATEGY_CHOICES
    from sparse_eoc.infer.engine import BACKENDS, SparseEngine, zero_pixel_offset
    from sparse_eoc.infer.plan import STRATEGY_CHOICES
    from sparse_eoc.nn.build import load_run

    batch_size = check_int("batch_size", batch_size)
    repeats = check_int("repeats", repeats)
    threads = check_int("threads", threads)
    limit = None if limit is None else check_int("limit", limit)
    if strategy not in STRATEGY_CHOICES + CONV_STRATEGY_CHOICES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGY_CHOICES)} (MLP) or "
                         f"{', '.join(CONV_STRATEGY_CHOICES)} (CNN), got strategy={strategy!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got backend={backend!r}")
    spec = _network_that_fits(run_dir, batch_size)
    if spec is not None:
        valid = STRATEGY_CHOICES if spec.kind == "mlp" else CONV_STRATEGY_CHOICES
        if strategy not in valid:
            raise ValueError(f"strategy must be one of {', '.join(valid)} for a {spec.kind} run, got "
                             f"strategy={strategy!r}")
    model, config = load_run(run_dir)
    data = load_image_dataset(config.get("dataset", "mnist"), data_dir, val_size=config.get("val_size", 0),
                              seed=config.get("seed", 0))
    _check_test_set(data, spec, run_dir, data_dir)
    x, y = data.x_test, data.y_test
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if spec.kind == "cnn":
        channels = data.image_shape[0]
        offset = zero_pixel_offset(data.mean, data.std, (channels, 1, 1))  # (C_0,): one per image channel
        engine = SparseCNNEngine.from_model(model, input_offset=offset, strategy=strategy, threads=threads,
                                            backend=backend)
        x = x.reshape(len(x), *data.image_shape)  # (N, C, H, W)
    else:
        offset = zero_pixel_offset(data.mean, data.std, data.image_shape)
        engine = SparseEngine.from_model(model, input_offset=offset, strategy=strategy, threads=threads,
                                         backend=backend)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = compare_with_dense(engine, model, x, y, batch_size=batch_size, repeats=repeats)
    finally:
        torch.set_num_threads(previous)
    return {"run": str(run_dir), **result, "threads": threads, "backend_note": engine.backend_note}
