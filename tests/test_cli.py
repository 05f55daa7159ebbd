"""The command line end to end: the eoc contract, errors, and a training run."""

import json
import math

import pytest

from sparse_eoc.cli import main

EOC_KEYS = {
    "activation", "sparsity", "q_star", "tau", "m", "sigma_w2", "sigma_b2",
    "chi1", "slope", "curvature", "fixed_points", "bifurcation_m", "recommended_m", "warnings",
    "recommendation", "bifurcation_search_max_m",
}


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def run_json(capsys, argv):
    assert main(argv) == 0
    return _strict(capsys.readouterr().out)


def test_eoc_json_contract(capsys):
    out = run_json(capsys, ["eoc", "--activation", "crelu", "--sparsity", "0.85", "--json"])
    assert set(out) == EOC_KEYS
    assert out["slope"] == pytest.approx(0.7, abs=1e-9)  # the default for a clipped activation
    assert out["q_star"] == 1.0 and out["chi1"] == pytest.approx(1.0)
    # m, m_b and the recommended m: mpmath.findroot (30 digits) of the closed forms
    # (tests/gp/test_eoc.py::test_reference_table, tests/gp/test_clip.py::test_bifurcation_m_and_...).
    assert out["m"] == pytest.approx(1.1703673400911, rel=1e-10)
    assert out["fixed_points"] == [{"q": 1.0, "stability": "stable"}]  # q* itself, exactly
    assert out["bifurcation_m"] == pytest.approx(1.8386317906859, rel=1e-9)  # Brent in the scan: ~1e-9
    assert out["bifurcation_search_max_m"] == 8.0
    assert out["recommended_m"] == pytest.approx(1.5071889908055, rel=1e-9)
    assert out["recommendation"]["binding"] == "kappa" and "V''(q*) <= 0.25" in out["recommendation"]["reason"]
    assert out["warnings"] == []


def test_eoc_json_flags_the_papers_failing_clip(capsys):
    out = run_json(capsys, ["eoc", "--activation", "crelu", "--sparsity", "0.85", "--m", "1.74", "--json"])
    assert out["m"] == 1.74 and out["m"] < out["bifurcation_m"]
    assert any("V''(q*) = 0.406 > 0.25" in w for w in out["warnings"])


def test_eoc_json_correlation(capsys):
    out = run_json(capsys, ["eoc", "--activation", "cst", "--sparsity", "0.85", "--rho", "0,0.5,1", "--json"])
    corr = out["correlation"]
    assert corr["rho"] == [0.0, 0.5, 1.0]
    assert corr["R"][0] == pytest.approx(out["sigma_b2"] / out["q_star"], abs=1e-9)  # odd phi: R(0) = sigma_b2/q*
    assert corr["R"][2] == pytest.approx(1.0, abs=1e-12) and corr["dR"][2] == pytest.approx(out["chi1"], abs=1e-9)
    assert corr["R"][0] < corr["R"][1] < corr["R"][2]


def test_eoc_rho_out_of_range_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["eoc", "--activation", "cst", "--sparsity", "0.85", "--rho", "0,1.5"])
    assert "[-1, 1]" in capsys.readouterr().err


def test_eoc_json_unclipped_has_null_m_and_half_stable_point(capsys):
    out = run_json(capsys, ["eoc", "--activation", "relu_tau", "--sparsity", "0.8", "--json"])
    assert out["m"] is None and out["bifurcation_m"] is None and out["recommended_m"] is None
    assert "half-stable" in out["warnings"][0]
    # sigma_w2 = 1 / (1 - s); sigma_b2 = 1 - A/P in 30-digit mpmath (tests/gp/test_eoc.py reference table)
    assert out["sigma_w2"] == pytest.approx(5.0, rel=1e-12) and out["sigma_b2"] == pytest.approx(0.46978318323451, rel=1e-10)
    assert [f["stability"] for f in out["fixed_points"]] == ["half-stable"]


def test_eoc_json_relu_needs_no_sparsity(capsys):
    out = run_json(capsys, ["eoc", "--activation", "relu", "--json"])
    assert (out["sparsity"], out["sigma_w2"], out["sigma_b2"], out["tau"]) == (0.5, 2.0, 0.0, 0.0)
    assert out["fixed_points"][0]["stability"] == "neutral"


