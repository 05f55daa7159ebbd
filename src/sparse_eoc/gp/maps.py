"""Closed-form variance maps of the infinite-width network (NumPy/SciPy, float64).

For z ~ N(0, 1) and a pre-activation variance q > 0 (paper Section 2, docs/theory.md
sections 3.1-3.2)::

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


#: The accepted fixed points q* (solve_eoc, the correlation map): float64 keeps V, its
#: derivatives and the fixed-point search (which spans many decades around q* and squares
#: the clip) far from overflow and underflow there. The maps are scale-free, so q* = 1
#: loses nothing: (q*, tau, m) -> (c q*, sqrt(c) tau, sqrt(c) m) gives the same V / q*.
Q_STAR_RANGE = (1e-100, 1e100)


def _check_q_star(q_star: float) -> float:
    """q_star as a float; ValueError unless it is finite and in ``Q_STAR_RANGE``."""
    q_star = float(q_star)
    lo, hi = Q_STAR_RANGE
    if not (math.isfinite(q_star) and q_star > 0):
        raise ValueError(f"q_star must be finite and > 0, in [{lo:g}, {hi:g}], got q_star={q_star!r}")
    if not lo <= q_star <= hi:
        raise ValueError(
            f"q_star must be finite and > 0, in [{lo:g}, {hi:g}] (the range where the float64 maps and "
            f"the fixed-point search are accurate; the theory is scale-free, so rescale to q_star = 1), "
            f"got q_star={q_star!r}"
        )
    return q_star


def _check_q(q) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    if not np.all(np.isfinite(q) & (q > 0)):
        raise ValueError(f"q (pre-activation variance) must be finite and > 0, got q={q!r}")
    return q


#: Gauss-Legendre nodes and weights on [0, 1] for :func:`_narrow_clip`.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
_GL_NODES, _GL_WEIGHTS = (_GL_X + 1) / 2, _GL_W / 2
#: Below this mu (a + mu), with mu = m / sqrt(q) and a = tau / sqrt(q), :func:`_one_sided`
#: integrates over the clip window instead of subtracting the closed forms' nearly equal terms.
NARROW_CLIP = 1.0


def _narrow_clip(a: np.ndarray, mu: np.ndarray, order: int) -> np.ndarray:
    """The clip-window integrals of :func:`_one_sided`, without cancellation; 1-D a, mu.

    With b = a + mu and phi the standard normal density, integrating the closed forms by
    parts gives integrals over the window [a, b] only::

        P = int phi,  A' = int (z - a) z phi,  2q A'' = int (z - a) z (z^2 - 3) phi,
        A / q - mu^2 Q(b) = int (z - a)^2 phi        (Q = 1 - Phi)

    With z = a + t, phi(z) = phi(a) exp(-a t - t^2 / 2). For mu (a + mu) <= 1 every
    integrand is a smooth function of t / mu in [0, 1] that varies by at most a factor
    e^{1.5}, so 16-point Gauss-Legendre is exact to round-off. ``order`` as in
    :func:`_one_sided`; returns the integral selected (P, A / q - mu^2 Q(b), A', 2q A'').
    """
    t = mu[:, None] * _GL_NODES  # (n, 16)
    z = a[:, None] + t
    w = np.exp(-a[:, None] * t - 0.5 * t * t) * (_GL_WEIGHTS * (mu * norm.pdf(a))[:, None])  # (n, 16)
    poly = {-1: 1.0, 0: t * t, 1: t * z, 2: t * z * (z * z - 3.0)}[order]
    return (w * poly).sum(axis=-1)


def _one_sided(q: np.ndarray, tau: float, m: float, order: int) -> np.ndarray:
    """The one-sided Gaussian integrals of CReLU_{tau,m} at variance q.

    ``order`` selects: 0 -> A(q), 1 -> A'(q), 2 -> A''(q), -1 -> P(q).
    ``m = inf`` gives ReLU_tau (every term in b vanishes).

    With mu = m / sqrt(q), the closed forms (module docstring) subtract terms that agree
    to about -log10(mu (a + mu)) digits when the clip window [a, b] is narrow; there
    (mu (a + mu) <= ``NARROW_CLIP``) the same quantities come from :func:`_narrow_clip`,
    which has no cancellation. V'(q*) = A'/P thus keeps full relative precision at any
    m / sqrt(q*) (the closed forms gave V'(q*) < 0 at m / sqrt(q*) = 1e-8).
    """
    if order not in (-1, 0, 1, 2):
        raise AssertionError(f"unknown order {order}")
    q = np.asarray(q, dtype=float)
    sq = np.sqrt(q)
    a = tau / sq
    pa = norm.pdf(a)
    if math.isinf(m):
        mass = norm.sf(a)  # Phi(b) - Phi(a) with b = inf
        if order in (-1, 1):
            return mass
        return (q + tau * tau) * mass - tau * sq * pa if order == 0 else a * pa / (2 * q)
    mu = m / sq
    b = a + mu
    pb = norm.pdf(b)
    sfb = norm.sf(b)
    mass = norm.sf(a) - sfb  # sf keeps precision for large a
    if order == -1:
        value = mass
    elif order == 0:
        value = (q + tau * tau) * mass - tau * sq * pa + (tau - m) * sq * pb + m * m * sfb
    elif order == 1:
        value = mass - mu * pb
    else:
        value = (a * pa - b * pb + mu * pb * (1 - b * b)) / (2 * q)
    narrow = mu * b <= NARROW_CLIP
    if np.any(narrow):
        value = np.array(value, dtype=float)  # a writable copy of the shape of q
        integral = _narrow_clip(a[narrow], mu[narrow], order)
        qn = q[narrow]
        value[narrow] = {
            -1: integral,
            0: qn * (integral + mu[narrow] ** 2 * sfb[narrow]),
            1: integral,
            2: integral / (2 * qn),
        }[order]
    return value


def second_moment(q, activation: str, tau: float, m: float = math.inf) -> np.ndarray:
    """E[phi(sqrt(q) z)^2] for z ~ N(0, 1), in closed form (docs/theory.md section 3.1).

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
    """V(q) = sigma_w2 E[phi(sqrt(q) z)^2] + sigma_b2 (paper eq. (2), docs/theory.md section 1.2).

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
    """V''(q) = k sigma_w2 A''(q); > 0 for ReLU_tau/ST_tau with tau > 0 (docs/theory.md section 4.1).

    Same arguments, shapes and errors as :func:`variance_map`.
    """
    return params._gain(q, 2)


def chi1(q, params: GPParams) -> np.ndarray:
    """chi_1(q) = sigma_w2 E[phi'(sqrt(q) z)^2], the per-layer gradient gain (= R'(1)).

    Same arguments, shapes and errors as :func:`variance_map`.
    """
    return params._gain(q, -1)
