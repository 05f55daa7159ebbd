"""SparseMLP: shapes, depth semantics, bias folding vs a naive NumPy forward, dtypes."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.nn import SparseMLP, init_eoc_

# (tau, m, sigma_w2, sigma_b2) near the EoC for each entry (docs/theory.md section 4.7).
SETTINGS = {
    "relu_tau": (0.8416, math.inf, 5.0, 0.4698),
    "st_tau": (1.4395, math.inf, 6.8, 0.6582),
    "crelu": (1.0364, 0.8095, 8.5069, 0.6605),
    "cst": (1.4395, 1.0016, 7.3877, 0.6989),
}


def make(name, depth=4, width=32, in_features=20, num_classes=5, seed=0, dtype=torch.float64):
    tau, m, sw2, sb2 = SETTINGS[name]
    model = SparseMLP(in_features, num_classes, depth, width, name, tau, m)
    init_eoc_(model, sw2, sb2, generator=torch.Generator().manual_seed(seed))
    return model.to(dtype)


def naive_forward(model, x, name):
    """x W^T + b then the registry's NumPy phi, layer by layer; returns logits and states."""
    tau, m = SETTINGS[name][:2]
    fn = get_activation(name).fn
    a = x.detach().double().numpy()
    states = []
    for layer in model.hidden:
        h = a @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        a = fn(h, tau, m)
        states.append((h, a))
    r = model.readout
    return a @ r.weight.detach().double().numpy().T + r.bias.detach().double().numpy(), states


def test_depth_semantics_and_shapes():
    model = SparseMLP(784, 10, depth=3, width=300, activation="crelu", tau=1.0, m=1.0)
    linears = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    assert len(linears) == 3 + 1 and model.depth == 3 and model.width == 300
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 300), (300, 300), (300, 300), (300, 10)]
    assert model.readout is linears[-1]
    assert model(torch.randn(7, 784)).shape == (7, 10)
    assert model(torch.randn(7, 1, 28, 28)).shape == (7, 10)  # (B, 1, 28, 28) flattened
    states = model.hidden_states(torch.randn(7, 784))
    assert len(states) == 3 and all(h.shape == a.shape == (7, 300) for h, a in states)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_number_of_linear_layers_is_depth_plus_one(depth):
    model = SparseMLP(6, 3, depth, 8, "relu")
    assert sum(isinstance(mod, nn.Linear) for mod in model.modules()) == depth + 1


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_folded_forward_matches_naive_reference(name):
    model = make(name)
    x = torch.randn(64, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logits, states = naive_forward(model, x, name)
    np.testing.assert_allclose(model(x).detach().numpy(), logits, rtol=0, atol=1e-6)
    for (h, a), (h_ref, a_ref) in zip(model.hidden_states(x), states):
        np.testing.assert_allclose(h.detach().numpy(), h_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.detach().numpy(), a_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_float32_forward_matches_float64(name):
    # (gradients are not compared: a unit within rounding of a kink may switch piece)
    model64 = make(name)
    model32 = make(name, dtype=torch.float32)
    x = torch.randn(64, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model32(x.float()).double(), model64(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_bias_holds_paper_b_and_grads_match_unfolded(name):
    """Folding changes nothing observable: gradients equal those of the plain h = xW^T + b path."""
    model = make(name)
    x = torch.randn(32, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model(x).sum().backward()
    folded = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.readout(model.hidden_states(x)[-1][1]).sum().backward()
    for g, p in zip(folded, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-10)


def test_double_and_device_agnostic():
    model = make("crelu", dtype=torch.float32).double()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    x = torch.randn(3, 20, dtype=torch.float64)
    assert model(x).dtype == torch.float64
    assert all(h.dtype == torch.float64 for h, _ in model.hidden_states(x))
    model.to("meta")  # no hardcoded device: the forward runs on any device
    assert model(torch.empty(3, 20, dtype=torch.float64, device="meta")).device.type == "meta"


@pytest.mark.parametrize("kwargs, arg", [(dict(depth=0), "depth"), (dict(width=0), "width"),
                                         (dict(in_features=-1), "in_features"),
                                         (dict(num_classes=0), "num_classes"), (dict(depth=2.5), "depth"),
                                         (dict(tau=-1.0), "tau"), (dict(m=0.0), "m")])
def test_invalid_arguments_raise(kwargs, arg):
    full = dict(in_features=4, num_classes=2, depth=2, width=3, activation="crelu", tau=0.5, m=1.0)
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        SparseMLP(**{**full, **kwargs})


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="crelu"):
        SparseMLP(4, 2, 2, 3, "tanh")
