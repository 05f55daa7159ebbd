"""IDX files (the MNIST format) and the one-channel image datasets built from them.

NumPy and the standard library only; never imports torch.

An IDX file is a big-endian header followed by the raw array, C order::

    bytes 0-1   0x00 0x00
    byte  2     dtype code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64 (multi-byte types big-endian)
    byte  3     ndim, the number of dimensions
    then        ndim uint32 big-endian sizes, then prod(sizes) items

so MNIST images start ``00 00 08 03`` (magic 0x00000803: count, rows, cols) and
labels ``00 00 08 01`` (magic 0x00000801: count).  A file may be gzip-compressed;
that is detected from its first two bytes (1f 8b), never from its extension.

MNIST, Fashion-MNIST, KMNIST and friends ship the same four file names
(:data:`MNIST_FILES`), so :func:`load_mnist` loads any of them from a directory.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .dataset import DataFileError, ImageDataset, _build_dataset

__all__ = [
    "IDX_DTYPES",
    "MNIST_FILES",
    "find_idx_file",
    "load_mnist",
    "read_idx",
]

#: IDX dtype code -> NumPy dtype as stored in the file (big-endian).
IDX_DTYPES = MappingProxyType(
    {
        0x08: np.dtype("u1"),
        0x09: np.dtype("i1"),
        0x0B: np.dtype(">i2"),
        0x0C: np.dtype(">i4"),
        0x0D: np.dtype(">f4"),
        0x0E: np.dtype(">f8"),
    }
)

#: Role -> the standard (uncompressed) file name; on disk each may also be NAME.gz.
MNIST_FILES = MappingProxyType(
    {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
)

_GZIP_MAGIC = b"\x1f\x8b"


def _hex(raw: bytes) -> str:
    return " ".join(f"{b:02x}" for b in raw)


def _read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped if it starts with the gzip magic bytes 1f 8b."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except OSError as err:
        raise DataFileError(f"{path}: cannot read file ({err})") from err
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataFileError(f"{path}: corrupt gzip stream ({err})") from err


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a NumPy array.

    Args:
        path: the file; gzip compression is detected from its first two bytes.
        ndim: if given, the number of dimensions the file must declare
            (3 for MNIST images, 1 for labels); checked as part of the magic number.

    Returns:
        A writable array of the file's shape, e.g. uint8 (N, rows, cols) for MNIST
        images; the dtype follows the header code (see :data:`IDX_DTYPES`), in the
        machine's native byte order.

    Raises:
        DataFileError: if the file is missing or unreadable, the gzip stream is
            corrupt, the magic number is wrong (unknown dtype code, nonzero first
            bytes, or not ``ndim`` dimensions), the header or data is truncated,
            or bytes follow the data.  The message names ``path``.
        ValueError: if ``ndim`` is given and not in 1..255.
    """
    if ndim is not None and not 1 <= ndim <= 255:
        raise ValueError(f"ndim must be in 1..255 or None, got ndim={ndim!r}")
    path = Path(path)
    raw = _read_bytes(path)

    expected = "00 00 <dtype code: " + "/".join(f"{c:02x}" for c in IDX_DTYPES) + ">"
    expected += f" {ndim:02x}" if ndim is not None else " <ndim>"
    if len(raw) < 4:
        raise DataFileError(
            f"{path}: truncated header: {len(raw)} bytes ({_hex(raw) or 'empty'}), "
            f"too short for the 4-byte IDX magic number {expected}"
        )
    zero0, zero1, code, file_ndim = raw[:4]
    if zero0 or zero1 or code not in IDX_DTYPES or file_ndim == 0 or (
        ndim is not None and file_ndim != ndim
    ):
        raise DataFileError(
            f"{path}: bad magic number {_hex(raw[:4])} (0x{raw[:4].hex()}); "
            f"expected {expected} (e.g. 00 00 08 03 for uint8 images, "
            f"00 00 08 01 for uint8 labels)"
        )

    header = 4 + 4 * file_ndim
    if len(raw) < header:
        raise DataFileError(
            f"{path}: truncated header: {file_ndim} dimensions need a {header}-byte "
            f"header, file has {len(raw)} bytes"
        )
    shape = struct.unpack(f">{file_ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    n_expected = math.prod(shape) * dtype.itemsize
    n_found = len(raw) - header
    if n_found < n_expected:
        raise DataFileError(
            f"{path}: truncated data: shape {shape} of {dtype.name} needs "
            f"{n_expected} bytes after the {header}-byte header, found {n_found}"
        )
    if n_found > n_expected:
        raise DataFileError(
            f"{path}: {n_found - n_expected} trailing bytes: shape {shape} of "
            f"{dtype.name} needs {n_expected} bytes after the {header}-byte header, "
            f"found {n_found}"
        )
    flat = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header)
    # copy: writable, native byte order
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def find_idx_file(data_dir: str | os.PathLike, name: str) -> Path:
    """The path of IDX file ``name`` in ``data_dir``: ``name.gz`` if present, else ``name``.

    Raises:
        DataFileError: if neither exists; the message names the directory and
            both names tried.
    """
    data_dir = Path(data_dir)
    tried = [f"{name}.gz", name]
    for candidate in tried:
        if (data_dir / candidate).is_file():
            return data_dir / candidate
    if data_dir.exists() and not data_dir.is_dir():
        raise DataFileError(f"{data_dir}: is a file, not a directory (--data-dir takes the directory holding "
                            f"{tried[0]})")
    where = "directory" if data_dir.is_dir() else "directory (which does not exist)"
    raise DataFileError(
        f"{data_dir}: no file {tried[0]} or {tried[1]} in {where} {data_dir}"
    )


