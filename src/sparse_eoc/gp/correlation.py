"""The correlation map and the Gaussian product expectations behind it (NumPy/SciPy, float64).

For a centred Gaussian pair (u, v) with variances q1, q2 and covariance c12, write
u = sqrt(q1) z and v = beta z + sd Z with z, Z ~ N(0, 1) independent,
beta = c12 / sqrt(q1) and sd = sqrt(q2 - c12^2 / q1). Then (docs/theory.md section 3.4)::

    E[phi(u) phi(v)]   = ∫ varphi(z) phi(sqrt(q1) z)  M(beta z, sd) dz,   M(mu, sd) = E[phi(mu + sd Z)]
    E[phi'(u) phi'(v)] = ∫ varphi(z) phi'(sqrt(q1) z) D(beta z, sd) dz,   D(mu, sd) = E[phi'(mu + sd Z)]

Every registered phi is a sum of hinges, phi(x) = sum_j c_j (s_j x - a_j)_+ with
s_j = +-1 (ReLU_tau: one hinge, CReLU and ST: two, CST: four), so M and D are closed
forms: with G(d, sd) = d Phi(d/sd) + sd varphi(d/sd),
M(mu, sd) = sum_j c_j G(s_j mu - a_j, sd) and D(mu, sd) = sum_j c_j s_j Phi((s_j mu - a_j)/sd).

The outer integral is done by fixed-order Gauss-Legendre on pieces split at every
kink (one rule across a threshold converges slowly), vectorised over (q1, q2, c12). M is smooth
but bends sharply within ~sd/|beta| of the points z_j where s_j beta z = a_j, which
for |rho| -> 1 is a near-kink no fixed rule resolves. So M is split as
M(mu, sd) = phi(mu) + sum_j c_j sd g((s_j mu - a_j)/sd), g(t) = varphi(t) - |t| Phi(-|t|)
(and D likewise with h(t) = Phi(t) - 1{t > 0}): the first part is piecewise
polynomial (integrated exactly between the kinks of both factors), each correction
decays like a Gaussian in t and is integrated on its own window |t| <= 10 around
z_j. At |rho| = 1 (sd = 0) the corrections vanish and M(mu, 0) = phi(mu) exactly.
Accuracy: about 1e-13 absolute for q ~ 1 (checked against adaptive quadrature,
Monte Carlo, and the arc-cosine kernel of plain ReLU in tests/gp/test_correlation.py).

The correlation map at a fixed point q* of V (docs/theory.md section 1.2)::

    R(rho)  = (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / q*,   u1, u2 ~ N(0, q*), corr rho
    R'(rho) = sigma_w2 E[phi'(u1) phi'(u2)]                    (Price's theorem)

so R(1) = V(q*)/q* = 1 and R'(1) = chi1(q*) on the EoC.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate
from scipy.stats import norm

from sparse_eoc.activations import get_activation
from sparse_eoc.gp.gaussian import kinks
from sparse_eoc.gp.maps import GPParams, _check_q_star

__all__ = [
    "expected_product",
    "expected_derivative_product",
    "expected_product_quad",
    "correlation_map",
    "correlation_map_derivative",
]

#: Outer integrals run over |z| <= Z_MAX: varphi(10) ~ 8e-23, far below the accuracy aimed at.
Z_MAX = 10.0
#: Each correction term is integrated over |t| <= T_MAX, t = (s_j beta z - a_j) / sd; g(10) ~ 8e-25.
T_MAX = 10.0
#: Gauss-Legendre nodes per piece.
N_NODES = 32
_GL_X, _GL_W = np.polynomial.legendre.leggauss(N_NODES)
#: |c12| may exceed sqrt(q1 q2) by this relative amount (round-off) and is then clipped.
CORR_TOL = 1e-10


def _hinges(activation: str, tau: float, m: float) -> list[tuple[float, float, float]]:
    """phi(x) = sum_j c_j (s_j x - a_j)_+ as a list of (c_j, s_j, a_j)."""
    act = get_activation(activation)
    right = [(1.0, 1.0, tau)] + ([(-1.0, 1.0, tau + m)] if math.isfinite(m) else [])
    left = [(-c, -1.0, a) for c, _, a in right] if act.two_sided else []
    return right + left


def _g(t: np.ndarray) -> np.ndarray:
    """g(t) = G(t, 1) - max(t, 0) = varphi(t) - |t| Phi(-|t|): even, > 0, ~ varphi(t)/t^2."""
    at = np.abs(t)
    return norm.pdf(at) - at * norm.sf(at)


def _h(t: np.ndarray) -> np.ndarray:
    """h(t) = Phi(t) - 1{t > 0}: odd up to t = 0, ~ varphi(t)/|t|."""
    return np.where(t > 0, -norm.sf(t), norm.cdf(t))


def _integrate(f, edges: np.ndarray) -> np.ndarray:
    """Sum over pieces of ∫ f(z) dz by Gauss-Legendre; edges (N, P+1) ascending -> (N,)."""
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]  # (N, P, 1)
    half = 0.5 * (hi - lo)
    z = 0.5 * (hi + lo) + half * _GL_X  # (N, P, n)
    return np.sum(f(z) * half * _GL_W, axis=(1, 2))


def _sorted_edges(points: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Breakpoints (N,) each, clipped to [lo, hi] and sorted -> (N, len(points) + 2)."""
    cols = [lo, hi] + [np.clip(np.nan_to_num(p, nan=-np.inf), lo, hi) for p in points]
    return np.sort(np.stack(cols, axis=1), axis=1)  # (N, P+1)


