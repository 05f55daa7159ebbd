"""Compiled row kernels on W^T (numba; no torch), shared by the inference engine (``sparse_eoc.infer``)
and sparse training (``sparse_eoc.nn.sparse_linear``). Importing this package imports neither numba
nor torch; its modules need numba (``pip install 'numba>=0.60'``)."""

from __future__ import annotations

import os

__all__ = ["short_omp_spin"]

#: Spins of an idle OpenMP thread of torch before it sleeps (libgomp's default is 300,000).
OMP_SPINCOUNT = "20000"


def short_omp_spin() -> None:
    """Let torch's idle OpenMP threads spin only briefly before they sleep (``GOMP_SPINCOUNT``,
    unless it or ``OMP_WAIT_POLICY`` is already set). Takes effect only before torch is imported.

    The sparse kernels run on threads of their own between torch ops. With libgomp's default
    spin, torch's idle threads keep the cores busy meanwhile: a 2-thread sparse training step at
    width 4096 took 686 ms, against 394 ms with this setting. Sleeping at once instead
    (``OMP_WAIT_POLICY=PASSIVE``) gave 405 ms there but made a width-300 dense step twice as slow
    (39 against 21 ms), as every small op then wakes its threads; 20,000 spins keep them awake
    between back-to-back ops (``benchmarks/train_step.py``, 2-core CPU).
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", OMP_SPINCOUNT)
