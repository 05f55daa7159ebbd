"""Image datasets by name: :data:`DATASET_LOADERS` and :func:`load_image_dataset`.

NumPy and the standard library only; never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import MappingProxyType

from .cifar import load_cifar10
from .dataset import ImageDataset
from .download import download_cifar10, download_mnist
from .idx import load_mnist

__all__ = ["DATASET_LOADERS", "DATASET_DOWNLOADERS", "load_image_dataset", "download_dataset"]

#: Dataset name -> loader ``(data_dir, *, val_size, seed) -> ImageDataset``.
#: "mnist" loads any MNIST-format directory (MNIST, Fashion-MNIST, ...).
DATASET_LOADERS: Mapping[str, Callable[..., ImageDataset]] = MappingProxyType(
    {"mnist": load_mnist, "cifar10": load_cifar10}
)
#: Dataset name -> downloader ``(data_dir) -> Path``: fetch the standard files (checksums verified).
DATASET_DOWNLOADERS: Mapping[str, Callable[..., os.PathLike]] = MappingProxyType(
    {"mnist": download_mnist, "cifar10": download_cifar10}
)


def download_dataset(name: str, data_dir: str | os.PathLike | None) -> None:
    """Download the dataset ``name`` into ``data_dir`` unless its files are already there
    (``--download``; needs internet).

    Raises:
        ValueError: an unknown name, or no ``data_dir``.
        OSError: no mirror could be reached; DataFileError: a download failed its checksum.
    """
    if name not in DATASET_DOWNLOADERS:
        raise ValueError(f"name must be one of {', '.join(map(repr, DATASET_DOWNLOADERS))}, got name={name!r}")
    if data_dir is None:
        raise ValueError(f"--download needs --data-dir: the directory to put the {name} files in")
    DATASET_DOWNLOADERS[name](data_dir)


def load_image_dataset(
    name: str, data_dir: str | os.PathLike, *, val_size: int = 0, seed: int = 0
) -> ImageDataset:
    """Load the dataset ``name`` from ``data_dir``: ``DATASET_LOADERS[name](data_dir, ...)``.

    Args:
        name: a key of :data:`DATASET_LOADERS`: "mnist" (any MNIST-format
            directory, see :func:`~sparse_eoc.data.load_mnist`; image_shape
            (1, H, W), one-element mean and std) or "cifar10" (see
            :func:`~sparse_eoc.data.load_cifar10`; image_shape (3, 32, 32)).
        data_dir: the directory the loader reads.
        val_size: training examples held out as validation, 0 <= val_size < N_train.
        seed: seed of the validation split.

    Returns:
        The loader's :class:`~sparse_eoc.data.ImageDataset`.

    Raises:
        ValueError: if ``name`` is not a known dataset (the message lists them),
            or ``val_size`` is out of range.
        DataFileError: as raised by the loader.
    """
    if name not in DATASET_LOADERS:
        raise ValueError(
            f"name must be one of {', '.join(map(repr, DATASET_LOADERS))}, got name={name!r}"
        )
    return DATASET_LOADERS[name](data_dir, val_size=val_size, seed=seed)
