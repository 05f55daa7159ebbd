"""The spatial covariance map of an infinite-channel CNN (Xiao et al. 2018; docs/theory.md section 1.4).

A conv layer with k x k kernels, stride 1 and circular padding on an H x W grid,
weights N(0, sigma_w2 / (C k^2)) and biases N(0, sigma_b2), maps the covariance
Sigma of the pre-activations at two grid positions a, b (the same for every channel
as C -> infinity) to::

    Sigma'[a, b] = sigma_w2 * mean_{d in window} K[a + d, b + d] + sigma_b2,
    K[x, y]      = E[phi(h_x) phi(h_y)],  (h_x, h_y) ~ N(0, Sigma restricted to {x, y}),

with positions taken mod (H, W) and the window the k x k offsets
d = (di, dj), di, dj in {-(k // 2), ..., k - 1 - k // 2} (centred for odd k). Shifting
the window by a constant only translates the map, so the choice does not matter for
stationary inputs. The diagonal follows V position by position when it is constant;
off-diagonal correlations follow R averaged over the window.

Layout: a covariance is an (H*W, H*W) matrix indexed by flattened positions
p = i * W + j (row-major, as ``np.ravel`` of an (H, W) image); internally it is viewed
as (H, W, H, W).
"""

from __future__ import annotations

import operator

import numpy as np

from sparse_eoc.gp.correlation import CORR_TOL, expected_product
from sparse_eoc.gp.depth import _check_depth
from sparse_eoc.gp.maps import GPParams

__all__ = ["window_offsets", "cnn_covariance_map", "iterate_cnn_covariance"]


def window_offsets(kernel_size: int) -> list[tuple[int, int]]:
    """The k x k offsets d = (di, dj) of a kernel window: di, dj in -(k//2) .. k-1-k//2."""
    r = np.arange(kernel_size) - kernel_size // 2
    return [(int(di), int(dj)) for di in r for dj in r]


def _check_grid(sigma, kernel_size, grid_shape) -> tuple[np.ndarray, int, int, int]:
    try:
        kernel_size = operator.index(kernel_size)
    except TypeError:
        raise ValueError(f"kernel_size must be an integer >= 1, got kernel_size={kernel_size!r}") from None
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be an integer >= 1, got kernel_size={kernel_size!r}")
    if len(grid_shape) != 2 or min(grid_shape) < 1:
        raise ValueError(f"grid_shape must be (H, W) with H, W >= 1, got grid_shape={grid_shape!r}")
    h, w = (operator.index(n) for n in grid_shape)
    sigma = np.asarray(sigma, dtype=float)
    if sigma.shape != (h * w, h * w):
        raise ValueError(f"sigma must have shape (H*W, H*W) = {(h * w, h * w)}, got shape {sigma.shape}")
    if not np.all(np.isfinite(sigma)):
        raise ValueError("sigma must be finite")
    if not np.allclose(sigma, sigma.T, rtol=1e-12, atol=0):
        raise ValueError("sigma must be symmetric")
    if not np.all(np.diag(sigma) > 0):
        raise ValueError(f"the diagonal of sigma (the variances) must be > 0, got {np.diag(sigma)!r}")
    return sigma, kernel_size, h, w


def _pairwise_product(sigma: np.ndarray, params: GPParams) -> np.ndarray:
    """K[x, y] = E[phi(h_x) phi(h_y)] for every pair of positions; (P, P) -> (P, P)."""
    q = np.diag(sigma)  # (P,)
    rows, cols = np.triu_indices(q.size)  # (P(P+1)/2,) each: one expectation per unordered pair
    c = sigma[rows, cols]
    bound = np.sqrt(q[rows] * q[cols])
    if np.any(np.abs(c) > bound * (1 + CORR_TOL)):
        raise ValueError("sigma is not a covariance: some |Sigma[a, b]| > sqrt(Sigma[a, a] Sigma[b, b])")
    upper = expected_product(q[rows], q[cols], c, params.activation, params.tau, params.m)
    k = np.empty_like(sigma)
    k[rows, cols] = upper
    k[cols, rows] = upper
    return k


def cnn_covariance_map(sigma, params: GPParams, kernel_size: int, grid_shape: tuple[int, int]) -> np.ndarray:
    """One conv layer's map Sigma^{l} -> Sigma^{l+1} of the spatial covariance (Xiao et al. 2018).

    Args:
        sigma: the pre-activation covariance across grid positions, shape (H*W, H*W),
            symmetric, positive diagonal, |Sigma[a, b]| <= sqrt(Sigma[a, a] Sigma[b, b]).
        params: the activation and (tau, m, sigma_w2, sigma_b2); sigma_w2 is the weight
            variance times fan_in = channels x k^2.
        kernel_size: k, the side of the square kernel, an integer >= 1 (k = 1: every
            position is an independent DNN).
        grid_shape: (H, W), the spatial size (stride 1, circular padding keep it).

    Returns:
        Sigma^{l+1}, shape (H*W, H*W), symmetric positive semi-definite when sigma is.

    Raises:
        ValueError: a bad kernel_size or grid_shape, sigma of the wrong shape, not
            finite, not symmetric, with a non-positive variance, or not a covariance.
    """
    sigma, kernel_size, h, w = _check_grid(sigma, kernel_size, grid_shape)
    k4 = _pairwise_product(sigma, params).reshape(h, w, h, w)  # (H, W, H, W): K[(i, j), (i', j')]
    acc = np.zeros_like(k4)
    for di, dj in window_offsets(kernel_size):
        # acc[a, b] += K[a + d, b + d]: shift both positions by d (mod H, W).
        acc += np.roll(k4, shift=(-di, -dj, -di, -dj), axis=(0, 1, 2, 3))
    out = params.sigma_w2 * acc / kernel_size**2 + params.sigma_b2
    return out.reshape(h * w, h * w)  # (H*W, H*W)


def iterate_cnn_covariance(
    sigma0, params: GPParams, kernel_size: int, grid_shape: tuple[int, int], depth: int
) -> np.ndarray:
    """Sigma^l for l = 0..depth through ``depth`` conv layers (each :func:`cnn_covariance_map`).

    Args:
        sigma0: the input covariance, shape (H*W, H*W); see :func:`cnn_covariance_map`.
        params, kernel_size, grid_shape: as in :func:`cnn_covariance_map`.
        depth: the number of conv layers, an integer >= 0.

    Returns:
        An array of shape (depth + 1, H*W, H*W); ``out[0]`` is sigma0. A trajectory that
        overflows float64 is ``inf`` from that layer on; nothing is raised or warned.

    Raises:
        ValueError: as :func:`cnn_covariance_map`, or depth not an integer >= 0.
    """
    depth = _check_depth(depth)
    sigma0, kernel_size, h, w = _check_grid(sigma0, kernel_size, grid_shape)
    out = np.full((depth + 1, *sigma0.shape), np.inf)  # (L+1, H*W, H*W)
    out[0] = sigma0
    for layer in range(1, depth + 1):
        with np.errstate(over="ignore", invalid="ignore"):
            nxt = cnn_covariance_map(out[layer - 1], params, kernel_size, (h, w))
        if not np.all(np.isfinite(nxt)):
            break
        out[layer] = nxt
    return out
