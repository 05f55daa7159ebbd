"""The sparse engine equals the dense model (two implementations, one answer), for every activation,
strategy, batch size and backend; its multiply-add counts are the ones the zeros allow."""

import mmap
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.gp import solve_eoc
from sparse_eoc.infer import STRATEGIES, STRATEGY_CHOICES, SparseEngine, near_kink, numba_available
from sparse_eoc.infer.plan import GATHER as GATHER_CODE
from sparse_eoc.infer import engine as engine_module
from sparse_eoc.infer.engine import HUGE_PAGE_BYTES, _blas_on_caller, pack_weights
from sparse_eoc.infer.plan import BLOCK_GROUP, SMALL_BATCH, CostModel, choose_strategy
from sparse_eoc.nn import SparseCNN, SparseMLP
from sparse_eoc.nn.build import init_from_point_

BACKENDS = ["numpy", "numba"] if numba_available() else ["numpy"]
BACKGROUND = np.float32(-0.4242)  # the "zero pixel" of the synthetic images below
RTOL = 1e-4  # logits: |engine - dense| <= RTOL * max |dense logit|, per example


def images(n: int, seed: int) -> np.ndarray:
    """MNIST-like float32 (n, 784): 80 % background, the rest positive 'ink'."""
    rng = np.random.default_rng(seed)
    x = np.full((n, 784), BACKGROUND, dtype=np.float32)
    ink = rng.random((n, 784)) < 0.2
    x[ink] = rng.uniform(0.0, 2.8, ink.sum()).astype(np.float32)
    return x


MEAN_SQUARE_INPUT = float(np.mean(images(1000, seed=99).astype(np.float64) ** 2))


def eoc_mlp(activation: str, *, sparsity: float = 0.8, depth: int = 4, width: int = 64, seed: int = 0) -> SparseMLP:
    """A random EoC network (paper Section 4) at the given sparsity, q^1 = q* on :func:`images`."""
    clipped = get_activation(activation).clipped
    p = solve_eoc(activation, sparsity, slope=0.7 if clipped else None)
    model = SparseMLP(784, 10, depth, width, activation, p.tau, p.m).eval()
    init_from_point_(model, p, mean_square_input=MEAN_SQUARE_INPUT, generator=torch.Generator().manual_seed(seed))
    return model


def dense_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def torch_nonzeros(model, x: np.ndarray) -> list[int]:
    """Nonzero inputs of each layer as the dense float32 model has them: x - c, phi(h^1), ..., phi(h^L)."""
    with torch.no_grad():
        states = model.hidden_states(torch.from_numpy(x))
    return [int((x != BACKGROUND).sum())] + [int((phi != 0).sum()) for _, phi in states]


