"""The ``sparse-eoc`` command line: parse, build a config, call one library function.

    sparse-eoc eoc   --activation A --sparsity S [--q-star Q] [--m M | --slope V] [--json]
    sparse-eoc train --activation A --sparsity S [--slope V | --m M] --depth L --width N
                     --epochs E --data-dir DIR --out RUN   (or --config RUN/config.json)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

from sparse_eoc.activations import ACTIVATIONS, ALIASES
from sparse_eoc.gp import fixed_points, solve_eoc

ACTIVATION_CHOICES = [*ALIASES, *ACTIVATIONS]


def _add_eoc_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options that select an EoC point (shared by ``eoc`` and ``train``)."""
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--activation", choices=ACTIVATION_CHOICES, default=d("crelu") if defaults else None,
                   help="activation (relu = relu_tau with tau = 0)")
    p.add_argument("--sparsity", type=float, help="target fraction of zeros s at q* (relu: 0.5, implied)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--slope", type=float, help="target V'(q*) in (0, 1) for crelu/cst (default 0.7)")
    clip.add_argument("--m", type=float, help="the clip m > 0 for crelu/cst")
    p.add_argument("--q-star", type=float, default=d(1.0), help="fixed point q* of the variance map (default 1.0)")


def _eoc_command(args: argparse.Namespace) -> int:
    point = solve_eoc(args.activation, args.sparsity, args.q_star, m=args.m, slope=args.slope)
    fps = fixed_points(point)
    out = {
        "activation": args.activation,
        "sparsity": point.sparsity,
        "q_star": point.q_star,
        "tau": point.tau,
        "m": point.m if math.isfinite(point.m) else None,
        "sigma_w2": point.sigma_w2,
        "sigma_b2": point.sigma_b2,
        "chi1": point.chi1,
        "slope": point.slope,
        "curvature": point.curvature,
        "fixed_points": [
            {"q": f.q, "stability": f.stability, **({"note": f.note} if f.note else {})} for f in fps
        ],
    }
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0
    print(f"Edge-of-Chaos point for {args.activation}, sparsity {point.sparsity:g}, q* = {point.q_star:g}")
    for key in ("tau", "m", "sigma_w2", "sigma_b2", "chi1", "slope", "curvature"):
        value = out[key]
        label = {"slope": "V'(q*)", "curvature": "V''(q*)", "m": "m"}.get(key, key)
        print(f"  {label:<10} {'inf (unclipped)' if value is None else f'{value:.6g}'}")
    print("  fixed points of V:")
    for f in fps:
        print(f"    q = {f.q:<10.6g} {f.stability:<12} V'(q) = {f.slope:<10.6g} {f.note}".rstrip())
    return 0


def _train_command(args: argparse.Namespace) -> int:
    from sparse_eoc.train import TrainConfig, train  # torch is imported only here

    settings: dict = {}
    if args.config:
        settings.update(TrainConfig.from_dict(json.loads(Path(args.config).read_text())).to_dict())
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            settings[f.name] = value
    if args.out is None:
        raise ValueError("--out is required: the run directory to write")
    config = TrainConfig(**settings)
    result = train(config, args.out, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr))
    acc = result["test_accuracy"]
    print(
        f"{result['status']}: {result['epochs_completed']} epoch(s), test accuracy "
        f"{'n/a' if acc is None else f'{acc:.4f}'}, train sparsity {_fmt(result['train_sparsity'])}, "
        f"test sparsity {_fmt(result['test_sparsity'])}; written to {args.out}"
    )
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-eoc",
        description="Sparsity-inducing activations at the Edge of Chaos (Price et al., ICLR 2024).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eoc", help="solve for the EoC initialisation of a target sparsity")
    _add_eoc_options(p, defaults=True)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eoc_command)

    p = sub.add_parser("train", help="train an EoC-initialised sparse MLP on MNIST-format data")
    p.add_argument("--config", help="a run's config.json to rerun; explicit options override it")
    _add_eoc_options(p, defaults=False)
    p.add_argument("--depth", type=int, help="hidden layers (default 30)")
    p.add_argument("--width", type=int, help="units per hidden layer (default 300)")
    p.add_argument("--epochs", type=int, help="default 5")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default sgd (the paper's)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, help="default 0")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--val-size", type=int, help="training examples held out for validation (default 0)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--data-dir", help="directory with the four MNIST-format IDX files")
    p.add_argument("--out", help="run directory to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, exit code 2
        print(f"sparse-eoc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
