"""Tests of sparse_eoc.data.download: safe extraction of the archive (no network)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sparse_eoc.data import CIFAR10_DIR, DataFileError
from sparse_eoc.data.download import _extract_tar_safely


def make_tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A .tar.gz of regular files (name, bytes) and symlinks (name, None -> '/etc/passwd')."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def test_extract_tar_safely_extracts(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [(f"{CIFAR10_DIR}/data_batch_1", b"x")])
    _extract_tar_safely(archive, tmp_path / "out")
    assert (tmp_path / "out" / CIFAR10_DIR / "data_batch_1").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("name", "message"),
    [("/tmp/evil", "unsafe member path"), ("a/../../evil", "unsafe member path"),
     ("link", "member 'link' is not a regular file or directory")],
)
def test_extract_tar_safely_rejects(tmp_path, name, message):
    content = None if name == "link" else b"x"
    archive = make_tar(tmp_path / "a.tar.gz", [("ok", b"fine"), (name, content)])
    with pytest.raises(DataFileError, match=rf"^{archive}: {message}"):
        _extract_tar_safely(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok").exists()  # nothing extracted
