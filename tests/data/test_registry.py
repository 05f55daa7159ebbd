"""Tests of sparse_eoc.data.registry: load_image_dataset dispatches by name."""

from __future__ import annotations

import numpy as np
import pytest

from sparse_eoc.data import (
    DATASET_LOADERS,
    MNIST_FILES,
    ImageDataset,
    load_cifar10,
    load_image_dataset,
    load_mnist,
)

from dataset_files import write_cifar, write_idx

FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def test_load_image_dataset_mnist(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (30, 5, 4), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 30).astype(np.uint8),
        "test_images": rng.integers(0, 256, (8, 5, 4), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 8).astype(np.uint8),
    }
    for role, arr in arrays.items():
        write_idx(tmp_path / MNIST_FILES[role], arr)
    data = load_image_dataset("mnist", tmp_path, val_size=6, seed=2)
    ref = load_mnist(tmp_path, val_size=6, seed=2)
    assert isinstance(data, ImageDataset)
    assert data.image_shape == (1, 5, 4) and data.input_dim == 20
    assert len(data.mean) == 1 and data.mean == ref.mean and data.std == ref.std
    assert data.num_classes == ref.num_classes and data.class_names == ()
    assert data.mean_square_input == ref.mean_square_input
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(data, field), getattr(ref, field))


def test_load_image_dataset_cifar10(tmp_path):
    write_cifar(tmp_path)
    data = load_image_dataset("cifar10", tmp_path, val_size=10, seed=1)
    ref = load_cifar10(tmp_path, val_size=10, seed=1)
    assert data.image_shape == (3, 32, 32) and data.mean == ref.mean
    np.testing.assert_array_equal(data.x_val, ref.x_val)


def test_load_image_dataset_unknown_name(tmp_path):
    with pytest.raises(ValueError, match=r"name must be one of 'mnist', 'cifar10', got name='svhn'"):
        load_image_dataset("svhn", tmp_path)
    assert set(DATASET_LOADERS) == {"mnist", "cifar10"}
