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
    --kernels  (``--model mlp``; ``dense``, ``sparse`` or ``auto``) the training kernels of
               model A, :func:`sparse_eoc.nn.sparse_linear.set_kernels_`. A third model C,
               the same SparseMLP with the same init and ``dense`` kernels, is timed too
               (A, B, C, A, B, C, ...); speedup = median(B) / median(A), the reverse of
               ``ratio``. Printed, after the settings: the median step times of A, B, C;
               their minor page faults per step; A's step split into forward (loss
               included), backward and optimizer (zero_grad included), each the median
               over steps; A's sparsity; the final losses (A and C agree: same init,
               same steps, exact kernels); the growth of the peak resident memory
               (Linux ``VmHWM``, else ``ru_maxrss``) over ``PEAK_MEMORY_STEPS`` SGD steps
               of A and of B, each in a fresh process of this script, from just before
               the first step, the high-water mark first reset to the current resident
               size (``/proc/self/clear_refs``); then
               ``speedup (dense kernels): X`` = median(B) / median(C), ``speedup (adam): Y``
               = median(B) / median(A) with both trained by Adam (``--adam-steps`` steps,
               fresh models with the same init) and last ``speedup: X``. Numba compiles
               the kernels on a tiny model before anything is timed or measured.

The last line printed is always ``ratio: X`` (3 decimals) for the default and
``--epoch`` modes, ``speedup: X`` (3 decimals) with ``--kernels``.

    python benchmarks/train_step.py [--epoch] [--steps 100] [--no-meter]
    python benchmarks/train_step.py --model cnn --depth 10 --channels 32 [--channels-last]
    python benchmarks/train_step.py --kernels sparse --width 1000 --depth 30 [--threads 2]
        [--sparsity 0.85] [--batch-size 128] [--adam-steps 50]
