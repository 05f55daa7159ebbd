"""The sweep report: table numbers by hand, CSV = Markdown, figures, cell choice, missing stats, CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_files import write_idx

from sparse_eoc.cli import main
from sparse_eoc.experiments.report import (
    build_table,
    draw_accuracy_vs_qstar,
    draw_layer_stats,
    draw_loss_curves,
    load_runs,
    select_cells,
    table_csv,
    table_markdown,
    write_report,
)
from sparse_eoc.experiments.sweep import run_sweep
from sparse_eoc.gp import bifurcation_m, solve_eoc

DEPTH = 4


def write_run(root: Path, name: str, *, activation: str, sparsity: float | None = None, slope: float | None = None,
              seed: int = 0, accs: list[float] = (), losses: list[float] | None = None, status: str | None = "completed",
              sparsities: tuple[float, float] = (0.8, 0.8), partial_loss: float | None = None,
              grad_norms: list[list[float]] | None = None, preact_vars: list[list[float]] | None = None,
              steps_before_divergence: dict[int, list[float]] | None = None, q_star: float = 1.0,
              m: float | None = None, val_accs: list[float] | None = None, **settings) -> Path:
    """A run directory as ``sparse_eoc.train.train`` writes it, with made-up numbers.

    ``accs``: test accuracy per completed epoch; ``val_accs``: validation accuracy per completed
    epoch (then ``val_size`` is 50); ``status`` None leaves out result.json (unfinished).
    """
    point = solve_eoc(activation, sparsity, q_star, slope=slope, m=m)
    val = {"val_size": 50} if val_accs is not None else {}
    config = {"activation": activation, "sparsity": sparsity, "slope": slope, "m": m, "q_star": q_star, **val,
              "model": "mlp", "depth": DEPTH, "width": 16, "channels": 32, "epochs": 3, "lr": 1e-3, "seed": seed,
              "data_dir": f"/data/{seed}", "device": "cpu", "threads": None, "preset": None, **settings,
              "eoc": point.to_dict(), "network": {"kind": "mlp", "num_classes": 10, "depth": DEPTH},
              "data": {"n_train": 100}}
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    losses = losses if losses is not None else [2.0 / (i + 1) for i in range(len(accs))]
    lines = []
    for i, acc in enumerate(accs):
        line = {"epoch": i + 1, "train_loss": losses[i], "train_accuracy": acc, "test_accuracy": acc,
                "train_sparsity": sparsities[0], "test_sparsity": sparsities[1], "test_loss": losses[i],
                "test_layer_sparsity": [sparsities[1]] * DEPTH}
        if grad_norms is not None:
            line["layer_grad_norm"] = grad_norms[i]
        if preact_vars is not None:
            line["layer_preact_var"] = preact_vars[i]
        if val_accs is not None:
            line["val_accuracy"] = val_accs[i]
        lines.append(json.dumps(line))
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if status is None:
        return run
    last = accs[-1] if accs else None
    result = {"status": status, "test_accuracy": last, "train_sparsity": sparsities[0] if accs else None,
              "test_sparsity": sparsities[1] if accs else None, "layer_sparsity": None,
              "epochs_completed": len(accs), "diverged": None}
    if val_accs is not None:
        result["val_accuracy"] = val_accs[-1] if accs else None
    if status == "diverged":
        result["diverged"] = {"epoch": len(accs) + 1, "step": 7, "loss": None, "recent_losses": [3.0, 1e30],
                              "partial_train_loss": partial_loss, "partial_train_sparsity": None}
        if steps_before_divergence is not None:
            result["diverged"]["recent_steps"] = list(steps_before_divergence)
            result["diverged"]["recent_layer_grad_norm"] = list(steps_before_divergence.values())
    (run / "result.json").write_text(json.dumps(result))
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Three seeds of ReLU and of CReLU s = 0.85 V' = 0.7; CReLU V' = 0.9 with one diverged seed;
    CST V' = 0.9 (past its bifurcation); an unclipped relu_tau diverged at once; one unfinished run;
    and a sweep-level config.json that is not a run."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"name": "table1", "seeds": [0, 1, 2]}))
    for seed, acc in enumerate([0.96, 0.95, 0.97]):
        write_run(root, f"relu-{seed}", activation="relu", seed=seed, accs=[0.9, acc], sparsities=(0.5, 0.52))
    for seed, acc, sp in zip(range(3), [0.90, 0.92, 0.95], [0.84, 0.85, 0.86]):
        write_run(root, f"c07-{seed}", activation="crelu", sparsity=0.85, slope=0.7, seed=seed, accs=[0.8, acc],
                  sparsities=(sp, sp - 0.01))
    write_run(root, "c09-0", activation="crelu", sparsity=0.85, slope=0.9, seed=0, accs=[0.5, 0.6],
              sparsities=(0.83, 0.82))
    write_run(root, "c09-1", activation="crelu", sparsity=0.85, slope=0.9, seed=1, accs=[0.4], status="diverged",
              losses=[2.5], partial_loss=40.0)
    write_run(root, "cst09-0", activation="cst", sparsity=0.85, slope=0.9, seed=0, accs=[0.3, 0.5],
              sparsities=(0.8, 0.79))
    write_run(root, "rt07-0", activation="relu_tau", sparsity=0.7, seed=0, accs=[], status="diverged",
              partial_loss=9.0)
    write_run(root, "c07-3", activation="crelu", sparsity=0.85, slope=0.7, seed=3, accs=[0.1], status=None)
    return root


def _row(rows, activation, sparsity, slope=None):
    hits = [r for r in rows if r["activation"] == activation and r["sparsity"] == sparsity
            and (slope is None or r["slope"] == slope)]
    assert len(hits) == 1, hits
    return hits[0]


def test_load_runs_finds_finished_runs_at_any_depth(sweep):
    runs = load_runs(sweep)
    assert len(runs) == 10 and all(r.finished for r in runs)
    everything = load_runs(sweep, include_unfinished=True)
    assert len(everything) == 11 and [r.path.name for r in everything if not r.finished] == ["c07-3"]
    assert len(load_runs(sweep / "runs" / "c09-1")) == 1  # a single run directory
    assert {r.activation for r in runs} == {"relu", "crelu", "cst", "relu_tau"}


def test_load_runs_rejects_bad_input(sweep, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_runs(tmp_path / "nowhere")
    (sweep / "runs" / "c09-0" / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="c09-0.*not valid JSON"):
        load_runs(sweep)


def test_table_numbers_by_hand(sweep):
    rows = build_table(load_runs(sweep))
    assert [(r["activation"], r["sparsity"], r["slope"]) for r in rows] == [
        ("relu", 0.5, 1.0), ("relu_tau", 0.7, 1.0), ("crelu", 0.85, 0.7), ("crelu", 0.85, 0.9), ("cst", 0.85, 0.9)]

    relu = _row(rows, "relu", 0.5)
    assert relu["n_runs"] == 3 and relu["seeds"] == [0, 1, 2] and relu["n_diverged"] == 0
    assert relu["test_accuracy_mean"] == pytest.approx(0.96)
    assert relu["test_accuracy_std"] == pytest.approx(0.01)  # sqrt((0 + 0.01^2 + 0.01^2) / 2)
    assert relu["train_sparsity_mean"] == pytest.approx(0.5) and relu["test_sparsity_mean"] == pytest.approx(0.52)
    assert relu["m"] == math.inf and relu["bifurcation_m"] is None and relu["below_bifurcation"] is None

    c07 = _row(rows, "crelu", 0.85, 0.7)
    mean = (0.90 + 0.92 + 0.95) / 3
    assert c07["test_accuracy_mean"] == pytest.approx(mean)
    assert c07["test_accuracy_std"] == pytest.approx(math.sqrt(((0.90 - mean) ** 2 + (0.92 - mean) ** 2
                                                                + (0.95 - mean) ** 2) / 2))
    assert c07["train_sparsity_mean"] == pytest.approx(0.85) and c07["test_sparsity_mean"] == pytest.approx(0.84)
    assert c07["m"] == pytest.approx(1.1704, abs=1e-4)
    assert c07["bifurcation_m"] == pytest.approx(1.8386, abs=1e-3) and c07["below_bifurcation"] is True

    # one completed seed (0.6) and one diverged after an epoch at 0.4: counted at chance, 0.1
    c09 = _row(rows, "crelu", 0.85, 0.9)
    assert c09["n_runs"] == 2 and c09["n_completed"] == 1 and c09["n_diverged"] == 1
    assert c09["test_accuracy_mean"] == pytest.approx(0.35)
    assert c09["test_accuracy_std"] == pytest.approx(math.sqrt(2 * 0.25 ** 2))
    assert c09["completed_accuracy_mean"] == pytest.approx(0.6) and c09["completed_accuracy_std"] is None
    assert c09["train_sparsity_mean"] == pytest.approx(0.83)  # the completed run only

    cst = _row(rows, "cst", 0.85, 0.9)  # docs/theory.md section 4.7: CST s = 0.85, V' = 0.9 is past its bifurcation
    assert cst["m"] == pytest.approx(1.5343, abs=1e-4)
    assert cst["bifurcation_m"] == pytest.approx(bifurcation_m("cst", 0.85)) and cst["bifurcation_m"] < cst["m"]
    assert cst["below_bifurcation"] is False

    rt = _row(rows, "relu_tau", 0.7)
    assert rt["test_accuracy_mean"] == pytest.approx(0.1) and rt["test_accuracy_std"] is None
    assert rt["completed_accuracy_mean"] is None and rt["train_sparsity_mean"] is None


@pytest.mark.parametrize("diverged, mean, std", [
    ("last", 0.5, math.sqrt(2 * 0.1 ** 2)),  # the diverged seed's last completed epoch: 0.4
    ("exclude", 0.6, None),
])
def test_diverged_conventions(sweep, diverged, mean, std):
    rows = build_table(load_runs(sweep), diverged=diverged)
    c09 = _row(rows, "crelu", 0.85, 0.9)
    assert c09["test_accuracy_mean"] == pytest.approx(mean)
    assert c09["test_accuracy_std"] == (None if std is None else pytest.approx(std))
    rt = _row(rows, "relu_tau", 0.7)  # no epoch completed: chance under "last", nothing under "exclude"
    assert rt["test_accuracy_mean"] == (pytest.approx(0.1) if diverged == "last" else None)
    with pytest.raises(ValueError, match="diverged must be one of"):
        build_table(load_runs(sweep), diverged="ignore")


def test_bookkeeping_settings_do_not_split_cells_but_real_ones_do(tmp_path):
    write_run(tmp_path, "a", activation="crelu", sparsity=0.85, slope=0.7, seed=0, accs=[0.9], depth=4)
    write_run(tmp_path, "b", activation="crelu", sparsity=0.85, slope=0.7, seed=1, accs=[0.8], depth=4,
              threads=2, preset="mlp-mnist-cpu")
    write_run(tmp_path, "c", activation="crelu", sparsity=0.85, slope=0.7, seed=0, accs=[0.7], depth=8,
              width=999)
    rows = build_table(load_runs(tmp_path))
    assert [(r["depth"], r["n_runs"]) for r in rows] == [(4, 2), (8, 1)]
    assert "width" in rows[0] and "threads" not in rows[0] and "seed" not in rows[0]
    header = next(line for line in table_markdown(rows).splitlines() if line.startswith("| activation"))
    assert "| depth |" in header and "| width |" in header


def _md_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_csv_and_markdown_agree(sweep):
    rows = build_table(load_runs(sweep))
    parsed = list(csv.DictReader(table_csv(rows).splitlines()))
    md = _md_table(table_markdown(rows))
    assert len(parsed) == len(md) == len(rows)
    for c, m in zip(parsed, md):
        assert m["activation"] == c["activation"] and float(m["s"]) == float(c["sparsity"])
        assert float(m["V'(q*)"]) == pytest.approx(float(c["slope"]))
        assert m["runs"] == c["n_runs"] and m["diverged"] == c["n_diverged"]
        assert c["seeds"].split() == [str(s) for s in _row(rows, c["activation"], float(c["sparsity"]),
                                                             float(c["slope"]))["seeds"]]
        acc = f"{float(c['test_accuracy_mean']):.4f}"
        assert m["test acc"] == (acc if not c["test_accuracy_std"] else f"{acc} ± {float(c['test_accuracy_std']):.4f}")
        for md_key, csv_key in (("train sparsity", "train_sparsity_mean"), ("test sparsity", "test_sparsity_mean")):
            assert m[md_key] == ("" if not c[csv_key] else f"{float(c[csv_key]):.4f}")
        if c["bifurcation_m"]:
            assert m["m_b"] == f"{float(c['bifurcation_m']):.4f}"
            assert m["m < m_b"] == {"True": "yes", "False": "no"}[c["below_bifurcation"]]
        else:
            assert m["m_b"] == "n/a" and c["below_bifurcation"] == ""
        assert (m["m"] == "inf") == (c["m"] == "inf")


def test_markdown_splits_models_into_sections(tmp_path):
    write_run(tmp_path, "mlp", activation="crelu", sparsity=0.85, slope=0.7, accs=[0.9])
    write_run(tmp_path, "cnn", activation="crelu", sparsity=0.85, slope=0.7, accs=[0.8], model="cnn", epochs=2)
    rows = build_table(load_runs(tmp_path))
    assert [r["model"] for r in rows] == ["cnn", "mlp"] and len(rows) == 2
    text = table_markdown(rows)
    assert "## cnn" in text and "## mlp" in text
    assert "epochs" not in text  # constant within each model: not a column


def test_default_and_explicit_cell_choice(sweep):
    runs = load_runs(sweep)
    default = select_cells(runs)  # highest s (0.85), then lowest mean accuracy: crelu V'0.9 (0.35), cst (0.5)
    assert [(r["activation"], r["slope"]) for r in default] == [("crelu", 0.9), ("cst", 0.9)]
    assert [r["slope"] for r in select_cells(runs, ["crelu:0.85:0.7"])] == [0.7]
    assert [r["slope"] for r in select_cells(runs, ["mlp:crelu:0.85"])] == [0.7, 0.9]
    assert [r["activation"] for r in select_cells(runs, ["relu", "crelu:0.85:0.9", "relu:0.5"])] == ["relu", "crelu"]
    with pytest.raises(ValueError, match="matches no cell.*mlp:crelu:0.85:0.9"):
        select_cells(runs, ["crelu:0.6"])
    with pytest.raises(ValueError, match="must be numbers"):
        select_cells(runs, ["crelu:high"])
    with pytest.raises(ValueError, match="activation"):
        select_cells(runs, ["crelu:0.85:0.7:9"])


def test_loss_curves_label_every_seed_and_mark_the_partial_epoch(sweep):
    fig = draw_loss_curves(load_runs(sweep), ["crelu:0.85:0.9"])
    (ax,) = [a for a in fig.axes if a.get_visible()]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["seed 0: acc 0.600", "seed 1: diverged in epoch 2 (acc 0.400 before)"]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [2] and list(crosses[0].get_ydata()) == [40.0]
    assert ax.get_yscale() == "log"


def test_layer_stats_figure_is_the_geometric_mean_over_seeds(tmp_path):
    grads = {0: [[1.0, 2.0, 4.0, 8.0], [1.0, 1.0, 1.0, 1.0]], 1: [[4.0, 8.0, 1.0, 2.0], [1.0, 4.0, 9.0, 16.0]]}
    for seed in (0, 1):
        write_run(tmp_path, f"good-{seed}", activation="crelu", sparsity=0.85, slope=0.7, seed=seed,
                  accs=[0.8, 0.9], grad_norms=grads[seed], preact_vars=[[1.0] * DEPTH] * 2)
    write_run(tmp_path, "bad", activation="crelu", sparsity=0.85, slope=0.9, accs=[0.2, 0.3],
              grad_norms=[[1e3] * DEPTH, [1e4] * DEPTH])
    write_run(tmp_path, "nostats", activation="relu", accs=[0.95])
    fig = draw_layer_stats(load_runs(tmp_path))
    titles = [a.get_title() for a in fig.axes]
    failing = next(a for a, t in zip(fig.axes, titles) if t.startswith("failing"))
    healthy = next(a for a, t in zip(fig.axes, titles) if t.startswith("healthy"))
    assert "V'(q*) = 0.9" in failing.get_title() and "V'(q*) = 0.7" in healthy.get_title()
    assert "2 seed(s)" in healthy.get_title()
    epoch1 = healthy.get_lines()[0].get_ydata()  # the first epoch: sqrt of each layer's product over seeds
    assert list(epoch1) == pytest.approx([2.0, 4.0, 2.0, 4.0])
    assert list(failing.get_lines()[1].get_ydata()) == pytest.approx([1e4] * DEPTH)
    assert healthy.get_yscale() == "log"
    assert len(fig.axes) == 5  # 2 stats x 2 cells + the colour bar


def test_a_failing_cell_that_diverged_at_once_shows_its_steps_before_the_divergence(tmp_path):
    # write_run's divergences happen at step 7: steps 5 and 6 are 2 and 1 steps before it
    for seed, steps in ((0, {5: [1.0, 1.0, 1.0, 1.0], 6: [4.0, 1e2, 1e4, None]}), (1, {6: [4.0, 4.0, 4.0, 4.0]})):
        write_run(tmp_path, f"rt-{seed}", activation="relu_tau", sparsity=0.7, seed=seed, status="diverged",
                  steps_before_divergence=steps)
    write_run(tmp_path, "st", activation="st_tau", sparsity=0.9, status="diverged",
              steps_before_divergence={6: [1.0] * DEPTH})  # as failing, but seen for fewer steps
    write_run(tmp_path, "good", activation="crelu", sparsity=0.85, slope=0.7, accs=[0.8, 0.9],
              grad_norms=[[1.0] * DEPTH, [2.0] * DEPTH])
    fig = draw_layer_stats(load_runs(tmp_path))
    failing = next(a for a in fig.axes if a.get_title().startswith("failing"))
    healthy = next(a for a in fig.axes if a.get_title().startswith("healthy"))
    assert "ReLU" in failing.get_title() and "2 seed(s)" in failing.get_title()
    assert [t.get_text() for t in failing.get_legend().get_texts()] == ["2 steps before", "1 step before"]
    assert "one step" in failing.get_ylabel() and "epoch mean" in healthy.get_ylabel()
    two, one = (line.get_ydata() for line in failing.get_lines())
    assert list(two) == pytest.approx([1.0] * DEPTH)  # seed 0 alone
    assert list(one) == pytest.approx([4.0, 20.0, 200.0, 4.0])  # geometric means; null (overflow) left out
    assert len(fig.axes) == 3  # 1 stat x 2 cells + the colour bar of the healthy cell's epochs


def test_report_skips_the_layer_stats_figure_when_not_logged(sweep, tmp_path):
    assert draw_layer_stats(load_runs(sweep)) is None
    summary = write_report(sweep, tmp_path / "rep", formats=("png",))
    assert not list((tmp_path / "rep").glob("fig3*"))
    assert summary.notes == ["figure 3 skipped: no run logged layer_grad_norm (train with --log-layer-stats)"]
    assert "figure 3 skipped" in (tmp_path / "rep" / "index.md").read_text()


def test_write_report_files_and_index(sweep, tmp_path):
    out = tmp_path / "rep"
    summary = write_report(sweep, out, cells=["crelu:0.85:0.7"])
    assert (summary.n_found, summary.n_finished, summary.n_diverged, summary.n_unfinished) == (11, 10, 2, 1)
    names = sorted(p.name for p in summary.paths)
    assert names == sorted(["table.md", "table.csv", "index.md", *(f"fig{i}_{s}.{f}" for i, s in
                            ((1, "accuracy_vs_sparsity"), (2, "loss_curves")) for f in ("png", "pdf"))])
    assert (out / "fig1_accuracy_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fig2_loss_curves.pdf").read_bytes()[:5] == b"%PDF-"
    assert not list(out.glob("*.tmp*"))
    index = (out / "index.md").read_text()
    assert "11 found, 10 finished (8 completed, 2 diverged), 1 unfinished" in index
    assert str(sweep.resolve()) in index and "mlp:crelu:0.85:0.7" in index
    assert "[table.csv](table.csv)" in index and "[fig2_loss_curves.pdf](fig2_loss_curves.pdf)" in index
    assert _md_table((out / "table.md").read_text()) == _md_table(index.split("## Table", 1)[1].split("## Settings")[0])


def test_write_report_refuses_nothing_to_report(tmp_path):
    write_run(tmp_path, "a", activation="relu", accs=[0.5], status=None)
    with pytest.raises(ValueError, match="no finished run.*1 unfinished"):
        write_report(tmp_path, tmp_path / "rep")


def test_cli_report_end_to_end(sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(sweep), "--out", str(out), "--cells", "crelu:0.85:0.9", "--cells", "relu",
                 "--diverged", "last"]) == 0
    captured = capsys.readouterr()
    assert "11 run(s) found: 10 finished (2 diverged), 1 unfinished" in captured.out
    assert "figure 3 skipped" in captured.err
    assert "mlp:crelu:0.85:0.9, mlp:relu:0.5" in (out / "index.md").read_text()
    c09 = _row(list(csv.DictReader((out / "table.csv").read_text().splitlines())), "crelu", "0.85", "0.9")
    assert float(c09["test_accuracy_mean"]) == pytest.approx(0.5)  # --diverged last

    assert main(["report", str(sweep), "--out", str(out), "--cells", "st_tau:0.9"]) == 2
    assert "matches no cell" in capsys.readouterr().err


def test_report_module_does_not_import_torch():
    code = "import sys, sparse_eoc.experiments.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _drop_eoc_sparsity(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    del config["eoc"]["sparsity"]
    (run / "config.json").write_text(json.dumps(config))


def _no_classes(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config["network"]["num_classes"] = 0
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("spoil, file, field", [
    (lambda run: (run / "result.json").write_text("[1, 2]"), "result.json", "not a run's result"),
    (lambda run: (run / "result.json").write_text("{not json"), "result.json", "not valid JSON"),
    (_drop_eoc_sparsity, "config.json", "eoc.sparsity is missing"),
    (_no_classes, "config.json", "network.num_classes must be an integer >= 1, got 0"),
    (lambda run: (run / "metrics.jsonl").write_text("[1]\n"), "metrics.jsonl", "line 1: not a JSON object"),
])
def test_a_malformed_run_is_refused_by_load_runs_and_skipped_by_the_report(sweep, tmp_path, capsys, spoil, file,
                                                                           field):
    bad = sweep / "runs" / "c09-0"
    spoil(bad)
    with pytest.raises(ValueError, match=f"c09-0/{file}.*{field}"):  # one line naming the file and the field
        load_runs(sweep)
    notes: list[str] = []
    assert len(load_runs(sweep, notes=notes)) == 9 and len(notes) == 1
    assert str(bad / file) in notes[0] and field in notes[0]

    summary = write_report(sweep, tmp_path / "rep", formats=("png",))  # the other 9 finished runs still report
    assert (summary.n_found, summary.n_finished, summary.n_unfinished, summary.n_skipped) == (11, 9, 1, 1)
    assert summary.notes[0] == notes[0]
    c09 = _row(list(csv.DictReader((tmp_path / "rep" / "table.csv").read_text().splitlines())), "crelu", "0.85",
               "0.9")
    assert c09["n_runs"] == "1" and c09["n_diverged"] == "1"  # only the diverged seed is left
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "11 found, 9 finished (7 completed, 2 diverged), 1 unfinished" in index and "1 skipped" in index
    assert f"- {notes[0]}" in index

    assert main(["report", str(sweep), "--out", str(tmp_path / "rep2")]) == 0
    assert f"note: {notes[0]}" in capsys.readouterr().err


def test_only_a_run_whose_result_says_completed_or_diverged_is_finished(sweep, tmp_path):
    # as a sweep counts it (sparse_eoc.runs.files.FINISHED): another status is an unfinished run
    path = sweep / "runs" / "cst09-0" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "weird"}))
    assert "cst09-0" not in [r.path.name for r in load_runs(sweep)]
    (weird,) = [r for r in load_runs(sweep, include_unfinished=True) if r.path.name == "cst09-0"]
    assert not weird.finished and not weird.diverged and weird.accuracy() is None
    summary = write_report(sweep, tmp_path / "rep", formats=("png",))
    assert (summary.n_found, summary.n_finished, summary.n_unfinished, summary.n_skipped) == (11, 9, 2, 0)
    assert any(str(path) in note and "'weird'" in note and "unfinished" in note for note in summary.notes)
    assert "cst" not in (tmp_path / "rep" / "table.csv").read_text()


def test_a_report_of_only_malformed_runs_says_why(tmp_path):
    run = write_run(tmp_path, "a", activation="relu", accs=[0.5])
    (run / "result.json").write_text("null")
    with pytest.raises(ValueError, match=r"no finished run.*0 unfinished, 1 skipped; run skipped: .*a/result.json"):
        write_report(tmp_path, tmp_path / "rep")


@pytest.mark.parametrize("module", ["sparse_eoc.plotstyle", "sparse_eoc.experiments.results",
                                    "sparse_eoc.experiments.report_table"])
def test_the_table_modules_do_not_import_matplotlib(module):
    # Nothing below the figures imports matplotlib: the results table reads JSON and names
    # activations with the palette of sparse_eoc.plotstyle.
    code = f"import sys, {module}; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_matplotlib_check_sees_it_when_it_is_imported():
    code = "import sys, sparse_eoc.experiments.report_figures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


# ------------------------------------------------------------------ q* and validation (qstar-table)


@pytest.fixture
def qsweep(tmp_path) -> Path:
    """Runs over q* with a validation split: ReLU at q* = 1; CReLU s = 0.9 with V'(q*) = 0.7 at q* 1
    and 16 (2 seeds each), with m = 1 at q* 16 and m = 0.25 at q* 1; a readout control at q* 1
    (readout_lr_scale 16); one seed of the m = 1 cell diverged after an epoch."""
    root = tmp_path / "qsweep"
    root.mkdir()
    common = {"sparsities": (0.9, 0.88)}
    write_run(root, "relu", activation="relu", accs=[0.9, 0.96], val_accs=[0.9, 0.95], sparsities=(0.5, 0.5))
    for seed, (val1, val16) in enumerate([(0.60, 0.80), (0.70, 0.84)]):
        write_run(root, f"v07-q1-{seed}", activation="crelu", sparsity=0.9, slope=0.7, seed=seed, accs=[0.5, 0.6],
                  val_accs=[0.5, val1], **common)
        write_run(root, f"v07-q16-{seed}", activation="crelu", sparsity=0.9, slope=0.7, q_star=16.0, seed=seed,
                  accs=[0.7, 0.8], val_accs=[0.7, val16], **common)
    write_run(root, "m1-q16-0", activation="crelu", sparsity=0.9, m=1.0, q_star=16.0, accs=[0.9, 0.93],
              val_accs=[0.9, 0.92], sparsities=(0.91, 0.9))
    write_run(root, "m1-q16-1", activation="crelu", sparsity=0.9, m=1.0, q_star=16.0, seed=1, accs=[0.5],
              val_accs=[0.52], status="diverged", partial_loss=9.0)
    write_run(root, "m025-q1", activation="crelu", sparsity=0.9, m=0.25, accs=[0.88, 0.9], val_accs=[0.88, 0.91],
              sparsities=(0.9, 0.9))
    write_run(root, "readout", activation="crelu", sparsity=0.9, slope=0.7, accs=[0.7, 0.75], val_accs=[0.7, 0.77],
              readout_lr_scale=16.0, **common)
    return root


def test_the_table_shows_q_star_and_the_validation_accuracy(qsweep):
    rows = build_table(load_runs(qsweep))
    v07 = [r for r in rows if r["activation"] == "crelu" and r["slope"] == pytest.approx(0.7)
           and r["readout_lr_scale"] != 16.0]
    assert [r["q_star"] for r in v07] == [1.0, 16.0]
    assert v07[0]["val_accuracy_mean"] == pytest.approx(0.65) and v07[0]["val_accuracy_std"] == pytest.approx(
        math.sqrt(2 * 0.05 ** 2))
    assert v07[1]["val_accuracy_mean"] == pytest.approx(0.82) and v07[1]["test_accuracy_mean"] == pytest.approx(0.8)
    m1 = next(r for r in rows if r["q_star"] == 16.0 and r["m"] == pytest.approx(1.0))
    assert m1["val_accuracy_mean"] == pytest.approx((0.92 + 0.1) / 2)  # the diverged seed at chance
    assert build_table(load_runs(qsweep), diverged="last")[rows.index(m1)]["val_accuracy_mean"] == pytest.approx(
        (0.92 + 0.52) / 2)  # its last completed epoch's
    text = table_markdown(rows)
    header = next(line for line in text.splitlines() if line.startswith("| activation"))
    assert "| q_star |" in header and "| val acc | test acc |" in header and "| readout_lr_scale |" in header
    md = _md_table(text)
    assert md[0]["activation"] == "relu" and md[0]["val acc"] == "0.9500"
    assert "choose settings on it" in text
    parsed = list(csv.DictReader(table_csv(rows).splitlines()))
    assert float(parsed[0]["val_accuracy_mean"]) == pytest.approx(0.95)


def test_no_validation_column_without_a_validation_split(sweep):
    rows = build_table(load_runs(sweep))
    assert all(r["val_accuracy_mean"] is None for r in rows)
    assert "val acc" not in table_markdown(rows)


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_the_q_star_figure_draws_one_line_per_clip_reading(qsweep):
    fig = draw_accuracy_vs_qstar(load_runs(qsweep))
    top, bottom = [a for a in fig.axes if a.get_visible()]
    assert top.get_ylabel() == "validation accuracy" and bottom.get_ylabel() == "test sparsity"
    assert top.get_xscale() == "log" and [t.get_text() for t in top.get_xticklabels()] == ["1", "16"]
    labels = _legend(bottom)  # one legend for both panels
    assert labels[0].startswith("ReLU: 0.9500")
    assert labels[1:] == ["V'(q*) = 0.7", "V'(q*) = 0.7, readout_lr_scale = 16", "m = 0.25 (fixed)", "m = 1 (fixed)",
                          "target s = 0.9"]
    lines = {c.get_label(): c for c in top.containers}
    v07 = lines["V'(q*) = 0.7"].lines[0]
    assert list(v07.get_ydata()) == pytest.approx([0.65, 0.82])
    x = v07.get_xdata()
    assert x[1] / x[0] == pytest.approx(16.0)  # the line's points at q* 1 and 16 (shifted alike)
    assert list(lines["m = 1 (fixed)"].lines[0].get_ydata()) == pytest.approx([0.51])
    control = lines["V'(q*) = 0.7, readout_lr_scale = 16"].lines[0]
    assert control.get_marker() == "*" and control.get_linestyle() == "None"
    assert list(control.get_ydata()) == pytest.approx([0.77])
    sparsity = bottom.containers[0].lines[0]  # the V'(q*) = 0.7 line, the first drawn
    assert list(sparsity.get_ydata()) == pytest.approx([0.88, 0.88]) and list(sparsity.get_xdata()) == list(x)

    # the diverged seed of m = 1 at q* = 16: an open marker over its point
    assert any(line.get_markerfacecolor() == "white" for line in top.get_lines())


def test_the_q_star_figure_needs_q_star_to_vary_and_falls_back_to_the_test_accuracy(sweep, tmp_path):
    assert draw_accuracy_vs_qstar(load_runs(sweep)) is None
    for q in (1.0, 4.0):
        write_run(tmp_path / "q", f"q{q:g}", activation="crelu", sparsity=0.85, slope=0.7, q_star=q,
                  accs=[0.8 + q / 100])
    fig = draw_accuracy_vs_qstar(load_runs(tmp_path / "q"))
    top = next(a for a in fig.axes if a.get_visible())
    assert top.get_ylabel() == "test accuracy"
    assert list(top.containers[0].lines[0].get_ydata()) == pytest.approx([0.81, 0.84])


def test_write_report_adds_the_q_star_figure_only_when_q_star_varies(qsweep, sweep, tmp_path):
    summary = write_report(qsweep, tmp_path / "q", formats=("png",))
    assert (tmp_path / "q" / "fig4_accuracy_vs_qstar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "q" / "index.md").read_text()
    assert "[fig4_accuracy_vs_qstar.png](fig4_accuracy_vs_qstar.png)" in index and "validation accuracy" in index
    assert not any("figure 4" in note for note in summary.notes)
    plain = write_report(sweep, tmp_path / "plain", formats=("png",))
    assert not list((tmp_path / "plain").glob("fig4*")) and not any("figure 4" in n for n in plain.notes)


def _write_tiny_mnist(d: Path, n_train: int = 600, n_test: int = 100, side: int = 8) -> Path:
    """A learnable 10-class MNIST-format dataset: class c lights row c % side and column c // 2."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, side, side)).astype(np.uint8)  # (N, H, W)
        for i, c in enumerate(y):
            x[i, c % side, :] = 250
            x[i, :, c // 2] = 200
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", y)
    return d


def test_qstar_table_smoke_sweep_end_to_end(tmp_path):
    """The qstar-table smoke sweep on tiny synthetic data, then its report: q* column, the
    validation accuracy, figure 4, and the cells that share their seeds (about 6 s)."""
    data = _write_tiny_mnist(tmp_path / "data")
    outcome = run_sweep("qstar-table", "smoke", data_dir=data, out=tmp_path / "sweep", workers=1, cpus_per_run=1,
                        progress=False, log=lambda line: None)
    assert outcome.counts == {"completed": 4} and not outcome.failed
    runs = load_runs(tmp_path / "sweep")
    assert sorted(r.q_star for r in runs) == [1.0, 1.0, 16.0, 16.0]
    assert all(r.has_validation and r.config["data"]["n_val"] == 200 for r in runs)
    assert len({r.seed for r in runs}) == 1  # paired: one seed for the four cells
    assert {r.clip_reading for r in runs} == {("slope", 0.7), ("m", 1.0)}
    summary = write_report(tmp_path / "sweep", tmp_path / "report", formats=("png",))
    assert summary.n_finished == 4
    names = {p.name for p in summary.paths}
    assert {"fig1_accuracy_vs_sparsity.png", "fig4_accuracy_vs_qstar.png", "table.md"} <= names
    rows = build_table(runs)
    assert all(r["val_accuracy_mean"] is not None and 0 <= r["val_accuracy_mean"] <= 1 for r in rows)
    assert "| val acc |" in (tmp_path / "report" / "table.md").read_text()
