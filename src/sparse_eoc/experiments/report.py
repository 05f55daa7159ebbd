"""The sweep report: the results table and the training figures of a directory of finished runs.

Price et al., ICLR 2024, section 5 (docs/theory.md section 5). :func:`write_report` writes the table
(:mod:`sparse_eoc.experiments.results`, :mod:`sparse_eoc.experiments.report_table`),
the figures (:mod:`sparse_eoc.experiments.report_figures`) and an ``index.md``. What a
run, a cell and a diverged run's accuracy mean is defined in
:mod:`sparse_eoc.experiments.results`; the public names of those modules are
re-exported here.

Example::

    from sparse_eoc.experiments.report import build_table, load_runs, write_report
    rows = build_table(load_runs("sweeps/table1"))
    write_report("sweeps/table1", "sweeps/table1/report", cells=["crelu:0.85:0.9"])

Nothing here imports torch: results are read from JSON files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from sparse_eoc.experiments.report_figures import (
    draw_accuracy_vs_qstar,
    draw_accuracy_vs_sparsity,
    draw_layer_stats,
    draw_loss_curves,
)
from sparse_eoc.experiments.report_table import table_csv, table_markdown
from sparse_eoc.experiments.results import (
    COUNTED,
    DIVERGED_CONVENTIONS,
    FINISHED,
    IDENTITY,
    IGNORED_SETTINGS,
    Run,
    build_table,
    cell_spec,
    choose_cells,
    group_cells,
    load_runs,
    select_cells,
)
from sparse_eoc.jsonio import write_text_atomic

__all__ = [
    "DIVERGED_CONVENTIONS",
    "IGNORED_SETTINGS",
    "Run",
    "ReportSummary",
    "load_runs",
    "build_table",
    "select_cells",
    "table_markdown",
    "table_csv",
    "draw_accuracy_vs_sparsity",
    "draw_loss_curves",
    "draw_layer_stats",
    "draw_accuracy_vs_qstar",
    "write_report",
]

_FILES = {"table_md": "table.md", "table_csv": "table.csv", "index": "index.md"}
_FIG_STEMS = {1: "fig1_accuracy_vs_sparsity", 2: "fig2_loss_curves", 3: "fig3_layer_stats",
              4: "fig4_accuracy_vs_qstar"}


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_report` found and wrote.

    Attributes:
        paths: the files written: table.md, table.csv, the figures, index.md last.
        n_found: run directories found: finished, unfinished or skipped.
        n_finished: with a result.json whose status is completed or diverged (``FINISHED``).
        n_diverged: finished runs whose status is ``diverged``.
        n_unfinished: without such a result.json (not tabulated).
        notes: one line each: a run skipped because a file of it is malformed (naming the
            file and the field), a result.json whose status is not finished, a figure
            skipped and why.
        n_skipped: runs left out because a file of theirs is malformed (see ``notes``).
    """

    paths: list[Path]
    n_found: int
    n_finished: int
    n_diverged: int
    n_unfinished: int
    notes: list[str]
    n_skipped: int = 0