def _check_covariance(q1, q2, c12) -> tuple[np.ndarray, ...]:
    q1, q2, c12 = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (q1, q2, c12)))
    for name, q in (("q1", q1), ("q2", q2)):
        if not np.all(np.isfinite(q) & (q > 0)):
            raise ValueError(f"{name} (a variance) must be finite and > 0, got {name}={q!r}")
    bound = np.sqrt(q1 * q2)
    if not np.all(np.isfinite(c12) & (np.abs(c12) <= bound * (1 + CORR_TOL))):
        raise ValueError(
            f"c12 (the covariance) must satisfy |c12| <= sqrt(q1 q2), got c12={c12!r} "
            f"with sqrt(q1 q2)={bound!r}"
        )
    return q1, q2, np.clip(c12, -bound, bound)


def _product(q1, q2, c12, activation: str, tau: float, m: float, derivative: bool) -> np.ndarray:
    act = get_activation(activation)
    tau, m = act.check_params(tau, m)
    q1, q2, c12 = _check_covariance(q1, q2, c12)
    shape = q1.shape
    q1, q2, c12 = q1.ravel(), q2.ravel(), c12.ravel()  # (N,)
    s1 = np.sqrt(q1)
    beta = c12 / s1
    sd = np.sqrt(np.maximum(q2 - beta * beta, 0.0))
    sd[np.abs(c12) == np.sqrt(q1 * q2)] = 0.0  # |rho| = 1 exactly: M(mu, 0) = phi(mu)
    fn = act.derivative if derivative else act.fn
    outer_kinks = [k / s1 for k in kinks(act.name, tau, m)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inner_kinks = [np.where(beta != 0, k / beta, np.nan) for k in kinks(act.name, tau, m)]
    B, S1 = beta[:, None, None], s1[:, None, None]  # (N, 1, 1)

    # The limit part: E over z of phi(s1 z) phi(beta z), piecewise polynomial x varphi.
    zmax = np.full_like(q1, Z_MAX)
    edges = _sorted_edges(outer_kinks + inner_kinks, -zmax, zmax)
    total = _integrate(lambda z: norm.pdf(z) * fn(S1 * z, tau, m) * fn(B * z, tau, m), edges)

    # One smooth correction per hinge, where sd > 0, on its window |t| <= T_MAX.
    live = sd > 0
    if np.any(live):
        b, s, d, o = beta[live], s1[live], sd[live], [k[live] for k in outer_kinks]
        Bl, Sl, Dl = b[:, None, None], s[:, None, None], d[:, None, None]  # (N', 1, 1)
        for c, sign, a in _hinges(act.name, tau, m):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                center = np.where(b != 0, a / (sign * b), np.nan)
                width = T_MAX * d / np.abs(b)
                lo = np.nan_to_num(np.maximum(center - width, -Z_MAX), nan=-Z_MAX)
                hi = np.nan_to_num(np.minimum(center + width, Z_MAX), nan=Z_MAX)
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            edges = _sorted_edges([center] + o, lo, hi)
            if derivative:
                corr = _integrate(
                    lambda z: norm.pdf(z) * fn(Sl * z, tau, m) * _h((sign * Bl * z - a) / Dl), edges
                )
                total[live] += c * sign * corr
            else:
                corr = _integrate(
                    lambda z: norm.pdf(z) * fn(Sl * z, tau, m) * _g((sign * Bl * z - a) / Dl), edges
                )
                total[live] += c * d * corr
    return total.reshape(shape)


def expected_product(q1, q2, c12, activation: str, tau: float, m: float = math.inf) -> np.ndarray:
    """E[phi(u) phi(v)] for (u, v) centred Gaussian with Var u = q1, Var v = q2, Cov = c12.

    The kernel of one layer of an infinite-width network (docs/theory.md sections 1.2 and 3.4);
    exact 1-D integral by piecewise Gauss-Legendre, see the module docstring.

    Args:
        q1, q2: the pre-activation variances, > 0; scalars or arrays (broadcast together).
        c12: the covariance, |c12| <= sqrt(q1 q2) (an excess up to 1e-10 relative is
            round-off and is clipped); broadcast with q1, q2.
        activation: registry name.  tau: threshold, >= 0.  m: clip, > 0 (inf if unclipped).

    Returns:
        An array of the broadcast shape of (q1, q2, c12), float64; absolute error about
        1e-13 x max(q1, q2) (and exact at |c12| = sqrt(q1 q2) up to round-off).

    Raises:
        ValueError: q1 or q2 not finite and > 0, |c12| > sqrt(q1 q2), or bad activation/tau/m.
    """
    return _product(q1, q2, c12, activation, tau, m, derivative=False)


def expected_derivative_product(q1, q2, c12, activation: str, tau: float, m: float = math.inf) -> np.ndarray:
    """E[phi'(u) phi'(v)]: the derivative of :func:`expected_product` in c12 (Price's theorem).

    Same arguments, shapes and errors as :func:`expected_product`; the result lies in [0, 1]
    and its value at c12 = q1 = q2 = q is E[phi'(sqrt(q) z)^2] = chi1(q) / sigma_w2.
    """
    return _product(q1, q2, c12, activation, tau, m, derivative=True)


def expected_product_quad(
    q1: float, q2: float, c12: float, activation: str, tau: float, m: float = math.inf,
    *, derivative: bool = False,
) -> float:
    """Scalar reference for :func:`expected_product` (or, with ``derivative``, the phi' version).

    Adaptive quadrature (scipy.integrate.quad) of the same 1-D integral with the closed-form
    inner M (or D) taken whole, no split; pieces end at the kinks of phi(sqrt(q1) z) and
    at the centres z_j of M's bends and +-2, +-8 of their widths sd / |beta| away
    (without these, quad misses a bend narrower than ~1e-3). Slow: for tests only.
    """
    act = get_activation(activation)
    tau, m = act.check_params(tau, m)
    q1, q2, c12 = (float(x) for x in _check_covariance(q1, q2, c12))
    s1 = math.sqrt(q1)
    beta = c12 / s1
    sd = 0.0 if abs(c12) == math.sqrt(q1 * q2) else math.sqrt(max(q2 - beta * beta, 0.0))
    hinges = _hinges(act.name, tau, m)

    def cdf(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def pdf(x: float) -> float:
        return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def outer(x: float) -> float:  # phi(x) or phi'(x) from the hinges, in plain floats
        if derivative:
            return sum(c * s for c, s, a in hinges if s * x > a)
        return sum(c * (s * x - a) for c, s, a in hinges if s * x > a)

    def inner(mu: float) -> float:
        if sd == 0:
            return outer(mu)
        if derivative:
            return sum(c * s * cdf((s * mu - a) / sd) for c, s, a in hinges)
        return sum(c * ((s * mu - a) * cdf((s * mu - a) / sd) + sd * pdf((s * mu - a) / sd)) for c, s, a in hinges)

    points = [k / s1 for k in kinks(act.name, tau, m)]
    if beta != 0:  # each bend of M, with a few points across its width sd / |beta|
        points += [a / (s * beta) + k * sd / abs(beta) for _, s, a in hinges for k in (-8, -2, 0, 2, 8)]
    edges = sorted({-Z_MAX, Z_MAX, *(p for p in points if abs(p) < Z_MAX)})
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        value, _ = integrate.quad(
            lambda z: pdf(z) * outer(s1 * z) * inner(beta * z), lo, hi,
            epsabs=1e-14, epsrel=1e-13, limit=400,
        )
        total += value
    return total


def _resolve_q_star(params: GPParams, q_star) -> float:
    if q_star is None:
        q_star = getattr(params, "q_star", None)
        if q_star is None:
            raise ValueError("q_star is required unless params is an EoCPoint (which carries its q_star)")
    return _check_q_star(q_star)


def _check_rho(rho) -> np.ndarray:
    rho = np.asarray(rho, dtype=float)
    if not np.all((rho >= -1) & (rho <= 1)):
        raise ValueError(f"rho (a correlation) must be in [-1, 1], got rho={rho!r}")
    return rho


def correlation_map(rho, params: GPParams, q_star: float | None = None) -> np.ndarray:
    """R(rho) = (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / q*: the correlation of layer l from layer l-1.

    Paper Section 2, docs/theory.md sections 1.2 and 3.4; u1, u2 ~ N(0, q*) with correlation rho.

    Args:
        rho: correlation of two inputs' pre-activations at layer l-1, in [-1, 1]; any shape.
        params: the map's parameters; an :class:`~sparse_eoc.gp.eoc.EoCPoint` supplies q*.
        q_star: the variance both pre-activations sit at, > 0; defaults to ``params.q_star``.
            Meant to be a fixed point of V: R(1) = V(q*)/q*, which is 1 only there.

    Returns:
        R(rho), the shape of ``rho``. On the EoC R(1) = 1 and R is nondecreasing.

    Raises:
        ValueError: rho outside [-1, 1], q_star missing (plain GPParams) or not > 0.
    """
    q_star = _resolve_q_star(params, q_star)
    rho = _check_rho(rho)
    e = expected_product(q_star, q_star, rho * q_star, params.activation, params.tau, params.m)
    return (params.sigma_w2 * e + params.sigma_b2) / q_star


def correlation_map_derivative(rho, params: GPParams, q_star: float | None = None) -> np.ndarray:
    """R'(rho) = sigma_w2 E[phi'(u1) phi'(u2)] >= 0; R'(1) = chi1(q*) (docs/theory.md section 1.2).

    Same arguments, shapes and errors as :func:`correlation_map`.
    """
    q_star = _resolve_q_star(params, q_star)
    rho = _check_rho(rho)
    e = expected_derivative_product(q_star, q_star, rho * q_star, params.activation, params.tau, params.m)
    return params.sigma_w2 * e
