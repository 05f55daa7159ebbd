"""Residual networks at infinite width: the stream's variance and correlation, and per-site thresholds.

docs/theory.md section 8; the branch scale alpha as in Hayou et al., "Stable ResNet", AISTATS 2021.

**Depth** counts residual blocks. A residual network of depth L keeps one width (or channel
count) throughout::

    h^1     = W^0 x + b^0                      the stem: a plain linear layer (or conv), no activation
    h^{l+1} = h^l + alpha B_l(h^l)             block l = 1..L
    logits  = readout(phi(h^{L+1}))            the head site, then the readout

with the branch B_l(h) = W^l phi(h) + b^l for ``resmlp`` (one activation site per block) and
B_l(h) = W^{l,2} phi(W^{l,1} phi(h) + b^{l,1}) + b^{l,2} for ``rescnn`` (two k x k convolutions,
two sites). Example, ``resmlp`` of depth 2: the sites are phi(h^1), phi(h^2) (in blocks 1, 2) and
phi(h^3) (the head), three in all; ``rescnn`` of depth 2 has 2 x 2 + 1 = 5.

An **activation site** is one application of phi; sites are numbered in forward order, the head
site last. Weights are N(0, sigma_w2 / fan_in) and biases N(0, sigma_b2), independent of h^l, so
at infinite width the branch's output is uncorrelated with the stream and

    q^{l+1} = q^l + alpha^2 V_l(q^l)                          (resmlp)
    q^{l+1} = q^l + alpha^2 V_{l,2}(V_{l,1}(q^l))             (rescnn: the inner site sits at V_{l,1}(q^l))

with V the variance map of docs/theory.md section 1.2 at each site's (tau, m, sigma_w2, sigma_b2).
The thresholds (``THRESHOLDS``):

- ``per-layer``: every site takes the EoC point solved at its own predicted variance (q* = q^l):
  V_l(q^l) = q^l, chi_1 = 1 and sparsity s at every site, so q^{l+1} = (1 + alpha^2) q^l. By the
  scale law (docs/theory.md section 4.5) tau_l, m_l scale with sqrt(q^l / q^1), sigma_b2 with
  q^l / q^1, and sigma_w2 is the same at every site;
- ``fixed``: every site takes the EoC point at q^1 = q*; q^l grows with depth and the sparsity
  at site l, s_l = Phi(tau / sqrt(q^l)) (one-sided), drifts down.

Everything here is NumPy/SciPy in float64; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sparse_eoc.checks import check_int
from sparse_eoc.gp.correlation import _check_rho, expected_product
from sparse_eoc.gp.eoc import EoCPoint, solve_eoc, sparsity_from_tau
from sparse_eoc.gp.maps import Q_STAR_RANGE, variance_map

__all__ = [
    "RESIDUAL_SCALE_C",
    "THRESHOLDS",
    "ResidualInit",
    "default_residual_scale",
    "residual_correlation",
    "residual_covariance",
    "residual_init",
    "residual_variances",
]

#: How the thresholds of a residual network are chosen (module docstring): solved at each
#: site's predicted variance, or the EoC point at q* everywhere.
THRESHOLDS = ("per-layer", "fixed")


#: The default branch scale is alpha = RESIDUAL_SCALE_C / sqrt(L) (docs/theory.md section 8.8).
RESIDUAL_SCALE_C = 2.0


def default_residual_scale(depth: int) -> float:
    """alpha = 2 / sqrt(L): the c / sqrt(L) scaling of Hayou et al. (2021), so that (1 + alpha^2)^L -> e^{c^2}
    and q^{L+1} / q^1 stays below e^4 ~ 55 at any depth. c = 2 rather than 1: trained on MNIST at
    depth 100, both ReLU and CReLU at s = 0.85 reach higher accuracy (docs/theory.md section 8.8).

    Raises:
        ValueError: depth not an integer >= 1.
    """
    return RESIDUAL_SCALE_C / math.sqrt(check_int("depth", depth))


def _check_scale(residual_scale, depth: int) -> float:
    if residual_scale is None:
        return default_residual_scale(depth)
    value = residual_scale
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"residual_scale must be a finite number > 0 (or None: 2 / sqrt(depth)), "
                         f"got residual_scale={residual_scale!r}")
    return float(value)


@dataclass(frozen=True)
class ResidualInit:
    """The initialisation of a residual network by the infinite-width theory (docs/theory.md section 8).

    Attributes:
        base: the EoC point at the stem's output, q^1 = ``base.q_star``; the stem's bias
            variance is ``base.sigma_b2``.
        depth: residual blocks L >= 1.
        convs_per_block: activation sites (weight layers) per branch: 1 (``resmlp``) or 2 (``rescnn``).
        residual_scale: the branch scale alpha > 0.
        thresholds: ``per-layer`` or ``fixed`` (``THRESHOLDS``).
        sites: one point per activation site, forward order, ``convs_per_block * depth + 1`` in
            all (the head site last): its (tau, m) are the site's activation, its
            (sigma_w2, sigma_b2) those of the weight layer that reads the site's output (the
            head site's are not used: the readout has its own initialisation). Per-layer: the
            EoC point solved at the site's predicted variance; fixed: ``base`` everywhere.
        site_q: (n_sites,) the predicted variance of each site's pre-activation.
        q: (L + 1,) the predicted stream variances q^1 .. q^{L+1}.
    """

    base: EoCPoint
    depth: int
    convs_per_block: int
    residual_scale: float
    thresholds: str
    sites: tuple[EoCPoint, ...]
    site_q: tuple[float, ...]
    q: tuple[float, ...]

    @property
    def n_sites(self) -> int:
        """Activation sites: convs_per_block x depth + 1 (the head site)."""
        return len(self.sites)

    @property
    def site_sparsity(self) -> tuple[float, ...]:
        """The predicted fraction of zeros at each site, s_i = P(phi(h) = 0) for h ~ N(0, site_q[i])."""
        return tuple(sparsity_from_tau(p.activation, p.tau, q) for p, q in zip(self.sites, self.site_q))

    @property
    def site_taus(self) -> tuple[float, ...]:
        return tuple(p.tau for p in self.sites)

    @property
    def site_ms(self) -> tuple[float, ...]:
        """The clips (inf when unclipped)."""
        return tuple(p.m for p in self.sites)

    def to_dict(self) -> dict:
        """What ``config.json["eoc"]["residual"]`` holds (strict JSON: m = inf as None)."""
        return {
            "residual_scale": self.residual_scale, "thresholds": self.thresholds,
            "convs_per_block": self.convs_per_block, "q": list(self.q),
            "sites": [
                {"q": q, "tau": p.tau, "m": p.m if math.isfinite(p.m) else None, "sigma_w2": p.sigma_w2,
                 "sigma_b2": p.sigma_b2, "sparsity": s}
                for p, q, s in zip(self.sites, self.site_q, self.site_sparsity)
            ],
        }


def residual_init(
    point: EoCPoint,
    depth: int,
    *,
    residual_scale: float | None = None,
    thresholds: str = "per-layer",
    convs_per_block: int = 1,
) -> ResidualInit:
    """Choose every site's (tau, m, sigma_w2, sigma_b2) of a residual network (docs/theory.md section 8.3).

    The sites are visited in forward order with the predicted variance in hand: block l's first
    site sits at q^l, its second (``convs_per_block = 2``) at the first's V(q^l), the head site at
    q^{L+1}. ``per-layer`` solves the EoC point there (``solve_eoc`` with q* = that variance,
    the same sparsity, and m = point.m sqrt(q / point.q_star), which keeps the slope V'(q*) of
    ``point``); ``fixed`` uses ``point`` at every site.

    Args:
        point: the EoC point at q^1 = point.q_star (from :func:`~sparse_eoc.gp.eoc.solve_eoc`).
        depth: residual blocks L, an integer >= 1.
        residual_scale: alpha > 0, finite; None means 2 / sqrt(depth) (:func:`default_residual_scale`).
        thresholds: ``per-layer`` or ``fixed``.
        convs_per_block: 1 (``resmlp``) or 2 (``rescnn``).

    Returns:
        A :class:`ResidualInit`.

    Raises:
        ValueError: a bad depth, residual_scale, thresholds or convs_per_block (naming it), or a
            residual_scale so large that q^l leaves [1e-100, 1e100] (``Q_STAR_RANGE``).
    """
    depth = check_int("depth", depth)
    alpha = _check_scale(residual_scale, depth)
    if thresholds not in THRESHOLDS:
        raise ValueError(f"thresholds must be one of {', '.join(THRESHOLDS)}, got thresholds={thresholds!r}")
    if convs_per_block not in (1, 2) or isinstance(convs_per_block, bool):
        raise ValueError(f"convs_per_block must be 1 or 2, got convs_per_block={convs_per_block!r}")
    if not isinstance(point, EoCPoint):
        kind = type(point).__name__
        raise ValueError(f"point must be an EoCPoint (from solve_eoc), got a {kind}")  # noqa: TRY004

    def site_point(q: float) -> EoCPoint:
        if thresholds == "fixed":
            return point
        if not Q_STAR_RANGE[0] <= q <= Q_STAR_RANGE[1]:
            raise ValueError(f"residual_scale={alpha!r} over {depth} blocks takes the predicted variance to "
                             f"{q:.3g}, outside [{Q_STAR_RANGE[0]:g}, {Q_STAR_RANGE[1]:g}]; use a smaller "
                             "residual_scale")
        m = point.m * math.sqrt(q / point.q_star) if math.isfinite(point.m) else None
        return solve_eoc(point.activation, point.sparsity, q, m=m)

    sites: list[EoCPoint] = []
    site_q: list[float] = []
    q = [float(point.q_star)]
    for _ in range(depth):
        x = q[-1]
        for _ in range(convs_per_block):
            p = site_point(x)
            sites.append(p)
            site_q.append(x)
            x = float(variance_map(x, p))  # the next site's (or the branch output's) variance
        q.append(q[-1] + alpha**2 * x)
    sites.append(site_point(q[-1]))
    site_q.append(q[-1])
    if not all(math.isfinite(v) for v in q):
        raise ValueError(f"residual_scale={alpha!r} over {depth} blocks overflows the predicted variance; "
                         "use a smaller residual_scale")
    return ResidualInit(base=point, depth=depth, convs_per_block=convs_per_block, residual_scale=alpha,
                        thresholds=thresholds, sites=tuple(sites), site_q=tuple(site_q), q=tuple(q))


def residual_variances(q1, init: ResidualInit) -> tuple[np.ndarray, np.ndarray]:
    """The variance recursion of docs/theory.md section 8.2 from any stem variance, with the sites' parameters fixed.

    Args:
        q1: the stem's output variance q^1, finite and > 0; scalar or array of any shape
            (e.g. one per input, whose mean squares differ).
        init: the network's sites (:func:`residual_init`), built for q^1 = init.base.q_star;
            ``residual_variances(init.base.q_star, init)`` gives back ``init.site_q`` and ``init.q``.

    Returns:
        (site_q, q): arrays of shapes ``(n_sites, *np.shape(q1))`` and ``(depth + 1, *np.shape(q1))``.
        A variance that overflows float64 is inf from there on (nothing is raised).

    Raises:
        ValueError: q1 not finite and > 0.
    """
    q1 = np.asarray(q1, dtype=float)
    if not np.all(np.isfinite(q1) & (q1 > 0)):
        raise ValueError(f"q1 (the stem's output variance) must be finite and > 0, got q1={q1!r}")
    a2 = init.residual_scale**2
    site_q = np.empty((init.n_sites, *q1.shape))  # (n_sites, *q1.shape)
    q = np.empty((init.depth + 1, *q1.shape))  # (L + 1, *q1.shape)
    q[0] = q1
    i = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for block in range(init.depth):
            x = q[block]
            for _ in range(init.convs_per_block):
                site_q[i] = x
                x = _map_finite(x, init.sites[i])
                i += 1
            q[block + 1] = q[block] + a2 * x
    site_q[i] = q[init.depth]
    return site_q, q


def _map_finite(q: np.ndarray, params) -> np.ndarray:
    """V(q) where q is finite, inf elsewhere (an overflowed trajectory stays overflowed)."""
    out = np.full(q.shape, np.inf)
    live = np.isfinite(q)
    if np.any(live):
        v = variance_map(q[live], params)
        out[live] = np.where(np.isfinite(v), v, np.inf)
    return out


def _site_kernel(q1, q2, c12, params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One weight layer after one site: (Var, Var, Cov) of W phi(u) + b for (u, v) ~ N(0, [[q1, c12], [c12, q2]])."""
    e = expected_product(q1, q2, c12, params.activation, params.tau, params.m)  # E[phi(u) phi(v)]
    return variance_map(q1, params), variance_map(q2, params), params.sigma_w2 * e + params.sigma_b2


