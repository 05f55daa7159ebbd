"""Shared fixtures: where the real MNIST lives, and a small MNIST subset on disk.

Tests read MNIST from ``$SPARSE_EOC_MNIST_DIR`` or ``../shared/data/mnist`` next to
the repository; they never download. Under CI (``CI=true``) a missing copy is an
error, elsewhere the tests that need it are skipped.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("SPARSE_EOC_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))


def mnist_available() -> bool:
    return (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not mnist_available():
        if os.environ.get("CI"):
            pytest.fail(f"real MNIST not found in {MNIST_DIR} (set SPARSE_EOC_MNIST_DIR)")
        pytest.skip(f"real MNIST not found in {MNIST_DIR}")
    return MNIST_DIR


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as a gzip IDX file (magic 0x0000080N, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="session")
def mnist_subset_dir(mnist_dir, tmp_path_factory) -> Path:
    """The first 2000 training and 500 test images of the real MNIST, in IDX format."""
    from sparse_eoc.data import read_idx

    out = tmp_path_factory.mktemp("mnist-subset")
    for split, n in (("train", 2000), ("t10k", 500)):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            name = f"{split}-{kind}-ubyte"
            write_idx(out / f"{name}.gz", read_idx(mnist_dir / f"{name}.gz")[:n])
    return out