def relative_error(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per example, max |out - ref| / max |ref|, (B,)."""
    return np.abs(out - ref).max(axis=1) / np.abs(ref).max(axis=1)


@pytest.fixture(scope="module", params=list(ACTIVATIONS))
def network(request):
    """(activation, model, 64 inputs, kink report of those inputs)."""
    model = eoc_mlp(request.param)
    x = images(64, seed=1)
    return request.param, model, x, near_kink(model, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGY_CHOICES)
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_logits_equal_the_dense_model(network, backend, strategy, batch):
    activation, model, x, kinks = network
    x, flagged = x[:batch], kinks.flagged[:batch]
    # Near-kink examples are rare at this size: a few percent of the batch at most.
    assert flagged.sum() <= max(1, 0.05 * batch), f"{activation}: {flagged.sum()} of {batch} near a kink"
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, backend=backend)
    out, ref = engine(x), dense_logits(model, x)
    assert out.dtype == np.float32 and out.shape == (batch, 10)
    assert np.all(relative_error(out, ref)[~flagged] <= RTOL)
    stats = engine.last_stats
    assert len(stats.strategies) == model.depth + 1
    if strategy != "auto":
        assert set(stats.strategies) == {strategy}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_zero_pattern_and_multiply_adds_are_those_of_the_dense_model(network, backend, strategy):
    activation, model, x, kinks = network
    x = x[~kinks.flagged]  # same side of every kink in float32 and float64
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, backend=backend)
    engine(x)
    stats = engine.last_stats
    nnz = torch_nonzeros(model, x)
    assert list(stats.nnz) == nnz
    widths = [model.width] * model.depth + [10]
    # The union: input units nonzero for at least one example, from the dense model's states.
    with torch.no_grad():
        states = model.hidden_states(torch.from_numpy(x))
    nonzero = [x != BACKGROUND] + [(phi != 0).numpy() for _, phi in states]  # each layer's (B, N_in)
    union = [int(z.any(axis=0).sum()) for z in nonzero]
    # block: each group of BLOCK_GROUP examples against its own union's rows
    groups = [sum(len(z[g:g + BLOCK_GROUP]) * int(z[g:g + BLOCK_GROUP].any(axis=0).sum())
                  for g in range(0, len(z), BLOCK_GROUP)) for z in nonzero]
    expected = {
        "dense": [len(x) * i * o for i, o in zip(stats.n_in, widths)],
        "gather": [z * o for z, o in zip(nnz, widths)],
        "csr": [z * o for z, o in zip(nnz, widths)],
        "union": [len(x) * u * o for u, o in zip(stats.union, widths)],
        "block": [g * o for g, o in zip(groups, widths)],
    }[strategy]
    assert list(stats.macs) == expected
    assert list(stats.union) == union


def test_flop_reduction_is_reported_and_matches_the_sparsity(network):
    activation, model, x, kinks = network
    x = x[~kinks.flagged]
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy="gather")
    engine(x)
    stats = engine.last_stats
    nnz = torch_nonzeros(model, x)
    done = sum(z * o for z, o in zip(nnz, [model.width] * model.depth + [10]))
    dense = sum(stats.dense_macs)
    assert stats.flop_reduction == pytest.approx(dense / done, rel=1e-12)
    # Hidden layers at ~80 % sparsity and ~80 % background pixels: about 5x fewer multiply-adds.
    assert 3.0 < stats.flop_reduction < 8.0
    print(f"{activation}: multiply-adds done {done} of {dense} (/{stats.flop_reduction:.2f}); "
          f"density per layer {np.round(stats.density, 3).tolist()}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGY_CHOICES)
def test_dense_own_mode_runs_the_same_strategies_without_skipping(network, backend, strategy):
    _, model, x, _ = network
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, backend=backend)
    sparse = engine(x[:8])
    sparse_stats = engine.last_stats
    dense = engine(x[:8], skip_zeros=False)
    stats = engine.last_stats
    assert stats.strategies == sparse_stats.strategies and not stats.skip_zeros
    assert stats.macs == stats.dense_macs and stats.flop_reduction == 1.0
    assert np.all(relative_error(dense, sparse) <= RTOL)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_numba_and_numpy_backends_agree(network, batch):
    _, model, x, _ = network
    engines = [SparseEngine.from_model(model, input_offset=BACKGROUND, backend=b) for b in ("numpy", "numba")]
    outs = [e(x[:batch]) for e in engines]
    a, b = (e.last_stats for e in engines)
    assert (a.strategies, a.nnz, a.union, a.macs) == (b.strategies, b.nnz, b.union, b.macs)
    assert np.all(relative_error(outs[1], outs[0]) <= RTOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_gathers_at_batch_1_and_picks_dense_for_a_dense_input_batch(backend):
    model = eoc_mlp("crelu", sparsity=0.85)
    x = images(8, seed=2)
    with_offset = SparseEngine.from_model(model, input_offset=BACKGROUND, backend=backend)
    with_offset(x[:1])
    assert with_offset.last_strategies == ("gather",) * (model.depth + 1)
    without = SparseEngine.from_model(model, backend=backend)  # x itself has no zeros
    out = without(x[:1])
    assert without.last_strategies == ("gather",) * (model.depth + 1)  # batch 1: always gather
    assert without.last_stats.nnz[0] == x.shape[1]
    assert np.all(relative_error(out, dense_logits(model, x[:1])) <= RTOL)
    out = without(x)
    assert without.last_strategies[0] == "dense"
    assert np.all(relative_error(out, dense_logits(model, x)) <= RTOL)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("activation", ["relu_tau", "st_tau", "crelu", "cst"])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_the_small_batch_kernel_equals_the_per_layer_gather_kernel_bit_for_bit(activation, skip, batch):
    from sparse_eoc.infer import kernels

    model = eoc_mlp(activation, sparsity=0.8)
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy="gather", backend="numba")
    x = images(batch, seed=5)
    small = engine(x, skip_zeros=skip)  # a small batch on one thread: forward_fused
    wts, biases = engine._typed
    n = model.depth + 1
    stats = np.zeros((n, 4), np.int64)
    gather = np.full(n, GATHER_CODE, np.int64)
    per_layer = kernels.forward_serial(x, engine._offset32, wts, biases, engine._kinds, engine._taus, engine._ms,
                                       gather, skip, engine._costs, 1, engine.tile_bytes, stats)
    assert np.array_equal(small, per_layer)
    s = engine.last_stats
    assert (s.strategies, s.nnz, s.union, s.macs) == (("gather",) * n, tuple(stats[:, 1]), tuple(stats[:, 2]),
                                                      tuple(stats[:, 3]))


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("activation", ["relu_tau", "st_tau", "crelu", "cst"])
@pytest.mark.parametrize("strategy", ["auto", "csr", "union", "dense", "block", ["csr", "block", "union", "gather"],
                                      ["block", "gather", "block", "dense"]])
@pytest.mark.parametrize("batch", [1, 3, 8, 64])
@pytest.mark.parametrize("skip", [True, False])
def test_the_fused_kernel_equals_the_per_layer_kernels_bit_for_bit(activation, strategy, batch, skip):
    """One thread runs every batch as the fused kernel (nonzero lists written by the activation pass,
    two buffers per call); its logits and statistics are forward_serial's, strategy by strategy, also
    where a listed layer follows an unlisted one (the mixed list) and for the dense-own baseline."""
    from sparse_eoc.infer import kernels

    model = eoc_mlp(activation, width=300, depth=3, sparsity=0.8)
    # 1 KiB tiles: csr runs several column tiles and row blocks
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, backend="numba",
                                     tile_bytes=1024)
    x = images(batch, seed=21)
    fused = engine(x, skip_zeros=skip)
    wts, biases = engine._typed
    n = model.depth + 1
    stats = np.zeros((n, 4), np.int64)
    with _blas_on_caller():  # BLAS on one thread, as during the engine's call (its splits set the sums' order)
        ref = kernels.forward_serial(x, engine._offset32, wts, biases, engine._kinds, engine._taus, engine._ms,
                                     engine._codes, skip, engine._costs, 1, engine.tile_bytes, stats)
    np.testing.assert_array_equal(fused, ref)
    s = engine.last_stats
    assert (s.strategies, s.nnz, s.union, s.macs) == (tuple(STRATEGIES[c] for c in stats[:, 0]), tuple(stats[:, 1]),
                                                      tuple(stats[:, 2]), tuple(stats[:, 3]))
    assert np.all(relative_error(fused, dense_logits(model, x)) <= RTOL)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_the_small_batch_kernel_runs_a_dense_input_layer_as_a_dense_product():
    """Under auto, a dense layer inside the fused small-batch kernel is one BLAS product, and the
    strategies and statistics are those of the per-layer NumPy reference."""
    model = eoc_mlp("crelu", sparsity=0.85)
    x = images(8, seed=2)
    engines = [SparseEngine.from_model(model, backend=b) for b in ("numba", "numpy")]  # x has no zeros
    outs = [e(x) for e in engines]
    a, b = (e.last_stats for e in engines)
    assert a.strategies[0] == "dense" and set(a.strategies[1:]) <= {"gather", "block"}
    assert (a.strategies, a.nnz, a.union, a.macs) == (b.strategies, b.nnz, b.union, b.macs)
    assert np.all(relative_error(outs[0], dense_logits(model, x)) <= RTOL)
    assert np.all(relative_error(outs[0], outs[1]) <= RTOL)


def test_torch_in_torch_out_and_image_shapes():
    model = eoc_mlp("cst")
    x = images(4, seed=3)
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND)
    out = engine(torch.from_numpy(x).view(4, 1, 28, 28))  # (B, 1, 28, 28) -> (B, 784)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (4, 10)
    assert np.all(relative_error(out.numpy(), dense_logits(model, x)) <= RTOL)


def test_per_layer_strategies():
    model = eoc_mlp("relu_tau", depth=2)
    per_layer = ["dense", "csr", "gather"]
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=per_layer)
    engine(images(8, seed=4))
    assert engine.last_strategies == tuple(per_layer)


def _mapping_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (Linux /proc/self/smaps)."""
    current = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
                start, end = (int(part, 16) for part in head.split("-"))
                current = start <= address < end
            elif current and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_pack_weights_copies_each_array_to_its_own_aligned_slot_of_one_buffer():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1200, 1024)), rng.standard_normal((10, 7)).T, rng.standard_normal((3, 5))]
    views, advised = pack_weights(arrays)  # float64 in: cast as astype(float32) casts
    assert advised == hasattr(mmap, "MADV_HUGEPAGE")  # 4.9 MB >= HUGE_PAGE_MIN_BYTES
    for view, a in zip(views, arrays):
        assert view.dtype == np.float32 and view.flags.c_contiguous and view.shape == a.shape
        assert view.ctypes.data % 64 == 0
        np.testing.assert_array_equal(view, a.astype(np.float32))
    ends = [v.ctypes.data + v.nbytes for v in views]
    assert [v.ctypes.data for v in views[1:]] == [(e + 63) // 64 * 64 for e in ends[:-1]]  # one after another
    if advised:
        assert views[0].ctypes.data % HUGE_PAGE_BYTES == 0
        if sys.platform.startswith("linux"):
            for address in (views[0].ctypes.data, views[-1].ctypes.data + views[-1].nbytes - 1):  # all advised
                assert "hg" in _mapping_flags(address)  # MADV_HUGEPAGE took (the kernel may still use small
                assert "sh" not in _mapping_flags(address)  # pages); private, not shmem
    small, small_advised = pack_weights([np.ones((3, 4))])
    assert not small_advised and small[0].ctypes.data % 64 == 0  # below HUGE_PAGE_MIN_BYTES: ordinary memory
    assert not pack_weights(arrays, huge_pages=False)[1]


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no MADV_HUGEPAGE on this platform")
def test_pack_weights_falls_back_to_ordinary_memory_where_the_advice_is_refused(monkeypatch):
    class Refusing(mmap.mmap):  # a kernel built without transparent huge pages: madvise fails with EINVAL
        def madvise(self, *args):
            raise OSError(22, "Invalid argument")

    fake = types.SimpleNamespace(**{name: getattr(mmap, name) for name in dir(mmap) if name.isupper()}, mmap=Refusing)
    monkeypatch.setattr(engine_module, "mmap", fake)
    arrays = [np.arange(1100 * 1000, dtype=np.float64).reshape(1100, 1000)]  # 4.4 MB
    views, advised = pack_weights(arrays)
    assert not advised and views[0].ctypes.data % 64 == 0
    np.testing.assert_array_equal(views[0], arrays[0].astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_pages_do_not_change_the_logits(backend):
    model = eoc_mlp("crelu", depth=2, width=1024)  # 7.2 MB of weights
    x = images(8, seed=5)
    plain = SparseEngine.from_model(model, input_offset=BACKGROUND, backend=backend, huge_pages=False)
    huge = SparseEngine.from_model(model, input_offset=BACKGROUND, backend=backend)
    assert not plain.huge_pages_advised and huge.huge_pages_advised == hasattr(mmap, "MADV_HUGEPAGE")
    for batch in (1, 8):
        np.testing.assert_array_equal(huge(x[:batch]), plain(x[:batch]))
    assert np.all(relative_error(huge(x), dense_logits(model, x)) <= RTOL)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_csr_tiles_and_row_blocks_do_not_change_the_logits(batch):
    # Width 300 with 1 KiB tiles: column tiles of 256 + 44 and row blocks of 16 (784 inputs: 49).
    model = eoc_mlp("cst", width=300, depth=2)
    x = images(batch, seed=6)
    small = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy="csr", tile_bytes=1024)
    large = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy="csr")
    gather = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy="gather")
    out = small(x)
    # Same rows, added in other groups of four: equal to round-off.
    assert np.all(relative_error(out, large(x)) <= RTOL)
    assert np.all(relative_error(out, gather(x)) <= RTOL)
    assert np.all(relative_error(out, dense_logits(model, x)) <= RTOL)
    with pytest.raises(ValueError, match="tile_bytes must be an integer >= 1024"):
        SparseEngine.from_model(model, tile_bytes=100)


