"""The experiment registry: grids, configs, derived seeds, run names, --set parsing, estimates."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest

from sparse_eoc.activations import get_activation
from sparse_eoc.experiments import (
    EXPERIMENTS,
    Grid,
    estimate_seconds,
    get_experiment,
    parse_overrides,
)
from sparse_eoc.experiments.registry import CellList
from sparse_eoc.gp import fixed_points, solve_eoc
from sparse_eoc.train import PRESETS, TrainConfig

ALL_PRESETS = [(e, p) for e, exp in EXPERIMENTS.items() for p in exp.presets]
CLIP_KEYS = ("activation", "sparsity", "slope", "m")


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
        own = {k: v for k, v in run.cell.items() if k != "scaled"}
        scaled = {k: base.get(k, getattr(TrainConfig(activation="relu"), k)) * f
                  for k, f in run.cell.get("scaled", {}).items()}
        expected = {**base, **own, **scaled}
        assert all(getattr(c, k) == v for k, v in expected.items() if k not in ("slope", "m"))
        assert tuple(getattr(c, k) for k in CLIP_KEYS) == tuple(run.cell.get(k) for k in CLIP_KEYS)
        if isinstance(p.grid, Grid):
            assert c.activation in p.grid.activations
    for cell in {(r.config.activation, r.config.sparsity, r.config.slope, r.config.m, r.config.q_star) for r in runs}:
        name, s, slope, m, q_star = cell
        point = solve_eoc(name, None if name == "relu" else s, q_star, slope=slope, m=m)
        assert point.sparsity == pytest.approx(s, abs=1e-9)
        if slope is not None:
            assert point.slope == pytest.approx(slope, abs=1e-6)
            assert any(abs(f.q / q_star - 1.0) < 1e-6 and f.stability == "stable" for f in fixed_points(point))


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
    assert len({r.name for r in a}) == len(a)
    assert all(0 <= r.config.seed < 2**31 for r in a)
    # a paired preset shares the seeds of the cells that differ only in its paired settings
    paired = exp.preset(preset).paired
    groups = {}
    for r in a:
        key = (json.dumps({k: v for k, v in r.cell.items() if k not in (*paired, "scaled")}, sort_keys=True),
               r.seed_index)
        groups.setdefault(key, set()).add(r.config.seed)
    assert all(len(seeds) == 1 for seeds in groups.values())
    assert len({s for seeds in groups.values() for s in seeds}) == len(groups)


def test_names_and_seeds_stable_across_processes():
    presets = [("dnn-table", "cpu"), ("dnn-table", "depth100-cpu"), ("qstar-table", "cpu")]
    code = ("import json; from sparse_eoc.experiments import get_experiment; "
            f"print(json.dumps([[r.name, r.config.seed] for e, p in {presets!r} for r in get_experiment(e).runs(p)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    here = [[r.name, r.config.seed] for e, p in presets for r in get_experiment(e).runs(p)]
    assert json.loads(out) == here


# sha256 of the "<name> <seed>" lines of each preset, as the code before the q* axis and the
# cell lists (8a43763) made them: an old sweep's runs keep their names and seeds.
OLD_RUNS = {("dnn-table", "paper"): "b8502676da8a7c51", ("dnn-table", "cpu"): "448c965235ea0a09",
            ("dnn-table", "smoke"): "22ce3ef3e90bd225", ("cnn-table", "paper"): "0b1307fd4c400e27",
            ("cnn-table", "cpu"): "f2363b17f0791113", ("cnn-table", "smoke"): "d4acfbb54c62864a"}


@pytest.mark.parametrize("experiment,preset", list(OLD_RUNS))
def test_the_table_presets_keep_their_run_names_and_seeds(experiment, preset):
    lines = "\n".join(f"{r.name} {r.config.seed}" for r in get_experiment(experiment).runs(preset))
    assert hashlib.sha256(lines.encode()).hexdigest()[:16] == OLD_RUNS[experiment, preset]


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
    with pytest.raises(ValueError, match="experiment must be one of dnn-table, cnn-table, qstar-table"):
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


# ------------------------------------------------------------ the q* axis, cell lists, qstar-table


def test_a_grid_with_clips_and_a_q_star_axis():
    grid = Grid(activations=("relu", "relu_tau", "crelu"), sparsities=(0.85, 0.9), slopes=(0.7,),
                clips=(1.0, 2.0), q_stars=(1.0, 16.0), seeds=1)
    cells = grid.cells()
    assert len(cells) == (1 + 2 + 2 * (1 + 2)) * 2
    assert cells[:2] == [{"activation": "relu", "sparsity": 0.5, "q_star": 1.0},
                         {"activation": "relu", "sparsity": 0.5, "q_star": 16.0}]
    crelu = [c for c in cells if c["activation"] == "crelu" and c["sparsity"] == 0.9]
    assert crelu == [{"activation": "crelu", "sparsity": 0.9, **clip, "q_star": q}
                     for clip in ({"slope": 0.7}, {"m": 1.0}, {"m": 2.0}) for q in (1.0, 16.0)]
    assert all("slope" not in c and "m" not in c for c in cells if c["activation"] != "crelu")
    plain = Grid(activations=("crelu",), sparsities=(0.9,), slopes=(0.5, 0.7), seeds=1).cells()
    assert plain == [{"activation": "crelu", "sparsity": 0.9, "slope": v} for v in (0.5, 0.7)]  # no q_star key
    with pytest.raises(ValueError, match="q_stars must be finite numbers > 0"):
        Grid(activations=("crelu",), sparsities=(0.9,), slopes=(0.7,), q_stars=(0.0,), seeds=1)
    with pytest.raises(ValueError, match="clips must be finite numbers > 0"):
        Grid(activations=("crelu",), sparsities=(0.9,), slopes=(0.7,), clips=(-1.0,), seeds=1)


@pytest.mark.parametrize("cells,message", [
    (({"activation": "gelu", "sparsity": 0.9},), "activation must be one of"),
    (({"activation": "crelu"},), "sparsity is required for 'crelu'"),
    (({"activation": "crelu", "sparsity": 0.9, "seed": 3},), "seed cannot be set per cell"),
    (({"activation": "crelu", "sparsity": 0.9, "threads": 2},), "threads cannot be set per cell"),
    (({"activation": "crelu", "sparsity": 0.9, "scaled": {"epochs": 2}},), "may scale a number setting"),
    (({"activation": "crelu", "sparsity": 0.9, "scaled": {"lr": 0.0}},), r"scaled\['lr'\] must be finite"),
    (({"activation": "crelu", "sparsity": 0.9, "lr": 0.1, "scaled": {"lr": 2.0}},), "may scale a number setting"),
    (({"activation": "crelu", "sparsity": 0.9}, {"sparsity": 0.9, "activation": "crelu"}), "listed twice"),
    ((), "at least one cell"),
])
def test_a_cell_list_refuses_bad_cells(cells, message):
    with pytest.raises(ValueError, match=message):
        CellList(cells, seeds=1)


def test_qstar_table_cpu_cells_in_order_and_within_the_full_design():
    exp = get_experiment("qstar-table")
    cpu, full = exp.preset("cpu").grid.cells(), exp.preset("full").grid.cells()
    assert len(cpu) == 27 and len(full) == 4 + 2 * 3 * (3 + 3) * 4 + 6
    def key(c):
        return json.dumps(c, sort_keys=True)

    assert {key(c) for c in cpu} <= {key(c) for c in full}
    assert len(full) - len(cpu) == 127  # the cells cut, listed in the registry's comment
    # the design: crelu and cst at s 0.85, 0.9, 0.95, q* 0.25..16, both readings of the clip
    design = [c for c in full if c["activation"] != "relu" and "scaled" not in c]
    assert {(c["activation"], c["sparsity"], c.get("slope"), c.get("m"), c["q_star"]) for c in design} >= {
        (a, s, v, None, q) for a in ("crelu", "cst") for s in (0.85, 0.9, 0.95) for v in (0.5, 0.7, 0.9)
        for q in (0.25, 1.0, 4.0, 16.0)} | {
        (a, s, None, m, q) for a in ("crelu", "cst") for s in (0.85, 0.9, 0.95) for m in (0.5, 1.0, 2.0)
        for q in (0.25, 1.0, 4.0, 16.0)}
    # most telling first: the baseline, then crelu s = 0.9 at q* 1 and 16 in both readings
    assert [(c["activation"], c.get("slope"), c.get("m"), c["q_star"]) for c in cpu[:5]] == [
        ("relu", None, None, 1.0), ("crelu", 0.7, None, 1.0), ("crelu", 0.7, None, 16.0), ("crelu", None, 1.0, 16.0),
        ("crelu", None, 0.25, 1.0)]
    assert all((c["activation"], c["sparsity"]) == ("crelu", 0.9) and c["q_star"] in (1.0, 16.0) for c in cpu[1:11])
    assert sum("scaled" in c for c in cpu[1:11]) == 4  # the readout controls right after their cells
    assert all("q_star" in c for c in cpu) and {c["q_star"] for c in cpu} == {0.25, 1.0, 4.0, 16.0}
    assert {c["activation"] for c in cpu} == {"relu", "crelu", "cst"}
    assert {c["sparsity"] for c in cpu if c["activation"] != "relu"} == {0.85, 0.9, 0.95}
    assert any("m" in c for c in cpu) and any("slope" in c for c in cpu)


def test_qstar_table_pairs_of_the_same_map_are_in_the_cpu_preset():
    """Same m / sqrt(q*) -> the same infinite-width map (docs/theory.md section 9): cells that differ
    in training alone. Every fixed clip of crelu s = 0.9 at q* 16 has its map at a smaller q*."""
    cpu = get_experiment("qstar-table").preset("cpu").grid.cells()
    fixed = [c for c in cpu if c["activation"] == "crelu" and c["sparsity"] == 0.9 and "m" in c and "scaled" not in c]
    ratios = {}
    for c in fixed:
        ratios.setdefault(round(c["m"] / math.sqrt(c["q_star"]), 12), set()).add(c["q_star"])
    for c in fixed:
        if c["q_star"] == 16.0 and c["m"] >= 1.0:
            assert len(ratios[c["m"] / 4]) >= 2
        points = {q: solve_eoc("crelu", 0.9, q, m=c["m"] / math.sqrt(c["q_star"]) * math.sqrt(q)) for q in (1.0, 16.0)}
        assert points[1.0].slope == pytest.approx(points[16.0].slope, abs=1e-12)


def test_qstar_table_controls_scale_the_presets_step_sizes():
    runs = get_experiment("qstar-table").runs("cpu")
    by_name = {r.name.rsplit("-", 1)[0]: r.config for r in runs}
    assert by_name["crelu-s0.9-v0.7-q1-readoutx16-seed0"].readout_lr_scale == 16.0
    assert by_name["crelu-s0.9-v0.7-q16-readoutx0.0625-seed0"].readout_lr_scale == 1 / 16
    assert by_name["crelu-s0.9-v0.7-q16-lrx0.0625-seed0"].lr == pytest.approx(1e-3 / 16)
    assert by_name["crelu-s0.9-v0.7-q16-seed0"].lr == 1e-3 and by_name["crelu-s0.9-m1-q16-seed0"].m == 1.0
    # --set lr applies to every run, the factors on top of it
    faster = {r.name.rsplit("-", 1)[0]: r.config for r in get_experiment("qstar-table").runs(
        "cpu", overrides={"lr": 2e-3})}
    assert faster["crelu-s0.9-v0.7-q16-lrx0.0625-seed0"].lr == pytest.approx(2e-3 / 16)
    assert faster["crelu-s0.9-v0.7-q16-seed0"].lr == 2e-3
    with pytest.raises(ValueError, match="q_star cannot be overridden: the experiment's grid sets activation, "
                                         "sparsity, slope, m, q_star per run"):
        get_experiment("qstar-table").runs("cpu", overrides={"q_star": 2.0})
    assert get_experiment("dnn-table").runs("smoke", overrides={"q_star": 2.0})[0].config.q_star == 2.0


def test_qstar_table_shares_seeds_across_q_star_and_clips_but_not_across_cells_of_another_s():
    runs = get_experiment("qstar-table").runs("cpu")
    seed = {r.name.rsplit("-", 1)[0]: r.config.seed for r in runs}
    assert seed["crelu-s0.9-v0.7-q1-seed0"] == seed["crelu-s0.9-v0.7-q16-seed0"] == seed["crelu-s0.9-m1-q16-seed0"] \
        == seed["crelu-s0.9-v0.7-q1-readoutx16-seed0"]
    assert seed["crelu-s0.9-v0.7-q1-seed0"] != seed["crelu-s0.9-v0.7-q1-seed1"]
    assert seed["crelu-s0.9-v0.7-q1-seed0"] != seed["crelu-s0.85-v0.7-q1-seed0"] != seed["cst-s0.9-v0.5-q1-seed0"]
    assert runs[2].name.startswith("crelu-s0.9-v0.7-q1-seed0-") and runs[4].name.startswith("crelu-s0.9-v0.7-q16-seed0-")


def test_qstar_table_presets_settings_and_sizes():
    exp = get_experiment("qstar-table")
    for name in ("cpu", "full", "smoke"):
        runs = exp.runs(name)
        assert all(r.config.val_size > 0 for r in runs)  # the choice is made on a validation split
    cpu = exp.runs("cpu")
    assert all((r.config.depth, r.config.width, r.config.epochs, r.config.val_size, r.config.log_layer_stats)
               == (40, 300, 8, 5000, True) for r in cpu)
    assert len(cpu) == 54 and exp.preset("cpu").grid.seeds == 2
    hours = estimate_seconds(cpu, exp.preset("cpu")) / 3600
    assert 1.8 <= hours <= 2.0  # about 2 hours on this 2-core CPU
    assert estimate_seconds(cpu, exp.preset("cpu")) == 54 * (8 * 16.0 + 5.0)  # 16 s a depth-40 epoch
    assert estimate_seconds(exp.runs("smoke"), exp.preset("smoke")) <= 60 and len(exp.runs("smoke")) == 4


def test_dnn_table_depth100_cpu():
    exp = get_experiment("dnn-table")
    p = exp.preset("depth100-cpu")
    runs = exp.runs("depth100-cpu")
    assert all((r.config.depth, r.config.width, r.config.lr, r.config.optimizer) == (100, 300, 1e-3, "sgd")
               for r in runs)
    cells = [(c["activation"], c["sparsity"], c.get("slope")) for c in p.grid.cells()]
    assert cells[:2] == [("relu", 0.5, None), ("crelu", 0.85, 0.7)]  # the paper's headline first
    assert set(cells) == {("relu", 0.5, None), ("crelu", 0.85, 0.5), ("crelu", 0.85, 0.7), ("crelu", 0.85, 0.9),
                          ("relu_tau", 0.7, None), ("relu_tau", 0.85, None), ("st_tau", 0.7, None),
                          ("st_tau", 0.85, None)}  # cut: cst s = 0.85, V'(q*) = 0.7
    assert p.grid.seeds == 2 and len(runs) == 16
    assert all(r.config.epochs == (1 if r.config.activation in ("relu_tau", "st_tau") else 20) for r in runs)
    assert min(r.config.epochs for r in runs if r.config.activation in ("relu", "crelu")) >= 20
    seconds = estimate_seconds(runs, p)
    assert seconds == 8 * (20 * 43.0 + 10.0) + 8 * (1 * 43.0 + 10.0)
    assert 1.9 * 3600 <= seconds <= 2.1 * 3600
    assert runs[4].name.startswith("relu_tau-s0.7-epochs1-seed0-")
    longer = exp.runs("depth100-cpu", overrides={"epochs": 30})  # --set wins over a cell's own settings
    assert all(r.config.epochs == 30 for r in longer)
