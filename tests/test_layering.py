"""The theory, the registry and the data readers never import torch (STYLE.md principle 1)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["sparse_eoc.activations", "sparse_eoc.gp", "sparse_eoc.data", "sparse_eoc.cli", "sparse_eoc.jsonio",
                                    "sparse_eoc.experiments", "sparse_eoc.experiments.report", "sparse_eoc.infer"])
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_check_sees_torch_when_it_is_imported():
    code = "import sys, sparse_eoc.nn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
