"""The register-blocked ``block`` kernel (sparse_eoc.kernels.block) against float64 products, and its choice."""

import numpy as np
import pytest

from sparse_eoc.infer.engine import numba_available
from sparse_eoc.infer.plan import BLOCK_MIN_COLUMNS, STRATEGIES, CostModel, choose_strategy

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")


def sparse_batch(rng, batch, n_in, density):
    a = rng.standard_normal((batch, n_in)).astype(np.float32)
    a[rng.random((batch, n_in)) > density] = 0.0
    return a


@pytest.mark.parametrize("n_in", [1, 15, 16, 37, 300])
@pytest.mark.parametrize("n_out", [1, 10, 16, 17, 47, 300])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 8, 11])
def test_block_rows_is_the_product_over_each_groups_union(n_in, n_out, batch):
    """Every group of up to 8 examples, every column tile (full, the overlapping last one, a layer
    narrower than a tile): y = bias + a W^T to float32 round-off, and nothing outside the rows of y."""
    from sparse_eoc.kernels.block import GROUP, block_rows, group_inputs, group_lanes, group_union

    rng = np.random.default_rng(n_in * 1000 + n_out * 10 + batch)
    a = sparse_batch(rng, batch, n_in, 0.3)
    wt = rng.standard_normal((n_in, n_out)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    y = np.full((batch + 1, n_out), 7.0, np.float32)  # one row more: must stay untouched
    rows, p = np.empty(n_in, np.int64), np.empty(GROUP * n_in, np.float32)
    for g0 in range(0, batch, GROUP):
        n_ex = min(GROUP, batch - g0)
        nrows = group_union(a, g0, n_ex, True, rows)
        assert list(rows[:nrows]) == list(np.flatnonzero((a[g0:g0 + n_ex] != 0).any(axis=0)))
        lanes = group_lanes(n_ex)
        group_inputs(a, g0, n_ex, lanes, rows, nrows, p)
        block_rows(y, bias, wt, g0, n_ex, lanes, rows, nrows, p, 0, n_out)
    ref = a.astype(np.float64) @ wt + bias
    scale = np.abs(a).astype(np.float64) @ np.abs(wt) + np.abs(bias)  # bounds the round-off
    assert np.all(np.abs(y[:batch] - ref) <= 1e-6 * (scale + 1))
    assert np.all(y[batch] == 7.0)


def test_block_rows_column_ranges_and_row_chunks_give_the_same_bits():
    """Column ranges c0:c1 (one after another) and row chunks of any size give the bits of the whole
    range in one go: each column's sum starts from its bias and adds the rows in order whatever the
    tiling (a chunk after the first restarts from y; a last range narrower than 16 leaves the
    columns before it as they were)."""
    from sparse_eoc.kernels.block import GROUP, block_rows, group_inputs, group_lanes, group_union

    rng = np.random.default_rng(3)
    a = sparse_batch(rng, 8, 200, 0.2)
    wt = rng.standard_normal((200, 300)).astype(np.float32)
    bias = rng.standard_normal(300).astype(np.float32)
    rows, p = np.empty(200, np.int64), np.empty(GROUP * 200, np.float32)
    for n_ex in (1, 2, 3, 8):
        lanes = group_lanes(n_ex)
        nrows = group_union(a, 0, n_ex, True, rows)
        group_inputs(a, 0, n_ex, lanes, rows, nrows, p)
        whole = np.empty((8, 300), np.float32)
        block_rows(whole, bias, wt, 0, n_ex, lanes, rows, nrows, p, 0, 300)
        for cuts in ([0, 160, 300], [0, 16, 32, 250, 300], [0, 144, 288, 300], [0, 290, 300]):
            for chunk in (0, 1, 3, 8, 1000):
                tiled = np.empty((8, 300), np.float32)
                for c0, c1 in zip(cuts, cuts[1:]):
                    block_rows(tiled, bias, wt, 0, n_ex, lanes, rows, nrows, p, c0, c1, chunk)
                np.testing.assert_array_equal(tiled[:n_ex], whole[:n_ex])


def test_group_union_keeps_nan_and_drops_negative_zero():
    from sparse_eoc.kernels.block import group_union

    a = np.zeros((3, 40), np.float32)
    a[0, 3], a[1, 20], a[2, 39], a[1, 5] = np.nan, 1.0, -2.0, -0.0
    rows = np.empty(40, np.int64)
    n = group_union(a, 0, 3, True, rows)
    assert list(rows[:n]) == [3, 20, 39]
    assert group_union(a, 1, 1, True, rows) == 1 and rows[0] == 20
    assert group_union(a, 0, 3, False, rows) == 40 and list(rows[:40]) == list(range(40))


def test_auto_chooses_block_where_the_group_shares_its_rows():
    """Small batch: block once the examples' nonzeros fill enough of the group's 8 |U| slots, else gather
    (csr for a layer larger than the last-level cache); never block for N_out < 16 or at batch 1; larger
    batches weigh it against the others with the groups' unions."""
    costs = CostModel().as_array()
    n = 1024
    nnz = int(0.15 * 8 * n)
    assert STRATEGIES[choose_strategy(8, n, n, nnz, int(0.2 * n), costs)] == "block"  # fill 0.75
    assert STRATEGIES[choose_strategy(8, n, n, nnz, int(0.8 * n), costs)] == "gather"  # fill 0.19
    assert STRATEGIES[choose_strategy(8, n, BLOCK_MIN_COLUMNS - 1, nnz, int(0.2 * n), costs)] == "gather"
    assert STRATEGIES[choose_strategy(1, n, n, int(0.15 * n), int(0.15 * n), costs)] == "gather"
    big = 4096  # W^T 64 MiB > llc_bytes
    assert STRATEGIES[choose_strategy(8, big, big, int(0.15 * 8 * big), int(0.27 * big), costs)] == "block"
    assert STRATEGIES[choose_strategy(8, big, big, int(0.15 * 8 * big), int(0.8 * big), costs)] == "csr"
    # batch 64, as measured at s = 0.85 (union of the batch; each group of 8's union): block where the
    # weights fit the last-level cache, csr where each group would read its rows from memory again
    assert STRATEGIES[choose_strategy(64, 300, 300, int(0.15 * 64 * 300), 60, costs, 8 * 54)] == "block"
    assert STRATEGIES[choose_strategy(64, big, big, int(0.15 * 64 * big), int(0.38 * big), costs,
                                      8 * int(0.27 * big))] == "csr"
    cheap = CostModel(block_mac=0.001).as_array()  # the constant moves the line
    assert STRATEGIES[choose_strategy(8, n, n, nnz, int(0.8 * n), cheap)] == "block"
    with pytest.raises(ValueError, match="block_mac must be a finite number > 0"):
        CostModel(block_mac=-1.0)


def test_the_cost_models_lanes_are_the_kernels():
    """plan.block_lanes (NumPy only) counts the example slots the kernels run: groups of 8, the last
    group the smallest of 1, 2, 4, 8 that holds it (kernels.block.group_lanes)."""
    from sparse_eoc.infer.plan import BLOCK_GROUP, block_lanes
    from sparse_eoc.kernels.block import BLOCK_COLUMNS, GROUP, LANES, group_lanes

    assert (GROUP, BLOCK_COLUMNS) == (BLOCK_GROUP, BLOCK_MIN_COLUMNS)  # plan.py has no numba: its own copies

    for n in range(1, GROUP + 1):
        assert group_lanes(n) in LANES and group_lanes(n) >= n
        assert group_lanes(n) == block_lanes(n) == block_lanes(float(n))
    assert [block_lanes(b) for b in (9, 11, 13, 16, 17)] == [9, 12, 16, 16, 17]


@pytest.mark.parametrize(("c0", "c1"), [(0, 10), (4, 10), (20, 28), (0, 16), (3, 32), (17, 31)])
def test_block_rows_writes_only_its_columns(c0, c1):
    """A column range narrower than a tile, or not on a multiple of 16, writes y[:, c0:c1] and nothing
    else (the last 16-column tile keeps the columns outside the range as they were)."""
    from sparse_eoc.kernels.block import GROUP, block_rows, group_inputs, group_lanes, group_union

    rng = np.random.default_rng(c0 * 100 + c1)
    a = sparse_batch(rng, 5, 40, 0.3)
    wt = rng.standard_normal((40, 32)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    rows, p = np.empty(40, np.int64), np.empty(GROUP * 40, np.float32)
    nrows = group_union(a, 0, 5, True, rows)
    group_inputs(a, 0, 5, group_lanes(5), rows, nrows, p)
    for chunk in (0, 2):
        y = np.full((5, 32), 7.0, np.float32)
        block_rows(y, bias, wt, 0, 5, group_lanes(5), rows, nrows, p, c0, c1, chunk)
        outside = np.ones(32, bool)
        outside[c0:c1] = False
        assert np.all(y[:, outside] == 7.0)
        ref = a.astype(np.float64) @ wt + bias
        np.testing.assert_allclose(y[:, c0:c1], ref[:, c0:c1], rtol=1e-5, atol=1e-5)


def test_the_tile_kernel_takes_contiguous_int64_rows_only():
    """The kernel reads ``rows`` through its data pointer: a strided or int32 array is a typing error."""
    from numba.core.errors import TypingError

    from sparse_eoc.kernels.block import block_rows

    y, wt, bias = np.zeros((1, 32), np.float32), np.ones((8, 32), np.float32), np.zeros(32, np.float32)
    p = np.ones(8 * 8, np.float32)
    for rows in (np.arange(16, dtype=np.int64)[::2], np.arange(8, dtype=np.int32)):
        with pytest.raises(TypingError, match="rows must be a contiguous 1-D int64 array"):
            block_rows(y, bias, wt, 0, 1, 1, rows, 8, p, 0, 32)
