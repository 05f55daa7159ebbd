"""The ``sparse-eoc`` command line: parse, build a config, call one library function.

    sparse-eoc eoc       --activation A --sparsity S [--q-star Q] [--m M | --slope V]
                         [--rho 0,0.5,0.9] [--json]
    sparse-eoc train     --activation A --sparsity S [--slope V | --m M] --depth L --width N
                         --epochs E --data-dir DIR --out RUN   (or --config RUN/config.json)
    sparse-eoc train     --resume RUN [--device D] [--threads T] [--no-progress]
    sparse-eoc propagate --activation A --sparsity S [--slope V | --m M]
                         [--model mlp|resmlp --width N | --model cnn|rescnn --channels C] --depth L --seeds K
                         [--residual-scale A] [--thresholds per-layer|fixed] [--json]
    sparse-eoc figures   --out DIR [--only N]
    sparse-eoc report    DIR --out REPORT [--cells SPEC ...] [--diverged chance|last|exclude]
    sparse-eoc sweep     --experiment NAME --preset P --data-dir DATA --out DIR [--workers K]
                         [--backend local|ray] [--ray-address ADDR] [--set key=value ...]
                         [--cpus-per-run N] [--gpus-per-run G] [--dry-run]
    sparse-eoc experiments
    sparse-eoc infer     --run RUN --data-dir DIR [--batch-size B] [--strategy S] [--threads T] [--json]
    sparse-eoc bench-inference --data-dir DIR [--widths 300,1024,4096] [--batches 1,8,64]
                         [--sparsities 0.5,0.7,0.85,0.9] [--repeats R] [--threads T] [--cache warm|cold]
                         [--baselines torch,ort] [--check-threads] [--json] [--out FILE]
    sparse-eoc bench-inference --model cnn --data-dir DIR [--channels 32,300] [--depth 10] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from sparse_eoc.experiments.results import DIVERGED_CONVENTIONS
from sparse_eoc.experiments.sweep import BACKENDS as SWEEP_BACKENDS
from sparse_eoc.infer.bench import CACHE_PROTOCOLS
from sparse_eoc.infer.engine import BACKENDS as ENGINE_BACKENDS
from sparse_eoc.kernels import short_omp_spin
from sparse_eoc.runs.config import (
    ACTIVATION_CHOICES,
    DENSE_MODELS,
    MODELS,
    PADDING_MODES,
    RESIDUAL_MODELS,
    TrainConfig,
    layer_settings,
    option_name,
    resume_settings,
    setting_type,
)
from sparse_eoc.gp.clip import M_MAX
from sparse_eoc.gp import (
    THRESHOLDS,
    correlation_map,
    correlation_map_derivative,
    solve_eoc,
)


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


def _add_setting_options(p: argparse.ArgumentParser) -> None:
    """``train``'s options, one per TrainConfig field, made from the fields' types, choices and help.

    Every option defaults to None ("not given"), so that it overrides ``--config`` and
    ``--preset`` only when given (:func:`sparse_eoc.runs.config.layer_settings`).
    """
    clip = p.add_mutually_exclusive_group()
    for f in fields(TrainConfig):
        kind = setting_type(f.name)
        default = f.default
        shown = "all cores" if f.name == "threads" else ("none" if default is None else default)
        text = f.metadata["help"] + ("" if kind is bool else f" (default {shown})")
        kwargs: dict = {"dest": f.name, "help": text, "default": None}
        if kind is bool:
            kwargs.update(action="store_const", const=True)
        else:
            kwargs.update(type=kind, metavar=f.name.upper())
            if f.metadata["choices"]:
                kwargs.update(choices=f.metadata["choices"], metavar=None)
        (clip if f.name in ("slope", "m") else p).add_argument(option_name(f.name), **kwargs)


def _eoc_command(args: argparse.Namespace) -> int:
    from sparse_eoc.gp import analyse_clip

    try:
        point = solve_eoc(args.activation, args.sparsity, args.q_star, m=args.m, slope=args.slope)
        analysis = analyse_clip(point, margin=args.margin, kappa=args.kappa)
    except ValueError as err:  # name the option the library's argument came from
        first = str(err).split(" ", 1)[0]
        option = {"q_star": "--q-star", "m": "--m", "slope": "--slope", "sparsity": "--sparsity",
                  "margin": "--margin", "kappa": "--kappa"}.get(first)
        raise (type(err)(f"{option}: {err}") if option else err) from None
    out = {**analysis.to_dict(), "activation": args.activation}  # as asked (relu stays relu)
    if args.rho is not None:
        out["correlation"] = {
            "rho": args.rho,
            "R": [float(r) for r in correlation_map(args.rho, point)],
            "dR": [float(r) for r in correlation_map_derivative(args.rho, point)],
        }
    for warning in analysis.warnings:
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
    for f in analysis.fixed_points:
        print(f"    q = {f.q:<10.6g} {f.stability:<12} V'(q) = {f.slope:<10.6g} {f.note}".rstrip())
    recommendation = analysis.recommendation
    if recommendation is not None:
        bif, top = analysis.bifurcation_m, analysis.bifurcation_search_max_m
        none = "none up to 8 sqrt(q*)" if top <= M_MAX * point.q_star**0.5 else f"none up to {top:.4g}"
        print(f"  bifurcation m: {none if bif is None else f'{bif:.4f}'}")
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
        inputs = x if args.model in DENSE_MODELS else x.reshape(len(x), *data.image_shape)  # (B, 1, H, W)
    residual = args.model in RESIDUAL_MODELS
    if not residual and (args.residual_scale is not None or args.thresholds is not None):
        raise ValueError(f"--residual-scale and --thresholds apply to --model resmlp or rescnn, not {args.model}")
    result = propagate(
        args.activation, args.sparsity, q_star=args.q_star, m=args.m, slope=args.slope, model=args.model,
        width=args.width, channels=args.channels, kernel_size=args.kernel_size, padding_mode=args.padding_mode,
        image_size=args.image_size, depth=args.depth, seeds=args.seeds, batch_size=args.batch_size,
        inputs=inputs, seed=args.seed, device=args.device, residual_scale=args.residual_scale,
        thresholds=args.thresholds or "per-layer",
    )
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
        return 0
    thresholds = f", {args.thresholds or 'per-layer'} thresholds" if residual else ""
    print(f"{args.model}, {args.activation}, depth {args.depth}{thresholds}, {args.seeds} seeds: "
          "empirical q^l vs theory" + (" (one row per activation site, the head last)" if residual else ""))
    print(f"  {'layer':>5} {'q median':>11} {'q p10':>11} {'q p90':>11} {'sparsity':>9} {'q theory':>11} "
          f"{'s theory':>9}")
    last = len(result.layer)
    step = 1 if last <= 20 else max(1, last // 20)
    for i, layer in enumerate(result.layer):
        if i % step and layer != last:
            continue
        row = [result.q_median[i], result.q_p10[i], result.q_p90[i]]
        cells = " ".join(f"{'overflow' if v is None else f'{v:.4g}':>11}" for v in row)
        sp = result.sparsity[i]
        theory = result.q_theory[i]
        print(f"  {layer:>5} {cells} {'n/a' if sp is None else f'{sp:.4f}':>9} "
              f"{'overflow' if theory is None else f'{theory:.4g}':>11} {result.sparsity_theory[i]:>9.4f}")
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
    skipped = f", {summary.n_skipped} malformed (skipped, see the notes)" if summary.n_skipped else ""
    print(f"{summary.n_found} run(s) found: {summary.n_finished} finished ({summary.n_diverged} diverged), "
          f"{summary.n_unfinished} unfinished (skipped){skipped}; wrote {len(summary.paths)} files to {args.out}")
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _train_command(args: argparse.Namespace) -> int:
    from sparse_eoc.train import train  # torch is imported only here

    explicit = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if args.resume is not None:  # the run's own settings; only how it runs may change
        others = [opt for opt, value in (("--config", args.config), ("--out", args.out),
                                         ("--download", args.download), ("--overwrite", args.overwrite)) if value]
        config = resume_settings(args.resume, explicit, other_options=others)
        result = train(config, args.resume, progress=not args.no_progress, log=log, resume=True)
        _print_train_summary(result, args.resume)
        return 0
    if args.out is None:
        raise ValueError("--out is required: the run directory to write")
    config = layer_settings(config_file=args.config, preset=explicit.pop("preset", None), explicit=explicit)
    if args.download:
        from sparse_eoc.data import download_dataset

        download_dataset(config.dataset, config.data_dir)  # a no-op when the files are already there
    result = train(config, args.out, progress=not args.no_progress, log=log, overwrite=args.overwrite)
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


def _bench_cnn_command(args: argparse.Namespace, log) -> int:
    """``bench-inference --model cnn``: :func:`sparse_eoc.infer.bench_cnn.run_cnn_benchmark` over ``--channels``."""
    from sparse_eoc.infer.bench import check_baselines
    from sparse_eoc.infer.bench_cnn import (DEFAULT_CHANNELS, DEFAULT_CNN_BATCHES, DEFAULT_CNN_DEPTH,
                                            run_cnn_benchmark)
    from sparse_eoc.jsonio import to_json_safe, write_json

    if args.check_threads or args.cache != "warm":
        raise ValueError("--check-threads and --cache cold apply to --model mlp only")
    baselines = None if args.baselines is None else check_baselines(args.baselines)
    rows = run_cnn_benchmark(
        args.data_dir, channels=DEFAULT_CHANNELS if args.channels is None else args.channels,
        depth=DEFAULT_CNN_DEPTH if args.depth is None else args.depth,
        batches=DEFAULT_CNN_BATCHES if args.batches is None else args.batches, sparsities=args.sparsities,
        repeats=args.repeats,
        threads=args.threads, slope=args.slope, strategy=args.strategy, backend=args.backend, seed=args.seed,
        ort=None if baselines is None else "ort" in baselines, log=log)
    if args.out:
        write_json(args.out, rows)
    if args.json:
        print(json.dumps(to_json_safe(rows), allow_nan=False))
    return 0


def _bench_inference_command(args: argparse.Namespace) -> int:
    from sparse_eoc.infer.bench import (THREAD_CHECK_LIMIT, check_baselines, check_output_file, check_threads,
                                        run_benchmark)
    from sparse_eoc.infer.ort import ort_unavailable_reason, ort_version
    from sparse_eoc.jsonio import to_json_safe, write_json

    if args.out:
        check_output_file(args.out, "--out")  # now, not after the whole grid has run
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.model == "cnn":
        return _bench_cnn_command(args, log)
    args.batches = [1, 8, 64] if args.batches is None else args.batches
    grid = {"widths": args.widths, "depth": args.depth, "batches": args.batches, "sparsities": args.sparsities,
            "repeats": args.repeats, "threads": args.threads, "slope": args.slope, "backend": args.backend,
            "seed": args.seed}
    if args.check_threads:
        rows = check_threads(args.data_dir, **grid, log=log)
    else:
        baselines = check_baselines(args.baselines)
        if "ort" in baselines:
            log(f"ONNX Runtime {ort_version()}")
        elif args.baselines is None:
            print(f"note: no ONNX Runtime column: {ort_unavailable_reason()}", file=sys.stderr)
        rows = run_benchmark(args.data_dir, **grid, strategy=args.strategy, cache=args.cache, baselines=baselines,
                             log=log)
    if args.out:
        write_json(args.out, rows)
    if args.json:
        print(json.dumps(to_json_safe(rows), allow_nan=False))
    failed = [row for row in rows if not row.get("ok", True)]
    if failed:
        print(f"sparse-eoc bench-inference: thread check FAILED: {len(failed)} of {len(rows)} cases took more than "
              f"{THREAD_CHECK_LIMIT:g}x one thread's time on {args.threads} threads, in every timing", file=sys.stderr)
        return 1
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
    _add_setting_options(p)
    p.add_argument("--download", action="store_true",
                   help="download the dataset (MNIST or CIFAR-10) into --data-dir first if missing (needs internet; "
                        "checksums verified)")
    p.add_argument("--out", help="run directory to write (a finished or unfinished run there is refused without "
                                 "--overwrite or --resume)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out, finished or not")
    p.add_argument("--resume", metavar="RUN",
                   help="continue the interrupted run RUN from its checkpoint, with its config.json settings "
                        "(a finished run is only reported); only --device, --threads, --kernels, --no-progress go with it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)

    p = sub.add_parser("propagate", help="random EoC networks at init: empirical q^l and sparsity vs theory")
    _add_eoc_options(p, defaults=True)
    p.add_argument("--model", choices=MODELS, default="mlp")
    p.add_argument("--width", type=int, default=300, help="MLP width (default 300)")
    p.add_argument("--channels", type=int, default=64, help="CNN channels (default 64)")
    p.add_argument("--kernel-size", type=int, default=3, help="CNN kernel size (default 3)")
    p.add_argument("--padding-mode", choices=PADDING_MODES, default="circular",
                   help="CNN padding (default circular, as in the mean-field theory)")
    p.add_argument("--image-size", type=int, default=8, help="side of the random CNN input images (default 8)")
    p.add_argument("--depth", type=int, default=100, help="hidden layers, or residual blocks (default 100)")
    p.add_argument("--residual-scale", type=float, help="branch scale alpha of resmlp/rescnn (default 2 / sqrt(depth))")
    p.add_argument("--thresholds", choices=THRESHOLDS,
                   help="resmlp/rescnn: per-layer (default; the sparsity held at every site) or fixed (tau of q*); "
                        "at init, train's tracked thresholds are the per-layer ones")
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
    p.add_argument("--diverged", choices=DIVERGED_CONVENTIONS, default="chance",
                   help="a diverged run's test accuracy: chance (1/classes, default), last (its last "
                   "completed epoch's, chance if none) or exclude")
    p.set_defaults(func=_report_command)

    p = sub.add_parser("sweep", help="run (or resume) every run of a named experiment, locally or on Ray")
    p.add_argument("--experiment", required=True,
                   help="dnn-table, cnn-table or qstar-table (see: sparse-eoc experiments)")
    p.add_argument("--preset", required=True, help="one of the experiment's presets, e.g. paper, cpu or smoke")
    p.add_argument("--data-dir", help="directory with the dataset's files")
    p.add_argument("--out", required=True, help="sweep directory: DIR/sweep.json and DIR/runs/<name>/")
    p.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--backend", choices=SWEEP_BACKENDS, default="local",
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

    from sparse_eoc.infer.cnn_plan import CONV_STRATEGY_CHOICES  # NumPy only
    from sparse_eoc.infer.plan import STRATEGY_CHOICES

    ALL_STRATEGY_CHOICES = list(dict.fromkeys((*STRATEGY_CHOICES, *CONV_STRATEGY_CHOICES)))  # MLP's, then "sparse"

    p = sub.add_parser("infer", help="a trained MLP or CNN run's test set through the sparse engine and the dense "
                                     "model")
    p.add_argument("--run", required=True, help="an MLP or CNN run directory (config.json, model.safetensors)")
    p.add_argument("--data-dir", required=True, help="directory with the run's dataset files")
    p.add_argument("--batch-size", type=int, default=1, help="examples per call (default 1)")
    p.add_argument("--strategy", choices=ALL_STRATEGY_CHOICES, default="auto",
                   help="how each layer skips zeros (default auto: chosen per layer by a cost model); "
                        "MLP: dense, gather, union, csr, block; CNN: dense, sparse")
    p.add_argument("--threads", type=int, default=1, help="engine and torch threads (default 1)")
    p.add_argument("--backend", choices=ENGINE_BACKENDS, default="auto",
                   help="auto (numba when installed; pip install 'numba>=0.60'), numba or numpy")
    p.add_argument("--limit", type=int, help="only the first N test examples")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the data, median (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_infer_command)

    p = sub.add_parser("bench-inference",
                       help="time dense PyTorch vs the sparse engine on EoC CReLU MLPs or CNNs with MNIST inputs")
    p.add_argument("--data-dir", required=True, help="MNIST-format directory (its test images are the inputs)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp (default): --widths; cnn: --channels, 3 x 3 zero-padded convs, against torch and ONNX "
                        "Runtime")
    p.add_argument("--channels", type=_int_list,
                   help="CNN: comma-separated channel counts (default 32,300: cnn-mnist-cpu's and the paper's)")
    p.add_argument("--widths", type=_int_list, default=[300, 1024, 4096],
                   help="comma-separated widths (default 300,1024,4096)")
    p.add_argument("--depth", type=int,
                   help="hidden layers for every width (default: 100 at width 300, else 8); CNN: conv layers (10)")
    p.add_argument("--batches", type=_int_list, help="comma-separated batch sizes (default 1,8,64; CNN 1,8)")
    p.add_argument("--sparsities", type=_float_list, default=[0.5, 0.7, 0.85, 0.9],
                   help="comma-separated target sparsities (default 0.5,0.7,0.85,0.9)")
    p.add_argument("--slope", type=float, default=0.7, help="V'(q*) of CReLU at the EoC (default 0.7)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per row, median (default 20)")
    p.add_argument("--threads", type=int, default=1, help="engine and torch threads (default 1)")
    p.add_argument("--strategy", choices=ALL_STRATEGY_CHOICES, default="auto",
                   help="engine strategy (default auto; MLP: dense, gather, union, csr, block; CNN: dense, sparse)")
    p.add_argument("--backend", choices=ENGINE_BACKENDS, default="auto", help="engine backend")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--cache", choices=CACHE_PROTOCOLS, default="warm",
                   help="warm (default): each timed call follows an untimed call of the same method (steady-state "
                        "serving); cold: the caches are flushed before each timed call (weights from memory)")
    p.add_argument("--baselines", type=lambda v: [n for n in v.split(",") if n],
                   help="comma-separated dense baselines from torch, ort (ONNX Runtime; pip install "
                        "'sparse-eoc[bench]') (default: both when ONNX Runtime is installed, else torch)")
    p.add_argument("--check-threads", action="store_true",
                   help="instead: the thread check, the engine on --threads (>= 2) threads against one, every "
                        "strategy, over the grid given (e.g. --widths 300 --batches 64 --sparsities 0.85); exit "
                        "code 1 when more threads take more than 1.5x one thread's time")
    p.add_argument("--out", help="also write the rows as JSON to this file")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON array (the table goes to stderr)")
    p.set_defaults(func=_bench_inference_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes a value starting with "-" for an option ("--rho -0.8,0.1"): glue it to --rho.
    for i in range(len(argv) - 2, -1, -1):
        value = argv[i + 1]
        if argv[i] == "--rho" and len(value) > 1 and value[0] == "-" and (value[1].isdigit() or value[1] == "."):
            argv[i:i + 2] = [f"--rho={value}"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "sweep"):  # before torch is imported: see short_omp_spin
        short_omp_spin()
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input or unreachable data: one clear line, exit code 2
        print(f"sparse-eoc {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line; a run's checkpoint is intact (written atomically)
        print(f"sparse-eoc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
