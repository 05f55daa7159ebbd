"""IDX files (the MNIST format) and the MNIST-style image datasets built from them.

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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

__all__ = [
    "DataFileError",
    "IDX_DTYPES",
    "MNIST_FILES",
    "MNISTData",
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


class DataFileError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the file."""


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
    where = "directory" if data_dir.is_dir() else "directory (which does not exist)"
    raise DataFileError(
        f"{data_dir}: no file {tried[0]} or {tried[1]} in {where} {data_dir}"
    )


@dataclass(frozen=True)
class MNISTData:
    """An MNIST-style classification dataset, standardised and flattened.

    Images are flattened in C order, pixel (r, c) at column ``r * W + c``, and
    standardised as ``x = (p - mean) / std`` where ``p`` is the stored value
    (uint8 pixels scaled to [0, 1] first) and ``mean``/``std`` are one scalar
    each over all pixels of the training split (after holding out validation).

    Attributes:
        x_train: float32 (N_train, H*W), standardised training inputs.
        y_train: int64 (N_train,), class labels.
        x_val: float32 (N_val, H*W); shape (0, H*W) when no validation is held out.
        y_val: int64 (N_val,).
        x_test: float32 (N_test, H*W), standardised with the training constants.
        y_test: int64 (N_test,).
        image_shape: (H, W), e.g. (28, 28).
        mean: training-pixel mean, in [0, 1] units for uint8 files.
        std: training-pixel standard deviation (population, ddof=0), same units.
        num_classes: int(max label over train, val and test) + 1, e.g. 10.
        mean_square_input: mean of x_train**2 over all entries (~1.0); the input
            second moment q^0 used to initialise the first layer.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int]
    mean: float
    std: float
    num_classes: int
    mean_square_input: float

    @property
    def input_dim(self) -> int:
        """H * W, the length of one flattened input."""
        return self.image_shape[0] * self.image_shape[1]


def _read_pair(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """Images (N, H, W) and labels (N,) of ``split`` ("train"/"test"), checked; images' path."""
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
    return images, labels, img_path


def _to_unit(images: np.ndarray) -> np.ndarray:
    """(N, H, W) stored values -> float32 (N, H*W); uint8 scaled to [0, 1]."""
    flat = images.reshape(len(images), -1)  # (N, H*W)
    if images.dtype == np.uint8:
        return flat.astype(np.float32) / np.float32(255.0)
    return flat.astype(np.float32)


def _moments(
    x: np.ndarray, shift: float = 0.0, chunk: int = 1 << 22
) -> tuple[float, float]:
    """Mean of ``x - shift`` and of ``(x - shift)**2`` over all entries, in float64 by chunks."""
    flat = x.reshape(-1)  # (x.size,)
    s1 = s2 = 0.0
    for i in range(0, flat.size, chunk):
        part = flat[i : i + chunk].astype(np.float64) - shift
        s1 += float(part.sum())
        s2 += float(np.dot(part, part))
    return s1 / flat.size, s2 / flat.size


def _split_indices(n_train: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, val_idx) of a seeded split of ``n_train`` rows; val gets ``val_size``.

    The validation rows are the first ``val_size`` of
    ``numpy.random.default_rng(seed).permutation(n_train)``; both index arrays are sorted
    so each split keeps the file order.

    Raises:
        ValueError: if ``val_size`` is not an integer in 0..n_train-1.
    """
    if isinstance(val_size, bool) or not (
        isinstance(val_size, (int, np.integer)) and 0 <= val_size < n_train
    ):
        raise ValueError(
            f"val_size must be an integer in 0..{n_train - 1} "
            f"(0 <= val_size < {n_train} training examples), got val_size={val_size!r}"
        )
    perm = np.random.default_rng(seed).permutation(n_train)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def load_mnist(
    data_dir: str | os.PathLike, *, val_size: int = 0, seed: int = 0
) -> MNISTData:
    """Load an MNIST-format dataset (MNIST, Fashion-MNIST, ...) from a directory.

    Each of the four :data:`MNIST_FILES` is looked for as ``NAME.gz`` then ``NAME``.

    Args:
        data_dir: the directory holding the four files.
        val_size: number of training examples held out as validation, chosen by
            a random permutation from ``numpy.random.default_rng(seed)``; both
            splits keep the file order.  0 <= val_size < N_train.
        seed: seed of the validation split; the same seed gives the same split.

    Returns:
        An :class:`MNISTData`, inputs standardised with the training split's
        scalar mean and std (see there).

    Raises:
        DataFileError: if a file is missing or malformed, images are not 3-D or
            labels not 1-D, image and label counts disagree, labels are not
            non-negative integers, train and test image sizes differ, or the
            training pixels are constant.
        ValueError: if ``val_size`` is outside 0..N_train-1.
    """
    data_dir = Path(data_dir)
    train_images, train_labels, train_path = _read_pair(data_dir, "train")
    test_images, test_labels, test_path = _read_pair(data_dir, "test")
    image_shape = tuple(int(s) for s in train_images.shape[1:])
    if tuple(test_images.shape[1:]) != image_shape:
        raise DataFileError(
            f"image sizes disagree: {train_path} has {image_shape}, "
            f"{test_path} has {tuple(test_images.shape[1:])}"
        )

    train_idx, val_idx = _split_indices(len(train_images), val_size, seed)
    x_all = _to_unit(train_images)  # (N_train_file, H*W)
    y_all = train_labels.astype(np.int64)
    if val_size:
        x_train, y_train = x_all[train_idx], y_all[train_idx]
        x_val, y_val = x_all[val_idx], y_all[val_idx]
    else:
        x_train, y_train = x_all, y_all
        x_val = np.empty((0, x_all.shape[1]), dtype=np.float32)
        y_val = np.empty((0,), dtype=np.int64)
    x_test = _to_unit(test_images)  # (N_test, H*W)
    y_test = test_labels.astype(np.int64)

    mean = _moments(x_train)[0]
    d1, d2 = _moments(x_train, shift=mean)  # two-pass variance: d1 ~ 0
    std = math.sqrt(max(d2 - d1 * d1, 0.0))
    if not std > 0.0:
        raise DataFileError(f"{train_path}: all training pixels equal {mean}; cannot standardise")
    for x in (x_train, x_val, x_test):  # in place: each is a fresh array
        x -= np.float32(mean)
        x /= np.float32(std)

    labels = [y for y in (y_train, y_val, y_test) if y.size]
    num_classes = max(int(y.max()) for y in labels) + 1 if labels else 0
    return MNISTData(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        image_shape=image_shape,
        mean=mean,
        std=std,
        num_classes=num_classes,
        mean_square_input=_moments(x_train)[1],
    )