def _read_pair(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """Images (N, H, W) and labels (N,) of ``split`` ("train"/"test"), checked; their paths."""
    img_path = find_idx_file(data_dir, MNIST_FILES[f"{split}_images"])
    lab_path = find_idx_file(data_dir, MNIST_FILES[f"{split}_labels"])
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    if len(images) != len(labels):
        raise DataFileError(
            f"{split} images and labels disagree: {img_path} has {len(images)} "
            f"images, {lab_path} has {len(labels)} labels"
        )
    if labels.dtype.kind not in "iu":
        raise DataFileError(f"{lab_path}: labels must be integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataFileError(f"{lab_path}: negative label {int(labels.min())}")
    return images, labels, img_path, lab_path


def _num_classes(train: np.ndarray, train_path: Path, test: np.ndarray, test_path: Path) -> int:
    """K = max training label + 1, checked to be a K-class labelling 0..K-1.

    Every class in 0..K-1 must have a training example (a gap means a stray label, e.g.
    one 11 or 255 among the digits 0..9) and every test label must be below K.  An empty
    training split gives 0 (it is refused by ``_build_dataset``).

    Raises:
        DataFileError: naming the labels file, for a class without training
            examples or a test label >= K.
    """
    if not train.size:
        return 0
    present = np.unique(train)  # sorted classes with a training example
    num_classes = int(present[-1]) + 1
    n_missing = num_classes - len(present)
    if n_missing:
        # the first 8 missing classes lie below len(present) + 8 (no bincount up to a huge K)
        missing = np.setdiff1d(np.arange(min(num_classes, len(present) + 8)), present)[:8]
        if n_missing == 1:
            which = f"class {missing[0]} has"
        else:
            more = f", ... ({n_missing} classes)" if n_missing > 8 else ""
            which = "classes " + ", ".join(map(str, missing)) + more + " have"
        raise DataFileError(
            f"{train_path}: labels are not a {num_classes}-class labelling 0..{num_classes - 1}: "
            f"the largest label is {num_classes - 1} but {which} no training example; "
            f"a stray or corrupt label?"
        )
    if test.size and test.max() >= num_classes:
        raise DataFileError(
            f"{test_path}: label {int(test.max())} outside 0..{num_classes - 1}, the "
            f"{num_classes} classes of the training labels"
        )
    return num_classes


def load_mnist(
    data_dir: str | os.PathLike, *, val_size: int = 0, seed: int = 0
) -> ImageDataset:
    """Load an MNIST-format dataset (MNIST, Fashion-MNIST, ...) from a directory.

    Each of the four :data:`MNIST_FILES` is looked for as ``NAME.gz`` then ``NAME``.

    Args:
        data_dir: the directory holding the four files.
        val_size: number of training examples held out as validation, chosen by
            a random permutation from ``numpy.random.default_rng(seed)``; both
            splits keep the file order.  0 <= val_size < N_train.
        seed: seed of the validation split; the same seed gives the same split.

    Returns:
        An :class:`~sparse_eoc.data.ImageDataset` of one-channel images:
        ``image_shape = (1, H, W)`` (e.g. (1, 28, 28)), inputs float32 (N, H*W)
        with pixel (r, c) at column ``r * W + c``, standardised with the training
        split's mean and std (one-element tuples ``mean = (m,)``, ``std = (s,)``;
        uint8 pixels are scaled to [0, 1] first, other dtypes are used as stored);
        ``num_classes = K = max training label + 1``; ``class_names = ()``.

    Raises:
        DataFileError: if a file is missing or malformed, images are not 3-D or
            labels not 1-D, image and label counts disagree, labels are not
            non-negative integers, train and test image sizes differ, the
            training or the test split has no images ("<file>: the test split
            has no images"), the labels are not a K-class labelling (some class
            in 0..K-1 has no training example, or a test label is >= K: a stray
            label such as 11 or 255 among the digits), or the training pixels
            are constant.  The message names the file.
        ValueError: if ``val_size`` is outside 0..N_train-1.
    """
    data_dir = Path(data_dir)
    # (N, H, W), (N,) and their paths
    train_images, train_labels, train_path, train_lab_path = _read_pair(data_dir, "train")
    test_images, test_labels, test_path, test_lab_path = _read_pair(data_dir, "test")
    hw = tuple(int(s) for s in train_images.shape[1:])
    if tuple(test_images.shape[1:]) != hw:
        raise DataFileError(
            f"image sizes disagree: {train_path} has {hw}, "
            f"{test_path} has {tuple(test_images.shape[1:])}"
        )
    num_classes = _num_classes(train_labels, train_lab_path, test_labels, test_lab_path)
    return _build_dataset(
        (train_images, train_labels),
        (test_images, test_labels),
        image_shape=(1, *hw),  # (C, H, W): (N, H, W) flattens to (N, 1*H*W)
        num_classes=num_classes,
        val_size=val_size,
        seed=seed,
        source=train_path,
        test_source=test_path,
    )
