"""Tests for sparse_eoc/runs/config.py: the settings' metadata, layering, resume rules and file checks."""

import json
import math
from dataclasses import fields

import pytest

from sparse_eoc.runs.config import (
    CELL_FREE_SETTINGS,
    NAME_FREE_SETTINGS,
    RESUME_FREE_SETTINGS,
    TrainConfig,
    check_same_settings,
    layer_settings,
    name_settings,
    parse_overrides,
    read_config_file,
    resume_settings,
    settings_of_kind,
)


def test_every_setting_has_help_and_its_default_among_its_choices():
    for f in fields(TrainConfig):
        assert f.metadata["help"], f.name
        if f.metadata["choices"]:
            assert f.default is None or f.default in f.metadata["choices"], f.name


def test_the_setting_lists_are_queries_of_the_kinds():
    # the lists the code kept by hand at 6b2918f, now derived from the fields
    # (and kernels, the execution setting added after 6b2918f)
    assert set(NAME_FREE_SETTINGS) == {"data_dir", "device", "threads", "preset", "kernels"}
    assert set(RESUME_FREE_SETTINGS) == {"device", "threads", "kernels"}
    assert set(CELL_FREE_SETTINGS) == {"seed", "data_dir", "device", "threads", "preset", "log_layer_stats",
                                       "kernels"}
    assert settings_of_kind("diagnostic") == ("log_layer_stats",)


def test_name_settings_leave_out_where_and_how():
    config = TrainConfig(sparsity=0.85, threads=2, device="cpu", data_dir="/x", preset="mlp-mnist-cpu")
    named = name_settings(config)
    assert not set(named) & set(NAME_FREE_SETTINGS) and named["sparsity"] == 0.85


@pytest.mark.parametrize("key, value, message", [
    ("sparsity", "0.85", r"sparsity must be a number or null, got sparsity='0.85'"),
    ("log_layer_stats", 1, r"log_layer_stats must be True or False"),
    ("depth", 3.0, r"depth must be an integer"),
    ("data_dir", 5, r"data_dir must be a string or null"),
    ("lr", True, r"lr must be a number, got lr=True \(bool\)"),
])
def test_wrongly_typed_settings_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"activation": "crelu", "sparsity": 0.85, key: value})


def test_from_dict_strict_refuses_unknown_keys_but_skips_resolved_sections():
    values = {"activation": "relu", "epoch": 7, "eoc": {}, "network": {}, "torch_version": "x"}
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'epoch'"):
        TrainConfig.from_dict(values, strict=True)
    assert TrainConfig.from_dict(values).epochs == 5  # lenient: a checkpoint's settings
    del values["epoch"]
    assert TrainConfig.from_dict(values, strict=True).activation == "relu"


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", r"--config .*: settings must be a JSON object, got a list"),
    ("null", r"--config .*: settings must be a JSON object, got a NoneType"),
    ("{bad", r"--config .*c\.json: not valid JSON"),
    ('{"activation": "relu", "data_dir": 5}', r"--config .*: data_dir must be a string or null"),
    ('{"epoch": 7}', r"--config .*: unknown setting\(s\) 'epoch'"),
    ('{"activation": "crelu", "sparsity": "0.85"}', r"sparsity must be a number"),
])
def test_config_files_are_checked_and_named(tmp_path, text, message):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_config_file(tmp_path / "c.json")


def test_layers_defaults_file_preset_options_overrides(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"activation": "crelu", "sparsity": 0.8, "slope": 0.6,
                                                  "epochs": 9, "lr": 0.5}))
    config = layer_settings(config_file=tmp_path / "c.json", preset="mlp-mnist-cpu", explicit={"m": 1.2, "epochs": 3})
    # the preset replaces the file's lr and epochs, the option m replaces the file's slope, options win last
    assert (config.lr, config.epochs, config.m, config.slope, config.preset) == (1e-3, 3, 1.2, None, "mlp-mnist-cpu")
    relu = layer_settings(config_file=tmp_path / "c.json", explicit={"activation": "relu"})
    assert (relu.sparsity, relu.slope, relu.m) == (None, None, None)


