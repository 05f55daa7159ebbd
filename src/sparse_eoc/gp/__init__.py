"""Infinite-width Gaussian-process theory of sparse activations (NumPy/SciPy only, no torch)."""

from sparse_eoc.gp.clip import (
    ClipRecommendation,
    bifurcation_m,
    check_clip,
    eoc_points_at_fixed_m,
    recommend_clip,
    slope_and_curvature_vs_m,
)
from sparse_eoc.gp.cnn import cnn_covariance_map, iterate_cnn_covariance, window_offsets
from sparse_eoc.gp.correlation import (
    correlation_map,
    correlation_map_derivative,
    expected_derivative_product,
    expected_product,
)
from sparse_eoc.gp.depth import depth_to_correlate, iterate_correlation, iterate_variance
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
    "ClipRecommendation",
    "DEFAULT_SLOPE",
    "EoCPoint",
    "FixedPoint",
    "GPParams",
    "NoEoCPointError",
    "RELU_SPARSITY",
    "bifurcation_m",
    "check_clip",
    "chi1",
    "cnn_covariance_map",
    "correlation_map",
    "correlation_map_derivative",
    "depth_to_correlate",
    "derivative_second_moment",
    "eoc_points_at_fixed_m",
    "eoc_slope",
    "expected_derivative_product",
    "expected_product",
    "fixed_points",
    "iterate_cnn_covariance",
    "iterate_correlation",
    "iterate_variance",
    "recommend_clip",
    "second_moment",
    "slope_and_curvature_vs_m",
    "solve_eoc",
    "sparsity_from_tau",
    "sparsity_range",
    "tau_from_sparsity",
    "variance_map",
    "variance_map_derivative",
    "variance_map_second_derivative",
    "window_offsets",
]
