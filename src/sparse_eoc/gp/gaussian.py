"""Gaussian expectations by piecewise quadrature, split at the activation's kinks.

The closed forms in :mod:`sparse_eoc.gp.maps` are the fast path; this module is
the independent reference they are checked against, and the tool for integrals
with no closed form. Plain Gauss-Hermite is wrong across a threshold, so every
integral here is split at the kinks (docs/theory.md section 3.4).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from scipy import integrate
from scipy.stats import norm

from sparse_eoc.activations import get_activation

__all__ = ["kinks", "gaussian_expectation", "second_moment_quad", "derivative_second_moment_quad"]


def kinks(activation: str, tau: float, m: float = math.inf) -> tuple[float, ...]:
    """The points where phi is not differentiable, ascending.

    ``relu_tau``: tau; ``crelu``: tau, tau + m; ``st_tau``: -tau, tau;
    ``cst``: -(tau + m), -tau, tau, tau + m (infinite ones dropped).
    """
    act = get_activation(activation)
    tau, m = act.check_params(tau, m)
    right = [tau] + ([tau + m] if math.isfinite(m) else [])
    points = right + ([-x for x in right] if act.two_sided else [])
    return tuple(sorted(set(points)))


def gaussian_expectation(
    f: Callable[[float], float],
    q: float,
    breakpoints: Sequence[float] = (),
    *,
    mean: float = 0.0,
    epsabs: float = 1e-14,
    epsrel: float = 1e-12,
) -> float:
    """E[f(X)] for X ~ N(mean, q), by adaptive quadrature split at ``breakpoints``.

    Args:
        f: a scalar function of x, smooth between consecutive breakpoints.
        q: variance of X, > 0.
        breakpoints: x positions of the kinks or jumps of f (any order).
        mean: the mean of X.
        epsabs, epsrel: tolerances passed to :func:`scipy.integrate.quad`.

    Returns:
        The expectation, a float (accuracy about 1e-12 for the activations here).

    Raises:
        ValueError: if q <= 0.
    """
    if not q > 0:
        raise ValueError(f"q must be > 0, got q={q!r}")
    sd = math.sqrt(q)
    # Work in z = (x - mean) / sd so that every piece has unit scale.
    cuts = sorted({(b - mean) / sd for b in breakpoints})
    edges = [-math.inf, *cuts, math.inf]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        value, _ = integrate.quad(
            lambda z: f(mean + sd * z) * norm.pdf(z), lo, hi, epsabs=epsabs, epsrel=epsrel, limit=200
        )
        total += value
    return total


def second_moment_quad(q: float, activation: str, tau: float, m: float = math.inf) -> float:
    """E[phi(sqrt(q) z)^2] by piecewise quadrature (reference for ``second_moment``)."""
    act = get_activation(activation)
    return gaussian_expectation(
        lambda x: float(act.fn(x, tau, m)) ** 2, q, kinks(activation, tau, m)
    )


def derivative_second_moment_quad(q: float, activation: str, tau: float, m: float = math.inf) -> float:
    """E[phi'(sqrt(q) z)^2] by piecewise quadrature (reference for ``derivative_second_moment``)."""
    act = get_activation(activation)
    return gaussian_expectation(
        lambda x: float(act.derivative(x, tau, m)) ** 2, q, kinks(activation, tau, m)
    )