@pytest.mark.slow
@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("strategy", STRATEGY_CHOICES)
def test_two_threads_give_the_same_logits(strategy):
    model = eoc_mlp("crelu", width=300, depth=3)  # 300 columns: several tiles per thread split
    x = images(16, seed=5)
    one = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=1)
    two = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=2)
    for batch in (1, 16):
        a, b = one(x[:batch]), two(x[:batch])
        s1, s2 = one.last_stats, two.last_stats
        if batch == 1:  # column tiles or one thread: no sum changes its order
            np.testing.assert_array_equal(a, b)
            assert s1 == s2
            continue
        # The batch split in two parts of 8: a union layer's BLAS product runs over each part's union
        # (its own sums); every other strategy adds each example's rows as one thread does.
        if strategy == "union":
            assert np.all(relative_error(b, a) <= RTOL)
        else:
            np.testing.assert_array_equal(a, b)
            assert s1.macs == s2.macs
        assert (s1.strategies, s1.nnz) == (s2.strategies, s2.nnz)
        assert all(u1 / 2 <= u2 <= u1 for u1, u2 in zip(s1.union, s2.union))  # the larger part's union


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize(("strategy", "width"), [("auto", 300), ("gather", 300), ("dense", 300), ("block", 300),
                                               ("block", 20), ("block", 40)])
