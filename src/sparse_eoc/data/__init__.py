"""Datasets: IDX (MNIST-format) files, CIFAR-10 pickle batches and the common ImageDataset
they load into (NumPy only: importing this package does not import torch). Torch batch
augmentation lives with its caller, in :mod:`sparse_eoc.train.augment`.

Modules: ``dataset`` (ImageDataset, DataFileError, the shared split and standardisation),
``idx`` (MNIST format), ``cifar`` (CIFAR-10 batches), ``download`` (fetching CIFAR-10 and MNIST),
``registry`` (loaders by name)."""

from .cifar import CIFAR10_DIR, find_cifar10_dir, load_cifar10
from .dataset import DataFileError, ImageDataset
from .download import (
    CIFAR10_MD5,
    CIFAR10_URL,
    MNIST_MD5,
    MNIST_MIRRORS,
    download_cifar10,
    download_mnist,
)
from .idx import IDX_DTYPES, MNIST_FILES, find_idx_file, load_mnist, read_idx
from .registry import DATASET_DOWNLOADERS, DATASET_LOADERS, download_dataset, load_image_dataset

__all__ = [
    "CIFAR10_DIR",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASET_DOWNLOADERS",
    "DATASET_LOADERS",
    "download_dataset",
    "DataFileError",
    "IDX_DTYPES",
    "ImageDataset",
    "MNIST_FILES",
    "MNIST_MD5",
    "MNIST_MIRRORS",
    "download_cifar10",
    "download_mnist",
    "find_cifar10_dir",
    "find_idx_file",
    "load_cifar10",
    "load_image_dataset",
    "load_mnist",
    "read_idx",
]
