"""The variance and correlation maps iterated through depth (NumPy/SciPy, float64).

Depth counts layer maps: ``q[l]`` is the pre-activation variance after l
applications of V, so ``q[0] = q0`` is the input variance and a network with L
hidden layers is described by ``q[0..L]`` (docs/theory.md section 1.3). Likewise
``rho[l]`` is the correlation between the pre-activations of two inputs after l
applications of R, both inputs sitting at the fixed point q*.

On the EoC chi1 = R'(1) = 1, so rho[l] -> 1 only polynomially in l (for the kinked
activations here 1 - rho[l] ~ C / l^2), not exponentially as in the ordered phase.
"""

from __future__ import annotations


import numpy as np

from sparse_eoc.checks import check_int

from sparse_eoc.gp.correlation import _check_rho, _resolve_q_star, correlation_map
from sparse_eoc.gp.maps import GPParams, variance_map

__all__ = ["iterate_variance", "iterate_correlation", "depth_to_correlate"]

#: V(q*) = q* must hold to this relative accuracy for the correlation iteration.
FIXED_POINT_RTOL = 1e-8


def _check_depth(depth, name: str = "depth") -> int:
    return check_int(name, depth, minimum=0)


def iterate_variance(q0, params: GPParams, depth: int) -> np.ndarray:
    """q[l] = V(q[l-1]) for l = 1..depth, from q[0] = q0 (docs/theory.md sections 1.3 and 4).

    Args:
        q0: the input pre-activation variance, finite and > 0; scalar or array of any shape.
        params: the map's parameters (an :class:`~sparse_eoc.gp.eoc.EoCPoint` works).
        depth: the number of layer maps applied, an integer >= 0.

    Returns:
        An array of shape ``(depth + 1, *np.shape(q0))``: ``q[0] = q0``, ..., ``q[depth]``.
        A trajectory that overflows float64 (e.g. ReLU_tau above q*, docs/theory.md section 4.1) is
        ``inf`` from the first overflowing layer on; nothing is raised or warned.

    Raises:
        ValueError: q0 not finite and > 0, or depth not an integer >= 0.
    """
    depth = _check_depth(depth)
    q0 = np.asarray(q0, dtype=float)
    if not np.all(np.isfinite(q0) & (q0 > 0)):
        raise ValueError(f"q0 (the input variance) must be finite and > 0, got q0={q0!r}")
    out = np.full((depth + 1, *q0.shape), np.inf)  # (L+1, *q0.shape)
    out[0] = q0
    for layer in range(1, depth + 1):
        prev = out[layer - 1, ...]
        live = np.isfinite(prev)
        if not np.any(live):
            break
        with np.errstate(over="ignore", invalid="ignore"):
            nxt = variance_map(prev[live], params)
        out[layer, ...][live] = np.where(np.isfinite(nxt), nxt, np.inf)
    return out


def _check_fixed_point(params: GPParams, q_star: float) -> None:
    v = float(variance_map(q_star, params))
    if not abs(v - q_star) <= FIXED_POINT_RTOL * q_star:
        raise ValueError(
            f"q_star={q_star!r} is not a fixed point of V for these params (V(q_star)={v!r}); "
            "the correlation map describes inputs at a fixed point: use an EoCPoint or a q "
            "from fixed_points(params)"
        )


def iterate_correlation(rho0, params: GPParams, q_star: float | None, depth: int) -> np.ndarray:
    """rho[l] = R(rho[l-1]) for l = 1..depth, from rho[0] = rho0, at the fixed point q*.

    Args:
        rho0: the input correlation, in [-1, 1]; scalar or array of any shape.
        params: the map's parameters; an :class:`~sparse_eoc.gp.eoc.EoCPoint` supplies q*.
        q_star: a fixed point of V (V(q*) = q* to 1e-8 relative); None takes ``params.q_star``.
        depth: the number of layer maps applied, an integer >= 0.

    Returns:
        An array of shape ``(depth + 1, *np.shape(rho0))``.

    Raises:
        ValueError: rho0 outside [-1, 1], depth not an integer >= 0, q_star missing,
            not > 0 or not a fixed point of V.
    """
    depth = _check_depth(depth)
    q_star = _resolve_q_star(params, q_star)
    _check_fixed_point(params, q_star)
    rho0 = _check_rho(rho0)
    out = np.empty((depth + 1, *rho0.shape))  # (L+1, *rho0.shape)
    out[0] = rho0
    for layer in range(1, depth + 1):
        # R maps [-1, 1] into itself at a fixed point; the clip only removes round-off above 1.
        out[layer] = np.clip(correlation_map(out[layer - 1], params, q_star), -1.0, 1.0)
    return out


def depth_to_correlate(
    rho0: float, params: GPParams, q_star: float | None = None, *, tol: float = 1e-3, max_depth: int = 10_000
) -> int | None:
    """The first depth l with |1 - rho[l]| < tol: how deep two inputs become indistinguishable.

    Args:
        rho0: the input correlation, a scalar in [-1, 1].
        params, q_star: as in :func:`iterate_correlation`.
        tol: the closeness to 1, in (0, 1).
        max_depth: the last depth tried, an integer >= 0.

    Returns:
        l in 0..max_depth (0 when rho0 already is within tol), or None if rho[l] stays
        at least tol away from 1 up to max_depth (e.g. in the chaotic phase, where rho[l]
        tends to a fixed correlation c* < 1).

    Raises:
        ValueError: as :func:`iterate_correlation`, or tol outside (0, 1).
    """
    max_depth = _check_depth(max_depth, "max_depth")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got tol={tol!r}")
    q_star = _resolve_q_star(params, q_star)
    _check_fixed_point(params, q_star)
    rho = float(_check_rho(rho0))
    for layer in range(max_depth + 1):
        if abs(1.0 - rho) < tol:
            return layer
        rho = min(float(correlation_map(rho, params, q_star)), 1.0)
    return None