def residual_covariance(q1, q2, c12, init: ResidualInit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The covariance recursion of two inputs through the residual stream (docs/theory.md section 8.5).

    For two inputs whose stream values have variances q_a^l, q_b^l and covariance c^l, block l
    adds alpha^2 times the branch's kernel (weights and biases are shared by the two inputs):

        c^{l+1} = c^l + alpha^2 (sigma_w2 E[phi(u) phi(v)] + sigma_b2),  (u, v) ~ N(0, [[q_a^l, c^l], [c^l, q_b^l]])

    (two sites per branch: the inner pair is mapped the same way first). With c = q_a = q_b this
    is the variance recursion of :func:`residual_variances`.

    Args:
        q1, q2: the stem's output variances of the two inputs, finite and > 0.
        c12: their covariance, |c12| <= sqrt(q1 q2); all three broadcast together.
        init: the network's sites (:func:`residual_init`).

    Returns:
        (q_a, q_b, c): three arrays of shape ``(depth + 1, *broadcast shape)``, the stream values
        at h^1 .. h^{L+1}.

    Raises:
        ValueError: q1 or q2 not finite and > 0, or |c12| > sqrt(q1 q2).
    """
    q1, q2, c12 = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (q1, q2, c12)))
    for name, v in (("q1", q1), ("q2", q2)):
        if not np.all(np.isfinite(v) & (v > 0)):
            raise ValueError(f"{name} (a variance) must be finite and > 0, got {name}={v!r}")
    if not np.all(np.isfinite(c12) & (np.abs(c12) <= np.sqrt(q1 * q2) * (1 + 1e-10))):
        raise ValueError(f"c12 (the covariance) must satisfy |c12| <= sqrt(q1 q2), got c12={c12!r}")
    a2 = init.residual_scale**2
    out = np.empty((3, init.depth + 1, *q1.shape))  # (q_a, q_b, c) x (L + 1, *shape)
    out[:, 0] = q1, q2, c12
    i = 0
    for block in range(init.depth):
        branch = tuple(out[:, block])
        for _ in range(init.convs_per_block):
            branch = _site_kernel(*branch, init.sites[i])
            i += 1
        out[:, block + 1] = out[:, block] + a2 * np.stack(branch)
    return out[0], out[1], out[2]


def residual_correlation(rho, init: ResidualInit) -> np.ndarray:
    """The stream correlation rho^l of two inputs that both start at q^1 = init.base.q_star.

    Per-layer thresholds keep both at q^l and make every site's correlation map the base point's
    R (the scale law), so rho^{l+1} = (rho^l + alpha^2 R(rho^l)) / (1 + alpha^2) (resmlp;
    docs/theory.md section 8.5); this function evaluates the general recursion of
    :func:`residual_covariance`.

    Args:
        rho: the correlation of the two inputs' stem outputs, in [-1, 1]; any shape.
        init: the network's sites.

    Returns:
        An array of shape ``(depth + 1, *np.shape(rho))``: rho^1 = rho, ..., rho^{L+1}.

    Raises:
        ValueError: rho outside [-1, 1].
    """
    rho = _check_rho(rho)
    q1 = init.base.q_star
    qa, qb, c = residual_covariance(q1, q1, rho * q1, init)
    return np.clip(c / np.sqrt(qa * qb), -1.0, 1.0)
