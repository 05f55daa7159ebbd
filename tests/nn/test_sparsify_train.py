"""sparsify(init="eoc") trains: a ResNet-shaped MNIST CNN at sparsity 0.7, one epoch, against ReLU (slow).

The network, data loading and training loop are those of ``benchmarks/sparsify_cnn.py``
(loaded from its file): ``SmallResNet`` (stem + 4 BasicBlocks, BatchNorm, 9 activation sites),
Adam at 1e-3, batch 128, all 60,000 training images once, accuracy on the 10,000 test images.
About 2-3 minutes on a 2-core CPU. Needs the real MNIST (see tests/conftest.py).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from sparse_eoc.nn.sparsify import sparsify

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sparsify_cnn.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sparsify_cnn_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_eoc_init_resnet_trains_within_two_points_of_relu(bench, mnist_dir):
    (x, y), (x_test, y_test) = bench.load(mnist_dir)
    accuracies = {}
    for kind in ("relu", "sparse"):
        torch.manual_seed(0)
        model = bench.SmallResNet(16).train()
        if kind == "sparse":  # train mode: BatchNorm normalises with batch statistics, as in training
            report = sparsify(model, 0.7, calibration=x[:1024].split(256), init="eoc",
                              generator=torch.Generator().manual_seed(1))
            assert len(report) == 9 and all(row.reinitialised for row in report)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        bench.train_epoch(model, x, y, optimizer, generator=torch.Generator().manual_seed(2))
        accuracies[kind] = bench.accuracy(model, x_test, y_test)
    sparsity = bench.zero_fraction(model, x_test)
    print(f"\none epoch: ReLU {accuracies['relu']:.4f}, crelu s=0.7 init=eoc {accuracies['sparse']:.4f} "
          f"(test sparsity after training {sparsity:.3f})")
    assert accuracies["sparse"] >= accuracies["relu"] - 0.02, (accuracies, sparsity)
    assert accuracies["relu"] > 0.95  # the comparison is between two networks that learned
