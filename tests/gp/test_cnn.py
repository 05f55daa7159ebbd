"""The CNN spatial covariance map against the DNN maps, a naive loop, and Monte Carlo."""

import math
import warnings

import numpy as np
import pytest

from sparse_eoc.activations import get_activation
from sparse_eoc.gp import (
    GPParams,
    cnn_covariance_map,
    expected_product,
    iterate_cnn_covariance,
    iterate_correlation,
    iterate_variance,
    solve_eoc,
    variance_map,
    window_offsets,
)

GRID = (4, 4)


def _random_covariance(grid, seed, scale=1.0):
    """A full-rank, non-stationary covariance over the grid positions; (H*W, H*W)."""
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    x = rng.standard_normal((n, 3 * n)) * rng.uniform(0.5, 1.5, size=(n, 1))
    return scale * x @ x.T / (3 * n)


def _stationary_covariance(grid, q0, length=1.5):
    """Sigma[a, b] = q0 exp(-dist(a, b)^2 / (2 length^2)), dist on the torus; (H*W, H*W)."""
    h, w = grid
    i, j = np.divmod(np.arange(h * w), w)  # (H*W,) row and column of each flattened position
    di = np.minimum(np.abs(i[:, None] - i[None]), h - np.abs(i[:, None] - i[None]))
    dj = np.minimum(np.abs(j[:, None] - j[None]), w - np.abs(j[:, None] - j[None]))
    return q0 * np.exp(-(di**2 + dj**2) / (2 * length**2))


