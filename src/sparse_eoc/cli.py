"""The ``sparse-eoc`` command line: parse, build a config, call one library function.

    sparse-eoc eoc       --activation A --sparsity S [--q-star Q] [--m M | --slope V]
                         [--rho 0,0.5,0.9] [--json]
    sparse-eoc train     --activation A --sparsity S [--slope V | --m M] --depth L --width N
                         --epochs E --data-dir DIR --out RUN   (or --config RUN/config.json)
    sparse-eoc train     --resume RUN [--device D] [--threads T] [--no-progress]
    sparse-eoc propagate --activation A --sparsity S [--slope V | --m M]
                         [--model mlp --width N | --model cnn --channels C] --depth L --seeds K [--json]
    sparse-eoc figures   --out DIR [--only N]
    sparse-eoc report    DIR --out REPORT [--cells SPEC ...] [--diverged chance|last|exclude]
    sparse-eoc sweep     --experiment NAME --preset P --data-dir DATA --out DIR [--workers K]
                         [--backend local|ray] [--ray-address ADDR] [--set key=value ...]
                         [--cpus-per-run N] [--gpus-per-run G] [--dry-run]
    sparse-eoc experiments
    sparse-eoc infer     --run RUN --data-dir DIR [--batch-size B] [--strategy S] [--threads T] [--json]
    sparse-eoc bench-inference --data-dir DIR [--widths 300,1024,4096] [--batches 1,8,64]
                         [--sparsities 0.5,0.7,0.85,0.9] [--repeats R] [--threads T] [--cache warm|cold]
                         [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

from sparse_eoc.activations import ACTIVATIONS, ALIASES
from sparse_eoc.gp.clip import M_MAX
from sparse_eoc.gp import (
    bifurcation_m,
    check_clip,
    correlation_map,
    correlation_map_derivative,
    fixed_points,
    recommend_clip,
    solve_eoc,
)

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
        **point.to_dict(),
        "activation": args.activation,  # as asked (relu stays relu)
        "fixed_points": [
            {"q": f.q, "stability": f.stability, **({"note": f.note} if f.note else {})} for f in fps
        ],
    }
    clipped = math.isfinite(point.m) or args.activation in ("crelu", "cst")
    recommendation = None
    out["bifurcation_m"] = out["bifurcation_search_max_m"] = out["recommended_m"] = out["recommendation"] = None
    if clipped:
        out["bifurcation_m"] = bifurcation_m(point.activation, point.sparsity, point.q_star)
        out["bifurcation_search_max_m"] = M_MAX * math.sqrt(point.q_star)  # null above means none up to here
        recommendation = recommend_clip(point.activation, point.sparsity, point.q_star,
                                        margin=args.margin, kappa=args.kappa)
        out["recommended_m"] = recommendation.m
        out["recommendation"] = {
            "m": recommendation.m,
            "slope": recommendation.slope,
            "scaled_curvature": recommendation.scaled_curvature,
            "binding": recommendation.binding,
            "reason": recommendation.reason,
        }
    warnings = check_clip(point.activation, point.sparsity, point.q_star, point.m,
                          margin=args.margin, kappa=args.kappa)
    out["warnings"] = warnings
    if args.rho is not None:
        out["correlation"] = {
            "rho": args.rho,
            "R": [float(r) for r in correlation_map(args.rho, point)],
            "dR": [float(r) for r in correlation_map_derivative(args.rho, point)],
        }
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
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
    if recommendation is not None:
        bif = out["bifurcation_m"]
        print(f"  bifurcation m: {'none up to 8 sqrt(q*)' if bif is None else f'{bif:.4f}'}")
        print(f"  recommended m: {recommendation.m:.4f} (bound by {recommendation.binding}: {recommendation.reason})")
    if args.rho is not None:
        print("  correlation map:  rho        R(rho)     R'(rho)")
        for r, big_r, d in zip(args.rho, out["correlation"]["R"], out["correlation"]["dR"]):
            print(f"                    {r:<10.4g} {big_r:<10.6g} {d:.6g}")
    return 0


def _rho_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--rho takes comma-separated numbers in [-1, 1], got {text!r}") from err
    if not values or any(not -1 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--rho values must lie in [-1, 1], got {text!r}")
    return values


def _propagate_command(args: argparse.Namespace) -> int:
    import torch

    from sparse_eoc.experiments.propagate import propagate

    inputs = None
    if args.data_dir:
        from sparse_eoc.data import load_mnist

        data = load_mnist(args.data_dir)
        x = torch.from_numpy(data.x_test[: args.batch_size])  # (B, H*W)
        inputs = x if args.model == "mlp" else x.reshape(len(x), *data.image_shape)  # (B, 1, H, W)
    result = propagate(
        args.activation, args.sparsity, q_star=args.q_star, m=args.m, slope=args.slope, model=args.model,
        width=args.width, channels=args.channels, kernel_size=args.kernel_size, padding_mode=args.padding_mode,
        image_size=args.image_size, depth=args.depth, seeds=args.seeds, batch_size=args.batch_size,
        inputs=inputs, seed=args.seed, device=args.device,
    )
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
        return 0
    print(f"{args.model}, {args.activation}, depth {args.depth}, {args.seeds} seeds: empirical q^l vs theory")
    print(f"  {'layer':>5} {'q median':>11} {'q p10':>11} {'q p90':>11} {'sparsity':>9} {'q theory':>11}")
    step = 1 if args.depth <= 20 else max(1, args.depth // 20)
    for i, layer in enumerate(result.layer):
        if i % step and layer != args.depth:
            continue
        row = [result.q_median[i], result.q_p10[i], result.q_p90[i]]
        cells = " ".join(f"{'overflow' if v is None else f'{v:.4g}':>11}" for v in row)
        sp = result.sparsity[i]
        theory = result.q_theory[i]
        print(f"  {layer:>5} {cells} {'n/a' if sp is None else f'{sp:.4f}':>9} "
              f"{'overflow' if theory is None else f'{theory:.4g}':>11}")
    blown = result.blown_up_at_layer
    print(f"  blown up at layer {blown} (median q > 1e30)" if blown else "  never blew up")
    return 0


def _figures_command(args: argparse.Namespace) -> int:
    from sparse_eoc.figures import write_figures

    paths = write_figures(args.out, only=args.only)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from sparse_eoc.experiments.report import write_report  # torch-free: reads the runs' JSON files

    summary = write_report(args.dir, args.out, cells=args.cells, diverged=args.diverged)
    print(f"{summary.n_found} run(s) found: {summary.n_finished} finished ({summary.n_diverged} diverged), "
          f"{summary.n_unfinished} unfinished (skipped); wrote {len(summary.paths)} files to {args.out}")
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _train_command(args: argparse.Namespace) -> int:
    from sparse_eoc.train import TrainConfig, get_preset, train  # torch is imported only here

    if args.resume is not None:  # the run's own settings; only how it runs may change
        run_free = ("device", "threads")
        given = [f"--{f.name.replace('_', '-')}" for f in fields(TrainConfig)
                 if f.name not in run_free and getattr(args, f.name, None) is not None]
        given += [opt for opt, value in (("--config", args.config), ("--out", args.out),
                                         ("--download", args.download)) if value]
        if given:
            raise ValueError(f"--resume takes the settings from {Path(args.resume) / 'config.json'}: drop "
                             f"{', '.join(given)} (only --device, --threads and --no-progress go with --resume)")
        path = Path(args.resume) / "config.json"
        if not path.is_file():
            raise ValueError(f"--resume {args.resume}: {path} not found (pass a run directory)")
        config = TrainConfig.from_dict({**json.loads(path.read_text()),
                                        **{k: getattr(args, k) for k in run_free if getattr(args, k) is not None}})
        result = train(config, args.resume, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr),
                       resume=True)
        _print_train_summary(result, args.resume)
        return 0
    settings: dict = {}
    if args.config:  # a run's resolved settings, preset included
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"--config {path}: not found (pass a run's config.json)")
        settings.update(TrainConfig.from_dict(json.loads(path.read_text())).to_dict())
    if args.preset:
        settings.update(get_preset(args.preset), preset=args.preset)
    explicit = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    # An explicit choice replaces what it excludes in the loaded settings: m and slope are
    # alternatives, an unclipped activation takes neither, and relu fixes the sparsity.
    if "m" in explicit or "slope" in explicit or "activation" in explicit:
        settings.pop("m", None), settings.pop("slope", None)
    if explicit.get("activation") == "relu":
        settings.pop("sparsity", None)
    settings.update(explicit)
    if args.out is None:
        raise ValueError("--out is required: the run directory to write")
    config = TrainConfig(**settings)
    if args.download:
        if config.dataset != "cifar10" or config.data_dir is None:
            raise ValueError("--download fetches CIFAR-10: use it with --dataset cifar10 --data-dir DIR")
        from sparse_eoc.data import download_cifar10

        download_cifar10(config.data_dir)  # a no-op when the batches are already there
    result = train(config, args.out, progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr))
    _print_train_summary(result, args.out)
    return 0


def _print_train_summary(result: dict, out: str) -> None:
    acc = result["test_accuracy"]
    print(
        f"{result['status']}: {result['epochs_completed']} epoch(s), test accuracy "
        f"{'n/a' if acc is None else f'{acc:.4f}'}, train sparsity {_fmt(result['train_sparsity'])}, "
        f"test sparsity {_fmt(result['test_sparsity'])}; written to {out}"
    )


def _sweep_command(args: argparse.Namespace) -> int:
    from sparse_eoc.experiments.registry import parse_overrides
    from sparse_eoc.experiments.sweep import run_sweep

    overrides = parse_overrides(args.set)
    try:
        outcome = run_sweep(
            args.experiment, args.preset, data_dir=args.data_dir, out=args.out, overrides=overrides,
            workers=args.workers, backend=args.backend, ray_address=args.ray_address,
            cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, dry_run=args.dry_run,
            progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr),
        )
    except ImportError as err:  # --backend ray without Ray: say how to install it
        print(f"sparse-eoc sweep: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.counts.items()))
    print(f"{len(outcome.runs)} runs ({counts}; {len(outcome.skipped)} finished before) in "
          f"{outcome.wall_seconds:.0f} s; written to {outcome.out}")
    for run in outcome.failed:
        print(f"failed: {run['name']}: {run.get('error')} (see {outcome.out / run['dir'] / 'error.txt'})",
              file=sys.stderr)
    return 1 if outcome.failed else 0


def _experiments_command(args: argparse.Namespace) -> int:
    from sparse_eoc.experiments.registry import EXPERIMENTS, estimate_seconds
    from sparse_eoc.experiments.sweep import format_duration

    print(f"{'experiment':<11} {'preset':<7} {'train preset':<14} {'cells':>5} {'seeds':>5} {'runs':>5} "
          f"{'est. time':>10}  (on a 2-core CPU)")
    for exp in EXPERIMENTS.values():
        for name, preset in exp.presets.items():
            runs = exp.runs(name)
            print(f"{exp.name:<11} {name:<7} {preset.train_preset:<14} {exp.n_cells(name):>5} "
                  f"{preset.grid.seeds:>5} {len(runs):>5} {format_duration(estimate_seconds(runs, preset)):>10}")
        print(f"  {exp.description}")
        for name, preset in exp.presets.items():
            print(f"  {name}: {preset.note}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _infer_command(args: argparse.Namespace) -> int:
    from sparse_eoc.infer import evaluate_run
    from sparse_eoc.jsonio import to_json_safe

    result = evaluate_run(args.run, args.data_dir, batch_size=args.batch_size, strategy=args.strategy,
                          threads=args.threads, backend=args.backend, limit=args.limit, repeats=args.repeats)
    if result["backend_note"]:
        print(f"note: {result['backend_note']}", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json_safe(result), allow_nan=False))
        return 0
    strategies = ", ".join(f"{name} {n}" for name, n in sorted(result["strategies"].items()))
    print(f"{result['n']} test examples, batch {result['batch_size']}, {result['backend']} backend: "
          f"accuracy {result['test_accuracy']:.4f} (dense {result['dense_test_accuracy']:.4f}), "
          f"max |logit diff| {result['max_abs_logit_diff']:.2e}, speedup {result['speedup']:.2f}x, "
          f"multiply-adds / {result['flop_reduction']:.2f}; layer strategies: {strategies}")
    return 0


def _bench_inference_command(args: argparse.Namespace) -> int:
    from sparse_eoc.infer.bench import run_benchmark
    from sparse_eoc.jsonio import to_json_safe, write_json

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    rows = run_benchmark(args.data_dir, widths=args.widths, depth=args.depth, batches=args.batches,
                         sparsities=args.sparsities, repeats=args.repeats, threads=args.threads,
                         slope=args.slope, strategy=args.strategy, backend=args.backend, seed=args.seed,
                         cache=args.cache, log=log)
    if args.out:
        write_json(args.out, rows)
    if args.json:
        print(json.dumps(to_json_safe(rows), allow_nan=False))
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
    p.add_argument("--rho", type=_rho_list, help="comma-separated correlations in [-1, 1]: report R and R' there")
    p.add_argument("--margin", type=float, default=0.9, help="clip check: m below margin x bifurcation m (0.9)")
    p.add_argument("--kappa", type=float, default=0.25, help="clip check: q* V''(q*) at most kappa (0.25)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eoc_command)

    p = sub.add_parser("train", help="train an EoC-initialised sparse MLP or CNN")
    p.add_argument("--config", help="a run's config.json to rerun; explicit options override it")
    _add_eoc_options(p, defaults=False)
    p.add_argument("--preset", help="named settings to start from (mlp-mnist-cpu, cnn-mnist-cpu, mlp-paper, "
                   "cnn-paper); explicit options override them")
    p.add_argument("--model", choices=["mlp", "cnn"], help="default mlp")
    p.add_argument("--depth", type=int, help="hidden (MLP) or conv (CNN) layers (default 30)")
    p.add_argument("--width", type=int, help="units per hidden layer, MLP (default 300)")
    p.add_argument("--channels", type=int, help="channels per conv layer, CNN (default 32)")
    p.add_argument("--kernel-size", type=int, help="odd kernel size, CNN (default 3)")
    p.add_argument("--padding-mode", choices=["zeros", "circular"], help="CNN padding (default zeros)")
    p.add_argument("--weight-init", choices=["gaussian", "delta_orthogonal"],
                   help="gaussian (default) or delta_orthogonal (CNN)")
    p.add_argument("--epochs", type=int, help="default 5")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default sgd (the paper's)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--readout-lr-scale", type=float,
                   help="the readout layer's learning rate is lr x this (default 1)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, help="default 0")
    p.add_argument("--lr-schedule", choices=["none", "cosine"], help="none (default) or cosine decay to 0")
    p.add_argument("--label-smoothing", type=float,
                   help="label smoothing epsilon in [0, 1) of the training loss (default 0)")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--val-size", type=int, help="training examples held out for validation (default 0)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--dataset", choices=["mnist", "cifar10"],
                   help="mnist: any MNIST-format IDX files (default); cifar10: the python pickle batches")
    p.add_argument("--data-dir", help="directory with the dataset's files")
    p.add_argument("--download", action="store_true",
                   help="with --dataset cifar10: download CIFAR-10 into --data-dir first if missing (needs internet)")
    p.add_argument("--augment", action="store_const", const=True,
                   help="random crop and horizontal flip of training images (CNN)")
    p.add_argument("--log-layer-stats", action="store_const", const=True,
                   help="per epoch, record each hidden layer's mean weight-gradient norm and pre-activation "
                        "variance on 256 test inputs (metrics.jsonl; at init: result.json)")
    p.add_argument("--out", help="run directory to write")
    p.add_argument("--resume", metavar="RUN",
                   help="continue the interrupted run RUN from its checkpoint, with its config.json settings "
                        "(a finished run is only reported); only --device, --threads, --no-progress go with it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)

    p = sub.add_parser("propagate", help="random EoC networks at init: empirical q^l and sparsity vs theory")
    _add_eoc_options(p, defaults=True)
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--width", type=int, default=300, help="MLP width (default 300)")
    p.add_argument("--channels", type=int, default=64, help="CNN channels (default 64)")
    p.add_argument("--kernel-size", type=int, default=3, help="CNN kernel size (default 3)")
    p.add_argument("--padding-mode", choices=["zeros", "circular"], default="circular",
                   help="CNN padding (default circular, as in the mean-field theory)")
    p.add_argument("--image-size", type=int, default=8, help="side of the random CNN input images (default 8)")
    p.add_argument("--depth", type=int, default=100, help="hidden layers (default 100)")
    p.add_argument("--seeds", type=int, default=8, help="random networks drawn (default 8)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per network (default 64)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--data-dir", help="use the first test images of this MNIST-format dataset as inputs")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_propagate_command)

    p = sub.add_parser("figures", help="draw the paper's theory figures (PNG and PDF)")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--only", type=int, help="draw only figure N (1-7)")
    p.set_defaults(func=_figures_command)

    p = sub.add_parser("report", help="the results table and training figures of a directory of runs")
    p.add_argument("dir", help="a sweep directory (runs in DIR/runs/*/) or any tree of run directories")
    p.add_argument("--out", required=True, help="report directory to write (table.md/.csv, figures, index.md)")
    p.add_argument("--cells", nargs="+", action="extend", metavar="SPEC",
                   help="loss-curve cells, [model:]activation[:sparsity[:slope]], e.g. crelu:0.85:0.9 "
                   "(default: the two highest-sparsity cells with the lowest mean accuracy)")
    p.add_argument("--diverged", choices=["chance", "last", "exclude"], default="chance",
                   help="a diverged run's test accuracy: chance (1/classes, default), last (its last "
                   "completed epoch's, chance if none) or exclude")
    p.set_defaults(func=_report_command)

    p = sub.add_parser("sweep", help="run (or resume) every run of a named experiment, locally or on Ray")
    p.add_argument("--experiment", required=True, help="dnn-table or cnn-table (see: sparse-eoc experiments)")
    p.add_argument("--preset", required=True, help="paper, cpu or smoke")
    p.add_argument("--data-dir", help="directory with the dataset's files")
    p.add_argument("--out", required=True, help="sweep directory: DIR/sweep.json and DIR/runs/<name>/")
    p.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local worker processes (default) or Ray tasks (pip install 'sparse-eoc[ray]')")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training setting of every run, e.g. --set epochs=3 (repeatable)")
    p.add_argument("--cpus-per-run", type=int,
                   help="torch threads and Ray CPUs of each run (default: cores // workers, at least 1)")
    p.add_argument("--gpus-per-run", type=float, default=0,
                   help="Ray GPUs of each run (with --backend ray; add --set device=cuda)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their status and the estimate only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_sweep_command)

    p = sub.add_parser("experiments", help="list the named experiments, their presets, runs and estimated time")
    p.set_defaults(func=_experiments_command)

    from sparse_eoc.infer.plan import STRATEGY_CHOICES  # NumPy only

    p = sub.add_parser("infer", help="a trained MLP run's test set through the sparse engine and the dense model")
    p.add_argument("--run", required=True, help="an MLP run directory (config.json, model.safetensors)")
    p.add_argument("--data-dir", required=True, help="directory with the run's dataset files")
    p.add_argument("--batch-size", type=int, default=1, help="examples per call (default 1)")
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, default="auto",
                   help="how each layer skips zeros (default auto: chosen per layer by a cost model)")
    p.add_argument("--threads", type=int, default=1, help="engine and torch threads (default 1)")
    p.add_argument("--backend", choices=["auto", "numba", "numpy"], default="auto",
                   help="auto (numba when installed; pip install 'sparse-eoc[fast]'), numba or numpy")
    p.add_argument("--limit", type=int, help="only the first N test examples")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the data, median (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_infer_command)

    p = sub.add_parser("bench-inference",
                       help="time dense PyTorch vs the sparse engine on EoC CReLU MLPs with MNIST inputs")
    p.add_argument("--data-dir", required=True, help="MNIST-format directory (its test images are the inputs)")
    p.add_argument("--widths", type=_int_list, default=[300, 1024, 4096],
                   help="comma-separated widths (default 300,1024,4096)")
    p.add_argument("--depth", type=int, help="hidden layers for every width (default: 100 at width 300, else 8)")
    p.add_argument("--batches", type=_int_list, default=[1, 8, 64], help="comma-separated batch sizes (1,8,64)")
    p.add_argument("--sparsities", type=_float_list, default=[0.5, 0.7, 0.85, 0.9],
                   help="comma-separated target sparsities (default 0.5,0.7,0.85,0.9)")
    p.add_argument("--slope", type=float, default=0.7, help="V'(q*) of CReLU at the EoC (default 0.7)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per row, median (default 20)")
    p.add_argument("--threads", type=int, default=1, help="engine and torch threads (default 1)")
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, default="auto", help="engine strategy (default auto)")
    p.add_argument("--backend", choices=["auto", "numba", "numpy"], default="auto", help="engine backend")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--cache", choices=["warm", "cold"], default="warm",
                   help="warm (default): each timed call follows an untimed call of the same method (steady-state "
                        "serving); cold: the caches are flushed before each timed call (weights from memory)")
    p.add_argument("--out", help="also write the rows as JSON to this file")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON array (the table goes to stderr)")
    p.set_defaults(func=_bench_inference_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input or unreachable data: one clear line, exit code 2
        print(f"sparse-eoc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