def test_eoc_with_m_and_q_star(capsys):
    out = run_json(capsys, ["eoc", "--activation", "cst", "--sparsity", "0.85", "--m", "3.0686",
                            "--q-star", "4", "--json"])
    assert out["q_star"] == 4.0 and out["m"] == 3.0686
    # tau = sqrt(q*) Phi^{-1}((1 + s) / 2) and V'(q*) at m / sqrt(q*) = 1.5343 (scale invariance),
    # both in 30-digit mpmath from the closed forms
    assert out["tau"] == pytest.approx(2 * 1.4395314709385, rel=1e-10)
    assert out["slope"] == pytest.approx(0.90000469582183, rel=1e-10)
    assert [f["stability"] for f in out["fixed_points"]] == ["stable", "unstable", "stable"]


RESULT_KEYS = {"status", "test_accuracy", "train_sparsity", "test_sparsity", "layer_sparsity",
               "epochs_completed", "wall_seconds"}
PROPAGATE_KEYS = {"layer", "q_median", "q_p10", "q_p90", "sparsity", "q_theory", "blown_up_at_layer", "sparsity_theory"}


def test_propagate_json_relu_tau_blows_up(capsys):
    out = run_json(capsys, ["propagate", "--activation", "relu_tau", "--sparsity", "0.85", "--depth", "100",
                            "--width", "100", "--seeds", "3", "--batch-size", "16", "--json"])
    assert set(out) == PROPAGATE_KEYS and out["layer"] == list(range(1, 101))
    assert all(len(out[k]) == 100 for k in PROPAGATE_KEYS - {"blown_up_at_layer", "sparsity_theory"})
    assert out["blown_up_at_layer"] is not None or out["q_median"][-1] > 1e6


def test_propagate_json_cnn_crelu_holds(capsys):
    out = run_json(capsys, ["propagate", "--activation", "crelu", "--sparsity", "0.8", "--model", "cnn",
                            "--channels", "128", "--depth", "10", "--seeds", "4", "--batch-size", "4", "--json"])
    assert out["blown_up_at_layer"] is None
    assert 0.5 <= out["q_median"][-1] <= 2 and abs(out["sparsity"][-1] - 0.8) < 0.1
    assert out["q_theory"] == [pytest.approx(1.0)] * 10


def test_propagate_on_mnist_images(capsys, mnist_dir):
    out = run_json(capsys, ["propagate", "--activation", "cst", "--sparsity", "0.85", "--depth", "5",
                            "--width", "100", "--seeds", "2", "--data-dir", str(mnist_dir), "--json"])
    # the first layer's variance is set from the images' mean square: q^1 = q* up to sampling noise
    assert out["q_median"][0] == pytest.approx(1.0, abs=0.3)


def test_eoc_json_large_clip_lists_q_star(capsys):
    """M2: the fixed-point search used to start above q* for m >= 1e5, so the warning said
    'within 10% of the bifurcation' instead of 'past the bifurcation'."""
    for m in ("1e4", "1e5"):
        out = run_json(capsys, ["eoc", "--activation", "crelu", "--sparsity", "0.85", "--m", m, "--json"])
        assert out["fixed_points"][0] == {"q": 1.0, "stability": "half-stable"}
        assert [f["stability"] for f in out["fixed_points"]] == ["half-stable", "stable"]
        assert any("past the bifurcation" in w for w in out["warnings"])
        assert not any("within 10%" in w for w in out["warnings"])


def test_eoc_smallest_q_star_is_strict_json(capsys):
    out = run_json(capsys, ["eoc", "--activation", "crelu", "--sparsity", "0.85", "--q-star", "1e-100", "--json"])
    assert out["fixed_points"] == [{"q": 1e-100, "stability": "stable"}]
    assert out["curvature"] * 1e-100 == pytest.approx(0.022912749949558, rel=1e-9)  # kappa, scale-free


@pytest.mark.parametrize("rho", ["-0.8,0.1", "-1,0,1", "-.5"])
def test_eoc_rho_may_start_with_a_minus(capsys, rho):
    """argparse used to read '-0.8,0.1' after --rho as an option ('expected one argument')."""
    out = run_json(capsys, ["eoc", "--activation", "cst", "--sparsity", "0.85", "--rho", rho, "--json"])
    assert out["correlation"]["rho"] == [float(v) for v in rho.split(",")]
    assert run_json(capsys, ["eoc", "--activation", "cst", "--sparsity", "0.85", f"--rho={rho}", "--json"]) == out


