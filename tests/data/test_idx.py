"""Tests of sparse_eoc.data.idx: the IDX reader, its errors, and load_mnist."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from sparse_eoc.data import (
    MNIST_FILES,
    DataFileError,
    ImageDataset,
    find_idx_file,
    load_mnist,
    read_idx,
)



# ---------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, *, magic: bytes | None = None) -> bytes:
    """The IDX encoding of ``array`` (header + big-endian data); ``magic`` overrides bytes 0-3."""
    array = np.asarray(array)
    code = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}[
        array.dtype.str[1:]
    ]
    head = magic if magic is not None else struct.pack(">BBBB", 0, 0, code, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return head + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, **kwargs) -> Path:
    data = idx_bytes(array, **kwargs)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_dataset(
    d: Path, n_train: int = 50, n_test: int = 20, hw=(4, 3), gz=True, seed=1
) -> dict[str, np.ndarray]:
    """Write a small synthetic MNIST-format dataset into ``d``; return its raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        # every class 0..9 has a training example (n_train >= 10): a 10-class labelling
        "train_labels": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for role, arr in arrays.items():
        name = MNIST_FILES[role] + (".gz" if gz else "")
        write_idx(d / name, arr, gz=gz)
    return arrays


def assert_standardised_like(x: np.ndarray, raw: np.ndarray, mean: float, std: float):
    expected = (raw.reshape(len(raw), -1).astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    assert x.dtype == np.float32


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_round_trips_every_dtype(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 5, 2)) * 100).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a.bin", a, gz=gz))
    assert out.shape == (3, 5, 2)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, a)
    out[0, 0, 0] = 1  # writable


def test_read_idx_is_big_endian(tmp_path):
    # int16 258 = 01 02 big-endian; a little-endian reader would give 513.
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 2) + bytes([1, 2, 0xFF, 0xFE]))
    np.testing.assert_array_equal(read_idx(path), [258, -2])


def test_read_idx_detects_gzip_by_content_not_extension(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_no_ext = write_idx(tmp_path / "plain_name", a, gz=True)
    raw_gz_ext = write_idx(tmp_path / "raw.gz", a, gz=False)
    np.testing.assert_array_equal(read_idx(gz_no_ext), a)
    np.testing.assert_array_equal(read_idx(raw_gz_ext), a)


def test_read_idx_checks_ndim(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(5, np.uint8))
    assert read_idx(path, ndim=1).shape == (5,)
    with pytest.raises(DataFileError, match=r"bad magic number 00 00 08 01.*00 00 .* 03"):
        read_idx(path, ndim=3)


def test_read_idx_allows_empty_arrays(tmp_path):
    path = write_idx(tmp_path / "e", np.zeros((0, 28, 28), np.uint8))
    assert read_idx(path).shape == (0, 28, 28)


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(DataFileError, match="not found") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "magic",
    [b"\x00\x00\x08\x00", b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x08\x03\x00\x00"],
    ids=["ndim0", "nonzero_first", "bad_dtype", "little_endian"],
)
def test_bad_magic(tmp_path, magic):
    path = write_idx(tmp_path / "bad", np.zeros(4, np.uint8), magic=magic)
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "bad magic number" in msg
    assert " ".join(f"{b:02x}" for b in magic) in msg  # the bytes found
    assert "expected 00 00" in msg  # and what was expected


def test_short_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataFileError, match="truncated header") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">2I", 2, 2))  # 3 dims, 2 given
    with pytest.raises(DataFileError, match="16-byte header, file has 12 bytes"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_truncated_data(tmp_path, gz):
    data = idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-5]  # 16 header + 19 of 24 bytes
    path = tmp_path / "trunc"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "truncated data" in msg and "needs 24 bytes" in msg and "found 19" in msg


def test_trailing_bytes(tmp_path):
    path = tmp_path / "trail"
    path.write_bytes(idx_bytes(np.zeros((2, 3), np.int16)) + b"xyz")
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "3 trailing bytes" in msg and "needs 12 bytes" in msg and "found 15" in msg


