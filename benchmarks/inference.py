"""Sparse inference benchmark: dense PyTorch and ONNX Runtime vs the engine's dense-own and sparse runs.

The same as ``sparse-eoc bench-inference`` (see :mod:`sparse_eoc.infer.bench` for what is
timed and reported), except that this script also pins the BLAS library's threads to
``--threads`` (default 1) before NumPy loads it: the thread count of the engine's NumPy
backend (the numba kernels run their BLAS products on the engine's threads whatever it is).
Run it on an otherwise idle machine. The ONNX Runtime column needs ``pip install -e '.[bench]'``; without
it the script says so once and leaves the column out.

    python benchmarks/inference.py --data-dir ../shared/data/mnist                   # the full grid
    python benchmarks/inference.py --data-dir ../shared/data/mnist --widths 4096 --batches 1 --json
    python benchmarks/inference.py --data-dir DIR --widths 64 --depth 2 --repeats 2  # a smoke run

The thread check (exit code 1 when the engine on 2 threads takes more than 1.5x its time on
one, for any strategy):

    python benchmarks/inference.py --data-dir DIR --check-threads --threads 2 --widths 300 --batches 64 \
        --sparsities 0.85
"""

from __future__ import annotations

import os
import sys


def _threads(argv: list[str]) -> str:
    """The value of --threads in argv ("1" when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


if __name__ == "__main__":
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, _threads(sys.argv[1:]))
    from sparse_eoc.cli import main  # NumPy, and with it BLAS, loads here

    sys.exit(main(["bench-inference", *sys.argv[1:]]))
