"""CIFAR-10 from its python-pickle batches, and one image-dataset type for every loader.

NumPy and the standard library only; never imports torch.

The "python version" of CIFAR-10 (``cifar-10-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html) extracts to::

    cifar-10-batches-py/
        data_batch_1 ... data_batch_5   10000 training images each
        test_batch                      10000 test images
        batches.meta                    optional here: b"label_names", the 10 class names

Each batch is a Python pickle of a dict with ``b"data"``, uint8 (N, 3072), one image
per row stored as the R, G, B planes of 32 x 32 pixels in turn (each plane row-major),
and ``b"labels"``, a list of N ints in 0..9.  So row ``i`` reshaped to (3, 32, 32) is
the image in (C, H, W) order, the layout torch convolutions use.

:class:`ImageDataset` is the common type the trainer consumes;
:func:`load_image_dataset` builds it by name ("mnist" or "cifar10").
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import numpy as np

from .idx import DataFileError, MNISTData, _moments, _split_indices, load_mnist

__all__ = [
    "CIFAR10_DIR",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASET_LOADERS",
    "ImageDataset",
    "download_cifar10",
    "find_cifar10_dir",
    "load_cifar10",
    "load_image_dataset",
]

#: The directory name inside the archive.
CIFAR10_DIR = "cifar-10-batches-py"
#: Where the python-pickle archive lives, and its published md5.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_SHAPE = (3, 32, 32)  # (C, H, W)
_NUM_CLASSES = 10


@dataclass(frozen=True)
class ImageDataset:
    """An image classification dataset, standardised per channel and flattened.

    Each image is flattened in (C, H, W) order: pixel (c, r, k) of an image with
    ``image_shape = (C, H, W)`` is at column ``c * H * W + r * W + k``, so
    ``x.reshape(N, C, H, W)`` recovers the images.  Channel ``c`` is standardised as
    ``x = (p - mean[c]) / std[c]`` where ``p`` is the stored value (uint8 pixels scaled
    to [0, 1] first) and ``mean[c]``/``std[c]`` are taken over all pixels of channel
    ``c`` of the training split (after holding out validation).

    Attributes:
        x_train: float32 (N_train, C*H*W), standardised training inputs.
        y_train: int64 (N_train,), class labels in 0..num_classes-1.
        x_val: float32 (N_val, C*H*W); shape (0, C*H*W) when no validation is held out.
        y_val: int64 (N_val,).
        x_test: float32 (N_test, C*H*W), standardised with the training constants.
        y_test: int64 (N_test,).
        image_shape: (C, H, W), e.g. (1, 28, 28) for MNIST, (3, 32, 32) for CIFAR-10.
        mean: per-channel training-pixel mean, C floats in [0, 1] units for uint8 data.
        std: per-channel training-pixel standard deviation (population, ddof=0),
            C floats, same units.
        num_classes: number of classes, e.g. 10.
        mean_square_input: mean of x_train**2 over all entries (~1.0); the input
            second moment q^0 used to initialise the first layer.
        class_names: the class names in label order, or () when the files do not
            say (MNIST-format files never do).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    mean_square_input: float
    class_names: tuple[str, ...] = ()

    @property
    def input_dim(self) -> int:
        """C * H * W, the length of one flattened input."""
        return math.prod(self.image_shape)


# ---------------------------------------------------------------- reading batches


def find_cifar10_dir(data_dir: str | os.PathLike) -> Path:
    """The ``cifar-10-batches-py`` directory: ``data_dir`` itself or its child of that name.

    ``data_dir`` is taken to be the batches directory when it is named
    ``cifar-10-batches-py`` or holds ``data_batch_1``; otherwise its child
    ``cifar-10-batches-py``.  Existence of the files is checked when they are read.
    """
    data_dir = Path(data_dir)
    if data_dir.name == CIFAR10_DIR or (data_dir / _TRAIN_BATCHES[0]).is_file():
        return data_dir
    return data_dir / CIFAR10_DIR


def _missing(path: Path) -> DataFileError:
    """The error for a missing batch file, saying where the extracted archive belongs."""
    parent = path.parent.parent if path.parent.name == CIFAR10_DIR else path.parent
    return DataFileError(
        f"{path}: file not found; download cifar-10-python.tar.gz from the CIFAR-10 page "
        f"(https://www.cs.toronto.edu/~kriz/cifar.html) and extract it so that "
        f"{parent / CIFAR10_DIR / _TRAIN_BATCHES[0]} exists"
    )


