"""benchmarks/train_step.py, smoke-run at tiny sizes: what it prints and how it times (not its timings).

The script's own functions are checked in this process (loaded from its file); whole runs
go through a subprocess, as a user runs it, with one thread so a busy machine does not stall them.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
TINY = ["--width", "32", "--depth", "3", "--steps", "50", "--warmup", "1", "--batch-size", "16", "--threads", "1"]
NUMBER = r"\d+\.\d{3}"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def line_starting(lines: list[str], prefix: str) -> str:
    """The one line that starts with ``prefix``."""
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def test_default_mode_prints_every_line_and_ends_with_ratio():
    lines = run_script(*TINY)
    assert re.fullmatch(f"ratio: {NUMBER}", lines[-1]), lines[-1]
    assert re.fullmatch(r"torch \S+, threads 1, GOMP_SPINCOUNT=\S+, OMP_WAIT_POLICY=\S+", lines[0]), lines[0]  # --threads 1
    assert lines[1].startswith("A: mlp crelu tau=") and "depth=3 width=32 meter=on" in lines[1]
    assert re.fullmatch(f"A median {NUMBER} ms/step \\(min {NUMBER}\\), B median {NUMBER} ms/step "
                        f"\\(min {NUMBER}\\), n=50 each", lines[2]), lines[2]
    assert lines[3].startswith("minor page faults per step: A ")
    assert lines[4].startswith("A sparsity over 816 examples: overall ")  # (1 + 50) steps x batch 16
    assert lines[5].startswith("final loss A ")
    assert len(lines) == 7


@pytest.mark.slow  # numba, and two more processes for the peak memory: ~15 s on 2 cores
def test_kernels_mode_prints_every_line_and_ends_with_speedup():
    pytest.importorskip("numba")
    lines = run_script("--kernels", "sparse", *TINY)
    assert re.fullmatch(f"speedup: {NUMBER}", lines[-1]), lines[-1]
    assert re.fullmatch(f"speedup \\(adam\\): {NUMBER}", lines[-2]), lines[-2]
    assert re.fullmatch(f"speedup \\(dense kernels\\): {NUMBER}", lines[-3]), lines[-3]
    assert "kernels=sparse" in lines[1] and "C: A's network and init with kernels=dense" in lines[1]
    sgd = line_starting(lines, "SGD-momentum: ")
    times = [float(t) for t in re.findall(f"median ({NUMBER}) ms/step", sgd)]
    assert len(times) == 3 and sgd.endswith("n=50 each")
    assert float(lines[-1].split()[-1]) == pytest.approx(times[1] / times[0], rel=0.01, abs=0.002)  # B / A
    assert float(lines[-3].split()[-1]) == pytest.approx(times[1] / times[2], rel=0.01, abs=0.002)  # B / C
    split = re.fullmatch(f"A step split \\(medians over steps, ms\\): forward\\+loss ({NUMBER}), backward "
                         f"({NUMBER}), optimizer ({NUMBER}) \\(zero_grad included\\)",
                         line_starting(lines, "A step split"))
    assert split and all(float(t) > 0 for t in split.groups())
    assert line_starting(lines, "Adam: ").endswith("n=25 each")  # --adam-steps defaults to half of --steps
    memory = re.fullmatch(r"peak memory growth over 5 SGD steps, each model in a fresh process: "
                          r"A (\d+\.\d) MiB, B (\d+\.\d) MiB", line_starting(lines, "peak memory growth"))
    # At least the gradients and momentum buffers of the 27,562 parameters (0.21 MiB) each; a
    # child's ru_maxrss would hold this process's peak and show 0.0.
    assert all(float(g) >= 2 * 4 * 27_562 / 2**20 for g in memory.groups()), memory.groups()
    line_starting(lines, "A sparsity over 816 examples: overall ")
    # C is A's network, same init, same steps, dense kernels: the exact sparse kernels agree.
    final = re.fullmatch(r"final loss A (\d+\.\d{4}), B (\d+\.\d{4}), C (\d+\.\d{4})",
                         line_starting(lines, "final loss "))
    loss_a, loss_b, loss_c = (float(v) for v in final.groups())
    assert loss_a == pytest.approx(loss_c, abs=2e-4) and loss_b != pytest.approx(loss_a, abs=2e-4)


def test_the_peak_memory_subprocess_reports_the_growth_of_a_training_step():
    """--_peak-memory b: 5 SGD steps of the ReLU MLP grow the peak by at least its gradients and
    momentum buffers (2 x 4 bytes x 1.05 M parameters = 8 MiB); with the high-water mark reset."""
    lines = run_script("--kernels", "dense", "--width", "300", "--depth", "10", "--batch-size", "16",
                       "--threads", "1", "--_peak-memory", "b")
    report = json.loads(lines[-1])
    n_params = 784 * 300 + 9 * 300 * 300 + 300 * 10 + 10 * 300 + 10
    assert report["hwm_reset"] is True
    assert 2 * 4 * n_params / 2**20 <= report["growth_mib"] < 64


def test_steps_are_timed_round_robin_after_the_warm_up(bench):
    calls = []
    steps = [lambda x, y, k=k: calls.append(k) for k in "ABC"]
    times, faults = bench.time_steps(steps, None, None, warmup=2, steps=3)
    assert "".join(calls) == "ABC" * 5
    assert [len(t) for t in times] == [3, 3, 3] and len(faults) == 3


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_phased_step_records_its_three_phases_and_trains(bench, optimizer):
    import torch

    torch.manual_seed(0)
    model = bench.relu_sequential(784, 10, 2, 8)
    phases = []
    step = bench.make_step(model, 1e-2, optimizer, phases=phases)
    x, y = torch.randn(4, 784), torch.randint(0, 10, (4,))
    losses = [step(x, y).item() for _ in range(3)]
    assert len(phases) == 3 and all(len(p) == 3 and min(p) > 0 for p in phases)
    assert losses[-1] < losses[0]


def test_options(bench, capsys):
    args = bench.parse_args(["--batch-size", "16", "--threads", "3", "--kernels", "auto"])
    assert (args.batch, args.threads, args.kernels, args.adam_steps) == (16, 3, "auto", None)
    assert bench.parse_args([]).kernels is None  # today's ratio mode
    assert bench.parse_args(["--model", "cnn", "--kernels", "dense"]).kernels == "dense"
    for argv, message in [(["--model", "cnn", "--kernels", "sparse"], "argument --kernels: --kernels sparse needs"),
                          (["--model", "cnn", "--kernels", "auto"], "argument --kernels: --kernels auto needs"),
                          (["--epoch", "--kernels", "sparse"], "argument --kernels: "),
                          (["--kernels", "fast"], "argument --kernels: invalid choice: 'fast'"),
                          (["--threads", "0"], "argument --threads: must be an integer >= 1, got '0'"),
                          (["--_peak-memory", "a"], "argument --_peak-memory: internal to --kernels")]:
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