def test_the_fused_kernel_at_batch_1_equals_the_per_layer_kernels_on_two_threads(monkeypatch, strategy, width):
    """Two threads on a small network run batch 1 as the fused kernel on one; forced onto two threads of
    per-layer kernels (the rule's threshold at 0), the logits and statistics are the same bits (block at
    widths 20 and 40: the second column tile is narrower than 16 columns)."""
    from sparse_eoc.infer import engine as engine_module
    from sparse_eoc.infer import kernels

    model = eoc_mlp("cst", width=width, depth=3)
    x = images(1, seed=11)
    two = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=2)
    ran = []
    for name in ("forward_fused", "forward_parallel"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *args, real=real, name=name: ran.append(name) or real(*args))
    fused = two(x)
    fused_stats = two.last_stats
    monkeypatch.setattr(engine_module, "SMALL_PARALLEL_MIN_MACS", 0)
    per_layer = two(x)
    assert ran == ["forward_fused", "forward_parallel"]
    np.testing.assert_array_equal(fused, per_layer)
    assert fused_stats == two.last_stats


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("activation", ["relu_tau", "st_tau", "crelu", "cst"])
@pytest.mark.parametrize("strategy", ["auto", "gather", "block"])
@pytest.mark.parametrize(("batch", "threads"), [(2, 2), (3, 2), (16, 2), (2, 3), (7, 3)])
def test_a_small_batch_split_across_threads_equals_one_thread_bit_for_bit(monkeypatch, activation, strategy, batch,
                                                                         threads):
    """On more than one thread a small batch runs as up to ``threads`` parts of consecutive examples,
    each the fused kernel. ``gather``: the same logits, strategies, nonzeros and multiply-adds as on
    one thread (each example is computed on its own). ``block``: the same logits (an example's sum
    adds exact zeros for the rows of its group's union it does not need, so the grouping does not
    change it); the multiply-adds follow the parts' groups. ``auto``: a part may choose ``block``
    where the whole batch gathers, or the reverse (float32 round-off). The union is the largest part's."""
    from sparse_eoc.infer import kernels

    model = eoc_mlp(activation, width=300, depth=3, sparsity=0.8)
    x = images(batch, seed=12)
    one = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=1)
    many = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=threads)
    expected = one(x)
    parts = []
    real = kernels.forward_fused
    monkeypatch.setattr(kernels, "forward_fused", lambda x, *args: parts.append(len(x)) or real(x, *args))
    got = many(x)
    assert sorted(parts) == sorted(len(p) for p in np.array_split(np.arange(batch), min(threads, batch)))
    a, b = one.last_stats, many.last_stats
    assert a.nnz == b.nnz
    if strategy == "auto":
        assert set(a.strategies) <= {"gather", "block", "dense"}
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    else:
        np.testing.assert_array_equal(got, expected)
        assert a.strategies == b.strategies
    if strategy == "gather":
        assert a.macs == b.macs
    n_parts = min(threads, batch)
    assert all(u1 / n_parts <= u2 <= u1 for u1, u2 in zip(a.union, b.union))  # max part <= union <= sum


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("activation", ["relu_tau", "cst"])
@pytest.mark.parametrize("strategy", ["auto", "gather", "csr", "union"])
@pytest.mark.parametrize(("batch", "threads"), [(64, 2), (33, 3)])
def test_a_large_batch_split_across_threads_equals_one_thread(monkeypatch, activation, strategy, batch, threads):
    """A batch above SMALL_BATCH with enough work is split too: gather and csr give one thread's bits
    (each example's rows added in the same groups), union and auto (which may choose union) agree to
    round-off; nonzeros are one thread's and the union the largest part's."""
    from sparse_eoc.infer import engine as engine_module
    from sparse_eoc.infer import kernels

    model = eoc_mlp(activation, width=300, depth=3, sparsity=0.8)
    x = images(batch, seed=13)
    one = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=1)
    many = SparseEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=threads)
    expected = one(x)
    assert batch * many._layer_macs >= engine_module.PARALLEL_MIN_MACS  # enough work to split
    parts = []
    real = kernels.forward_fused
    monkeypatch.setattr(kernels, "forward_fused", lambda x, *args: parts.append(len(x)) or real(x, *args))
    got = many(x)
    assert sorted(parts) == sorted(len(p) for p in np.array_split(np.arange(batch), threads))
    if strategy in ("gather", "csr"):
        np.testing.assert_array_equal(got, expected)
    else:
        assert np.all(relative_error(got, expected) <= RTOL)
    assert np.all(relative_error(got, dense_logits(model, x)) <= RTOL)
    a, b = one.last_stats, many.last_stats
    assert a.nnz == b.nnz
    assert all(u1 / threads <= u2 <= u1 for u1, u2 in zip(a.union, b.union))


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("skip", [True, False])
def test_the_fused_kernel_with_a_dense_layer_narrower_than_the_widest_equals_forward_serial(skip):
    """Widths 784 -> 200 -> 50 -> 300 -> 10 with a zero-free input: the first layer goes dense, the
    dense branch copies activations narrower than the buffers; bits and statistics as forward_serial's."""
    from sparse_eoc.infer import kernels

    rng = np.random.default_rng(3)
    widths = [784, 200, 50, 300, 10]
    weights = [rng.standard_normal((o, i)).astype(np.float32) / np.sqrt(i) for i, o in zip(widths, widths[1:])]
    biases = [rng.standard_normal(o).astype(np.float32) * 0.1 for o in widths[1:]]
    p = solve_eoc("crelu", 0.8, slope=0.7)
    engine = SparseEngine(weights, biases, "crelu", p.tau, p.m, backend="numba")
    x = images(5, seed=4)  # no input offset: the first layer's input has no zeros
    out = engine(x, skip_zeros=skip)
    s = engine.last_stats
    assert s.strategies[0] == "dense" and "gather" in s.strategies
    wts, bs = engine._typed
    stats = np.zeros((len(weights), 4), np.int64)
    ref = kernels.forward_serial(x, engine._offset32, wts, bs, engine._kinds, engine._taus, engine._ms,
                                 engine._codes, skip, engine._costs, 1, engine.tile_bytes, stats)
    np.testing.assert_array_equal(out, ref)
    assert (s.strategies, s.nnz, s.union, s.macs) == (tuple(STRATEGIES[c] for c in stats[:, 0]), tuple(stats[:, 1]),
                                                      tuple(stats[:, 2]), tuple(stats[:, 3]))


