"""Closed-form variance maps of the infinite-width network (NumPy/SciPy, float64).

For z ~ N(0, 1) and a pre-activation variance q > 0 (paper Section 2, THEORY.md
section 3)::

    V(q)     = sigma_w2 E[phi(sqrt(q) z)^2] + sigma_b2        variance map
    chi1(q)  = sigma_w2 E[phi'(sqrt(q) z)^2]                  gradient gain
    V'(q), V''(q)                                             its derivatives in q

With a = tau / sqrt(q) and b = (tau + m) / sqrt(q), the one-sided (CReLU)
quantities are::

    A(q)   = (q + tau^2)(Phi(b) - Phi(a)) - tau sqrt(q) varphi(a)
             + (tau - m) sqrt(q) varphi(b) + m^2 (1 - Phi(b))
    P(q)   = Phi(b) - Phi(a)
    A'(q)  = P(q) - (m / sqrt(q)) varphi(b)
    A''(q) = [a varphi(a) - b varphi(b)] / (2q) + m varphi(b) (1 - b^2) / (2 q^{3/2})

ReLU_tau is the limit m -> inf; the two-sided activations (ST_tau, CST) are
exactly k = 2 times the one-sided ones. Every function is vectorised over ``q``
and never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from sparse_eoc.activations import get_activation

__all__ = [
    "GPParams",
    "second_moment",
    "derivative_second_moment",
    "variance_map",
    "variance_map_derivative",
    "variance_map_second_derivative",
    "chi1",
]


def _check_q(q) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    if not np.all(np.isfinite(q) & (q > 0)):
        raise ValueError(f"q (pre-activation variance) must be finite and > 0, got q={q!r}")
    return q


def _one_sided(q: np.ndarray, tau: float, m: float, order: int) -> np.ndarray:
    """The one-sided Gaussian integrals of CReLU_{tau,m} at variance q.

    ``order`` selects: 0 -> A(q), 1 -> A'(q), 2 -> A''(q), -1 -> P(q).
    ``m = inf`` gives ReLU_tau (every term in b vanishes).
    """
    sq = np.sqrt(q)
    a = tau / sq
    pa = norm.pdf(a)
    if math.isinf(m):
        mass = norm.sf(a)  # Phi(b) - Phi(a) with b = inf
        clip_terms = (0.0, 0.0, 0.0)
    else:
        b = (tau + m) / sq
        pb = norm.pdf(b)
        mass = norm.sf(a) - norm.sf(b)  # sf keeps precision for large a
        clip_terms = (
            (tau - m) * sq * pb + m * m * norm.sf(b),
            -(m / sq) * pb,
            -b * pb / (2 * q) + m * pb * (1 - b * b) / (2 * q * sq),
        )
    if order == -1:
        return mass
    if order == 0:
        return (q + tau * tau) * mass - tau * sq * pa + clip_terms[0]
    if order == 1:
        return mass + clip_terms[1]
    if order == 2:
        return a * pa / (2 * q) + clip_terms[2]
    raise AssertionError(f"unknown order {order}")


def second_moment(q, activation: str, tau: float, m: float = math.inf) -> np.ndarray:
    """E[phi(sqrt(q) z)^2] for z ~ N(0, 1), in closed form (THEORY.md section 3).

    Args:
        q: pre-activation variance per unit, > 0; scalar or array of any shape.
        activation: registry name (``relu_tau``, ``st_tau``, ``crelu``, ``cst``, ``relu``).
        tau: threshold, >= 0.  m: clip, > 0 (inf for the unclipped activations).

    Returns:
        An array of the shape of ``q`` (float64).

    Raises:
        ValueError: for an unknown activation, q <= 0, tau < 0, m <= 0, or a
            finite m for an unclipped activation.
    """
    act = get_activation(activation)
    tau, m = act.check_params(tau, m)
    return act.k * _one_sided(_check_q(q), tau, m, 0)


def derivative_second_moment(q, activation: str, tau: float, m: float = math.inf) -> np.ndarray:
    """E[phi'(sqrt(q) z)^2] = k (Phi(b) - Phi(a)): the fraction of units on a linear piece.

    Same arguments, shapes and errors as :func:`second_moment`.
    """
    act = get_activation(activation)
    tau, m = act.check_params(tau, m)
    return act.k * _one_sided(_check_q(q), tau, m, -1)


@dataclass(frozen=True)
class GPParams:
    """The parameters of the infinite-width maps of one network.

    Attributes:
        activation: canonical registry name (aliases are resolved: ``relu`` -> ``relu_tau``).
        tau: threshold, >= 0.
        m: clip, > 0; ``inf`` for the unclipped activations.
        sigma_w2: weight variance sigma_w^2 (weights are N(0, sigma_w2 / fan_in)), > 0.
        sigma_b2: bias variance sigma_b^2, >= 0.

    Raises:
        ValueError: on construction, for any parameter outside its range.
    """

    activation: str
    tau: float
    m: float
    sigma_w2: float
    sigma_b2: float

    def __post_init__(self):
        act = get_activation(self.activation)
        tau, m = act.check_params(self.tau, self.m)
        object.__setattr__(self, "activation", act.name)
        object.__setattr__(self, "tau", tau)
        object.__setattr__(self, "m", m)
        if not (math.isfinite(self.sigma_w2) and self.sigma_w2 > 0):
            raise ValueError(f"sigma_w2 must be finite and > 0, got sigma_w2={self.sigma_w2!r}")
        if not (math.isfinite(self.sigma_b2) and self.sigma_b2 >= 0):
            raise ValueError(f"sigma_b2 must be finite and >= 0, got sigma_b2={self.sigma_b2!r}")

    @property
    def k(self) -> int:
        return get_activation(self.activation).k

    def _gain(self, q, order: int) -> np.ndarray:
        return self.k * self.sigma_w2 * _one_sided(_check_q(q), self.tau, self.m, order)


def variance_map(q, params: GPParams) -> np.ndarray:
    """V(q) = sigma_w2 E[phi(sqrt(q) z)^2] + sigma_b2 (paper eq. (2), THEORY.md section 1).

    Args:
        q: pre-activation variance of layer l-1, > 0, any shape.
        params: the activation and (tau, m, sigma_w2, sigma_b2).

    Returns:
        q^l, the pre-activation variance of layer l; the shape of ``q``.

    Raises:
        ValueError: if any q <= 0 or is not finite.
    """
    return params._gain(q, 0) + params.sigma_b2


def variance_map_derivative(q, params: GPParams) -> np.ndarray:
    """V'(q) = k sigma_w2 A'(q); equals chi1(q) for ReLU_tau/ST_tau, is below it when clipped.

    Same arguments, shapes and errors as :func:`variance_map`.
    """
    return params._gain(q, 1)


def variance_map_second_derivative(q, params: GPParams) -> np.ndarray:
    """V''(q) = k sigma_w2 A''(q); > 0 for ReLU_tau/ST_tau with tau > 0 (THEORY.md 4.1).

    Same arguments, shapes and errors as :func:`variance_map`.
    """
    return params._gain(q, 2)


def chi1(q, params: GPParams) -> np.ndarray:
    """chi_1(q) = sigma_w2 E[phi'(sqrt(q) z)^2], the per-layer gradient gain (= R'(1)).

    Same arguments, shapes and errors as :func:`variance_map`.
    """
    return params._gain(q, -1)
