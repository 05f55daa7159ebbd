"""The image-dataset type every loader returns, and the split and standardisation they share.

NumPy and the standard library only; never imports torch.

A loader reads its files into raw arrays (training file, test file) and hands them to
:func:`_build_dataset`, which holds out the seeded validation split, scales uint8 pixels
to [0, 1], standardises each channel with the training split's constants and returns an
:class:`ImageDataset`.  So MNIST (one channel) and CIFAR-10 (three) are split and
standardised by the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DataFileError", "ImageDataset"]


class DataFileError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class ImageDataset:
    """An image classification dataset, standardised per channel and flattened.

    Each image is flattened in (C, H, W) order: pixel (c, r, k) of an image with
    ``image_shape = (C, H, W)`` is at column ``c * H * W + r * W + k``, so
    ``x.reshape(N, C, H, W)`` recovers the images.  Channel ``c`` is standardised as
    ``x = (p - mean[c]) / std[c]`` where ``p`` is the stored value (uint8 pixels scaled
    to [0, 1] first) and ``mean[c]``/``std[c]`` are taken over all pixels of channel
    ``c`` of the training split (after holding out validation).  A grey-scale
    (MNIST-format) dataset has C = 1: ``image_shape = (1, H, W)``, ``mean = (m,)``.

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


# ---------------------------------------------------------------- shared helpers


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


def _to_unit(x: np.ndarray) -> np.ndarray:
    """Stored values (N, ...) -> a fresh float32 (N, D), D the product of the rest; uint8 scaled
    to [0, 1] in place (no second copy), other dtypes kept as they are."""
    out = x.reshape(len(x), math.prod(x.shape[1:])).astype(np.float32)  # (N, D), a copy
    if x.dtype == np.uint8:
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


def _build_dataset(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    val_size: int,
    seed: int,
    source: Path,
    test_source: Path,
    class_names: tuple[str, ...] = (),
) -> ImageDataset:
    """Split, scale and standardise a loader's raw arrays into an :class:`ImageDataset`.

    Args:
        train: (images, labels) of the training file: images (N, ...) with
            ``prod(...) == prod(image_shape)`` in (C, H, W) order, labels (N,) integers.
        test: (images, labels) of the test file, likewise.
        image_shape: (C, H, W) of one image.
        num_classes: stored as is; the loader has checked the labels against it.
        val_size: training rows held out as validation, see :func:`_split_indices`.
        seed: seed of the validation split.
        source: the training file, named in the errors for an empty training split
            or a constant channel.
        test_source: the test file, named in the error for an empty test split.
        class_names: stored as is.

    Raises:
        DataFileError: if the training or the test file holds no images
            ("<file>: the training split has no images"), or a channel is constant
            over the training split.
        ValueError: if ``val_size`` is outside 0..N-1.
    """
    (x_file, y_file), (x_test_raw, y_test) = train, test
    for split, x, path in (("training", x_file, source), ("test", x_test_raw, test_source)):
        if len(x) == 0:
            raise DataFileError(f"{path}: the {split} split has no images")
    train_idx, val_idx = _split_indices(len(x_file), val_size, seed)
    x_train = _to_unit(x_file[train_idx])  # (N_train, C*H*W)
    x_val = _to_unit(x_file[val_idx])  # (N_val, C*H*W)
    x_test = _to_unit(x_test_raw)  # (N_test, C*H*W)
    y_file = y_file.astype(np.int64)

    channels = image_shape[0]
    mean, _ = _channel_moments(x_train, channels, np.zeros(channels))
    d1, d2 = _channel_moments(x_train, channels, mean)  # two-pass variance: d1 ~ 0
    std = np.sqrt(np.maximum(d2 - d1 * d1, 0.0))
    if not np.all(std > 0.0):
        c = int(np.argmin(std))
        raise DataFileError(
            f"{source}: channel {c} of every training image equals {mean[c]}; "
            f"cannot standardise"
        )
    _standardise_((x_train, x_val, x_test), mean, std)
    # every channel has H*W entries per row, so the mean over channels is the mean over all
    _, square = _channel_moments(x_train, channels, np.zeros(channels))

    return ImageDataset(
        x_train=x_train,
        y_train=y_file[train_idx],
        x_val=x_val,
        y_val=y_file[val_idx],
        x_test=x_test,
        y_test=y_test.astype(np.int64),
        image_shape=tuple(int(s) for s in image_shape),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        num_classes=int(num_classes),
        mean_square_input=float(square.mean()),
        class_names=tuple(class_names),
    )
