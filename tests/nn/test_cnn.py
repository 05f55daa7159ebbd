"""SparseCNN: shapes, the fast forward against the plain one, metering, circular padding."""

import math

import pytest
import torch

from sparse_eoc.gp import solve_eoc
from sparse_eoc.nn import SparsityMeter, init_eoc_
from sparse_eoc.nn.cnn import SparseCNN

CASES = [("relu", None, {}), ("relu_tau", 0.7, {}), ("st_tau", 0.7, {}), ("crelu", 0.8, {"slope": 0.6}),
         ("cst", 0.8, {"slope": 0.6})]


def make_cnn(name, s, kw, padding_mode="zeros", depth=4, seed=0):
    p = solve_eoc(name, s, **kw)
    model = SparseCNN(3, 10, depth, 16, name, p.tau, p.m, kernel_size=3, padding_mode=padding_mode)
    init_eoc_(model, p.sigma_w2, p.sigma_b2, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
@pytest.mark.parametrize("name,s,kw", CASES)
def test_fast_forward_equals_plain_forward(name, s, kw, padding_mode):
    model = make_cnn(name, s, kw, padding_mode)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    states = model.hidden_states(x)
    assert len(states) == model.depth == 4
    assert all(h.shape == (5, 16, 8, 8) for h, _ in states)
    plain = model.readout(states[-1][1].mean(dim=(2, 3)))  # (5, 10)
    torch.testing.assert_close(model(x), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [8, 48])  # 48: 3 x 16 x 48 x 48 > 2^16 outputs, the float-sum count
def test_meter_counts_every_position_and_channel(size):
    model = make_cnn("crelu", 0.8, {"slope": 0.6})
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    meter = SparsityMeter()
    with meter.attach(model):
        model(x).sum().backward()  # training forward
        with torch.no_grad():
            model(x[:2])
    states = model.hidden_states(x)
    states2 = model.hidden_states(x[:2])
    expected = [((a == 0).sum() + (b == 0).sum()).item() / (a.numel() + b.numel())
                for (_, a), (_, b) in zip(states, states2)]
    assert meter.per_layer() == pytest.approx(expected, abs=1e-12)
    assert meter.num_examples == 5


def test_circular_padding_is_translation_equivariant():
    model = make_cnn("cst", 0.8, {"slope": 0.6}, padding_mode="circular").double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shifted = torch.roll(x, shifts=(2, -3), dims=(2, 3))
    h = model.hidden_states(x)[-1][0]
    h_shifted = model.hidden_states(shifted)[-1][0]
    torch.testing.assert_close(torch.roll(h, shifts=(2, -3), dims=(2, 3)), h_shifted)
    torch.testing.assert_close(model(x), model(shifted))  # global average pooling: invariant


def test_zero_padding_is_not_translation_equivariant():
    model = make_cnn("cst", 0.8, {"slope": 0.6}, padding_mode="zeros").double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert not torch.allclose(model(x), model(torch.roll(x, shifts=(2, -3), dims=(2, 3))))


def test_backward_reaches_every_layer():
    model = make_cnn("crelu", 0.7, {"slope": 0.9})
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in model.hidden)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=2), "kernel_size must be odd"),
        (dict(padding_mode="reflect"), "padding_mode must be one of zeros, circular"),
        (dict(depth=0), "depth must be an integer >= 1"),
        (dict(channels=-3), "channels must be an integer >= 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    base = dict(in_channels=3, num_classes=10, depth=2, channels=8, activation="crelu", tau=0.5, m=1.0)
    with pytest.raises(ValueError, match=match):
        SparseCNN(**{**base, **kwargs})


def test_unclipped_m_must_be_inf():
    with pytest.raises(ValueError, match="m must be inf"):
        SparseCNN(3, 10, 2, 8, "relu_tau", 0.5, 1.0)
    assert math.isinf(SparseCNN(3, 10, 2, 8, "relu_tau", 0.5).act.m)
