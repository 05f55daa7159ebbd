"""Tests of sparse_eoc.data.download: safe extraction of the CIFAR-10 archive, and the MNIST
download with a faked opener (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import sparse_eoc.data.download as download
from sparse_eoc.data import (
    CIFAR10_DIR,
    MNIST_FILES,
    MNIST_MD5,
    MNIST_MIRRORS,
    DataFileError,
    download_mnist,
    load_mnist,
)
from sparse_eoc.data.download import _extract_tar_safely

from dataset_files import write_idx


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


# ---------------------------------------------------------------- MNIST download, faked opener


@pytest.fixture
def tiny_mnist(tmp_path_factory, monkeypatch):
    """Four tiny MNIST-format .gz files standing in for the real ones: name -> gzip bytes,
    with MNIST_MD5 patched to their uncompressed md5s."""
    rng = np.random.default_rng(0)
    src = tmp_path_factory.mktemp("served")
    arrays = {
        "train_images": rng.integers(0, 256, (30, 4, 4), dtype=np.uint8),
        "train_labels": (np.arange(30) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
        "test_labels": np.arange(10, dtype=np.uint8),
    }
    files = {}
    for role, a in arrays.items():
        name = MNIST_FILES[role]
        files[name] = write_idx(src / f"{name}.gz", a).read_bytes()
    md5 = {n: hashlib.md5(gzip.decompress(b)).hexdigest() for n, b in files.items()}
    monkeypatch.setattr(download, "MNIST_MD5", md5)
    return files


def fake_opener(monkeypatch, serve):
    """Replace urllib.request.urlopen: ``serve(url)`` returns the body (bytes) or raises.
    Returns the list of URLs requested."""
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(serve(url))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def served_name(url: str) -> str:
    return url.rsplit("/", 1)[1].removesuffix(".gz")


def test_download_mnist_fetches_all_four_files(tmp_path, monkeypatch, tiny_mnist):
    calls = fake_opener(monkeypatch, lambda url: tiny_mnist[served_name(url)])
    out = tmp_path / "new" / "mnist"
    assert download_mnist(out) == out
    assert calls == [f"{MNIST_MIRRORS[0]}{name}.gz" for name in MNIST_FILES.values()]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.gz" for n in tiny_mnist)
    for name, body in tiny_mnist.items():
        assert (out / f"{name}.gz").read_bytes() == body
    assert load_mnist(out).num_classes == 10


def test_download_mnist_tries_the_next_mirror(tmp_path, monkeypatch, tiny_mnist):
    def serve(url):
        if url.startswith(MNIST_MIRRORS[0]):
            raise urllib.error.URLError("connection refused")
        if url.startswith(MNIST_MIRRORS[1]):
            return b"<html>moved</html>"  # answers, but not with the file
        return tiny_mnist[served_name(url)]

    calls = fake_opener(monkeypatch, serve)
    download_mnist(tmp_path)
    assert len(calls) == 3 * len(MNIST_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.gz" for n in tiny_mnist)


@pytest.mark.parametrize(
    "body",
    [lambda b: gzip.compress(gzip.decompress(b)[:-1] + b"x"), lambda b: b[: len(b) // 2],
     lambda b: b"not gzip"],
    ids=["wrong-md5", "truncated-gzip", "not-gzip"],
)
def test_download_mnist_refuses_a_checksum_mismatch(tmp_path, monkeypatch, tiny_mnist, body):
    name = MNIST_FILES["train_labels"]

    def serve(url):
        good = tiny_mnist[served_name(url)]
        return body(good) if served_name(url) == name else good

    calls = fake_opener(monkeypatch, serve)
    dest = tmp_path / f"{name}.gz"
    message = rf"^{dest}: no mirror served the standard {name}\.gz .*nothing was written"
    with pytest.raises(DataFileError, match=message) as err:
        download_mnist(tmp_path)
    tried = [url for url in calls if served_name(url) == name]
    assert len(tried) == len(MNIST_MIRRORS) and all(url in str(err.value) for url in tried)
    # train-images came first and was fine; nothing else, no temporary file, is left
    assert [p.name for p in tmp_path.iterdir()] == [f"{MNIST_FILES['train_images']}.gz"]


def test_download_mnist_without_network_says_what_to_do(tmp_path, monkeypatch, tiny_mnist):
    def serve(url):
        raise urllib.error.URLError("no route to host")

    fake_opener(monkeypatch, serve)
    with pytest.raises(OSError, match=r"download failed from every mirror.*no route to host.*"
                                      rf"put them in {tmp_path}") as err:
        download_mnist(tmp_path)
    assert not isinstance(err.value, DataFileError)
    assert list(tmp_path.iterdir()) == []


def test_download_mnist_keeps_files_already_present(tmp_path, monkeypatch, tiny_mnist):
    present = [MNIST_FILES["train_images"], MNIST_FILES["test_labels"]]
    (tmp_path / f"{present[0]}.gz").write_bytes(tiny_mnist[present[0]])
    (tmp_path / present[1]).write_bytes(gzip.decompress(tiny_mnist[present[1]]))  # uncompressed
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    calls = fake_opener(monkeypatch, lambda url: tiny_mnist[served_name(url)])
    download_mnist(tmp_path)
    assert sorted(served_name(u) for u in calls) == sorted(set(tiny_mnist) - set(present))
    assert all(tmp_path.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    calls.clear()
    download_mnist(tmp_path)  # everything present: no request at all
    assert calls == []


def test_download_mnist_leaves_a_foreign_file_alone(tmp_path, monkeypatch, tiny_mnist):
    """A file of the same name that is not the standard one (Fashion-MNIST, a subset) is there:
    --download fetches only what is missing and leaves it as it is."""
    name = MNIST_FILES["test_images"]
    path = tmp_path / f"{name}.gz"
    path.write_bytes(gzip.compress(b"fashion"))
    calls = fake_opener(monkeypatch, lambda url: tiny_mnist[served_name(url)])
    download_mnist(tmp_path)
    assert gzip.decompress(path.read_bytes()) == b"fashion"
    assert f"{name}.gz" not in " ".join(calls) and len(calls) == 3


def test_mnist_md5_matches_the_real_files(mnist_dir, monkeypatch):
    """The constants are those of the real MNIST: a directory holding it needs no download."""

    def serve(url):
        raise AssertionError(f"downloaded {url}")

    fake_opener(monkeypatch, serve)
    assert download_mnist(mnist_dir) == mnist_dir
    assert set(MNIST_MD5) == set(MNIST_FILES.values())
    from sparse_eoc.data.download import _idx_md5

    for name in MNIST_FILES.values():  # the md5 a download is checked against is the real file's
        assert _idx_md5(mnist_dir / f"{name}.gz") == MNIST_MD5[name]
