"""sparse_eoc.kernels.rows.compact_row: the vectorised nonzero listing of the engine's activation pass."""

import numpy as np
import pytest

from sparse_eoc.infer import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 32, 300, 1000])
@pytest.mark.parametrize("skip", [True, False])
def test_compact_row_lists_what_a_scalar_loop_lists(n, skip):
    """Entries in ascending order from slot k, NaN kept, -0.0 dropped (== 0), every length's tail."""
    from sparse_eoc.kernels.rows import compact_row

    rng = np.random.default_rng(n)
    row = rng.standard_normal(n + 5).astype(np.float32)  # 5 entries past n: never read
    row[rng.random(n + 5) < 0.8] = 0.0
    specials = [np.nan, -0.0, np.inf, -np.inf, np.float32(1e-45)]  # 1e-45: a subnormal, nonzero
    for i, v in zip(rng.choice(max(n, 1), size=min(n, 5), replace=False), specials):
        row[i] = v
    idx = np.full(2 * n + 10, -1, np.int64)
    vals = np.full(2 * n + 10, 7.0, np.float32)
    k = 3
    end = compact_row(row, n, skip, idx, vals, k)
    keep = np.arange(n) if not skip else np.flatnonzero(row[:n] != 0)  # NaN != 0 is True
    assert end == k + len(keep)
    np.testing.assert_array_equal(idx[k:end], keep)
    np.testing.assert_array_equal(vals[k:end], row[keep])  # NaN compares equal in assert_array_equal
    assert np.all(idx[:k] == -1) and np.all(idx[end:] == -1)  # nothing written outside


@pytest.mark.parametrize("case", ["float64", "strided"])
def test_compact_row_refuses_what_its_vector_load_cannot_read(case):
    """The 16-float vector load reads contiguous float32 only: a float64 or strided row is a typing error,
    not a wrong list."""
    from numba.core.errors import TypingError

    from sparse_eoc.kernels.rows import compact_row

    base = np.arange(64, dtype=np.float64 if case == "float64" else np.float32)
    row = base if case == "float64" else base[::2]
    with pytest.raises(TypingError, match="contiguous 1-D float32"):
        compact_row(row, 32, True, np.empty(64, np.int64), np.empty(64, row.dtype), 0)
