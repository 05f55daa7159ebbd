"""Training-step cost of a metered sparse network against a plain ReLU network of the same shape.

Model A: ``SparseMLP`` or ``SparseCNN`` (default CReLU at sparsity 0.85, V'(q*) = 0.5,
q* = 1, EoC init) with a :class:`~sparse_eoc.nn.SparsityMeter` attached. Model B: an
``nn.Sequential`` of the same shape with ``nn.ReLU`` (``--model mlp``: Linear + ReLU;
``--model cnn``: Conv2d 3x3 same-padding + ReLU, global average pooling, Linear;
EoC ReLU init, sigma_w^2 = 2, sigma_b^2 = 0). A step is forward, cross-entropy,
backward and an SGD-with-momentum update on a batch of random N(0, 1) inputs
(784 features, or 1 x 28 x 28 images) and random labels (10 classes). Both models
live in the same process and are timed alternately (A, B, A, B, ...) after a
warm-up, so drift on a noisy machine hits both. ``--channels-last`` puts both CNNs
and their inputs in channels-last memory format.

Modes:
    default    per-step times; ratio = median(A) / median(B)
    --epoch    ``--epoch-repeats`` whole passes over ``--examples`` random examples
               (shuffled, minibatch gather included); the two models' epochs are
               interleaved batch by batch; ratio = median(A) / median(B) epoch time

The last line printed is always ``ratio: X`` (3 decimals) for the mode run.

    python benchmarks/train_step.py [--epoch] [--steps 100] [--no-meter]
    python benchmarks/train_step.py --model cnn --depth 10 --channels 32 [--channels-last]
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from sparse_eoc.gp import solve_eoc
from sparse_eoc.nn import SparseCNN, SparseMLP, SparsityMeter, init_eoc_, input_weight_variance

def eoc_params(activation: str, sparsity: float, slope: float) -> dict:
    """(tau, m, sigma_w2, sigma_b2) of the EoC point at q* = 1."""
    clipped = activation in ("crelu", "cst")
    p = solve_eoc(activation, sparsity, 1.0, slope=slope if clipped else None)
    return dict(tau=p.tau, m=p.m, sigma_w2=p.sigma_w2, sigma_b2=p.sigma_b2)


def relu_sequential(in_features: int, num_classes: int, depth: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width, num_classes))
    return _relu_init(nn.Sequential(*layers))


def relu_cnn(in_channels: int, num_classes: int, depth: int, channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]  # (B, C, 1, 1) -> (B, C)
    return _relu_init(nn.Sequential(*layers))


def _relu_init(model: nn.Sequential) -> nn.Sequential:
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                layer.weight.normal_(0.0, math.sqrt(2.0 / layer.weight[0].numel()))  # fan_in
                layer.bias.zero_()
    return model


def make_step(model: nn.Module, lr: float):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages the allocator handed out)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(step_a, step_b, x, y, warmup: int, steps: int) -> tuple[list[float], list[float], list[int]]:
    """Per-step wall times of A and B, alternating, and each model's total minor page faults."""
    for _ in range(warmup):
        step_a(x, y)
        step_b(x, y)
    ta, tb, faults = [], [], [0, 0]
    for _ in range(steps):
        for i, (step, times) in enumerate(((step_a, ta), (step_b, tb))):
            f0, t0 = minor_faults(), time.perf_counter()
            step(x, y)
            times.append(time.perf_counter() - t0)
            faults[i] += minor_faults() - f0
    return ta, tb, faults