def test_small_batches_choose_gather_block_or_dense_only():
    """Up to SMALL_BATCH examples choose_strategy gives gather, block or dense (ties to gather) for layers
    that fit the last-level cache; above it csr or union where they are cheaper."""
    costs = CostModel().as_array()
    n = 1024
    for batch in range(2, SMALL_BATCH + 1):
        for density in (0.01, 0.15, 0.5, 1.0):
            nnz = int(density * batch * n)
            for n_union in (max(1, nnz // batch), min(n, nnz)):
                code = choose_strategy(batch, n, n, nnz, n_union, costs)
                assert STRATEGIES[code] in ("gather", "block", "dense")
    assert STRATEGIES[choose_strategy(8, n, n, 0, 0, costs)] == "gather"  # an all-zero input: a tie at 0
    assert STRATEGIES[choose_strategy(8, n, n, 8 * n, n, costs)] == "dense"
    big = SMALL_BATCH + 1
    assert STRATEGIES[choose_strategy(big, n, n, int(0.15 * big * n), int(0.4 * n), costs)] in ("csr", "union")


@pytest.mark.parametrize("batch", [2, 8, SMALL_BATCH])
def test_small_batches_run_csr_where_the_weights_exceed_the_last_level_cache(batch):
    """Where block does not pay (a block_mac this large), a small batch's sparse layer is csr once
    4 N_in N_out bytes exceed CostModel.llc_bytes (its row blocks keep a shared row in cache), gather up to
    it; batch 1 gathers whatever the size; dense stays dense; and a smaller llc_bytes moves the line.
    (test_block.py: where block is chosen.)"""
    costs = CostModel(block_mac=1.0).as_array()
    for n, expected in ((1024, "gather"), (2048, "gather"), (2049, "csr"), (4096, "csr")):  # 16 MiB: 2048 x 2048
        nnz, n_union = int(0.15 * batch * n), int(0.3 * n)
        assert STRATEGIES[choose_strategy(batch, n, n, nnz, n_union, costs)] == expected
        assert STRATEGIES[choose_strategy(1, n, n, int(0.15 * n), int(0.15 * n), costs)] == "gather"
        assert STRATEGIES[choose_strategy(batch, n, n, batch * n, n, costs)] == "dense"
    small_llc = CostModel(llc_bytes=1 << 20, block_mac=1.0).as_array()  # 1 MiB: 512 x 512
    assert STRATEGIES[choose_strategy(batch, 1024, 1024, int(0.15 * batch * 1024), 300, small_llc)] == "csr"
    with pytest.raises(ValueError, match="llc_bytes must be a finite number > 0"):
        CostModel(llc_bytes=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(strategy="sparse"), "strategy must be one of auto, dense, gather, union, csr, block"),
        (dict(strategy=["dense", "csr"]), "strategy must be one name or 5"),
        (dict(threads=0), "threads must be an integer >= 1"),
        (dict(backend="gpu"), "backend must be one of auto, numba, numpy"),
        (dict(input_offset=np.zeros(3)), "input_offset must be a finite float or \\(784,\\)"),
        (dict(huge_pages="yes"), "huge_pages must be True or False"),
    ],
)
def test_bad_options_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseEngine.from_model(eoc_mlp("crelu"), **kwargs)