def _save(fig: Figure, out: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        tmp = out / f"{stem}.tmp.{fmt}"
        fig.savefig(tmp, format=fmt, dpi=200, metadata={"CreationDate": None} if fmt == "pdf" else None)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def write_report(directory: str | os.PathLike, out: str | os.PathLike, *, cells: Sequence[str] | None = None,
                 diverged: str = "chance", formats: Sequence[str] = ("png", "pdf")) -> ReportSummary:
    """Write the table and the figures of the runs under ``directory`` into ``out``.

    Files: ``table.md``, ``table.csv`` (:func:`build_table`), ``fig1_accuracy_vs_sparsity``,
    ``fig2_loss_curves``, ``fig3_layer_stats``, ``fig4_accuracy_vs_qstar`` (each in every
    format; fig3 only when a run logged per-layer statistics, fig1 only with a sparse cell,
    fig4 only when q* varies across the runs, e.g. the ``qstar-table`` sweep: without a note
    otherwise, as it does not apply), and ``index.md`` (the source, the run counts, the
    conventions, links to all of them).

    Args:
        directory: searched at any depth for run directories (:func:`load_runs`).
        out: the report directory, created if missing; files of the same names are replaced.
        cells: loss-curve cells, ``[model:]activation[:sparsity[:slope]]`` (:func:`select_cells`).
        diverged: the convention for diverged runs' accuracy (:data:`DIVERGED_CONVENTIONS`).
        formats: figure file formats matplotlib writes, e.g. ("png", "pdf"); png at 200 dpi.

    A run whose files are malformed (see :func:`load_runs`) is skipped, not fatal: the
    summary's and the index's notes name its file and why. A run is finished as a sweep
    counts it: its result.json says completed or diverged (``FINISHED``).

    Raises:
        ValueError: ``directory`` not a directory or holding no finished run, a bad
            ``cells`` spec or ``diverged`` convention, no ``formats``.
    """
    formats = tuple(formats)
    if not formats:
        raise ValueError("formats must name at least one file format, e.g. ('png', 'pdf')")
    if diverged not in DIVERGED_CONVENTIONS:
        raise ValueError(f"diverged must be one of {DIVERGED_CONVENTIONS}, got diverged={diverged!r}")
    src = Path(directory)
    skipped: list[str] = []
    every = load_runs(src, include_unfinished=True, notes=skipped)
    runs = [r for r in every if r.finished]
    odd = [f"{r.path / 'result.json'}: status {r.result.get('status')!r} is not one of "
           f"{', '.join(FINISHED)}: counted as unfinished" for r in every if r.result is not None and not r.finished]
    if not runs:
        why = "".join(f"; {note}" for note in [*skipped, *odd][:3])
        raise ValueError(f"directory {str(src)!r} holds no finished run (config.json + result.json with status "
                         f"{' or '.join(FINISHED)}): {len(every)} unfinished, {len(skipped)} skipped{why}")
    chosen = choose_cells(group_cells(runs, diverged)[0], cells)  # a bad spec fails before anything is written
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    rows = build_table(runs, diverged=diverged)
    written: list[Path] = []
    for key, text in (("table_md", table_markdown(rows, diverged=diverged)), ("table_csv", table_csv(rows))):
        write_text_atomic(dest / _FILES[key], text)
        written.append(dest / _FILES[key])

    notes: list[str] = [*skipped, *odd]
    figures: list[tuple[int, str, list[Path]]] = []
    drawn = {
        1: (draw_accuracy_vs_sparsity(runs, diverged=diverged),
            "test accuracy against sparsity, per activation and V'(q*), ReLU baseline band",
            "no sparse (non-ReLU) cell"),
        2: (draw_loss_curves(runs, cells, diverged=diverged),
            "training loss of every seed, cells: " + ", ".join(cell_spec(c) for c in chosen),
            ""),
        3: (draw_layer_stats(runs, diverged=diverged),
            "per-layer gradient norms (and pre-activation variances) over training, failing vs healthy cell",
            "no run logged layer_grad_norm (train with --log-layer-stats)"),
        4: (draw_accuracy_vs_qstar(runs, diverged=diverged),
            ("validation" if all(r.has_validation for r in runs) else "test")
            + " accuracy and test sparsity against q*, per activation and s, one line per V'(q*) or fixed m "
              "(docs/theory.md section 9)",
            None),  # q* does not vary: the figure does not apply
    }
    for number, (fig, caption, why_not) in drawn.items():
        if fig is None:
            if why_not is not None:
                notes.append(f"figure {number} skipped: {why_not}")
            continue
        paths = _save(fig, dest, _FIG_STEMS[number], formats)
        figures.append((number, caption, paths))
        written += paths

    n_div = sum(r.diverged for r in runs)
    shared = []
    for model in dict.fromkeys(r.model for r in runs):
        mine = [r.settings() for r in runs if r.model == model]
        same = {k: v for k, v in mine[0].items()
                if k not in IDENTITY and all(repr(s.get(k)) == repr(v) for s in mine[1:])}
        shared.append(f"- {model}: " + ", ".join(f"{k} = {v}" for k, v in sorted(same.items())))
    lines = [
        "# Sweep report", "",
        f"Source: `{src.resolve()}`", "",
        f"Runs: {len(every) + len(skipped)} found, {len(runs)} finished ({len(runs) - n_div} completed, "
        f"{n_div} diverged), {len(every) - len(runs)} unfinished (no completed or diverged result.json; "
        f"not tabulated)" + (f", {len(skipped)} skipped (a malformed file)" if skipped else "") + ".", "",
        *(f"- {note}" for note in [*skipped, *odd]), *([""] if skipped or odd else []),
        f"Diverged runs count in the test accuracy {COUNTED[diverged]} (`--diverged {diverged}`); "
        "the 'completed' column leaves them out.", "",
        "## Table", "", f"[table.md]({_FILES['table_md']}), [table.csv]({_FILES['table_csv']})", "",
        *(line.replace("## ", "### ", 1) if line.startswith("## ") else line
          for line in table_markdown(rows, diverged=diverged).split("\n")[4:]), "",
        "## Settings shared by every finished run of a model", "", *shared, "",
        "## Figures", "", "| # | files | shows |", "|---|---|---|",
        *(f"| {n} | " + ", ".join(f"[{p.name}]({p.name})" for p in paths) + f" | {caption} |"
          for n, caption, paths in figures),
        "", *(f"- {note}" for note in notes[len(skipped) + len(odd):]),
    ]
    write_text_atomic(dest / _FILES["index"], "\n".join(lines).rstrip() + "\n")
    written.append(dest / _FILES["index"])
    return ReportSummary(written, len(every) + len(skipped), len(runs), n_div, len(every) - len(runs), notes,
                         n_skipped=len(skipped))
