"""EoC initialisers: empirical moments within standard errors derived from the sample size."""

import math

import pytest
import torch
from torch import nn

from sparse_eoc.nn import SparseMLP, eoc_normal_, init_eoc_, input_weight_variance

N_SE = 5  # standard errors allowed


def assert_normal_moments(t, var):
    """Mean 0 and variance ``var`` within N_SE standard errors for n = t.numel() samples.

    std(mean) = sqrt(var / n); std(sample variance) = var sqrt(2 / (n - 1)) (Gaussian).
    """
    x = t.detach().double().flatten()
    n = x.numel()
    assert abs(x.mean().item()) < N_SE * math.sqrt(var / n)
    assert abs(x.var().item() - var) < N_SE * var * math.sqrt(2 / (n - 1))


def test_eoc_normal_linear():
    layer = nn.Linear(400, 20000)  # 8e6 weights, 2e4 biases
    out = eoc_normal_(layer, 2.5, 0.3, generator=torch.Generator().manual_seed(0))
    assert out is layer
    assert_normal_moments(layer.weight, 2.5 / 400)
    assert_normal_moments(layer.bias, 0.3)


def test_eoc_normal_tensor_and_conv_fan_in():
    w = torch.empty(64, 16, 3, 3)
    b = torch.empty(64)
    eoc_normal_(w, 1.7, 0.0, bias=b.fill_(5.0), generator=torch.Generator().manual_seed(1))
    assert_normal_moments(w, 1.7 / (16 * 9))  # fan_in = channels x kernel area
    assert torch.all(b == 0)  # sigma_b2 = 0: exactly zero
    conv = eoc_normal_(nn.Conv2d(16, 64, 3), 1.7, 0.1, generator=torch.Generator().manual_seed(2))
    assert_normal_moments(conv.weight, 1.7 / (16 * 9))


def test_generator_makes_it_repeatable():
    a, b = nn.Linear(30, 30), nn.Linear(30, 30)
    eoc_normal_(a, 2.0, 0.5, generator=torch.Generator().manual_seed(7))
    eoc_normal_(b, 2.0, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_init_eoc_layers():
    model = SparseMLP(500, 10, depth=3, width=1000, activation="crelu", tau=1.0, m=1.0)
    sw2, sb2, sw2_in = 8.5, 0.66, input_weight_variance(1.0, 0.66, 0.5)
    assert sw2_in == pytest.approx((1.0 - 0.66) / 0.5)
    init_eoc_(model, sw2, sb2, input_sigma_w2=sw2_in, generator=torch.Generator().manual_seed(3))
    assert_normal_moments(model.hidden[0].weight, sw2_in / 500)
    for layer in model.hidden[1:]:
        assert_normal_moments(layer.weight, sw2 / 1000)
    assert_normal_moments(torch.cat([layer.bias for layer in model.hidden]), sb2)
    assert_normal_moments(model.readout.weight, 1.0 / 1000)
    assert torch.all(model.readout.bias == 0)
    # no input_sigma_w2: the first layer uses sigma_w2
    init_eoc_(model, sw2, sb2, generator=torch.Generator().manual_seed(4))
    assert_normal_moments(model.hidden[0].weight, sw2 / 500)


def test_first_layer_variance_is_q_star():
    """With input_weight_variance, the first pre-activation has variance q* (Monte Carlo)."""
    q_star, sb2 = 1.3, 0.4
    x = 2.0 * torch.randn(256, 300, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    msi = x.square().mean().item()
    model = SparseMLP(300, 2, 1, 2000, "relu").double()
    init_eoc_(model, 2.0, sb2, input_sigma_w2=input_weight_variance(q_star, sb2, msi),
                  generator=torch.Generator().manual_seed(6))
    h = model.hidden_states(x)[0][0]  # (256, 2000)
    # per-input variance over 2000 units, then averaged; loose band for the shared inputs
    q1 = h.var(dim=1).mean().item()
    assert abs(q1 - q_star) < N_SE * q_star * math.sqrt(2 / 1999)


@pytest.mark.parametrize("sw2, sb2, arg", [(0.0, 0.1, "sigma_w2"), (-1.0, 0.1, "sigma_w2"),
                                           (math.nan, 0.1, "sigma_w2"), (1.0, -0.1, "sigma_b2"),
                                           (1.0, math.inf, "sigma_b2")])
def test_invalid_variances_raise(sw2, sb2, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        eoc_normal_(nn.Linear(3, 3), sw2, sb2)
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        init_eoc_(SparseMLP(3, 2, 2, 3, "relu"), sw2, sb2)


def test_invalid_input_and_readout_variances_raise():
    model = SparseMLP(3, 2, 2, 3, "relu")
    with pytest.raises(ValueError, match=r"\binput_sigma_w2\b"):
        init_eoc_(model, 2.0, 0.0, input_sigma_w2=0.0)
    with pytest.raises(ValueError, match=r"\breadout_sigma_w2\b"):
        init_eoc_(model, 2.0, 0.0, readout_sigma_w2=-1.0)


@pytest.mark.parametrize("q_star, sb2, msi, arg", [(1.0, 1.0, 1.0, "sigma_b2"), (1.0, 1.5, 1.0, "sigma_b2"),
                                                   (1.0, -0.1, 1.0, "sigma_b2"), (0.0, 0.0, 1.0, "q_star"),
                                                   (1.0, 0.5, 0.0, "mean_square_input"),
                                                   (1.0, 0.5, math.nan, "mean_square_input")])
def test_input_weight_variance_validation(q_star, sb2, msi, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        input_weight_variance(q_star, sb2, msi)
