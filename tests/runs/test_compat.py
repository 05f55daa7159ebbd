"""Run directories and a sweep written by sparse-eoc at 6b2918f (tests/fixtures/v6b2918f) still
load, resume and report, and keep their names.

The fixtures were written by the code at commit 6b2918f on a tiny 8 x 8, 10-class dataset
(kept beside them in ``data/``) recorded at the absolute path ``DATA`` below: a finished
2-epoch CReLU run, the same run killed right after its epoch-1 checkpoint, and the
``dnn-table`` ``smoke`` sweep with ``--set width=8 --set depth=2``.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparse_eoc.experiments.report import write_report
from sparse_eoc.experiments.sweep import run_sweep
from sparse_eoc.nn.build import load_run
from sparse_eoc.runs.config import resume_settings
from sparse_eoc.train import train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v6b2918f"
DATA = Path("/tmp/sparse-eoc-fixture-6b2918f/data")  # the data_dir the fixtures record


@pytest.fixture
def old(tmp_path):
    """A writable copy of the fixtures, and their data at the path they record."""
    if DATA.exists():
        shutil.rmtree(DATA)
    shutil.copytree(FIXTURES / "data", DATA)
    shutil.copytree(FIXTURES, tmp_path / "old", ignore=shutil.ignore_patterns("data"))
    return tmp_path / "old"


def without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def test_a_finished_run_loads_and_reports_itself_finished(old):
    model, config = load_run(old / "run-finished")
    assert config["network"]["width"] == 8 and not model.training
    assert model(torch.zeros(3, 64)).shape == (3, 10)
    before = (old / "run-finished" / "result.json").read_text()
    result = train(resume_settings(old / "run-finished"), old / "run-finished", progress=False, resume=True)
    assert result["test_accuracy"] == json.loads(before)["test_accuracy"]
    assert (old / "run-finished" / "result.json").read_text() == before  # untouched


def test_an_interrupted_run_resumes_to_the_uninterrupted_runs_numbers(old):
    run, twin = old / "run-interrupted", old / "run-finished"
    result = train(resume_settings(run), run, progress=False, resume=True)
    expected = json.loads((twin / "result.json").read_text())
    assert without(result, "wall_seconds") == without(expected, "wall_seconds")
    lines = [without(json.loads(line), "seconds") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == [without(json.loads(line), "seconds") for line in (twin / "metrics.jsonl").read_text().splitlines()]
    new, was = load_file(str(run / "model.safetensors")), load_file(str(twin / "model.safetensors"))
    assert new.keys() == was.keys() and all(torch.equal(new[k], was[k]) for k in new)


def test_the_sweep_keeps_its_run_names_and_trains_nothing_again(old):
    sweep = old / "sweep"
    stamps = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()}
    outcome = run_sweep("dnn-table", "smoke", data_dir=DATA, out=sweep, overrides={"width": 8, "depth": 2},
                        workers=1, cpus_per_run=1, progress=False, log=lambda line: None)
    assert len(outcome.skipped) == 4 and outcome.counts == {"completed": 4}
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.parent != sweep)  # run files untouched


def test_the_sweep_reports(old, tmp_path):
    summary = write_report(old / "sweep", tmp_path / "report")
    assert summary.n_finished == 4
    table = (tmp_path / "report" / "table.md").read_text()
    assert "relu_tau" in table or "ReLU" in table