@pytest.mark.parametrize(
    "mangle",
    [lambda z: z[: len(z) // 2], lambda z: z[:10] + bytes(b ^ 0x55 for b in z[10:])],
    ids=["cut", "garbled"],
)
def test_corrupt_gzip(tmp_path, mangle):
    z = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "corrupt.gz"
    path.write_bytes(mangle(z))
    with pytest.raises(DataFileError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_count_mismatch_names_both_files(tmp_path):
    write_dataset(tmp_path)
    labels = tmp_path / (MNIST_FILES["train_labels"] + ".gz")
    write_idx(labels, np.zeros(49, np.uint8), gz=True)  # 50 images, 49 labels
    with pytest.raises(DataFileError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / (MNIST_FILES["train_images"] + ".gz")) in msg
    assert str(labels) in msg
    assert "50 images" in msg and "49 labels" in msg


def test_images_must_be_3d(tmp_path):
    write_dataset(tmp_path)
    images = tmp_path / (MNIST_FILES["test_images"] + ".gz")
    write_idx(images, np.zeros((20, 12), np.uint8), gz=True)
    with pytest.raises(DataFileError, match="bad magic number 00 00 08 02") as info:
        load_mnist(tmp_path)
    assert str(images) in str(info.value)


def test_a_data_dir_that_is_a_file_says_so(tmp_path):
    """L4 of the hostile test: a file given as --data-dir was called a directory "which does not exist"."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataFileError, match=r"afile: is a file, not a directory"):
        load_mnist(tmp_path / "afile")


def test_missing_dataset_file_names_dir_and_both_names(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / (MNIST_FILES["test_labels"] + ".gz")).unlink()
    name = MNIST_FILES["test_labels"]
    with pytest.raises(DataFileError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and f"{name}.gz" in msg and f"{name} " in msg
    with pytest.raises(DataFileError, match="does not exist"):
        find_idx_file(tmp_path / "absent", name)


def test_find_idx_file_prefers_gz_then_raw(tmp_path):
    name = "t10k-labels-idx1-ubyte"
    (tmp_path / name).write_bytes(b"")
    assert find_idx_file(tmp_path, name) == tmp_path / name
    (tmp_path / f"{name}.gz").write_bytes(b"")
    assert find_idx_file(tmp_path, name) == tmp_path / f"{name}.gz"


@pytest.mark.parametrize("val_size", [-1, 50, 51, 2.0, True])
def test_val_size_out_of_range(tmp_path, val_size):
    write_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"val_size.*0\.\.49") as info:
        load_mnist(tmp_path, val_size=val_size)
    assert not isinstance(info.value, DataFileError)


def test_constant_images_cannot_be_standardised(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / (MNIST_FILES["train_images"] + ".gz"),
              np.full((50, 4, 3), 7, np.uint8), gz=True)
    with pytest.raises(DataFileError, match="cannot standardise"):
        load_mnist(tmp_path)


def gz_path(d: Path, role: str) -> Path:
    return d / (MNIST_FILES[role] + ".gz")


@pytest.mark.parametrize(
    ("stray", "message"),
    [(11, r"12-class labelling 0\.\.11: the largest label is 11 but class 10 has no training"),
     (255, r"256-class labelling 0\.\.255: .* classes 10, 11, 12, 13, 14, 15, 16, 17, "
           r"\.\.\. \(245 classes\) have no training example")],
    ids=["11", "255"],
)
def test_stray_training_label_is_refused(tmp_path, stray, message):
    raw = write_dataset(tmp_path)
    labels = raw["train_labels"].copy()
    labels[7] = stray  # one stray label among the digits 0..9
    path = write_idx(gz_path(tmp_path, "train_labels"), labels, gz=True)
    with pytest.raises(DataFileError, match=rf"^{path}: labels are not a {message}"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("stray", [10, 255])
def test_test_label_beyond_the_training_classes_is_refused(tmp_path, stray):
    raw = write_dataset(tmp_path)
    labels = raw["test_labels"].copy()
    labels[3] = stray
    path = write_idx(gz_path(tmp_path, "test_labels"), labels, gz=True)
    message = rf"^{path}: label {stray} outside 0\.\.9, the 10 classes"
    with pytest.raises(DataFileError, match=message):
        load_mnist(tmp_path)


def test_fewer_classes_without_gaps_load(tmp_path):
    """Labels 0..K-1 each with a training example are a K-class dataset, whatever K."""
    raw = write_dataset(tmp_path)
    write_idx(gz_path(tmp_path, "train_labels"), raw["train_labels"] % 3, gz=True)
    write_idx(gz_path(tmp_path, "test_labels"), raw["test_labels"] % 3, gz=True)
    d = load_mnist(tmp_path)
    assert d.num_classes == 3
    np.testing.assert_array_equal(d.y_test, raw["test_labels"] % 3)


@pytest.mark.parametrize(("split", "role", "name"), [("training", "train", "train"),
                                                     ("test", "test", "t10k")])
@pytest.mark.parametrize("val_size", [0, 5])
def test_empty_split_is_refused(tmp_path, split, role, name, val_size):
    write_dataset(tmp_path)
    images = write_idx(gz_path(tmp_path, f"{role}_images"), np.zeros((0, 4, 3), np.uint8), gz=True)
    write_idx(gz_path(tmp_path, f"{role}_labels"), np.zeros(0, np.uint8), gz=True)
    assert images.name == f"{name}-images-idx3-ubyte.gz"
    with pytest.raises(DataFileError, match=rf"^{images}: the {split} split has no images$"):
        load_mnist(tmp_path, val_size=val_size)


# ---------------------------------------------------------------- load_mnist, synthetic


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_synthetic_load(tmp_path, gz):
    raw = write_dataset(tmp_path, gz=gz)
    d = load_mnist(tmp_path)
    assert isinstance(d, ImageDataset)
    assert d.image_shape == (1, 4, 3) and d.input_dim == 12
    assert len(d.mean) == len(d.std) == 1 and d.class_names == ()
    assert d.x_train.shape == (50, 12) and d.x_test.shape == (20, 12)
    assert d.x_val.shape == (0, 12) and d.x_val.dtype == np.float32
    assert d.y_val.shape == (0,) and d.y_val.dtype == np.int64
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    np.testing.assert_array_equal(d.y_train, raw["train_labels"])
    np.testing.assert_array_equal(d.y_test, raw["test_labels"])
    pixels = raw["train_images"].astype(np.float64) / 255
    assert d.mean[0] == pytest.approx(pixels.mean(), rel=1e-6)  # float32 pixels
    assert d.std[0] == pytest.approx(pixels.std(), rel=1e-6)  # float32 pixels
    # C-order flattening: pixel (r, c) -> column r * W + c
    assert_standardised_like(d.x_train, raw["train_images"], d.mean[0], d.std[0])
    assert_standardised_like(d.x_test, raw["test_images"], d.mean[0], d.std[0])
    assert d.num_classes == 10  # labels 0..9
    assert d.mean_square_input == pytest.approx(np.mean(d.x_train.astype(np.float64) ** 2))
    assert d.mean_square_input == pytest.approx(1.0, abs=1e-5)


def test_validation_split(tmp_path):
    raw = write_dataset(tmp_path)
    d = load_mnist(tmp_path, val_size=15, seed=3)
    assert d.x_train.shape == (35, 12) and d.x_val.shape == (15, 12)
    assert d.y_train.shape == (35,) and d.y_val.shape == (15,)
    # the split is a partition of the training file, each part in file order
    flat = raw["train_images"].reshape(50, -1)
    rows = {r.tobytes(): i for i, r in enumerate(flat)}
    assert len(rows) == 50

    def back(x):  # undo the standardisation: float32 (n, 12) -> uint8 (n, 12)
        return np.round((x.astype(np.float64) * d.std[0] + d.mean[0]) * 255).astype(np.uint8)

    train_i = [rows[r.tobytes()] for r in back(d.x_train)]
    val_i = [rows[r.tobytes()] for r in back(d.x_val)]
    assert sorted(train_i + val_i) == list(range(50))
    assert train_i == sorted(train_i) and val_i == sorted(val_i)
    np.testing.assert_array_equal(d.y_val, raw["train_labels"][val_i])
    # standardised with the held-in training pixels only
    held_in = flat[train_i].astype(np.float64) / 255
    assert d.mean[0] == pytest.approx(held_in.mean(), rel=1e-6)  # float32 pixels
    assert d.std[0] == pytest.approx(held_in.std(), rel=1e-6)  # float32 pixels
    assert_standardised_like(d.x_val, raw["train_images"][val_i], d.mean[0], d.std[0])
    assert_standardised_like(d.x_test, raw["test_images"], d.mean[0], d.std[0])


def test_validation_split_is_seeded(tmp_path):
    write_dataset(tmp_path)
    a = load_mnist(tmp_path, val_size=10, seed=0)
    b = load_mnist(tmp_path, val_size=10, seed=0)
    c = load_mnist(tmp_path, val_size=10, seed=1)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_val, c.x_val)


def test_data_is_frozen(tmp_path):
    write_dataset(tmp_path)
    d = load_mnist(tmp_path)
    with pytest.raises(AttributeError):
        d.mean = (0.0,)


# ---------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def mnist(mnist_dir) -> ImageDataset:
    return load_mnist(mnist_dir)


def test_real_mnist_shapes_and_labels(mnist):
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.y_train.shape == (60000,) and mnist.y_test.shape == (10000,)
    assert mnist.image_shape == (1, 28, 28) and mnist.num_classes == 10
    assert set(np.unique(mnist.y_train)) == set(range(10))
    assert set(np.unique(mnist.y_test)) == set(range(10))
    np.testing.assert_array_equal(mnist.y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(mnist.y_test[:5], [7, 2, 1, 0, 4])
    np.testing.assert_array_equal(np.bincount(mnist.y_test), [980, 1135, 1032, 1010, 982,
                                                              892, 958, 1028, 974, 1009])


def test_real_mnist_standardisation(mnist):
    # the textbook MNIST constants, 0.1307 and 0.3081
    assert mnist.mean[0] == pytest.approx(0.1307, abs=5e-5)
    assert mnist.std[0] == pytest.approx(0.3081, abs=5e-5)
    x = mnist.x_train.astype(np.float64)
    assert abs(x.mean()) < 1e-6
    assert x.std() == pytest.approx(1.0, abs=1e-6)
    assert mnist.mean_square_input == pytest.approx(np.mean(x**2), abs=1e-9)
    assert mnist.mean_square_input == pytest.approx(1.0, abs=1e-6)
    # pixels were 0..255: the smallest standardised value is (0 - mean) / std
    assert mnist.x_train.min() == pytest.approx(-mnist.mean[0] / mnist.std[0], rel=1e-6)
    assert mnist.x_train.max() == pytest.approx((1 - mnist.mean[0]) / mnist.std[0], rel=1e-6)


def test_real_mnist_matches_canonical_md5(mnist_dir):
    # README: md5 of the uncompressed files; rebuild them from what read_idx returned
    for name, md5 in [("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
                      ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea")]:
        a = read_idx(find_idx_file(mnist_dir, name))
        assert hashlib.md5(idx_bytes(a)).hexdigest() == md5, name


def test_real_mnist_raw_files(tmp_path, mnist, mnist_dir):
    for name in MNIST_FILES.values():
        with gzip.open(mnist_dir / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    raw = load_mnist(tmp_path)
    np.testing.assert_array_equal(raw.x_train, mnist.x_train)
    np.testing.assert_array_equal(raw.y_test, mnist.y_test)
    assert raw.mean == mnist.mean and raw.std == mnist.std
