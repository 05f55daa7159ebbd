"""SparsityMeter: exact zero counts, no extra pass, per layer and overall."""

import math

import pytest
import torch

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.nn import SparseMLP, SparsityMeter, init_eoc_


def test_hand_checkable_example():
    """depth 2, width 3, identity weights: zeros can be read off the inputs."""
    model = SparseMLP(3, 2, depth=2, width=3, activation="crelu", tau=1.0, m=2.0).double()
    with torch.no_grad():
        for layer in model.hidden:
            layer.weight.copy_(torch.eye(3))
            layer.bias.fill_(2.0)  # h = x + 2, phi(h) = clip(x + 1, 0, 2)
    x = torch.tensor([[-3.0, -1.0, 0.5],   # layer 1: h = [-1, 1, 2.5] -> [0, 0, 1.5]; layer 2: h = [2, 2, 3.5] -> [1, 1, 2]
                      [-0.5, 4.0, -1.5]],  # layer 1: h = [1.5, 6, 0.5] -> [0.5, 2, 0];  layer 2: h = [2.5, 4, 2] -> [1.5, 2, 1]
                     dtype=torch.float64)
    meter = SparsityMeter()
    with meter.attach(model):
        model(x)
    assert model.meter is None  # detached again
    assert meter.zeros_per_layer() == [3, 0]
    assert meter.per_layer() == [3 / 6, 0.0]
    assert meter.overall() == 3 / 12
    assert meter.num_examples == 2 and meter.num_batches == 1
    model.meter = meter
    model(x[:1])  # one more example: 2 zeros in layer 1, 0 in layer 2
    assert meter.zeros_per_layer() == [5, 0] and meter.num_examples == 3
    assert meter.overall() == 5 / 18
    meter.reset()
    assert meter.per_layer() == [] and meter.num_examples == 0
    with pytest.raises(ValueError, match="empty"):
        meter.overall()


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_matches_naive_count_on_random_mlp(name):
    tau, m = (0.6, 0.9) if get_activation(name).clipped else (0.6, math.inf)
    model = SparseMLP(20, 4, depth=5, width=50, activation=name, tau=tau, m=m)
    init_eoc_(model, 3.0, 0.2, generator=torch.Generator().manual_seed(0))
    meter = SparsityMeter()
    model.meter = meter
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(b, 20, generator=gen) for b in (16, 7, 33)]
    zeros = torch.zeros(5, dtype=torch.int64)
    for x in batches:
        model(x).sum().backward()  # metering during training
        with torch.no_grad():
            zeros += torch.stack([(a == 0).sum() for _, a in model.hidden_states(x)])
    n = 50 * sum(len(x) for x in batches)
    assert meter.zeros_per_layer() == zeros.tolist()
    assert meter.per_layer() == pytest.approx([z / n for z in zeros.tolist()], abs=1e-12)
    assert meter.overall() == pytest.approx(zeros.sum().item() / (5 * n), abs=1e-12)
    assert 0 < meter.overall() < 1


def test_observe_and_layer_count_mismatch():
    meter = SparsityMeter()
    meter.observe([torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.ones(2, 3)])
    assert meter.per_layer() == [0.75, 0.0] and meter.overall() == 3 / 10
    with pytest.raises(ValueError, match="nonzero"):
        meter.observe([torch.ones(2, 2)])


def test_detached_meter_stops_counting():
    model = SparseMLP(4, 2, 2, 3, "relu")
    assert model.meter is None
    meter = SparsityMeter()
    with meter.attach(model):
        model(torch.randn(5, 4))
    assert model.meter is None and meter.num_examples == 5
    model(torch.randn(7, 4))  # not metered any more
    assert meter.num_examples == 5 and meter.num_batches == 1
