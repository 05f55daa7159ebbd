"""Datasets: IDX (MNIST-format) files, CIFAR-10 pickle batches and the common ImageDataset
they load into (NumPy only: importing this package does not import torch). Torch batch
augmentation lives in :mod:`sparse_eoc.data.augment`."""

from .cifar import (
    CIFAR10_DIR,
    CIFAR10_MD5,
    CIFAR10_URL,
    DATASET_LOADERS,
    ImageDataset,
    download_cifar10,
    find_cifar10_dir,
    load_cifar10,
    load_image_dataset,
)
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
    "CIFAR10_DIR",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASET_LOADERS",
    "DataFileError",
    "IDX_DTYPES",
    "ImageDataset",
    "MNIST_FILES",
    "MNISTData",
    "download_cifar10",
    "find_cifar10_dir",
    "find_idx_file",
    "load_cifar10",
    "load_image_dataset",
    "load_mnist",
    "read_idx",
]
