"""The experiment registry: grids, configs, derived seeds, run names, --set parsing, estimates."""

import json
import os
import subprocess
import sys

import pytest

from sparse_eoc.activations import get_activation
from sparse_eoc.experiments import EXPERIMENTS, estimate_seconds, get_experiment, parse_overrides
from sparse_eoc.gp import fixed_points, solve_eoc
from sparse_eoc.train import PRESETS, TrainConfig

ALL_PRESETS = [(e, p) for e, exp in EXPERIMENTS.items() for p in exp.presets]


def table_cells(activations, n_sparsities, n_slopes):
    """Cells of a table grid counted by hand: relu 1, unclipped one per s, clipped s x slopes."""
    return sum(1 if a == "relu" else n_sparsities * (n_slopes if get_activation(a).clipped else 1)
               for a in activations)


@pytest.mark.parametrize("experiment,preset,cells,runs", [
    ("dnn-table", "paper", 1 + 2 * 5 + 2 * 5 * 3, (1 + 2 * 5 + 2 * 5 * 3) * 5),
    ("dnn-table", "cpu", 41, 82),
    ("dnn-table", "smoke", 4, 4),
    ("cnn-table", "paper", 41, 41),
    ("cnn-table", "cpu", 1 + 2 * 2 + 2 * 2, 9),
    ("cnn-table", "smoke", 4, 4),
])
def test_cell_and_run_counts(experiment, preset, cells, runs):
    exp = get_experiment(experiment)
    grid = exp.preset(preset).grid
    assert exp.n_cells(preset) == cells == table_cells(grid.activations, len(grid.sparsities), len(grid.slopes))
    assert len(exp.runs(preset)) == runs


@pytest.mark.parametrize("experiment,preset", ALL_PRESETS)
def test_every_run_is_a_valid_config_with_an_eoc_point(experiment, preset):
    exp = get_experiment(experiment)
    p = exp.preset(preset)
    runs = exp.runs(preset, data_dir="/data")
    base = {**PRESETS[p.train_preset], **p.settings}
    for run in runs:
        c = run.config
        assert isinstance(c, TrainConfig) and c.preset == p.train_preset and c.data_dir == "/data"
        assert all(getattr(c, k) == v for k, v in base.items())
        assert (c.activation, c.sparsity, c.slope) == (run.cell["activation"], run.cell["sparsity"],
                                                       run.cell.get("slope"))
        assert c.activation in p.grid.activations
    for cell in {(r.config.activation, r.config.sparsity, r.config.slope) for r in runs}:
        point = solve_eoc(cell[0], None if cell[0] == "relu" else cell[1], 1.0, slope=cell[2])
        assert point.sparsity == pytest.approx(cell[1], abs=1e-9)
        if cell[2] is not None:
            assert point.slope == pytest.approx(cell[2], abs=1e-6)
            assert any(abs(f.q - 1.0) < 1e-6 and f.stability == "stable" for f in fixed_points(point))


def test_paper_presets_follow_the_paper():
    dnn = get_experiment("dnn-table").runs("paper")[0].config
    cnn = get_experiment("cnn-table").runs("paper")[0].config
    assert (dnn.model, dnn.depth, dnn.width, dnn.optimizer, dnn.lr, dnn.epochs, dnn.dataset) == \
        ("mlp", 100, 300, "sgd", 1e-4, 200, "mnist")
    assert (cnn.model, cnn.depth, cnn.channels, cnn.optimizer, cnn.lr, cnn.epochs, cnn.dataset) == \
        ("cnn", 50, 300, "sgd", 1e-3, 200, "cifar10")
    assert get_experiment("dnn-table").preset("paper").grid.seeds == 5
    assert get_experiment("cnn-table").preset("paper").grid.seeds == 1
    grid = get_experiment("dnn-table").preset("paper").grid
    assert grid.sparsities == (0.6, 0.7, 0.8, 0.85, 0.9) and grid.slopes == (0.5, 0.7, 0.9)
    assert grid.activations == ("relu", "relu_tau", "st_tau", "crelu", "cst")


@pytest.mark.parametrize("experiment,preset", ALL_PRESETS)
def test_seeds_and_names_distinct_and_stable_across_calls(experiment, preset):
    exp = get_experiment(experiment)
    a, b = exp.runs(preset), exp.runs(preset)
    assert [r.name for r in a] == [r.name for r in b]
    assert [r.config.seed for r in a] == [r.config.seed for r in b]
    assert len({r.config.seed for r in a}) == len(a)
    assert len({r.name for r in a}) == len(a)
    assert all(0 <= r.config.seed < 2**31 for r in a)


