"""Sparsify a trained residual CNN: MNIST accuracy before and after ``sparse_eoc.sparsify``, and after fine-tuning.

The network (:class:`SmallResNet`, 4 ``BasicBlock`` s in the style of torchvision's ResNet, each
with one ``nn.ReLU`` applied twice; 9 activation sites) is trained with ReLU for ``--epochs``
epochs (Adam, batch 128) on the first ``--train-size`` MNIST training images. Then, for each
``--sparsities`` s, a copy is sparsified in eval mode (``init="keep"``, CReLU, slope 0.7,
calibrated on the first ``--calibration-size`` training images), evaluated, fine-tuned for
``--finetune-epochs`` epochs (Adam at ``--finetune-lr``, tau and m fixed) and evaluated again.
Accuracy is on the 10,000 test images; "sparsity" is the fraction of zeros over all activation
outputs on them (for ReLU: its own zeros).

Printed: one line of settings, the report of the first sparsify call, then a Markdown table
(model, sparsity, test accuracy, seconds), one row per stage.

    python benchmarks/sparsify_cnn.py --data-dir ../shared/data/mnist                  # the README table
    python benchmarks/sparsify_cnn.py --data-dir DIR --train-size 512 --test-size 500  # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sparse_eoc
from sparse_eoc.data import load_mnist
from sparse_eoc.nn import measure_sparsity

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


class BasicBlock(nn.Module):
    """x -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> + shortcut(x) -> ReLU (one ReLU module, two sites)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SmallResNet(nn.Module):
    """A ResNet-shaped MNIST CNN: stem conv (stride 2) -> 4 BasicBlocks -> average pool -> linear.

    Shapes for ``width`` w: (B, 1, 28, 28) -> stem (B, w, 14, 14) -> blocks (B, w, 14, 14),
    (B, 2w, 7, 7), (B, 2w, 7, 7), (B, 4w, 4, 4) -> (B, 4w) -> (B, 10).
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(BasicBlock(width, width), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 2 * width), BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.relu(self.bn1(self.conv1(x))))  # (B, 4w, 4, 4)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, 4w) -> (B, classes)


def load(data_dir: str | Path, train_size: int | None = None, test_size: int | None = None):
    """MNIST as ((x_train, y_train), (x_test, y_test)): images (N, 1, 28, 28) standardised, labels (N,)."""
    data = load_mnist(data_dir)

    def images(x, n):
        return torch.from_numpy(x[:n]).reshape(-1, 1, 28, 28)  # (N, 784) -> (N, 1, 28, 28)

    return ((images(data.x_train, train_size), torch.from_numpy(data.y_train[:train_size])),
            (images(data.x_test, test_size), torch.from_numpy(data.y_test[:test_size])))


def train_epoch(model: nn.Module, x: Tensor, y: Tensor, optimizer, *, batch_size: int = 128,
                generator: torch.Generator | None = None) -> float:
    """One epoch of cross-entropy minibatch training in train mode, shuffled by ``generator``; the mean loss."""
    model.train()
    order, total = torch.randperm(len(x), generator=generator), 0.0
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` classified as ``y``, in eval mode."""
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


@torch.no_grad()
def zero_fraction(model: nn.Module, x: Tensor, batch_size: int = 1000) -> float:
    """Fraction of zeros over all outputs of the model's activation modules (ReLU or sparse sites), eval mode."""
    model.eval()
    counts = [0, 0]

    def hook(module, args, out):
        counts[0] += int((out == 0).sum())
        counts[1] += out.numel()

    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, sparse_eoc.nn.SparseActivation))]
    handles = [m.register_forward_hook(hook) for m in acts]
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for h in handles:
        h.remove()
    return counts[0] / counts[1]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DATA_DIR))
    parser.add_argument("--train-size", type=int, default=60000, help="first N training images (default all)")
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1, help="ReLU training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr", type=float, default=3e-4)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.7, 0.85])
    parser.add_argument("--activation", default="crelu")
    parser.add_argument("--calibration-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    (x, y), (x_test, y_test) = load(args.data_dir, args.train_size, args.test_size)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; MNIST {len(x)} train / {len(x_test)} test, "
          f"SmallResNet width {args.width}, {args.activation}, seed {args.seed}")
    torch.manual_seed(args.seed)
    relu = SmallResNet(args.width)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        train_epoch(relu, x, y, torch.optim.Adam(relu.parameters(), lr=args.lr),
                    generator=torch.Generator().manual_seed(args.seed + epoch))
    rows = [{"model": f"ReLU, trained {args.epochs} epoch(s)", "sparsity": zero_fraction(relu, x_test),
             "accuracy": accuracy(relu, x_test, y_test), "seconds": time.perf_counter() - t0}]
    calibration = x[:args.calibration_size].split(256)  # batches of 256 training images
    for s in args.sparsities:
        model = copy.deepcopy(relu).eval()
        t0 = time.perf_counter()
        report = sparse_eoc.sparsify(model, s, activation=args.activation, calibration=calibration, init="keep")
        if s == args.sparsities[0]:
            print(report)
        rows.append({"model": f"sparsify s={s:g}", "sparsity": zero_fraction(model, x_test),
                     "accuracy": accuracy(model, x_test, y_test), "seconds": time.perf_counter() - t0})
        t0 = time.perf_counter()
        optimizer = torch.optim.Adam(model.parameters(), lr=args.finetune_lr)
        for epoch in range(args.finetune_epochs):
            train_epoch(model, x, y, optimizer, generator=torch.Generator().manual_seed(args.seed + 100 + epoch))
        per_site = measure_sparsity(model.eval(), x_test[:1000])
        rows.append({"model": f"sparsify s={s:g} + {args.finetune_epochs} epoch(s) fine-tuning",
                     "sparsity": zero_fraction(model, x_test), "accuracy": accuracy(model, x_test, y_test),
                     "seconds": time.perf_counter() - t0,
                     "site_range": (min(per_site.values()), max(per_site.values()))})

    print("\n| model | sparsity (test) | test accuracy | seconds |\n|---|---|---|---|")
    for row in rows:
        spread = f" (sites {row['site_range'][0]:.2f}-{row['site_range'][1]:.2f})" if "site_range" in row else ""
        print(f"| {row['model']} | {row['sparsity']:.3f}{spread} | {100 * row['accuracy']:.2f} % | "
              f"{row['seconds']:.0f} |")
    return rows


if __name__ == "__main__":
    main()
