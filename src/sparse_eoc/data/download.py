"""Fetching datasets: CIFAR-10 (download the python-pickle archive, check its md5, extract
it safely) and MNIST (download the four gzip IDX files, check each one's md5).

The standard library only.  Never called implicitly: the loaders in
:mod:`sparse_eoc.data.cifar` and :mod:`sparse_eoc.data.idx` only read what is already on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from .cifar import CIFAR10_DIR, _TRAIN_BATCHES
from .dataset import DataFileError
from .idx import MNIST_FILES

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "MNIST_MD5",
    "MNIST_MIRRORS",
    "download_cifar10",
    "download_mnist",
]

#: Where the python-pickle archive lives, and its published md5.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


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
        ``root/cifar-10-batches-py``, ready for :func:`~sparse_eoc.data.load_cifar10`.

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


# ---------------------------------------------------------------- MNIST

#: Where the four MNIST files ``NAME.gz`` live, tried in order (each a URL prefix).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)

#: File name (as in :data:`~sparse_eoc.data.MNIST_FILES`) -> md5 of its *uncompressed* IDX
#: bytes.  The uncompressed md5 is the canonical one: a mirror or a local copy may
#: recompress the .gz (a different gzip header gives a different md5 of the .gz itself)
#: without changing a pixel.
MNIST_MD5 = MappingProxyType(
    {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
)

# The largest file, train-images, is 47,040,016 bytes uncompressed: nothing longer is read.
_MNIST_MAX_BYTES = 1 << 26


class _BadBytes(Exception):
    """A file's bytes are not what an MNIST file can be; the message says why (no path)."""


def _idx_md5(path: Path, chunk: int = 1 << 20) -> str:
    """md5 of the IDX bytes in ``path``, gunzipped first if it starts with 1f 8b.

    Raises:
        _BadBytes: if the gzip stream is corrupt or more than 64 MiB come out.
        OSError: if the file cannot be read.
    """
    h, total = hashlib.md5(), 0
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if gz else raw
        try:
            while block := f.read(chunk):
                total += len(block)
                if total > _MNIST_MAX_BYTES:
                    raise _BadBytes(f"more than {_MNIST_MAX_BYTES} bytes of data")
                h.update(block)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise _BadBytes(f"corrupt gzip stream ({err})") from err
    return h.hexdigest()


def _fetch_mnist_file(name: str, dest: Path, timeout: float) -> None:
    """Download ``NAME.gz`` from the first of :data:`MNIST_MIRRORS` that serves the standard
    file, to a temporary file in ``dest``'s directory renamed to ``dest`` once its md5
    matches: a failed download or checksum leaves nothing behind.

    Raises:
        DataFileError: if some mirror answered but none with the standard file.
        OSError: if no mirror could be reached.
    """
    failures, wrong = [], False
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{name}.gz"
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")  # same directory: atomic rename
        try:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                    while block := resp.read(1 << 20):
                        if out.tell() + len(block) > _MNIST_MAX_BYTES:
                            raise _BadBytes(f"more than {_MNIST_MAX_BYTES} bytes")
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                digest = _idx_md5(tmp)
            except _BadBytes as err:
                wrong = True
                failures.append(f"{url}: {err}")
                continue
            except OSError as err:  # URLError, HTTPError and timeouts are OSErrors
                failures.append(f"{url}: {err}")
                continue
            if digest != MNIST_MD5[name]:
                wrong = True
                failures.append(f"{url}: md5 {digest} of the uncompressed data")
                continue
            os.replace(tmp, dest)
            return
        finally:
            tmp.unlink(missing_ok=True)
    tried = "; ".join(failures)
    if wrong:
        raise DataFileError(
            f"{dest}: no mirror served the standard {name}.gz (md5 {MNIST_MD5[name]} of the "
            f"uncompressed data); nothing was written. Tried: {tried}"
        )
    raise OSError(
        f"{dest}: download failed from every mirror ({tried}); without internet, fetch "
        f"{name}.gz and the other MNIST files elsewhere and put them in {dest.parent}"
    )


def download_mnist(data_dir: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Download the four MNIST files (about 11 MB in all) into ``data_dir`` where missing.

    For each file of :data:`~sparse_eoc.data.MNIST_FILES`, a copy already there (``NAME.gz``
    or ``NAME``, as :func:`~sparse_eoc.data.load_mnist` reads them) is kept as it is, whatever
    it holds (another MNIST-format dataset, say: the loader checks the format); a missing
    one is fetched as ``NAME.gz`` from :data:`MNIST_MIRRORS`, tried in order, and written
    atomically (a temporary file in ``data_dir`` renamed once its uncompressed md5 is
    :data:`MNIST_MD5`'s), so an interrupted or failed download leaves no file.  Never called
    implicitly: loaders only read.

    Args:
        data_dir: the directory :func:`~sparse_eoc.data.load_mnist` will read; created
            if missing.
        timeout: seconds to wait on the network before giving up on a mirror.

    Returns:
        ``data_dir``, ready for :func:`~sparse_eoc.data.load_mnist`.

    Raises:
        DataFileError: naming the file, if the mirrors answered but none with the standard
            bytes (nothing is written).
        OSError: if no mirror can be reached (e.g. no internet); the message says
            where to put the files by hand.
    """
    data_dir = Path(data_dir)
    for name in MNIST_FILES.values():
        if (data_dir / f"{name}.gz").is_file() or (data_dir / name).is_file():
            continue  # there already: kept as it is, not read
        data_dir.mkdir(parents=True, exist_ok=True)
        _fetch_mnist_file(name, data_dir / f"{name}.gz", timeout)
    return data_dir
