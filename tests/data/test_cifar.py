"""Tests of sparse_eoc.data.cifar: CIFAR-10 pickle batches, their errors, the ImageDataset built."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest

from sparse_eoc.data import CIFAR10_DIR, DataFileError, ImageDataset, load_cifar10

from dataset_files import CIFAR_NAMES as NAMES, N_PER_BATCH, N_TEST, write_batch, write_cifar

# ---------------------------------------------------------------- helpers


@pytest.fixture
def cifar(tmp_path):
    return tmp_path, write_cifar(tmp_path)


def unstandardise(data: ImageDataset, x: np.ndarray) -> np.ndarray:
    """(N, C*H*W) standardised -> (N, C, H, W) in [0, 1] units."""
    mean = np.array(data.mean)[None, :, None, None]
    std = np.array(data.std)[None, :, None, None]
    return x.reshape(len(x), *data.image_shape) * std + mean  # (N, C, H, W)


# ---------------------------------------------------------------- loading


def test_shapes_labels_and_names(cifar):
    parent, raw = cifar
    data = load_cifar10(parent)
    assert data.image_shape == (3, 32, 32) and data.input_dim == 3072
    assert data.x_train.shape == (100, 3072) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (10, 3072) and data.x_test.dtype == np.float32
    assert data.x_val.shape == (0, 3072) and data.y_val.shape == (0,)
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    np.testing.assert_array_equal(data.y_train, raw["y_train"])
    np.testing.assert_array_equal(data.y_test, raw["y_test"])
    assert data.num_classes == 10
    assert data.class_names == tuple(n.decode() for n in NAMES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.num_classes = 3


def test_per_channel_standardisation(cifar):
    parent, raw = cifar
    data = load_cifar10(parent)
    x = data.x_train.reshape(-1, 3, 32 * 32).astype(np.float64)  # (N, C, H*W)
    np.testing.assert_allclose(x.mean(axis=(0, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(data.mean_square_input, (x**2).mean(), rtol=1e-6)
    # float64 reference; the loader scales to [0, 1] in float32 (relative error ~6e-8)
    u = raw["x_train"].reshape(-1, 3, 1024) / 255.0  # (N, C, H*W)
    np.testing.assert_allclose(data.mean, u.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(data.std, u.std(axis=(0, 2)), rtol=1e-6)
    # the test split uses the training constants and round-trips to the stored pixels
    back = unstandardise(data, data.x_test).reshape(len(data.x_test), -1)
    np.testing.assert_allclose(back * 255.0, raw["x_test"], atol=1e-3)


def test_channel_height_width_order(tmp_path):
    """Row-major R, G, B planes: a constant-255 R plane is channel 0 after un-standardising."""
    raw = write_cifar(tmp_path)
    d = tmp_path / CIFAR10_DIR
    x = raw["x_train"][:N_PER_BATCH].copy()
    x[0, :1024] = 255  # image 0: R plane all 255
    x[0, 1024 + 5 * 32 + 7] = 0  # G pixel (row 5, col 7) = 0
    x[0, 2048 + 31] = 1  # B pixel (row 0, col 31) = 1
    write_batch(d / "data_batch_1", {b"data": x, b"labels": raw["y_train"][:20].tolist()})
    data = load_cifar10(tmp_path)
    img = unstandardise(data, data.x_train[:1])[0] * 255.0  # (C, H, W)
    np.testing.assert_allclose(img[0], 255.0, atol=1e-3)
    assert abs(img[1, 5, 7]) < 1e-3 and abs(img[2, 0, 31] - 1.0) < 1e-3


def test_accepts_batches_dir_or_parent(cifar):
    parent, _ = cifar
    a, b = load_cifar10(parent), load_cifar10(parent / CIFAR10_DIR)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)


def test_meta_is_optional(tmp_path):
    write_cifar(tmp_path, meta=False)
    assert load_cifar10(tmp_path).class_names == ()


def test_validation_split(cifar):
    parent, raw = cifar
    full = load_cifar10(parent)
    data = load_cifar10(parent, val_size=30, seed=4)
    assert data.x_train.shape == (70, 3072) and data.x_val.shape == (30, 3072)
    assert len(data.y_train) == 70 and len(data.y_val) == 30
    # the same rows load_mnist would hold out: first val_size of a seeded permutation
    val_idx = np.sort(np.random.default_rng(4).permutation(100)[:30])
    np.testing.assert_array_equal(data.y_val, raw["y_train"][val_idx])
    back = unstandardise(data, data.x_val).reshape(30, -1) * 255.0
    np.testing.assert_allclose(back, raw["x_train"][val_idx], atol=1e-3)
    # constants come from the 70 training rows only
    x = data.x_train.reshape(70, 3, -1).astype(np.float64)  # (N, C, H*W)
    np.testing.assert_allclose(x.mean(axis=(0, 2)), 0.0, atol=1e-5)
    assert data.mean != full.mean
    again = load_cifar10(parent, val_size=30, seed=4)
    np.testing.assert_array_equal(again.x_val, data.x_val)


@pytest.mark.parametrize("val_size", [-1, 100, 2.5, True])
def test_val_size_out_of_range(cifar, val_size):
    with pytest.raises(ValueError, match=r"val_size must be an integer in 0\.\.99"):
        load_cifar10(cifar[0], val_size=val_size)


# ---------------------------------------------------------------- errors


def test_missing_directory_says_where_to_extract(tmp_path):
    with pytest.raises(DataFileError) as err:
        load_cifar10(tmp_path)
    msg = str(err.value)
    expected = tmp_path / CIFAR10_DIR / "data_batch_1"
    assert msg.startswith(f"{expected}: file not found")
    assert "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert f"so that {expected} exists" in msg
    # given the batches directory itself, the hint still names its parent layout
    with pytest.raises(DataFileError, match="so that .*cifar-10-batches-py/data_batch_1 exists"):
        load_cifar10(tmp_path / CIFAR10_DIR)


def test_missing_test_batch_names_it(cifar):
    parent, _ = cifar
    path = parent / CIFAR10_DIR / "test_batch"
    path.unlink()
    with pytest.raises(DataFileError, match=rf"^{path}: file not found"):
        load_cifar10(parent)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a pickle at all", pickle.dumps({b"data": 1})[:-5], pickle.dumps([1, 2, 3])],
    ids=["empty", "text", "truncated", "list"],
)
def test_corrupt_batch(cifar, content):
    parent, _ = cifar
    path = parent / CIFAR10_DIR / "data_batch_3"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=rf"^{path}: corrupt or not a CIFAR-10 batch"):
        load_cifar10(parent)


X_OK = np.zeros((N_PER_BATCH, 3072), np.uint8)
Y_OK = [0] * N_PER_BATCH


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": Y_OK}, r"no key b'data'"),
        ({b"data": X_OK}, r"no key b'labels'"),
        ({b"data": X_OK.astype(np.int16), b"labels": Y_OK}, r"uint8 array of shape \(N, 3072\)"),
        ({b"data": X_OK[:, :1024], b"labels": Y_OK}, r"got uint8 array of shape \(20, 1024\)"),
        ({b"data": X_OK.reshape(20, 3, 32, 32), b"labels": Y_OK}, r"shape \(N, 3072\)"),
        ({b"data": X_OK.tolist(), b"labels": Y_OK}, r"got list"),
        ({b"data": X_OK, b"labels": Y_OK[:-1]}, r"20 images in b'data' but 19 entries"),
        ({b"data": X_OK, b"labels": [0.5] * 20}, r"must be a list of ints"),
        ({b"data": X_OK, b"labels": [10] * 20}, r"label 10 outside 0\.\.9"),
        ({b"data": X_OK, b"labels": [-1] * 20}, r"label -1 outside 0\.\.9"),
    ],
    ids=["no-data", "no-labels", "int16", "short-rows", "4d", "list-data",
         "count", "float-labels", "label-10", "label-neg"],
)
def test_malformed_batch(cifar, batch, message):
    parent, _ = cifar
    path = write_batch(parent / CIFAR10_DIR / "data_batch_2", batch)
    with pytest.raises(DataFileError, match=rf"^{path}: .*{message}"):
        load_cifar10(parent)


def test_str_keys_are_accepted(cifar):
    parent, _ = cifar
    write_batch(parent / CIFAR10_DIR / "test_batch", {"data": X_OK[:N_TEST], "labels": Y_OK[:N_TEST]})
    assert load_cifar10(parent).x_test.shape == (N_TEST, 3072)


def test_malformed_meta(cifar):
    parent, _ = cifar
    path = write_batch(parent / CIFAR10_DIR / "batches.meta", {b"label_names": [b"cat"]})
    with pytest.raises(DataFileError, match=rf"^{path}: b'label_names' must be a list of 10"):
        load_cifar10(parent)


@pytest.mark.parametrize("split", ["training", "test"])
def test_empty_split_is_refused(cifar, split):
    parent, _ = cifar
    d = parent / CIFAR10_DIR
    empty = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "training" else ["test_batch"]
    for name in names:
        write_batch(d / name, empty)
    with pytest.raises(DataFileError, match=rf"^{d / names[0]}: the {split} split has no images$"):
        load_cifar10(parent, val_size=1)


def test_constant_channel_cannot_be_standardised(tmp_path):
    raw = write_cifar(tmp_path)
    d = tmp_path / CIFAR10_DIR
    for i in range(1, 6):
        x = raw["x_train"][(i - 1) * 20 : i * 20].copy()
        x[:, 1024:2048] = 7  # G constant everywhere
        write_batch(d / f"data_batch_{i}", {b"data": x, b"labels": Y_OK})
    with pytest.raises(DataFileError, match=r"data_batch_1: channel 1 .*cannot standardise"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------- security: restricted unpickling


class OpensFile:
    """A payload: unpickling it calls ``open(marker, "w")``, creating the marker file."""

    func = open  # pickled as io.open

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class MakesDir:
    """A payload: unpickling it calls ``os.mkdir(marker)``, creating the marker directory."""

    func = os.mkdir  # pickled as posix.mkdir

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("payload", [OpensFile, MakesDir], ids=["open", "os.mkdir"])
@pytest.mark.parametrize("where", ["data_batch_1", "valid_data_batch_3", "batches.meta"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_payload_is_refused_and_not_run(cifar, tmp_path, payload, where, protocol):
    parent, raw = cifar
    d = parent / CIFAR10_DIR
    marker = tmp_path / "PWNED"
    if where == "batches.meta":
        path, obj = d / "batches.meta", {b"label_names": NAMES, b"x": payload(marker)}
    elif where == "data_batch_1":
        path, obj = d / "data_batch_1", payload(marker)
    else:  # an otherwise valid batch, the payload in an extra entry
        x, y = raw["x_train"][2 * N_PER_BATCH : 3 * N_PER_BATCH], raw["y_train"][40:60].tolist()
        path, obj = d / "data_batch_3", {b"data": x, b"labels": y, b"x": [payload(marker)]}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    with pytest.raises(DataFileError, match=rf"^{path}: refused, not a CIFAR-10 batch") as err:
        load_cifar10(parent)
    assert f"names {payload.func.__module__}.{payload.func.__name__}," in str(err.value)
    assert not marker.exists()


def test_codecs_encode_is_only_latin1(cifar):
    """``_codecs.encode`` is admitted for the bytes of protocol-2 pickles, with latin-1 only."""
    parent, _ = cifar
    path = parent / CIFAR10_DIR / "data_batch_2"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\n\x00\x00\x00zlib_codec\x86R.")
    with pytest.raises(DataFileError, match=rf"^{path}: refused.*'zlib_codec'"):
        load_cifar10(parent)


PROTOCOLS = sorted({0, 2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_format_batches_load_under_every_protocol(cifar, protocol):
    parent, raw = cifar
    d = parent / CIFAR10_DIR
    x, y = raw["x_train"][:N_PER_BATCH], raw["y_train"][:N_PER_BATCH]
    batch = {b"batch_label": b"training batch 1 of 5", b"data": x, b"labels": y.tolist(),
             b"filenames": [b"a.png"] * N_PER_BATCH, b"empty": b"", b"scalar": np.int64(3)}
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": NAMES, b"num_cases_per_batch": 10000}, f, protocol=protocol)
    data = load_cifar10(parent)
    np.testing.assert_array_equal(data.y_train, raw["y_train"])
    assert data.class_names == tuple(n.decode() for n in NAMES)
    np.testing.assert_array_equal(load_cifar10(parent).x_train, data.x_train)
    back = unstandardise(data, data.x_train[:N_PER_BATCH]).reshape(N_PER_BATCH, -1) * 255.0
    np.testing.assert_allclose(back, x, atol=1e-3)


def test_numpy_1x_module_names_load(cifar):
    """A protocol-2 batch written under NumPy 1.x names ``numpy.core.multiarray``; under
    NumPy 2.x ``numpy._core.multiarray``: both spellings load."""
    parent, raw = cifar
    path = parent / CIFAR10_DIR / "data_batch_1"
    x = raw["x_train"][:N_PER_BATCH]
    blob = pickle.dumps({b"data": x, b"labels": raw["y_train"][:N_PER_BATCH].tolist()}, protocol=2)
    for old, new in [(b"numpy._core.multiarray", b"numpy.core.multiarray"),
                     (b"numpy.core.multiarray", b"numpy._core.multiarray")]:
        path.write_bytes(blob.replace(old, new))
        data = load_cifar10(parent)
        back = unstandardise(data, data.x_train[:N_PER_BATCH]).reshape(N_PER_BATCH, -1) * 255.0
        np.testing.assert_allclose(back, x, atol=1e-3)