def time_epochs(step_a, step_b, xs, ys, batch: int, repeats: int) -> tuple[list[float], list[float]]:
    """Per-epoch wall time of each model over ``repeats`` passes through (xs, ys).

    The two models' epochs are interleaved batch by batch (A then B on batch i, B then
    A on batch i + 1), each timing its own minibatch gather + step, so a load spike
    on the shared machine lands on both; an epoch's time is the sum over its batches.
    """
    n = xs.shape[0]
    ta, tb = [], []
    for r in range(repeats):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(r))  # (N,)
        sums = {"a": 0.0, "b": 0.0}
        for k, i in enumerate(range(0, n, batch)):
            idx = perm[i:i + batch]  # (batch,)
            order = (("a", step_a), ("b", step_b)) if k % 2 == 0 else (("b", step_b), ("a", step_a))
            for key, step in order:
                t0 = time.perf_counter()
                step(xs[idx], ys[idx])  # (batch, *input_shape), (batch,)
                sums[key] += time.perf_counter() - t0
        ta.append(sums["a"])
        tb.append(sums["b"])
    return ta, tb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--activation", default="crelu")
    p.add_argument("--sparsity", type=float, default=0.85)
    p.add_argument("--slope", type=float, default=0.5, help="target V'(q*) for crelu/cst")
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--width", type=int, default=300, help="MLP width")
    p.add_argument("--channels", type=int, default=32, help="CNN channels")
    p.add_argument("--channels-last", action="store_true", help="CNN: channels-last memory format")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per model")
    p.add_argument("--steps", type=int, default=100, help="timed steps per model (>= 50)")
    p.add_argument("--epoch", action="store_true", help="time whole epochs instead of steps")
    p.add_argument("--examples", type=int, default=60000, help="examples per epoch (--epoch)")
    p.add_argument("--epoch-repeats", type=int, default=3, help="epochs per model (--epoch)")
    p.add_argument("--no-meter", action="store_true", help="run model A without sparsity metering")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    num_classes = 10
    input_shape = (784,) if args.model == "mlp" else (1, 28, 28)
    prm = eoc_params(args.activation, args.sparsity, args.slope)
    act = (args.activation, prm["tau"], prm["m"])
    if args.model == "mlp":
        model_a = SparseMLP(784, num_classes, args.depth, args.width, *act)
        model_b = relu_sequential(784, num_classes, args.depth, args.width)
        shape = f"width={args.width}"
    else:
        model_a = SparseCNN(1, num_classes, args.depth, args.channels, *act)
        model_b = relu_cnn(1, num_classes, args.depth, args.channels)
        shape = f"channels={args.channels}, 28 x 28 inputs"
    sw2_in = input_weight_variance(1.0, prm["sigma_b2"], 1.0)  # inputs N(0, 1): q^1 = q* = 1
    init_eoc_(model_a, prm["sigma_w2"], prm["sigma_b2"], input_sigma_w2=sw2_in)
    fmt = torch.channels_last if args.channels_last and args.model == "cnn" else torch.contiguous_format
    model_a, model_b = model_a.to(memory_format=fmt), model_b.to(memory_format=fmt)
    meter = SparsityMeter()
    if not args.no_meter:
        model_a.meter = meter
    step_a, step_b = make_step(model_a, args.lr), make_step(model_b, args.lr)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"A: {args.model} {args.activation} tau={prm['tau']:.4f} m={prm['m']:.4f} depth={args.depth} {shape} "
          f"meter={'off' if args.no_meter else 'on'};  B: nn.Sequential with nn.ReLU; memory format {fmt}")

    if args.epoch:
        xs = torch.randn(args.examples, *input_shape).contiguous(memory_format=fmt)  # (N, 784) or (N, 1, 28, 28)
        ys = torch.randint(0, num_classes, (args.examples,))  # (N,)
        x, y = xs[: args.batch], ys[: args.batch]
        time_steps(step_a, step_b, x, y, args.warmup, 0)
        faults = None
        ta, tb = time_epochs(step_a, step_b, xs, ys, args.batch, args.epoch_repeats)
        unit, scale = "s/epoch", 1.0
    else:
        x = torch.randn(args.batch, *input_shape).contiguous(memory_format=fmt)  # (B, 784) or (B, 1, 28, 28)
        y = torch.randint(0, num_classes, (args.batch,))  # (B,)
        ta, tb, faults = time_steps(step_a, step_b, x, y, args.warmup, args.steps)
        unit, scale = "ms/step", 1e3
    ma, mb = statistics.median(ta), statistics.median(tb)
    print(f"A median {ma * scale:.3f} {unit} (min {min(ta) * scale:.3f}), "
          f"B median {mb * scale:.3f} {unit} (min {min(tb) * scale:.3f}), n={len(ta)} each")
    if faults is not None:  # a fresh page per 4 KiB the allocator maps anew: ~0.5 us each
        print(f"minor page faults per step: A {faults[0] / len(ta):.0f}, B {faults[1] / len(tb):.0f}")
    if not args.no_meter:
        print(f"A sparsity over {meter.num_examples} examples: overall {meter.overall():.4f}, "
              f"layers 1/{args.depth}: {meter.per_layer()[0]:.4f}/{meter.per_layer()[-1]:.4f}")
    model_a.meter = None
    with torch.no_grad():
        losses = [F.cross_entropy(m(x), y).item() for m in (model_a, model_b)]
    print(f"final loss A {losses[0]:.4f}, B {losses[1]:.4f}")
    print(f"ratio: {ma / mb:.3f}")


if __name__ == "__main__":
    main()
