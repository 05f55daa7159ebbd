"""The registry of sparsity-inducing activations (NumPy; never imports torch).

One name selects one activation everywhere: the torch module
(:mod:`sparse_eoc.nn.activations`), the closed-form Gaussian-process maps
(:mod:`sparse_eoc.gp.maps`) and the CLI's ``--activation`` option.

The four activations (paper Section 2; docs/theory.md section 2), for a threshold
``tau >= 0`` and a clip ``m > 0`` (``m = inf`` means unclipped)::

    relu_tau(x) = max(0, x - tau)                          shifted ReLU
    st_tau(x)   = sign(x) max(0, |x| - tau)                soft thresholding
    crelu(x)    = min(max(x - tau, 0), m)                  clipped shifted ReLU
    cst(x)      = sign(x) min(max(|x| - tau, 0), m)        clipped soft thresholding

``relu`` is an alias of ``relu_tau`` with ``tau = 0`` (sparsity 0.5 at any q).

Sparsity is the fraction of activation *outputs* that are exactly zero; clipping
does not change the zero set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "Activation",
    "ACTIVATIONS",
    "ALIASES",
    "RELU_SPARSITY",
    "get_activation",
    "canonical_name",
    "check_tau_m",
    "relu_tau",
    "st_tau",
    "crelu",
    "cst",
]


def check_tau_m(tau: float, m: float = math.inf) -> tuple[float, float]:
    """Validate a threshold and a clip; return them as floats.

    Raises:
        ValueError: if ``tau`` is not finite and >= 0, or ``m`` is not > 0
            (``m = inf`` is allowed and means unclipped).
    """
    tau, m = float(tau), float(m)
    if not (math.isfinite(tau) and tau >= 0.0):
        raise ValueError(f"tau must be a finite number >= 0, got tau={tau!r}")
    if math.isnan(m) or not m > 0.0:
        raise ValueError(f"m must be > 0 (m=inf means unclipped), got m={m!r}")
    return tau, m


def crelu(x: np.ndarray, tau: float = 0.0, m: float = math.inf) -> np.ndarray:
    """CReLU_{tau,m}(x) = min(max(x - tau, 0), m), elementwise; any shape."""
    tau, m = check_tau_m(tau, m)
    return np.minimum(np.maximum(np.asarray(x, dtype=float) - tau, 0.0), m)


def cst(x: np.ndarray, tau: float = 0.0, m: float = math.inf) -> np.ndarray:
    """CST_{tau,m}(x) = sign(x) min(max(|x| - tau, 0), m), elementwise; any shape."""
    x = np.asarray(x, dtype=float)
    return np.sign(x) * crelu(np.abs(x), tau, m)


def relu_tau(x: np.ndarray, tau: float = 0.0, m: float = math.inf) -> np.ndarray:
    """ReLU_tau(x) = max(0, x - tau); ``m`` must be inf (it is unclipped)."""
    return crelu(x, tau, _unclipped_m(m, "relu_tau"))


def st_tau(x: np.ndarray, tau: float = 0.0, m: float = math.inf) -> np.ndarray:
    """ST_tau(x) = sign(x) max(0, |x| - tau); ``m`` must be inf (it is unclipped)."""
    return cst(x, tau, _unclipped_m(m, "st_tau"))


def _unclipped_m(m: float, name: str) -> float:
    if float(m) != math.inf:
        raise ValueError(
            f"m must be inf for the unclipped activation {name!r}, got m={m!r}; "
            f"use {'crelu' if name == 'relu_tau' else 'cst'} for a clipped one"
        )
    return math.inf


def _derivative(two_sided: bool) -> Callable[..., np.ndarray]:
    def derivative(x: np.ndarray, tau: float = 0.0, m: float = math.inf) -> np.ndarray:
        tau, m = check_tau_m(tau, m)
        u = np.abs(np.asarray(x, dtype=float)) if two_sided else np.asarray(x, dtype=float)
        return ((u > tau) & (u < tau + m)).astype(float)

    return derivative


@dataclass(frozen=True)
class Activation:
    """One registered activation.

    Attributes:
        name: registry key (``relu_tau``, ``st_tau``, ``crelu``, ``cst``).
        two_sided: True for the soft-thresholding family (zero set ``|x| <= tau``);
            the Gaussian expectations are then ``k = 2`` times the one-sided ones.
        clipped: True when the activation takes a finite clip ``m``.
        fn: the NumPy function ``fn(x, tau, m)``.
        derivative: its a.e. derivative ``fn'(x, tau, m)`` (1 on the linear
            pieces, 0 on the zero set and the saturated set).
    """

    name: str
    two_sided: bool
    clipped: bool
    fn: Callable[..., np.ndarray]
    derivative: Callable[..., np.ndarray]

    @property
    def k(self) -> int:
        """Multiplicity of the one-sided Gaussian integrals: 2 if two-sided else 1."""
        return 2 if self.two_sided else 1

    def check_params(self, tau: float, m: float = math.inf) -> tuple[float, float]:
        """Validate (tau, m) for this activation; unclipped ones need ``m = inf``."""
        tau, m = check_tau_m(tau, m)
        if not self.clipped:
            _unclipped_m(m, self.name)
        return tau, m


ACTIVATIONS: dict[str, Activation] = {
    "relu_tau": Activation("relu_tau", False, False, relu_tau, _derivative(False)),
    "st_tau": Activation("st_tau", True, False, st_tau, _derivative(True)),
    "crelu": Activation("crelu", False, True, crelu, _derivative(False)),
    "cst": Activation("cst", True, True, cst, _derivative(True)),
}

#: Names that resolve to a registered activation with a fixed sparsity.
ALIASES: dict[str, str] = {"relu": "relu_tau"}
#: The sparsity of plain ReLU (``relu`` = ``relu_tau`` with tau = 0) at any q: half its inputs are negative.
RELU_SPARSITY = 0.5


def canonical_name(name: str) -> str:
    """Resolve an alias (``relu`` -> ``relu_tau``); raise ValueError for unknown names."""
    key = ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        valid = ", ".join([*ACTIVATIONS, *ALIASES])
        raise ValueError(f"activation must be one of {valid}; got {name!r}")
    return key


def get_activation(name: str) -> Activation:
    """Look up an activation by registry name or alias.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    return ACTIVATIONS[canonical_name(name)]