def test_names_and_seeds_stable_across_processes():
    code = ("import json; from sparse_eoc.experiments import get_experiment; "
            "print(json.dumps([[r.name, r.config.seed] for r in get_experiment('dnn-table').runs('cpu')]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    here = [[r.name, r.config.seed] for r in get_experiment("dnn-table").runs("cpu")]
    assert json.loads(out) == here


def test_run_names_read_the_cell_and_ignore_where_the_run_executes():
    exp = get_experiment("dnn-table")
    plain = exp.runs("smoke")
    moved = exp.runs("smoke", overrides={"threads": 2, "device": "cuda"}, data_dir="/elsewhere")
    assert [r.name for r in plain] == [r.name for r in moved]
    assert [r.config.seed for r in plain] == [r.config.seed for r in moved]
    longer = exp.runs("smoke", overrides={"epochs": 2})
    assert all(x.name != y.name for x, y in zip(plain, longer))
    names = [r.name for r in exp.runs("cpu")]
    assert names[0].startswith("relu-s0.5-seed0-") and names[1].startswith("relu-s0.5-seed1-")
    assert any(n.startswith("crelu-s0.85-v0.7-seed1-") for n in names)
    assert any(n.startswith("st_tau-s0.9-seed0-") for n in names)


def test_seed_salt_draws_other_seeds():
    exp = get_experiment("dnn-table")
    plain = [r.config.seed for r in exp.runs("cpu")]
    salted = [r.config.seed for r in exp.runs("cpu", overrides={"seed": 1})]
    assert not set(plain) & set(salted)


def test_cells_of_one_seed_index_get_different_seeds():
    runs = get_experiment("dnn-table").runs("cpu")
    seeds0 = [r.config.seed for r in runs if r.seed_index == 0]
    assert len(set(seeds0)) == len(seeds0) == 41


def test_parse_overrides_by_field_type():
    got = parse_overrides(["epochs=3", "lr=1e-2", "threads=none", "augment=true", "optimizer=adam",
                           "batch-size=64", "epochs=4", "slope=0.5"])
    assert got == {"epochs": 4, "lr": 0.01, "threads": None, "augment": True, "optimizer": "adam",
                   "batch_size": 64, "slope": 0.5}
    assert type(got["epochs"]) is int and type(got["lr"]) is float
    assert parse_overrides([]) == {} and parse_overrides(None) == {}


@pytest.mark.parametrize("item,message", [
    ("nonsense=1", "unknown setting 'nonsense'; valid keys: activation, sparsity"),
    ("epochs", "--set takes key=value"),
    ("=3", "--set takes key=value"),
    ("epochs=three", "epochs takes an integer"),
    ("lr=fast", "lr takes a number"),
    ("augment=maybe", "augment takes true or false"),
    ("epochs=none", "epochs takes an integer"),
])
def test_parse_overrides_errors(item, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_overrides([item])


def test_overrides_are_validated_and_grid_settings_refused():
    exp = get_experiment("dnn-table")
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        exp.runs("smoke", overrides=parse_overrides(["epochs=-1"]))
    with pytest.raises(ValueError, match="activation, sparsity cannot be overridden"):
        exp.runs("smoke", overrides={"activation": "relu", "sparsity": 0.7})
    assert all(r.config.lr == 0.05 for r in exp.runs("smoke", overrides={"lr": 0.05}))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="experiment must be one of dnn-table, cnn-table"):
        get_experiment("table")
    with pytest.raises(ValueError, match="must be one of paper, cpu, smoke"):
        get_experiment("dnn-table").runs("gpu")


def test_cpu_presets_fit_about_two_hours_and_smoke_minutes():
    for name in ("dnn-table", "cnn-table"):
        exp = get_experiment(name)
        cpu = estimate_seconds(exp.runs("cpu"), exp.preset("cpu"))
        assert 0 < cpu <= 2 * 3600
        assert estimate_seconds(exp.runs("smoke"), exp.preset("smoke")) <= 120
    exp = get_experiment("dnn-table")
    p = exp.preset("cpu")
    runs = exp.runs("cpu")
    assert all((r.config.depth, r.config.epochs) == (40, 8) for r in runs)
    assert estimate_seconds(runs, p) == len(runs) * (8 * p.epoch_seconds + p.run_seconds)
    assert estimate_seconds(get_experiment("cnn-table").runs("paper"), get_experiment("cnn-table").preset("paper")) \
        is None


def test_importing_the_package_and_the_report_needs_no_torch():
    code = "import sys, sparse_eoc.experiments; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_training_preset_cannot_be_overridden():
    """--set preset=... changed only the recorded name, not the settings it stands for."""
    with pytest.raises(ValueError, match=r"preset cannot be overridden"):
        get_experiment("dnn-table").runs("smoke", overrides=parse_overrides(["preset=cnn-mnist-cpu"]))
