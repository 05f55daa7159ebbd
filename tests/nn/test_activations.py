"""Torch activations vs their NumPy twins in the registry, for every registered entry."""

import math

import numpy as np
import pytest
import torch

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.nn import activations as tnn
from sparse_eoc.nn.activations import MODULES, make_activation

TAU = 0.7
M = 1.3
FUNCS = {"relu_tau": tnn.relu_tau, "st_tau": tnn.st_tau, "crelu": tnn.crelu, "cst": tnn.cst}


def params(name):
    """(tau, m) for a registered name: clipped ones get a finite m."""
    return (TAU, M) if get_activation(name).clipped else (TAU, math.inf)


def call(name, x, tau, m):
    """The torch function of ``name`` (same (x, tau, m) signature as the NumPy twin)."""
    return FUNCS[name](x, tau, m)


def points_away_from_kinks(tau, m, n=4000, margin=1e-3, seed=0):
    """Random points in [-4, 4] at least ``margin`` from every kink +-tau, +-(tau + m)."""
    x = np.random.default_rng(seed).uniform(-4.0, 4.0, n)
    kinks = np.array([tau, -tau, tau + m, -(tau + m)])
    kinks = kinks[np.isfinite(kinks)]
    return x[np.min(np.abs(x[:, None] - kinks[None, :]), axis=1) > margin]  # (n',)


def test_registry_is_covered():
    assert set(MODULES) == set(ACTIVATIONS) == set(FUNCS)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_function_and_module_match_numpy_twin(name, dtype):
    act = get_activation(name)
    tau, m = params(name)
    x = points_away_from_kinks(tau, m)
    expected = act.fn(x, tau, m)
    xt = torch.tensor(x, dtype=dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for y in (call(name, xt, tau, m), make_activation(name, tau, m)(xt)):
        assert y.dtype == dtype and y.shape == xt.shape
        np.testing.assert_allclose(y.double().numpy(), expected, rtol=0, atol=tol)
    # exact zeros are exact: the zero set is identical
    np.testing.assert_array_equal(call(name, xt, tau, m).numpy() == 0, expected == 0)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_gradient_matches_registry_derivative(name):
    act = get_activation(name)
    tau, m = params(name)
    x = points_away_from_kinks(tau, m)
    for f in (lambda t: call(name, t, tau, m), make_activation(name, tau, m)):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        f(xt).sum().backward()
        np.testing.assert_array_equal(xt.grad.numpy(), act.derivative(x, tau, m))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_gradient_at_kinks_is_registry_convention(name):
    """At the kinks themselves torch's gradient is the registry's (0 at x = tau and x = tau + m)."""
    act = get_activation(name)
    tau, m = params(name)
    x = np.array([tau, -tau, tau + m, -(tau + m)]) if math.isfinite(m) else np.array([tau, -tau])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    call(name, xt, tau, m).sum().backward()
    np.testing.assert_array_equal(xt.grad.numpy(), act.derivative(x, tau, m))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_forward_shifted_is_phi(name):
    tau, m = params(name)
    mod = make_activation(name, tau, m)
    x = torch.randn(64, 5, dtype=torch.float64)
    torch.testing.assert_close(mod.forward_shifted_(x - mod.bias_shift), mod(x), rtol=0, atol=1e-12)
    assert mod.bias_shift == (0.0 if get_activation(name).two_sided else tau)


@pytest.mark.parametrize("clipped, unclipped", [("crelu", "relu_tau"), ("cst", "st_tau")])
def test_m_inf_equals_unclipped(clipped, unclipped):
    x = torch.randn(1000, dtype=torch.float64) * 3
    torch.testing.assert_close(call(clipped, x, TAU, math.inf), call(unclipped, x, TAU, math.inf))
    torch.testing.assert_close(make_activation(clipped, TAU)(x), make_activation(unclipped, TAU)(x))


def test_relu_alias_is_plain_relu():
    x = torch.randn(100)
    mod = make_activation("relu")
    assert isinstance(mod, tnn.ReLUTau) and mod.tau == 0.0
    torch.testing.assert_close(mod(x), torch.relu(x))


def test_input_not_modified():
    x = torch.randn(100)
    x0 = x.clone()
    for name in ACTIVATIONS:
        for tau in (0.0, TAU):
            call(name, x, tau, M if get_activation(name).clipped else math.inf)
            make_activation(name, tau, M if get_activation(name).clipped else math.inf)(x)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("tau, m, arg", [(-0.1, M, "tau"), (math.nan, M, "tau"), (math.inf, M, "tau"),
                                         (TAU, 0.0, "m"), (TAU, -1.0, "m"), (TAU, math.nan, "m")])
def test_invalid_params_raise_naming_argument(name, tau, m, arg):
    if not get_activation(name).clipped and arg == "m":
        m = M if m == 0.0 else m  # unclipped ones reject any finite m too
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        make_activation(name, tau, m)
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        call(name, torch.zeros(3), tau, m)
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        MODULES[name](tau, m)


def test_unclipped_reject_finite_m_and_unknown_name():
    for name in ("relu_tau", "st_tau", "relu"):
        with pytest.raises(ValueError, match=r"\bm\b"):
            make_activation(name, 0.0, 1.0)
    for name in ("relu_tau", "st_tau"):
        with pytest.raises(ValueError, match=r"\bm\b"):
            FUNCS[name](torch.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="relu_tau, st_tau, crelu, cst"):
        make_activation("gelu")
    with pytest.raises(ValueError, match=r"\btau\b"):
        make_activation("relu", 0.5)


def test_extra_repr():
    assert repr(make_activation("crelu", 1.0, 0.5)) == "CReLU(tau=1, m=0.5)"
    assert repr(make_activation("st_tau", 0.25)) == "STTau(tau=0.25)"
