"""SparsityMeter: exact zero counts, no extra pass, per layer and overall."""

import math

import pytest
import torch

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.nn import SparseMLP, SparsityMeter, init_eoc_
from sparse_eoc.nn.sparsity import count_nonzero


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


def _special_values(n, dtype, seed):
    """n values of ``dtype``: about half exact zeros (both signs), the rest random, with NaN and +-inf."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    x[torch.rand(n, generator=gen) < 0.5] = 0.0
    x[torch.rand(n, generator=gen) < 0.1] = -0.0
    x[:4] = torch.tensor([math.nan, math.inf, -math.inf, -0.0], dtype=torch.float64)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1000, 3 * 2**16 + 5])  # both sides of the count_nonzero / float-sum switch
def test_count_nonzero_equals_torch(dtype, n):
    x = _special_values(n, dtype, seed=n)
    expected = torch.count_nonzero(x)
    scratch = torch.full((n + 7,), 5.0, dtype=dtype)
    for got in (count_nonzero(x), count_nonzero(x, scratch), SparsityMeter().count_nonzero(x)):
        assert got.dtype == torch.int64 and got.shape == () and got.item() == expected.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_count_nonzero_non_contiguous(dtype):
    """Channels-last images and a transposed matrix count the same as their contiguous copies."""
    x = _special_values(4 * 8 * 64 * 32, dtype, seed=7)
    images = x.reshape(4, 8, 64, 32).contiguous(memory_format=torch.channels_last)
    scratch = torch.empty(x.numel(), dtype=dtype)
    assert count_nonzero(images, scratch).item() == torch.count_nonzero(x).item()
    assert count_nonzero(x.reshape(256, 256).T).item() == torch.count_nonzero(x).item()


def test_count_nonzero_exact_beyond_float32_integers():
    """2^24 + 3 ones: a float32 sum cannot hold that count, so the sum must switch to float64."""
    x = torch.ones(2**24 + 3)
    assert count_nonzero(x).item() == 2**24 + 3
    assert count_nonzero(torch.ones(3000, dtype=torch.float16)).item() == 3000  # > 2^11 in half


def test_count_nonzero_keeps_autograd_out():
    x = torch.randn(300, 300, requires_grad=True)
    y = torch.relu(x - 1.0)
    c = SparsityMeter().count_nonzero(y)
    assert not c.requires_grad and c.item() == torch.count_nonzero(y).item()
    y.sum().backward()  # the counted tensor is untouched and still differentiable
    assert torch.equal(x.grad, (x > 1.0).float())
