"""The main job on the full MNIST (slow: about 1.5 minutes a run on 2 cores)."""

import pytest

from sparse_eoc.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_crelu_085_depth30_trains_at_target_sparsity(tmp_path, mnist_dir):
    config = TrainConfig(activation="crelu", sparsity=0.85, slope=0.7, depth=30, width=300, epochs=5,
                         data_dir=str(mnist_dir))
    result = train(config, tmp_path, progress=False)
    assert result["status"] == "completed"
    assert result["test_accuracy"] >= 0.85
    assert result["train_sparsity"] == pytest.approx(0.85, abs=0.02)
    assert result["test_sparsity"] == pytest.approx(0.85, abs=0.02)


def test_unclipped_relu_tau_085_depth30_fails(tmp_path, mnist_dir):
    config = TrainConfig(activation="relu_tau", sparsity=0.85, depth=30, width=300, epochs=5,
                         data_dir=str(mnist_dir))
    result = train(config, tmp_path, progress=False)
    assert result["status"] == "diverged" or result["test_accuracy"] < 0.2
