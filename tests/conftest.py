"""Shared fixtures: where the real MNIST lives, and a small MNIST subset on disk.

Tests read MNIST from ``$SPARSE_EOC_MNIST_DIR`` or ``../shared/data/mnist`` next to
the repository; they never download. Under CI (``CI=true``) a missing copy is an
error, elsewhere the tests that need it are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dataset_files import write_cifar, write_idx

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


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    """A tiny CIFAR-10 (5 x 40 training, 20 test images) in the python-pickle format."""
    write_cifar(tmp_path, n_per_batch=40, n_test=20)
    return tmp_path