def test_eoc_text_is_unchanged(capsys):
    """The text of sparse-eoc eoc, pinned as the code before analyse_clip printed it."""
    assert main(["eoc", "--activation", "cst", "--sparsity", "0.85", "--slope", "0.9", "--rho", "-0.5,1"]) == 0
    assert capsys.readouterr().out == """\
Edge-of-Chaos point for cst, sparsity 0.85, q* = 1
  tau        1.43953
  m          1.53428
  sigma_w2   6.8
  sigma_b2   0.658164
  chi1       1
  V'(q*)     0.9
  V''(q*)    0.89657
  fixed points of V:
    q = 1          stable       V'(q) = 0.9
    q = 1.26339    unstable     V'(q) = 1.08291
    q = 5.34001    stable       V'(q) = 0.705421
  bifurcation m: 1.3270
  recommended m: 0.8434 (bound by kappa: m = 0.8434 is the largest clip with q* V''(q*) <= 0.25, which caps \
the slope at V'(q*) = 0.611 (max_slope 0.9, m_b = 1.327).)
  correlation map:  rho        R(rho)     R'(rho)
                    -0.5       0.563738   0.27474
                    1          1          1
"""


def test_eoc_text_output(capsys):
    assert main(["eoc", "--activation", "cst", "--sparsity", "0.85", "--slope", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "sigma_w2" in text and "unstable" in text and "V'(q*)" in text


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eoc", "--activation", "relu_tau", "--sparsity", "0.3"], "sparsity for relu_tau must be in [0.5, 1.0)"),
        (["eoc", "--activation", "relu", "--sparsity", "0.7"], "sparsity for relu is 0.5"),
        (["eoc", "--activation", "crelu", "--sparsity", "0.8", "--slope", "1.2"], "slope"),
        (["eoc", "--activation", "st_tau", "--sparsity", "0.8", "--slope", "0.5"], "slope applies only"),
        (["eoc", "--activation", "crelu", "--sparsity", "0.8", "--q-star", "-1"], "q_star must be"),
        (["eoc", "--activation", "crelu"], "sparsity is required"),
        # Extreme values used to crash (ZeroDivisionError, OverflowError), give nan, or fail in
        # json.dumps; now one line naming the option and the range where the numerics hold.
        (["eoc", "--activation", "crelu", "--sparsity", "0.85", "--q-star", "1e-300", "--json"],
         "--q-star: q_star must be finite and > 0, in [1e-100, 1e+100]"),
        (["eoc", "--activation", "cst", "--sparsity", "0.85", "--q-star", "1e300"],
         "--q-star: q_star must be finite and > 0, in [1e-100, 1e+100]"),
        (["eoc", "--activation", "crelu", "--sparsity", "0.85", "--m", "1e-300"], "--m: m must be in [1e-10, 1e+10]"),
        (["eoc", "--activation", "crelu", "--sparsity", "0.85", "--m", "1e300"], "--m: m must be in [1e-10, 1e+10]"),
        (["eoc", "--activation", "crelu", "--sparsity", "0.85", "--slope", "1e-300"],
         "--slope: slope (the target V'(q*)) for crelu at sparsity=0.85 must be in [5.18e-11, 1)"),
        (["eoc", "--activation", "crelu", "--sparsity", "0.85", "--margin", "0"], "--margin: margin must be in (0, 1]"),
    ],
)
def test_eoc_bad_input_exits_2_with_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_unknown_activation_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eoc", "--activation", "gelu", "--sparsity", "0.8"])
    assert exc.value.code == 2
    assert "relu_tau" in capsys.readouterr().err