def _unpickle(path: Path) -> dict:
    """The dict pickled in ``path``, loaded with ``encoding="bytes"`` (Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise _missing(path) from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory, expected a CIFAR-10 batch file") from None
    except OSError as err:
        raise DataFileError(f"{path}: cannot read file ({err})") from err
    except Exception as err:  # unpickling can raise almost anything on foreign bytes
        raise DataFileError(
            f"{path}: corrupt or not a CIFAR-10 batch (unpickling failed: "
            f"{type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, dict):
        raise DataFileError(
            f"{path}: corrupt or not a CIFAR-10 batch (pickle holds a "
            f"{type(obj).__name__}, expected a dict)"
        )
    return obj


def _entry(batch: dict, key: str, path: Path) -> Any:
    """``batch[b"key"]`` (Python 2 pickles) or ``batch["key"]``; DataFileError if neither."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    keys = ", ".join(sorted(repr(k) for k in batch)) or "none"
    raise DataFileError(
        f"{path}: corrupt or not a CIFAR-10 batch (no key {key.encode()!r}; keys: {keys})"
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3072) and labels int64 (N,) of one batch file, checked."""
    batch = _unpickle(path)
    data = _entry(batch, "data", path)
    labels = _entry(batch, "labels", path)
    dim = math.prod(_SHAPE)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == dim
    ):
        what = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataFileError(
            f"{path}: b'data' must be a uint8 array of shape (N, {dim}), got {what}"
        )
    try:
        y = np.asarray(labels)
    except Exception as err:
        raise DataFileError(f"{path}: b'labels' is not a list of ints ({err})") from err
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise DataFileError(
            f"{path}: b'labels' must be a list of ints, got {y.dtype} of shape {y.shape}"
        )
    if len(y) != len(data):
        raise DataFileError(
            f"{path}: {len(data)} images in b'data' but {len(y)} entries in b'labels'"
        )
    if y.size and (y.min() < 0 or y.max() >= _NUM_CLASSES):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataFileError(f"{path}: label {bad} outside 0..{_NUM_CLASSES - 1}")
    return data, y.astype(np.int64)


def _read_label_names(path: Path) -> tuple[str, ...]:
    """The class names in ``batches.meta``, or () if the file is absent."""
    if not path.is_file():
        return ()
    names = _entry(_unpickle(path), "label_names", path)
    if not (
        isinstance(names, (list, tuple))
        and len(names) == _NUM_CLASSES
        and all(isinstance(n, (bytes, str)) for n in names)
    ):
        raise DataFileError(
            f"{path}: b'label_names' must be a list of {_NUM_CLASSES} strings, got {names!r:.200}"
        )
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


# ---------------------------------------------------------------- standardising


def _to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 (N, D) -> a fresh float32 (N, D) in [0, 1], scaled in place (no second copy)."""
    out = x.astype(np.float32)
    out /= np.float32(255.0)
    return out