def test_bad_inputs_and_models_raise_value_errors():
    engine = SparseEngine.from_model(eoc_mlp("crelu"))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 784\)"):
        engine(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape"):
        engine(np.zeros((0, 784), np.float32))
    with pytest.raises(ValueError, match="model must be a SparseMLP"):
        SparseEngine.from_model(SparseCNN(1, 10, 2, 4, "crelu", 0.5, 2.0))
    with pytest.raises(ValueError, match="does not take the previous layer's"):
        SparseEngine([np.zeros((4, 3)), np.zeros((2, 5))], [np.zeros(4), np.zeros(2)], "crelu", 0.5, 2.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        SparseEngine([np.zeros((4, 3)), np.zeros((2, 4))], [np.zeros(4), np.zeros(2)], "gelu")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_package_imports_neither_numba_nor_torch():
    code = "import sys, sparse_eoc, sparse_eoc.infer; print('numba' in sys.modules, 'torch' in sys.modules)"
    assert _run(code) == "False False"


def test_without_numba_the_numpy_path_runs_and_says_so():
    code = """
import sys, warnings
sys.modules['numba'] = None  # numba cannot be imported
import numpy as np
from sparse_eoc.infer import SparseEngine, numba_available
ws, bs = [np.ones((4, 3)), np.ones((2, 4))], [np.zeros(4), np.zeros(2)]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    engine = SparseEngine(ws, bs, 'relu_tau', 0.5)
print(numba_available(), engine.backend, 'numba' in engine.backend_note, len(caught))
print(engine(np.array([[1.0, 0.0, 0.0]])).tolist())
try:
    SparseEngine(ws, bs, 'relu_tau', 0.5, backend='numba')
except ValueError as err:
    print('ValueError', 'numba>=0.60' in str(err))
"""
    lines = _run(code).splitlines()
    assert lines[0] == "False numpy True 1"
    assert lines[1] == "[[2.0, 2.0]]"  # relu(1 - 0.5) = 0.5 on 4 units, then 4 x 0.5
    assert lines[2] == "ValueError True"


def test_a_sparsified_mlp_is_refused_clearly():
    """sparse_eoc.sparsify gives each layer its own (tau, m); the engine, which folds one (tau, m)
    into every layer, says so instead of failing on a missing attribute."""
    import warnings

    import torch

    from sparse_eoc.infer import SparseEngine
    from sparse_eoc.nn import SparseMLP
    from sparse_eoc.nn.sparsify import sparsify

    model = SparseMLP(12, 5, depth=3, width=16, activation="crelu", tau=0.5, m=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsify(model, 0.8, calibration=torch.randn(64, 12, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="one site per layer"):
        SparseEngine.from_model(model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [3, 32])  # the fused small-batch kernel and the per-layer kernels
def test_a_nan_input_gives_nan_logits_for_its_example_only(backend, batch):
    model = eoc_mlp("crelu", sparsity=0.85)
    x = images(batch, seed=7)
    x[1, 100] = np.nan
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, backend=backend)
    out, ref = engine(x), dense_logits(model, x)
    assert np.isnan(ref[1]).all() and np.isnan(out[1]).all()
    rest = np.arange(batch) != 1
    assert np.all(relative_error(out[rest], ref[rest]) <= RTOL)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_small_batch_through_a_layer_larger_than_the_last_level_cache(backend):
    """Width 2100 (W^T of a hidden layer 17.6 MB > 16 MiB): at batch 8 its hidden-to-hidden layers run
    csr or block, not gather, on both backends alike; the logits are the dense model's."""
    model = eoc_mlp("crelu", width=2100, depth=3, sparsity=0.85)
    x = images(8, seed=17)
    engine = SparseEngine.from_model(model, input_offset=BACKGROUND, backend=backend)
    out = engine(x)
    first, *hidden, readout = engine.last_strategies
    assert first in ("gather", "block") and readout == "gather"  # 784 x 2100 (6.6 MB), 2100 x 10
    assert set(hidden) <= {"csr", "block"}
    no_block = SparseEngine.from_model(model, input_offset=BACKGROUND, backend=backend,
                                       cost=CostModel(block_mac=1.0))
    no_block(x)
    assert no_block.last_strategies == ("gather", "csr", "csr", "gather")
    assert np.all(relative_error(out, dense_logits(model, x)) <= RTOL)