def test_train_end_to_end(tmp_path, capsys, mnist_subset_dir):
    run = tmp_path / "run"
    argv = ["train", "--activation", "crelu", "--sparsity", "0.8", "--slope", "0.7", "--depth", "4",
            "--width", "64", "--epochs", "2", "--lr", "0.03", "--data-dir", str(mnist_subset_dir),
            "--out", str(run), "--no-progress"]
    assert main(argv) == 0
    assert "completed" in capsys.readouterr().out
    config = _strict((run / "config.json").read_text())
    assert config["activation"] == "crelu" and config["depth"] == 4 and config["slope"] == 0.7
    assert config["eoc"]["slope"] == pytest.approx(0.7)
    lines = [_strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for key in ("epoch", "train_loss", "train_accuracy", "test_accuracy", "train_sparsity", "test_sparsity"):
        assert all(key in line for line in lines)
    result = _strict((run / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert result["status"] == "completed" and result["epochs_completed"] == 2
    assert len(result["layer_sparsity"]) == 4
    assert result["test_accuracy"] > 0.4  # 2000 images, 2 epochs: ~0.6 (chance: 0.1)
    assert (run / "model.safetensors").is_file()

    # --config reruns the same run: same seed, same results on CPU
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--out", str(again), "--no-progress"]) == 0
    assert _strict((again / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]
    assert (again / "metrics.jsonl").read_text().count("\n") == 2


def test_train_divergence_is_recorded_not_raised(tmp_path, capsys, mnist_subset_dir):
    run = tmp_path / "run"
    argv = ["train", "--activation", "relu_tau", "--sparsity", "0.85", "--depth", "4", "--width", "32",
            "--epochs", "2", "--lr", "1e6", "--data-dir", str(mnist_subset_dir), "--out", str(run),
            "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    notices = [line for line in captured.err.splitlines() if line.startswith("diverged")]
    assert len(notices) == 1 and "non-finite" in notices[0]
    result = _strict((run / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert result["status"] == "diverged" and result["epochs_completed"] == 0
    assert result["diverged"]["epoch"] == 1 and result["diverged"]["step"] >= 1
    assert result["diverged"]["loss"] is None or not math.isfinite(result["diverged"]["loss"])
    assert len(result["diverged"]["partial_train_sparsity"]) == 4  # the history so far is kept
    # no epoch completed: no weights worth saving, and the run says so
    assert result["model_epoch"] is None and not (run / "model.safetensors").exists()
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").read_text() == ""


def test_train_config_override_swaps_slope_for_m(tmp_path, capsys, mnist_subset_dir):
    run = tmp_path / "run"
    base = ["--depth", "2", "--width", "16", "--epochs", "0", "--data-dir", str(mnist_subset_dir), "--no-progress"]
    assert main(["train", "--activation", "crelu", "--sparsity", "0.8", "--slope", "0.6", *base,
                 "--out", str(run)]) == 0
    assert main(["train", "--config", str(run / "config.json"), "--m", "1.2", "--out", str(tmp_path / "m")]) == 0
    saved = _strict((tmp_path / "m" / "config.json").read_text())
    assert (saved["m"], saved["slope"], saved["sparsity"]) == (1.2, None, 0.8)
    assert main(["train", "--config", str(run / "config.json"), "--activation", "relu",
                 "--out", str(tmp_path / "relu")]) == 0
    saved = _strict((tmp_path / "relu" / "config.json").read_text())
    assert (saved["activation"], saved["sparsity"], saved["m"], saved["slope"]) == ("relu", None, None, None)


def test_train_download_fetches_mnist_too(tmp_path, capsys, monkeypatch):
    """``--download`` with MNIST calls the MNIST downloader on --data-dir (faked: no network)."""
    import sparse_eoc.data.registry as registry

    calls = []

    def fake(data_dir):
        calls.append(str(data_dir))
        raise OSError("no network here")

    monkeypatch.setattr(registry, "DATASET_DOWNLOADERS", {**registry.DATASET_DOWNLOADERS, "mnist": fake})
    argv = ["train", "--activation", "relu", "--download", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert calls == [str(tmp_path)] and "no network here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing trained, no run directory


def test_train_cifar10_already_there_is_not_downloaded(tmp_path, capsys, cifar_dir):
    argv = ["train", "--model", "cnn", "--dataset", "cifar10", "--download", "--activation", "crelu",
            "--sparsity", "0.7", "--depth", "2", "--channels", "4", "--epochs", "0", "--data-dir", str(cifar_dir),
            "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(argv) == 0  # no network touched: the batches exist


def test_train_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.json: not found" in capsys.readouterr().err


def test_train_bad_input(tmp_path, capsys, mnist_subset_dir):
    argv = ["train", "--activation", "crelu", "--sparsity", "0.8", "--depth", "0",
            "--data-dir", str(mnist_subset_dir), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "depth must be an integer >= 1" in capsys.readouterr().err


def test_train_missing_data_names_the_file(tmp_path, capsys):
    argv = ["train", "--activation", "relu", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


def test_figures_only_one(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path), "--only", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["02_variance_maps.pdf", "02_variance_maps.png", "index.md"]


def test_figures_unknown_number(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path), "--only", "9"]) == 2
    assert "only must be one of" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sparse_eoc", "eoc", "--activation", "relu", "--json"],
                          capture_output=True, text=True, check=True)
    assert _strict(proc.stdout)["sigma_w2"] == 2.0