def _channel_moments(
    x: np.ndarray, channels: int, shift: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean of ``x - shift[c]`` and of its square, float64 (C,) each, by row chunks.

    ``x`` is (N, C*H*W) flattened in (C, H, W) order.
    """
    s1 = np.zeros(channels)
    s2 = np.zeros(channels)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].reshape(-1, channels, x.shape[1] // channels)  # (n, C, H*W)
        part = part.astype(np.float64) - shift[:, None]  # (n, C, H*W)
        s1 += part.sum(axis=(0, 2))
        s2 += np.einsum("ncp,ncp->c", part, part)
    count = len(x) * (x.shape[1] // channels)
    return s1 / count, s2 / count


def _standardise_(xs: tuple[np.ndarray, ...], mean: np.ndarray, std: np.ndarray) -> None:
    """In place, channel c of every (N, C*H*W) array in ``xs``: x <- (x - mean[c]) / std[c]."""
    channels = len(mean)
    for x in xs:
        view = x.reshape(len(x), channels, x.shape[1] // channels)  # (N, C, H*W), a view
        view -= mean.astype(np.float32)[:, None]
        view /= std.astype(np.float32)[:, None]


# ---------------------------------------------------------------- loading


def load_cifar10(
    data_dir: str | os.PathLike, *, val_size: int = 0, seed: int = 0
) -> ImageDataset:
    """Load CIFAR-10 from its python-pickle batches.

    Security: the batches are Python pickles, and unpickling runs code chosen by
    whoever wrote the file.  Only load files from a source you trust (the official
    archive, checked against :data:`CIFAR10_MD5` as :func:`download_cifar10` does).

    Args:
        data_dir: the ``cifar-10-batches-py`` directory, or the directory holding it
            (where ``cifar-10-python.tar.gz`` was extracted); see :func:`find_cifar10_dir`.
        val_size: number of training examples held out as validation, chosen by a
            random permutation from ``numpy.random.default_rng(seed)`` exactly as in
            :func:`~sparse_eoc.data.load_mnist`; both splits keep the file order
            (batches 1..5 concatenated).  0 <= val_size < N_train (50000 for the
            full set).
        seed: seed of the validation split; the same seed gives the same split.

    Returns:
        An :class:`ImageDataset` with ``image_shape = (3, 32, 32)``, inputs
        float32 (N, 3072) in (C, H, W) order, standardised per channel (R, G, B)
        with the training split's mean and std; ``num_classes = 10``;
        ``class_names`` from ``batches.meta`` if present, else ().

    Raises:
        DataFileError: if a batch file is missing (the message says where to
            extract the archive), unreadable, not a pickle of a dict ("corrupt or
            not a CIFAR-10 batch"), lacks ``b"data"`` or ``b"labels"``, holds data
            that is not uint8 (N, 3072), a label count other than N, or labels
            outside 0..9; if ``batches.meta`` exists but is malformed; or if a
            training channel is constant.  The message starts with the file's path.
        ValueError: if ``val_size`` is outside 0..N_train-1.
    """
    batch_dir = find_cifar10_dir(data_dir)
    parts = [_read_batch(batch_dir / name) for name in _TRAIN_BATCHES]
    x_file = np.concatenate([p[0] for p in parts])  # (N_train_file, 3072) uint8
    y_file = np.concatenate([p[1] for p in parts])  # (N_train_file,)
    del parts
    test_u8, y_test = _read_batch(batch_dir / _TEST_BATCH)  # (N_test, 3072)
    class_names = _read_label_names(batch_dir / _META)

    train_idx, val_idx = _split_indices(len(x_file), val_size, seed)
    y_train, y_val = y_file[train_idx], y_file[val_idx]
    x_train = _to_unit(x_file[train_idx])  # (N_train, 3072)
    x_val = _to_unit(x_file[val_idx])  # (N_val, 3072)
    del x_file
    x_test = _to_unit(test_u8)  # (N_test, 3072)

    channels = _SHAPE[0]
    mean, _ = _channel_moments(x_train, channels, np.zeros(channels))
    d1, d2 = _channel_moments(x_train, channels, mean)  # two-pass variance: d1 ~ 0
    std = np.sqrt(np.maximum(d2 - d1 * d1, 0.0))
    if not np.all(std > 0.0):
        c = int(np.argmin(std))
        raise DataFileError(
            f"{batch_dir / _TRAIN_BATCHES[0]}: channel {c} of every training image "
            f"equals {mean[c]}; cannot standardise"
        )
    _standardise_((x_train, x_val, x_test), mean, std)

    return ImageDataset(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        image_shape=_SHAPE,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        num_classes=_NUM_CLASSES,
        mean_square_input=_moments(x_train)[1],
        class_names=class_names,
    )


def _from_mnist(data: MNISTData) -> ImageDataset:
    """The same arrays as one-channel images: (H, W) -> (1, H, W), scalar mean/std -> 1-tuples."""
    return ImageDataset(
        x_train=data.x_train,  # (N, H*W) == (N, 1*H*W) in (C, H, W) order
        y_train=data.y_train,
        x_val=data.x_val,
        y_val=data.y_val,
        x_test=data.x_test,
        y_test=data.y_test,
        image_shape=(1, *data.image_shape),
        mean=(float(data.mean),),
        std=(float(data.std),),
        num_classes=data.num_classes,
        mean_square_input=data.mean_square_input,
    )


def _load_mnist_images(data_dir: str | os.PathLike, *, val_size: int, seed: int) -> ImageDataset:
    return _from_mnist(load_mnist(data_dir, val_size=val_size, seed=seed))


#: Dataset name -> loader ``(data_dir, *, val_size, seed) -> ImageDataset``.
#: "mnist" loads any MNIST-format directory (MNIST, Fashion-MNIST, ...).
DATASET_LOADERS: Mapping[str, Callable[..., ImageDataset]] = MappingProxyType(
    {"mnist": _load_mnist_images, "cifar10": load_cifar10}
)


def load_image_dataset(
    name: str, data_dir: str | os.PathLike, *, val_size: int = 0, seed: int = 0
) -> ImageDataset:
    """Load the dataset ``name`` from ``data_dir`` as an :class:`ImageDataset`.

    Args:
        name: a key of :data:`DATASET_LOADERS`: "mnist" (any MNIST-format
            directory, see :func:`~sparse_eoc.data.load_mnist`; image_shape
            (1, H, W), one-element mean and std) or "cifar10" (see
            :func:`load_cifar10`; image_shape (3, 32, 32)).
        data_dir: the directory the loader reads.
        val_size: training examples held out as validation, 0 <= val_size < N_train.
        seed: seed of the validation split.

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


# ---------------------------------------------------------------- download


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _extract_tar_safely(archive: Path, root: Path) -> None:
    """Extract ``archive`` into ``root``, refusing members that could escape it.

    Raises:
        DataFileError: naming ``archive`` and the member, if a member has an absolute
            path or a ``..`` component, or is anything but a regular file or a
            directory (links, devices, fifos); nothing is extracted then.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or m.name.startswith(("/", "\\")) or ".." in p.parts:
                    raise DataFileError(f"{archive}: unsafe member path {m.name!r}; not extracting")
                if not (m.isfile() or m.isdir()):
                    raise DataFileError(
                        f"{archive}: member {m.name!r} is not a regular file or directory; "
                        f"not extracting"
                    )
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **kwargs)
    except tarfile.TarError as err:
        raise DataFileError(f"{archive}: corrupt tar archive ({err})") from err


def download_cifar10(root: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Download and extract CIFAR-10 (python version) into ``root``; the batches directory.

    Does nothing if ``root/cifar-10-batches-py/data_batch_1`` already exists.
    Otherwise fetches :data:`CIFAR10_URL` (about 163 MB) to
    ``root/cifar-10-python.tar.gz`` unless that file is already there, checks its
    md5 against :data:`CIFAR10_MD5`, and extracts it, refusing absolute paths,
    ``..`` components and links.  Never called implicitly: loaders only read.

    Args:
        root: directory to download into; created if missing.
        timeout: seconds to wait on the network before giving up.

    Returns:
        ``root/cifar-10-batches-py``, ready for :func:`load_cifar10`.

    Raises:
        OSError: if the download fails (e.g. no internet); the message says how
            to place the archive by hand.
        DataFileError: if the archive's md5 is wrong (the file is removed) or it
            holds an unsafe member.
    """
    root = Path(root)
    batch_dir = root / CIFAR10_DIR
    if (batch_dir / _TRAIN_BATCHES[0]).is_file():
        return batch_dir
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.is_file():
        partial = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(CIFAR10_URL, timeout=timeout) as resp, open(
                partial, "wb"
            ) as out:
                shutil.copyfileobj(resp, out, 1 << 20)
        except OSError as err:  # URLError, HTTPError and timeouts are OSErrors
            partial.unlink(missing_ok=True)
            raise OSError(
                f"{CIFAR10_URL}: download failed ({err}); without internet, fetch it "
                f"elsewhere and put it at {archive}, or extract it so that "
                f"{batch_dir / _TRAIN_BATCHES[0]} exists"
            ) from err
        partial.replace(archive)
    digest = _md5(archive)
    if digest != CIFAR10_MD5:
        archive.unlink()
        raise DataFileError(
            f"{archive}: md5 {digest} does not match the published {CIFAR10_MD5}; "
            f"the file was removed, download it again"
        )
    _extract_tar_safely(archive, root)
    return batch_dir
