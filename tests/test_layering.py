"""The house plan, executable: which floors may import which, and what never imports torch.

The layout the README describes: the theory, the registry, the settings and run files, and
the data readers never import torch; imports run one way
(checks/jsonio -> activations -> gp -> runs -> nn -> train -> experiments / infer -> cli).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sparse_eoc"

# The floors (top-level modules and subpackages of sparse_eoc) each floor may import.
# Lazy imports inside functions count too: a lazy import that runs upward is still upward.
BASE = {"checks", "jsonio"}
ALLOWED = {
    "checks": set(),
    "jsonio": set(),
    "activations": BASE,
    "gp": BASE | {"activations"},
    "data": BASE,
    "kernels": BASE,  # numba row kernels on W^T, shared by training (nn) and inference (infer)
    "runs": BASE | {"activations", "gp"},
    "nn": BASE | {"activations", "gp", "runs", "kernels"},
    "train": BASE | {"activations", "gp", "runs", "nn", "data"},
    "infer": BASE | {"activations", "gp", "runs", "nn", "data", "kernels"},
    "plotstyle": BASE | {"activations"},
    "experiments": BASE | {"activations", "gp", "runs", "nn", "data", "train", "plotstyle"},
    "figures": BASE | {"activations", "gp", "runs", "nn", "plotstyle", "experiments"},
    "cli": BASE | {"activations", "gp", "runs", "nn", "data", "train", "infer", "experiments", "figures",
                   "plotstyle", "kernels"},
    "__main__": {"cli"},
    "__init__": {"nn"},  # only the lazy sparse_eoc.sparsify (PEP 562 __getattr__): torch is imported on use
}

TORCH_FREE = ["sparse_eoc.activations", "sparse_eoc.gp", "sparse_eoc.data", "sparse_eoc.runs",
              "sparse_eoc.runs.files", "sparse_eoc.runs.network", "sparse_eoc.cli", "sparse_eoc.jsonio",
              "sparse_eoc.experiments", "sparse_eoc.experiments.registry", "sparse_eoc.experiments.report",
              "sparse_eoc.infer"]


def _floor(module: str) -> str:
    """``sparse_eoc.gp.eoc`` -> ``gp``; ``sparse_eoc`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """The sparse_eoc modules ``path`` imports (absolute or relative), with their line numbers."""
    module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("sparse_eoc")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("sparse_eoc"):
                out.append((name, node.lineno))
    return out


def _edges() -> list[tuple[str, str, str]]:
    """(importing floor, imported floor, where) for every import across floors."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent)
        source = _floor(".".join(rel.with_suffix("").parts))
        for target, line in _imports(path):
            floor = _floor(target)
            if floor != source and floor != "__init__":
                edges.append((source, floor, f"{rel}:{line}"))
    return edges


def test_every_floor_is_in_the_plan():
    floors = {_floor(".".join(p.relative_to(SRC.parent).with_suffix("").parts)) for p in SRC.rglob("*.py")}
    assert floors <= set(ALLOWED), f"floors missing from the plan: {sorted(floors - set(ALLOWED))}"


def test_imports_run_one_way():
    wrong = [f"{where}: {source} imports {target}" for source, target, where in _edges()
             if target not in ALLOWED[source]]
    assert not wrong, "imports against the house plan:\n" + "\n".join(wrong)


def test_nothing_imports_the_cli():
    assert not [where for source, target, where in _edges() if target == "cli" and source != "__main__"]


def test_the_plan_has_no_cycle():
    def reaches(start, goal, seen=()):
        return any(t == goal or (t not in seen and reaches(t, goal, (*seen, t))) for t in ALLOWED[start])

    assert not [floor for floor in ALLOWED if reaches(floor, floor)]


def test_the_import_reader_sees_relative_and_lazy_imports():
    """A canary for the checker itself: it reads ``from .x import`` and imports inside functions."""
    assert any(name.startswith("sparse_eoc.data.") for name, _ in _imports(SRC / "data" / "__init__.py"))
    assert "sparse_eoc.train" in [name for name, _ in _imports(SRC / "cli.py")]  # inside _train_command


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("argv", [["eoc", "--activation", "crelu", "--sparsity", "0.85"], ["experiments"],
                                  ["--help"], ["train", "--help"]])
def test_commands_that_need_no_torch_do_not_import_it(argv):
    code = ("import sys\nfrom sparse_eoc.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)" % (argv,))
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.strip().splitlines()[-1] == "False"


def test_the_check_sees_torch_when_it_is_imported():
    code = "import sys, sparse_eoc.nn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