def _naive_map(sigma, params, k, grid):
    """The defining formula with explicit index arithmetic, one pair of positions at a time."""
    h, w = grid
    q = np.diag(sigma)
    prod = expected_product(q[:, None], q[None, :], sigma, params.activation, params.tau, params.m)  # (P, P)
    out = np.empty_like(sigma)
    for a in range(h * w):
        for b in range(h * w):
            total = 0.0
            for di, dj in window_offsets(k):
                x = ((a // w + di) % h) * w + (a % w + dj) % w
                y = ((b // w + di) % h) * w + (b % w + dj) % w
                total += prod[x, y]
            out[a, b] = params.sigma_w2 * total / k**2 + params.sigma_b2
    return out


def test_window_offsets():
    assert window_offsets(1) == [(0, 0)]
    assert window_offsets(3) == [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]
    assert sorted({d for d, _ in window_offsets(2)}) == [-1, 0]


@pytest.mark.parametrize("k", [2, 3])
def test_matches_the_naive_loop(k):
    p = solve_eoc("cst", 0.8, slope=0.7)
    grid = (3, 4)  # non-square, so rows and columns cannot be swapped by mistake
    sigma = _random_covariance(grid, seed=k)
    np.testing.assert_allclose(cnn_covariance_map(sigma, p, k, grid), _naive_map(sigma, p, k, grid), atol=1e-13)


@pytest.mark.parametrize(
    "name,s,kw", [("relu_tau", 0.7, {}), ("crelu", 0.85, {"slope": 0.7}), ("cst", 0.8, {"slope": 0.9})]
)
def test_one_by_one_kernel_is_a_dnn_per_position(name, s, kw):
    """k = 1: the diagonal follows V position by position; at q* the correlations follow R."""
    p = solve_eoc(name, s, **kw)
    depth = 4
    sigma0 = _random_covariance(GRID, seed=1)
    out = iterate_cnn_covariance(sigma0, p, 1, GRID, depth)
    np.testing.assert_allclose(
        np.diagonal(out, axis1=1, axis2=2), iterate_variance(np.diag(sigma0), p, depth), rtol=1e-12
    )
    d = np.sqrt(np.diag(sigma0))
    corr0 = np.clip(sigma0 / np.outer(d, d), -1, 1)
    at_q_star = iterate_cnn_covariance(corr0 * p.q_star, p, 1, GRID, depth)
    np.testing.assert_allclose(at_q_star / p.q_star, iterate_correlation(corr0, p, None, depth), atol=1e-9)


def test_diagonal_obeys_v_for_a_stationary_input():
    p = solve_eoc("crelu", 0.85, slope=0.5)
    for q0 in (0.4, 2.5):
        out = iterate_cnn_covariance(_stationary_covariance(GRID, q0), p, 3, GRID, 5)
        np.testing.assert_allclose(
            np.diagonal(out, axis1=1, axis2=2), np.repeat(iterate_variance(q0, p, 5)[:, None], 16, axis=1), rtol=1e-12
        )


def test_diagonal_is_the_window_average_of_v():
    """Any input: Sigma'[a, a] = mean over the window of V(Sigma[a + d, a + d])."""
    p = solve_eoc("relu_tau", 0.8)
    sigma = _random_covariance(GRID, seed=7, scale=2.0)
    v = variance_map(np.diag(sigma), p).reshape(GRID)  # (H, W)
    expected = np.mean([np.roll(v, (-di, -dj), axis=(0, 1)) for di, dj in window_offsets(3)], axis=0)
    np.testing.assert_allclose(np.diag(cnn_covariance_map(sigma, p, 3, GRID)), expected.ravel(), rtol=1e-12)


@pytest.mark.parametrize("name", ["relu_tau", "st_tau", "crelu", "cst"])
def test_output_is_symmetric_positive_semidefinite(name):
    p = solve_eoc(name, 0.8, slope=0.7) if get_activation(name).clipped else solve_eoc(name, 0.8)
    out = iterate_cnn_covariance(_random_covariance(GRID, seed=3), p, 3, GRID, 3)
    for sigma in out:
        np.testing.assert_array_equal(sigma, sigma.T)
        assert np.linalg.eigvalsh(sigma).min() >= -1e-12 * np.abs(sigma).max()


def test_translation_equivariance():
    p = solve_eoc("crelu", 0.85, slope=0.7)
    sigma = _random_covariance(GRID, seed=11).reshape(*GRID, *GRID)  # (H, W, H, W)
    shifted = np.roll(sigma, (1, 2, 1, 2), axis=(0, 1, 2, 3))
    out = cnn_covariance_map(sigma.reshape(16, 16), p, 3, GRID).reshape(*GRID, *GRID)
    out_shifted = cnn_covariance_map(shifted.reshape(16, 16), p, 3, GRID).reshape(*GRID, *GRID)
    np.testing.assert_allclose(out_shifted, np.roll(out, (1, 2, 1, 2), axis=(0, 1, 2, 3)), atol=1e-14)


def test_one_layer_matches_monte_carlo():
    """Sample h ~ N(0, Sigma), average phi(h_{a+d}) phi(h_{b+d}) over the window: within 5 standard errors."""
    p = solve_eoc("cst", 0.7, slope=0.7)
    act = get_activation("cst")
    grid, k, n = (3, 4), 3, 40_000
    sigma = _random_covariance(grid, seed=5)
    rng = np.random.default_rng(99)
    h = rng.standard_normal((n, 12)) @ np.linalg.cholesky(sigma).T  # (n, H*W)
    y = act.fn(h, p.tau, p.m).reshape(n, *grid)  # (n, H, W)
    shifted = [np.roll(y, (-di, -dj), axis=(1, 2)).reshape(n, 12) for di, dj in window_offsets(k)]  # k^2 x (n, H*W)
    sample = p.sigma_w2 * sum(np.einsum("na,nb->nab", s, s) for s in shifted) / k**2 + p.sigma_b2  # (n, P, P)
    stderr = sample.std(axis=0, ddof=1) / math.sqrt(n)
    gap = np.abs(sample.mean(axis=0) - cnn_covariance_map(sigma, p, k, grid))
    assert np.all(gap <= 5 * stderr + 1e-12)


def test_overflow_fills_inf_quietly():
    p = GPParams("relu_tau", 0.0, math.inf, sigma_w2=1e100, sigma_b2=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = iterate_cnn_covariance(_stationary_covariance((2, 2), 1.0), p, 3, (2, 2), 6)
    assert out.shape == (7, 4, 4)
    assert np.all(np.isfinite(out[:4])) and np.all(np.isinf(out[4:]))


@pytest.mark.parametrize(
    "sigma,k,grid,match",
    [
        (np.eye(16), 0, GRID, "kernel_size must be an integer >= 1"),
        (np.eye(16), 3, (4,), r"grid_shape must be \(H, W\)"),
        (np.eye(9), 3, GRID, r"sigma must have shape \(H\*W, H\*W\) = \(16, 16\)"),
        (np.eye(16) + np.triu(np.full((16, 16), 0.1), 1), 3, GRID, "symmetric"),
        (np.diag(np.r_[np.ones(15), 0.0]), 3, GRID, "diagonal of sigma .* must be > 0"),
        (np.eye(16) + 2 * (np.eye(16, k=1) + np.eye(16, k=-1)), 3, GRID, "not a covariance"),
    ],
)
def test_bad_inputs_raise(sigma, k, grid, match):
    with pytest.raises(ValueError, match=match):
        cnn_covariance_map(sigma, solve_eoc("crelu", 0.85), k, grid)