def test_resume_takes_the_runs_settings_and_only_how_changes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TrainConfig(sparsity=0.8).to_dict(), "eoc": {}}))
    config = resume_settings(tmp_path, {"threads": 1})
    assert (config.sparsity, config.threads) == (0.8, 1)
    with pytest.raises(ValueError, match=r"drop --lr, --out \(only --device, --threads, --kernels and --no-progress"):
        resume_settings(tmp_path, {"lr": 0.1}, other_options=["--out"])
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"--resume .*config\.json: settings must be a JSON object"):
        resume_settings(tmp_path)


def test_parse_overrides_moved_here_and_still_exported_from_the_registry():
    from sparse_eoc.experiments.registry import parse_overrides as old

    assert old is parse_overrides and parse_overrides(["epochs=3"]) == {"epochs": 3}


@pytest.mark.parametrize("changes, message", [
    ({"lr": 1e39}, r"lr x readout_lr_scale must be at most 1e\+30"),
    ({"lr": 1e20, "readout_lr_scale": 1e20}, r"lr x readout_lr_scale must be at most"),
    ({"q_star": 1e300}, r"q_star must be in \[1e-06, 1e\+06\]"),
    ({"q_star": 1e-300}, r"q_star must be in"),
    ({"threads": 10**9}, r"threads must be an integer in 1\.\.1024"),
])
def test_values_that_overflow_float32_training_are_refused(changes, message):
    """M3/M4: --lr 1e39 and --q-star 1e300 crashed in the first step; --threads 1e9 was accepted."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"activation": "crelu", "sparsity": 0.85, **changes})


def test_a_setting_added_later_is_filled_in_for_runs_saved_before_it(monkeypatch):
    """The missing_means rule: a config.json or checkpoint without a later setting means the
    behaviour before it existed, for reading, for the run's name and for the resume check."""
    import dataclasses

    import sparse_eoc.runs.config as config_module

    field = next(f for f in fields(TrainConfig) if f.name == "log_layer_stats")
    patched = dataclasses.field(default=False, metadata={**field.metadata, "missing_means": False})
    patched.name, patched.type, patched._field_type = field.name, field.type, field._field_type
    monkeypatch.setitem(TrainConfig.__dataclass_fields__, "log_layer_stats", patched)
    saved = TrainConfig(sparsity=0.8).to_dict()
    del saved["log_layer_stats"]  # as written before the setting existed
    assert TrainConfig.from_dict(saved).log_layer_stats is False
    config_module.check_same_settings(saved, TrainConfig(sparsity=0.8), "RUN")  # not refused
    with pytest.raises(ValueError, match="log_layer_stats"):
        config_module.check_same_settings(saved, TrainConfig(sparsity=0.8, log_layer_stats=True), "RUN")
    assert "log_layer_stats" not in name_settings(TrainConfig(sparsity=0.8))  # at its default: not in the name
    assert name_settings(TrainConfig(sparsity=0.8, log_layer_stats=True))["log_layer_stats"] is True