"""

from __future__ import annotations

from sparse_eoc.kernels import short_omp_spin

short_omp_spin()  # before torch is imported, as the CLI's train and sweep do

import argparse
import os
import copy
import ctypes
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sparse_eoc.gp import solve_eoc
from sparse_eoc.nn import (
    SparseCNN,
    SparseMLP,
    SparsityMeter,
    init_eoc_,
    input_weight_variance,
)
from sparse_eoc.nn.sparse_linear import KERNEL_CHOICES, kernels_available, set_kernels_

NUM_CLASSES = 10  # random labels in 0..9
PEAK_MEMORY_STEPS = 5  # training steps of the --kernels mode's peak-memory measurement

def eoc_params(activation: str, sparsity: float, slope: float) -> dict:
    """(tau, m, sigma_w2, sigma_b2) of the EoC point at q* = 1."""
    clipped = activation in ("crelu", "cst")
    p = solve_eoc(activation, sparsity, 1.0, slope=slope if clipped else None)
    return {"tau": p.tau, "m": p.m, "sigma_w2": p.sigma_w2, "sigma_b2": p.sigma_b2}


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


def make_step(model: nn.Module, lr: float, optimizer: str = "sgd", phases: list | None = None):
    """A training step ``step(x, y) -> loss``: zero_grad, forward, cross-entropy, backward, update.

    Args:
        optimizer: ``sgd`` (momentum 0.9) or ``adam`` (torch's defaults), both at ``lr``.
        phases: if given, each step appends its (forward + loss, backward, optimizer) wall
            times in seconds, zero_grad counted with the optimizer.
    """
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def timed_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        phases.append((t2 - t1, t3 - t2, t4 - t3 + t1 - t0))
        return loss

    return step if phases is None else timed_step


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages the allocator handed out)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(steps_of, x, y, warmup: int, steps: int) -> tuple[list[list[float]], list[int]]:
    """Per-step wall times of each model in ``steps_of`` (a sequence of step functions),
    round robin (A, B, A, B, ... or A, B, C, A, B, C, ...) after ``warmup`` untimed rounds,
    and each model's total minor page faults over the timed steps."""
    for _ in range(warmup):
        for step in steps_of:
            step(x, y)
    times: list[list[float]] = [[] for _ in steps_of]
    faults = [0] * len(steps_of)
    for _ in range(steps):
        for i, step in enumerate(steps_of):
            f0, t0 = minor_faults(), time.perf_counter()
            step(x, y)
            times[i].append(time.perf_counter() - t0)
            faults[i] += minor_faults() - f0
    return times, faults


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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--activation", default="crelu")
    p.add_argument("--sparsity", type=float, default=0.85)
    p.add_argument("--slope", type=float, default=0.5, help="target V'(q*) for crelu/cst")
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--width", type=int, default=300, help="MLP width")
    p.add_argument("--channels", type=int, default=32, help="CNN channels")
    p.add_argument("--channels-last", action="store_true", help="CNN: channels-last memory format")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per model")
    p.add_argument("--steps", type=int, default=100, help="timed steps per model (>= 50)")
    p.add_argument("--epoch", action="store_true", help="time whole epochs instead of steps")
    p.add_argument("--examples", type=int, default=60000, help="examples per epoch (--epoch)")
    p.add_argument("--epoch-repeats", type=int, default=3, help="epochs per model (--epoch)")
    p.add_argument("--no-meter", action="store_true", help="run model A without sparsity metering")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default=None,
                   help="training kernels of model A (--model mlp); adds model C (dense kernels), "
                        "peak memory and Adam; the last line becomes 'speedup: X'")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch.set_num_threads(T), also the sparse kernels' threads (default: torch's default)")
    p.add_argument("--adam-steps", type=positive_int, default=None,
                   help="timed Adam steps per model (--kernels; default: half of --steps, at least 1)")
    p.add_argument("--_peak-memory", choices=["a", "b"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.kernels not in (None, "dense") and args.model != "mlp":
        p.error(f"argument --kernels: --kernels {args.kernels} needs --model mlp "
                f"(the CNN trains with dense kernels only), got --model {args.model}")
    if args.kernels is not None and args.epoch:
        p.error("argument --kernels: --kernels times steps; it does not combine with --epoch")
    if args._peak_memory is not None and args.kernels is None:
        p.error("argument --_peak-memory: internal to --kernels")
    return args


def build_models(args: argparse.Namespace, prm: dict) -> tuple[nn.Module, nn.Sequential, str, torch.memory_format]:
    """Model A (EoC init, dense kernels, no meter) and model B, drawn from torch's global RNG
    in a fixed order (seed it first); also a description of the shape and the memory format."""
    act = (args.activation, prm["tau"], prm["m"])
    if args.model == "mlp":
        model_a = SparseMLP(784, NUM_CLASSES, args.depth, args.width, *act)
        model_b = relu_sequential(784, NUM_CLASSES, args.depth, args.width)
        shape = f"width={args.width}"
    else:
        model_a = SparseCNN(1, NUM_CLASSES, args.depth, args.channels, *act)
        model_b = relu_cnn(1, NUM_CLASSES, args.depth, args.channels)
        shape = f"channels={args.channels}, 28 x 28 inputs"
    sw2_in = input_weight_variance(1.0, prm["sigma_b2"], 1.0)  # inputs N(0, 1): q^1 = q* = 1
    init_eoc_(model_a, prm["sigma_w2"], prm["sigma_b2"], input_sigma_w2=sw2_in)
    fmt = torch.channels_last if args.channels_last and args.model == "cnn" else torch.contiguous_format
    return model_a.to(memory_format=fmt), model_b.to(memory_format=fmt), shape, fmt


def random_batch(args: argparse.Namespace, n: int, fmt: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """n random N(0, 1) inputs, (n, 784) or (n, 1, 28, 28), and n random labels (n,), from the global RNG."""
    input_shape = (784,) if args.model == "mlp" else (1, 28, 28)
    x = torch.randn(n, *input_shape).contiguous(memory_format=fmt)  # (n, 784) or (n, 1, 28, 28)
    y = torch.randint(0, NUM_CLASSES, (n,))  # (n,)
    return x, y


def compile_kernels(args: argparse.Namespace, prm: dict) -> None:
    """One SGD step of a tiny depth-2, width-8 SparseMLP with sparse kernels (dense ones when
    ``--kernels dense`` or without numba) and of a tiny ReLU MLP, batch 4: numba compiles (or
    loads from its cache) the kernels and the thread pools start before anything is timed or
    measured. Leaves torch's global RNG as it was."""
    tiny = argparse.Namespace(**{**vars(args), "model": "mlp", "depth": 2, "width": 8, "channels_last": False})
    kernels = "sparse" if args.kernels != "dense" and kernels_available() else "dense"
    with torch.random.fork_rng(devices=[]):
        model_a, model_b, _, fmt = build_models(tiny, prm)
        x, y = random_batch(tiny, 4, fmt)
        make_step(set_kernels_(model_a, kernels), args.lr)(x, y)
        make_step(model_b, args.lr)(x, y)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far: ``VmHWM`` of ``/proc/self/status`` (Linux),
    else ``ru_maxrss`` (KiB on Linux, bytes on macOS).

    Not ``ru_maxrss`` on Linux: a process started by fork + exec inherits in it the peak of
    the process that started it, and ``clear_refs`` does not lower it (measured: a child of a
    300 MiB Python process reports ``ru_maxrss`` 321 MiB at start, ``VmHWM`` 13 MiB), so
    every step of a child of this script would seem to take no memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # "VmHWM:   13580 kB"
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def reset_peak_rss() -> bool:
    """Lower this process's peak resident memory to its current resident memory (Linux >= 4.0:
    ``5`` into ``/proc/self/clear_refs``), so that a later :func:`peak_rss_bytes` measures what comes
    after, not an earlier peak (imports, compilation). First hands the allocator's free pages
    back to the system (glibc's ``malloc_trim``), so that memory the steps reuse counts too.
    False where the reset is not possible."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_memory_child(args: argparse.Namespace, prm: dict) -> None:
    """``--_peak-memory a|b``: print, as one JSON line, the growth of the peak resident memory
    (:func:`peak_rss_bytes`) in MiB over ``PEAK_MEMORY_STEPS`` SGD steps of model A
    (``--kernels``, metered unless ``--no-meter``) or of model B, from just before the first
    step (after the models, the batch, the optimizer and :func:`compile_kernels`), and whether
    the high-water mark could be reset."""
    torch.manual_seed(args.seed)
    model_a, model_b, _, fmt = build_models(args, prm)
    if args._peak_memory == "a":
        model = set_kernels_(model_a, args.kernels)
        if not args.no_meter:
            model.meter = SparsityMeter()
    else:
        model = model_b  # the other model stays alive: freeing it would leave free pages for the steps
    step = make_step(model, args.lr)
    x, y = random_batch(args, args.batch, fmt)
    compile_kernels(args, prm)
    gc.collect()
    reset = reset_peak_rss()
    before = peak_rss_bytes()
    for _ in range(PEAK_MEMORY_STEPS):
        step(x, y)
    print(json.dumps({"growth_mib": (peak_rss_bytes() - before) / 2**20, "hwm_reset": reset}))


def peak_memory_in_subprocess(argv: list[str], which: str) -> dict:
    """Run this script with ``argv`` and ``--_peak-memory which`` in a fresh process; its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_peak-memory", which]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the peak-memory subprocess for model {which.upper()} failed "
                           f"(exit code {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def run_kernels(args: argparse.Namespace, prm: dict, argv: list[str]) -> None:
    """The ``--kernels`` mode (see the module docstring); the last line is ``speedup: X``."""
    torch.manual_seed(args.seed)
    model_a, model_b, shape, fmt = build_models(args, prm)
    model_c = copy.deepcopy(model_a)  # the same init
    set_kernels_(model_a, args.kernels)  # before the optimizers: it may change the weights' layout
    set_kernels_(model_c, "dense")
    meter_a, meter_c = SparsityMeter(), SparsityMeter()
    if not args.no_meter:
        model_a.meter, model_c.meter = meter_a, meter_c
    phases: list[tuple[float, float, float]] = []
    steps_of = (make_step(model_a, args.lr, phases=phases), make_step(model_b, args.lr), make_step(model_c, args.lr))
    x, y = random_batch(args, args.batch, fmt)
    compile_kernels(args, prm)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"A: {args.model} {args.activation} tau={prm['tau']:.4f} m={prm['m']:.4f} depth={args.depth} {shape} "
          f"meter={'off' if args.no_meter else 'on'} kernels={args.kernels};  B: nn.Sequential with nn.ReLU;  "
          f"C: A's network and init with kernels=dense; batch {args.batch}; memory format {fmt}")
    (ta, tb, tc), faults = time_steps(steps_of, x, y, args.warmup, args.steps)
    ma, mb, mc = (statistics.median(t) for t in (ta, tb, tc))
    print(f"SGD-momentum: A median {ma * 1e3:.3f} ms/step (min {min(ta) * 1e3:.3f}), "
          f"B median {mb * 1e3:.3f} ms/step (min {min(tb) * 1e3:.3f}), "
          f"C median {mc * 1e3:.3f} ms/step (min {min(tc) * 1e3:.3f}), n={len(ta)} each")
    print(f"minor page faults per step: A {faults[0] / len(ta):.0f}, B {faults[1] / len(tb):.0f}, "
          f"C {faults[2] / len(tc):.0f}")
    split = [statistics.median(p[i] for p in phases[-args.steps:]) * 1e3 for i in range(3)]
    print(f"A step split (medians over steps, ms): forward+loss {split[0]:.3f}, backward {split[1]:.3f}, "
          f"optimizer {split[2]:.3f} (zero_grad included)")
    if not args.no_meter:
        print(f"A sparsity over {meter_a.num_examples} examples: overall {meter_a.overall():.4f}, "
              f"layers 1/{args.depth}: {meter_a.per_layer()[0]:.4f}/{meter_a.per_layer()[-1]:.4f}")
    model_a.meter = model_c.meter = None
    with torch.no_grad():
        losses = [F.cross_entropy(m(x), y).item() for m in (model_a, model_b, model_c)]
    print(f"final loss A {losses[0]:.4f}, B {losses[1]:.4f}, C {losses[2]:.4f}")

    torch.manual_seed(args.seed)  # fresh models, the same init as above
    adam_a, adam_b, _, _ = build_models(args, prm)
    set_kernels_(adam_a, args.kernels)
    if not args.no_meter:
        adam_a.meter = SparsityMeter()
    adam_steps = args.adam_steps or max(1, args.steps // 2)
    (ta_adam, tb_adam), _ = time_steps((make_step(adam_a, args.lr, "adam"), make_step(adam_b, args.lr, "adam")),
                                       x, y, args.warmup, adam_steps)
    ma_adam, mb_adam = statistics.median(ta_adam), statistics.median(tb_adam)
    print(f"Adam: A median {ma_adam * 1e3:.3f} ms/step (min {min(ta_adam) * 1e3:.3f}), "
          f"B median {mb_adam * 1e3:.3f} ms/step (min {min(tb_adam) * 1e3:.3f}), n={adam_steps} each")

    mem = {which: peak_memory_in_subprocess(argv, which) for which in ("a", "b")}
    note = "" if all(m["hwm_reset"] for m in mem.values()) else " (high-water mark not reset: lower bounds)"
    print(f"peak memory growth over {PEAK_MEMORY_STEPS} SGD steps, each model in a fresh process: "
          f"A {mem['a']['growth_mib']:.1f} MiB, B {mem['b']['growth_mib']:.1f} MiB{note}")
    print(f"speedup (dense kernels): {mb / mc:.3f}")
    print(f"speedup (adam): {mb_adam / ma_adam:.3f}")
    print(f"speedup: {mb / ma:.3f}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prm = eoc_params(args.activation, args.sparsity, args.slope)
    if args._peak_memory is not None:
        peak_memory_child(args, prm)
        return
    if args.kernels is not None:
        run_kernels(args, prm, argv)
        return

    torch.manual_seed(args.seed)
    model_a, model_b, shape, fmt = build_models(args, prm)
    meter = SparsityMeter()
    if not args.no_meter:
        model_a.meter = meter
    step_a, step_b = make_step(model_a, args.lr), make_step(model_b, args.lr)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"A: {args.model} {args.activation} tau={prm['tau']:.4f} m={prm['m']:.4f} depth={args.depth} {shape} "
          f"meter={'off' if args.no_meter else 'on'};  B: nn.Sequential with nn.ReLU; memory format {fmt}")

    if args.epoch:
        xs, ys = random_batch(args, args.examples, fmt)  # (N, 784) or (N, 1, 28, 28), (N,)
        x, y = xs[: args.batch], ys[: args.batch]
        time_steps((step_a, step_b), x, y, args.warmup, 0)
        faults = None
        ta, tb = time_epochs(step_a, step_b, xs, ys, args.batch, args.epoch_repeats)
        unit, scale = "s/epoch", 1.0
    else:
        x, y = random_batch(args, args.batch, fmt)  # (B, 784) or (B, 1, 28, 28), (B,)
        (ta, tb), faults = time_steps((step_a, step_b), x, y, args.warmup, args.steps)
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
