"""CIFAR-10 from its python-pickle batches, loaded into an :class:`~sparse_eoc.data.ImageDataset`.

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

Fetching and extracting the archive is :mod:`sparse_eoc.data.download`'s job; this
module only reads.

Security: a pickle can name any importable callable and have the unpickler call it, so
plain ``pickle.load`` on a foreign batch runs whatever code its author chose.  The
batches are read by :class:`_BatchUnpickler` instead, which resolves only the names a
CIFAR-10 batch needs (NumPy's array and dtype reconstruction, in both the NumPy 1.x
``numpy.core`` and 2.x ``numpy._core`` module names, ``bytes``/``bytearray``, and the
latin-1 ``_codecs.encode`` that Python 3 protocol-0..2 pickles use for bytes) and
refuses any other with a :class:`~sparse_eoc.data.DataFileError` naming the file,
before anything named is called.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DataFileError, ImageDataset, _build_dataset

__all__ = ["CIFAR10_DIR", "find_cifar10_dir", "load_cifar10"]

#: The directory name inside the archive.
CIFAR10_DIR = "cifar-10-batches-py"

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_SHAPE = (3, 32, 32)  # (C, H, W)
_NUM_CLASSES = 10


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


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle named a callable or class that a CIFAR-10 batch never holds."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-0..2 pickles call it for a bytes object
    (``encode(text, "latin1")``); any other use is refused."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise _ForbiddenGlobal(
            f"_codecs.encode with {type(text).__name__} and encoding {encoding!r} "
            f"(only latin-1 text, the encoding of bytes in protocol 0-2 pickles, is allowed)"
        )
    return text.encode("latin-1")


def _numpy_global(module: str, name: str) -> Any:
    """The NumPy object ``module.name`` of the NumPy 1.x (``numpy.core``) or 2.x
    (``numpy._core``) spelling, looked up under whichever the installed NumPy has
    (``numpy._core`` first: importing ``numpy.core`` warns under NumPy 2)."""
    sub = module.split(".", 2)[2]  # "multiarray" or "numeric"
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{sub}"), name)
        except (ImportError, AttributeError):
            continue
    raise _ForbiddenGlobal(f"{module}.{name} (not found in the installed NumPy)")


#: The globals a CIFAR-10 batch may name: (submodule, name) under numpy.core (NumPy 1.x)
#: or numpy._core (2.x), and (module, name) -> object for the rest, in each spelling
#: NumPy and Python write.  _BatchUnpickler refuses anything else.
_NUMPY_CORE = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__, protocols 0-4
    ("multiarray", "scalar"),  # NumPy scalars (np.int64(3) in a list of labels)
    ("numeric", "_frombuffer"),  # ndarray.__reduce_ex__, protocol 5
}
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytes"): bytes,  # protocol 0-2 pickles written by Python 3
    ("__builtin__", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1_encode,  # bytes in protocol 0-2 pickles
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only what a CIFAR-10 batch needs (see the module's
    Security note): dicts, lists, tuples, bytes, str, ints, floats and NumPy arrays,
    dtypes and scalars.  Any other global raises :class:`_ForbiddenGlobal` before it
    is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if (
            module.startswith(("numpy.core.", "numpy._core."))
            and (module.split(".", 2)[2], name) in _NUMPY_CORE
        ):
            return _numpy_global(module, name)
        raise _ForbiddenGlobal(f"{module}.{name}")


def _unpickle(path: Path) -> dict:
    """The dict pickled in ``path``, loaded with ``encoding="bytes"`` (Python 2 pickles)
    by :class:`_BatchUnpickler`, which refuses anything but dicts, lists, bytes, str,
    numbers and NumPy arrays."""
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise _missing(path) from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory, expected a CIFAR-10 batch file") from None
    except OSError as err:
        raise DataFileError(f"{path}: cannot read file ({err})") from err
    except _ForbiddenGlobal as err:
        raise DataFileError(
            f"{path}: refused, not a CIFAR-10 batch: the pickle names {err}, which a "
            f"CIFAR-10 batch never holds (only dicts, lists, bytes, str, numbers and NumPy "
            f"arrays are unpickled); nothing it names was run. Do not use this file"
        ) from None
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


# ---------------------------------------------------------------- loading


def load_cifar10(
    data_dir: str | os.PathLike, *, val_size: int = 0, seed: int = 0
) -> ImageDataset:
    """Load CIFAR-10 from its python-pickle batches.

    Security: the batches are Python pickles, and a plain ``pickle.load`` would run
    code chosen by whoever wrote the file.  They are read with a restricted unpickler
    instead (see the module docstring) that builds only dicts, lists, bytes, str,
    numbers and NumPy arrays; a batch naming anything else (a payload's ``os.system``,
    ``builtins.open``, ...) is refused with a DataFileError and nothing it names is run.
    The official archive can also be checked against
    :data:`~sparse_eoc.data.CIFAR10_MD5`, as :func:`~sparse_eoc.data.download_cifar10` does.

    Args:
        data_dir: the ``cifar-10-batches-py`` directory, or the directory holding it
            (where ``cifar-10-python.tar.gz`` was extracted); see :func:`find_cifar10_dir`.
        val_size: number of training examples held out as validation, chosen by a
            random permutation from ``numpy.random.default_rng(seed)``, the same
            split as :func:`~sparse_eoc.data.load_mnist`; both splits keep the file order
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
            not a CIFAR-10 batch"), names a global other than NumPy's array
            reconstruction ("refused, not a CIFAR-10 batch"; nothing is run),
            lacks ``b"data"`` or ``b"labels"``, holds data that is not uint8
            (N, 3072), a label count other than N, or labels outside 0..9; if
            ``batches.meta`` exists but is malformed; if the five training batches
            or the test batch hold no images; or if a training channel is
            constant.  The message starts with the file's path.
        ValueError: if ``val_size`` is outside 0..N_train-1.
    """
    batch_dir = find_cifar10_dir(data_dir)
    parts = [_read_batch(batch_dir / name) for name in _TRAIN_BATCHES]
    x_file = np.concatenate([p[0] for p in parts])  # (N_train_file, 3072) uint8
    y_file = np.concatenate([p[1] for p in parts])  # (N_train_file,)
    del parts
    test = _read_batch(batch_dir / _TEST_BATCH)  # (N_test, 3072), (N_test,)
    return _build_dataset(
        (x_file, y_file),
        test,
        image_shape=_SHAPE,
        num_classes=_NUM_CLASSES,
        val_size=val_size,
        seed=seed,
        source=batch_dir / _TRAIN_BATCHES[0],
        test_source=batch_dir / _TEST_BATCH,
        class_names=_read_label_names(batch_dir / _META),
    )
