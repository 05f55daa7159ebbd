"""Infinite-width Gaussian-process theory of sparse activations (NumPy/SciPy only, no torch)."""

from sparse_eoc.gp.eoc import (
    DEFAULT_SLOPE,
    RELU_SPARSITY,
    EoCPoint,
    FixedPoint,
    NoEoCPointError,
    eoc_slope,
    fixed_points,
    solve_eoc,
    sparsity_from_tau,
    sparsity_range,
    tau_from_sparsity,
)
from sparse_eoc.gp.maps import (
    GPParams,
    chi1,
    derivative_second_moment,
    second_moment,
    variance_map,
    variance_map_derivative,
    variance_map_second_derivative,
)

__all__ = [
    "DEFAULT_SLOPE",
    "RELU_SPARSITY",
    "EoCPoint",
    "FixedPoint",
    "GPParams",
    "NoEoCPointError",
    "chi1",
    "derivative_second_moment",
    "eoc_slope",
    "fixed_points",
    "second_moment",
    "solve_eoc",
    "sparsity_from_tau",
    "sparsity_range",
    "tau_from_sparsity",
    "variance_map",
    "variance_map_derivative",
    "variance_map_second_derivative",
]
