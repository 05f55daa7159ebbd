"""Datasets: IDX (MNIST-format) files and the datasets built from them (NumPy only)."""

from .idx import (
    IDX_DTYPES,
    MNIST_FILES,
    DataFileError,
    MNISTData,
    find_idx_file,
    load_mnist,
    read_idx,
)

__all__ = [
    "DataFileError",
    "IDX_DTYPES",
    "MNIST_FILES",
    "MNISTData",
    "find_idx_file",
    "load_mnist",
    "read_idx",
]
