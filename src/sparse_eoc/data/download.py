"""Fetching CIFAR-10: download the python-pickle archive, check its md5, extract it safely.

The standard library only.  Never called implicitly: the loaders in
:mod:`sparse_eoc.data.cifar` only read what is already on disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path, PurePosixPath

from .cifar import CIFAR10_DIR, _TRAIN_BATCHES
from .dataset import DataFileError

__all__ = ["CIFAR10_MD5", "CIFAR10_URL", "download_cifar10"]

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
