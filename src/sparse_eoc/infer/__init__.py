"""Sparse inference: trained sparse MLPs and CNNs evaluated exactly, reading only the weights that meet nonzero
inputs."""

from sparse_eoc.infer.bench import BENCH_KEYS, run_benchmark
from sparse_eoc.infer.bench_cnn import CNN_BENCH_KEYS, run_cnn_benchmark
from sparse_eoc.infer.cnn import CNNFlopReport, cnn_flop_report
from sparse_eoc.infer.cnn_engine import SparseCNNEngine
from sparse_eoc.infer.cnn_plan import (
    CONV_STRATEGIES,
    CONV_STRATEGY_CHOICES,
    CNNEngineStats,
    ConvCostModel,
    choose_conv_strategy,
)
from sparse_eoc.infer.engine import (
    BACKENDS,
    EngineStats,
    SparseEngine,
    numba_available,
    zero_pixel_offset,
)
from sparse_eoc.infer.plan import (
    STRATEGIES,
    STRATEGY_CHOICES,
    CostModel,
    choose_strategy,
)
from sparse_eoc.infer.verify import (
    KinkReport,
    compare_with_dense,
    evaluate_run,
    near_kink,
)

__all__ = [
    "BACKENDS",
    "BENCH_KEYS",
    "CNN_BENCH_KEYS",
    "CONV_STRATEGIES",
    "CONV_STRATEGY_CHOICES",
    "STRATEGIES",
    "STRATEGY_CHOICES",
    "CNNEngineStats",
    "CNNFlopReport",
    "ConvCostModel",
    "CostModel",
    "EngineStats",
    "KinkReport",
    "SparseCNNEngine",
    "SparseEngine",
    "choose_conv_strategy",
    "choose_strategy",
    "cnn_flop_report",
    "compare_with_dense",
    "evaluate_run",
    "near_kink",
    "numba_available",
    "run_benchmark",
    "run_cnn_benchmark",
    "zero_pixel_offset",
]
