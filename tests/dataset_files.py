"""Small dataset files in the real on-disk formats, written by the tests themselves."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from sparse_eoc.data import CIFAR10_DIR

N_PER_BATCH, N_TEST = 20, 10
CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
               b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_idx(path: Path, array: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write a uint8 array as an IDX file (magic 00 00 08 ndim, big-endian sizes);
    gzip-compressed when ``gz`` (default: when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz if gz is not None else path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_batch(path: Path, obj) -> Path:
    """Pickle ``obj`` as a CIFAR-10 python batch does (protocol 2)."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def write_cifar(parent: Path, *, meta: bool = True, seed: int = 0, n_per_batch: int = N_PER_BATCH,
                n_test: int = N_TEST) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 in ``parent/cifar-10-batches-py``: 5 x n_per_batch train, n_test test images.

    Returns the raw arrays: x_train uint8 (5 n_per_batch, 3072), y_train, x_test, y_test.
    """
    rng = np.random.default_rng(seed)
    d = parent / CIFAR10_DIR
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n_per_batch).tolist()
        write_batch(d / f"data_batch_{i}", {b"batch_label": b"b", b"data": x, b"labels": y})
        xs.append(x)
        ys.append(y)
    x_test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test).tolist()
    write_batch(d / "test_batch", {b"data": x_test, b"labels": y_test})
    if meta:
        write_batch(d / "batches.meta", {b"label_names": CIFAR_NAMES, b"num_vis": 3072})
    return {
        "x_train": np.concatenate(xs),
        "y_train": np.concatenate(ys),
        "x_test": x_test,
        "y_test": np.array(y_test),
    }