def test_residual_settings_apply_to_the_residual_models_only():
    config = TrainConfig(sparsity=0.85, model="resmlp", depth=100)
    assert (config.residual_scale, config.thresholds) == (None, "tracked")  # None: 2 / sqrt(depth)
    assert TrainConfig(sparsity=0.85).thresholds == "tracked"  # the default, meaningless for a plain MLP: allowed
    assert TrainConfig(sparsity=0.85, model="rescnn", residual_scale=0.2, thresholds="fixed").thresholds == "fixed"
    assert TrainConfig(sparsity=0.85, model="resmlp", kernels="sparse").kernels == "sparse"
    assert TrainConfig(sparsity=0.85, model="rescnn", augment=True, weight_init="delta_orthogonal").augment
    for changes, message in [
        ({"residual_scale": 0.1}, r"residual_scale applies to model=resmlp or rescnn only"),
        ({"thresholds": "fixed"}, r"thresholds='fixed' applies to model=resmlp or rescnn only"),
        ({"model": "resmlp", "residual_scale": 0.0}, r"residual_scale must be a finite number > 0"),
        ({"model": "resmlp", "residual_scale": math.inf}, r"residual_scale must be a finite number > 0"),
        ({"model": "resmlp", "thresholds": "per_layer"}, r"thresholds must be one of tracked, per-layer, fixed"),
        ({"model": "rescnn", "kernels": "sparse"}, r"--kernels sparse applies to --model mlp only \(or resmlp\)"),
        ({"model": "resmlp", "augment": True}, r"augment .* applies to model=cnn or rescnn only"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**{"activation": "crelu", "sparsity": 0.85, **changes})


def test_a_config_json_written_before_the_residual_settings_still_loads_and_keeps_its_name():
    old = TrainConfig(sparsity=0.85).to_dict()
    del old["residual_scale"], old["thresholds"]
    assert TrainConfig.from_dict(old, strict=True) == TrainConfig(sparsity=0.85)
    assert not {"residual_scale", "thresholds"} & set(name_settings(TrainConfig(sparsity=0.85, model="resmlp")))
    named = name_settings(TrainConfig(sparsity=0.85, model="resmlp", thresholds="fixed", residual_scale=0.2))
    assert (named["thresholds"], named["residual_scale"]) == ("fixed", 0.2)
    assert parse_overrides(["residual_scale=none", "thresholds=fixed"]) == {"residual_scale": None,
                                                                           "thresholds": "fixed"}


def test_the_mlp_preset_takes_the_residual_model(tmp_path):
    """The issue's command: --preset mlp-mnist-cpu --model resmlp --depth 100 (explicit options win)."""
    config = layer_settings(preset="mlp-mnist-cpu", explicit={"model": "resmlp", "depth": 100, "width": 300,
                                                               "activation": "crelu", "sparsity": 0.85,
                                                               "slope": 0.7})
    assert (config.model, config.depth, config.epochs, config.lr, config.preset) == (
        "resmlp", 100, 5, 1e-3, "mlp-mnist-cpu")
    (tmp_path / "c.json").write_text(json.dumps({**config.to_dict(), "thresholds": "fixed", "residual_scale": 0.3}))
    plain = layer_settings(config_file=tmp_path / "c.json", explicit={"model": "mlp"})  # drops what mlp cannot take
    assert (plain.model, plain.thresholds, plain.residual_scale) == ("mlp", "tracked", None)
    # an MLP's config.json or checkpoint written when per-layer was the default reads as the same settings
    assert TrainConfig(sparsity=0.85, thresholds="per-layer") == TrainConfig(sparsity=0.85)
    check_same_settings({**TrainConfig(sparsity=0.85).to_dict(), "thresholds": "per-layer"}, TrainConfig(sparsity=0.85),
                        "checkpoint.pt")
    resmlp = TrainConfig(sparsity=0.85, model="resmlp", thresholds="per-layer")
    with pytest.raises(ValueError, match="settings differ in thresholds"):
        check_same_settings({**resmlp.to_dict(), "thresholds": "per-layer"}, resmlp.replace(thresholds="tracked"), "c")


def test_the_s90_preset_is_a_whole_recipe_and_relu_on_top_is_its_baseline():
    """`--preset mlp-mnist-s90` runs the sparse recipe alone; `--activation relu` on top drops its
    sparse settings (sparsity, clip, q*) and keeps the architecture and optimisation."""
    recipe = layer_settings(preset="mlp-mnist-s90")
    assert (recipe.activation, recipe.sparsity, recipe.slope, recipe.model) == ("crelu", 0.9, 0.7, "resmlp")
    relu = layer_settings(preset="mlp-mnist-s90", explicit={"activation": "relu"})
    assert (relu.activation, relu.slope, relu.m, relu.q_star) == ("relu", None, None, 1.0)
    assert (relu.model, relu.depth, relu.epochs, relu.lr, relu.lr_schedule, relu.val_size) == (
        recipe.model, recipe.depth, recipe.epochs, recipe.lr, recipe.lr_schedule, recipe.val_size)
    variant = layer_settings(preset="mlp-mnist-s90", explicit={"sparsity": 0.85})
    assert (variant.activation, variant.sparsity, variant.slope) == ("crelu", 0.85, 0.7)
    assert layer_settings(preset="mlp-mnist-s90", explicit={"activation": "cst"}).sparsity == 0.9
