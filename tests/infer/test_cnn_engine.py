"""The sparse CNN engine equals the dense SparseCNN (two implementations, one answer), for every activation,
strategy, padding, batch size and backend, kinks included; its multiply-add counts are the ones the zeros allow."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.gp import solve_eoc
from sparse_eoc.gp.gaussian import kinks
from sparse_eoc.infer import (
    CONV_STRATEGY_CHOICES,
    ConvCostModel,
    SparseCNNEngine,
    choose_conv_strategy,
    cnn_flop_report,
    numba_available,
)
from sparse_eoc.infer.cnn_plan import DENSE_CONV, SPARSE_CONV
from sparse_eoc.nn import SparseCNN, SparseMLP
from sparse_eoc.nn.build import init_from_point_

BACKENDS = ["numpy", "numba"] if numba_available() else ["numpy"]
BATCHES = [1, 3, 8, 64]
BACKGROUND = np.float32(-0.4242)  # the "zero pixel" of the synthetic images below
IMAGE = (2, 7, 9)  # C_0, H, W: small, and not square
RTOL = 1e-4  # logits: |engine - dense| <= RTOL * max |dense logit|, per example


def images(n: int, seed: int) -> np.ndarray:
    """float32 (n, 2, 7, 9): 75 % background, the rest positive 'ink'."""
    rng = np.random.default_rng(seed)
    x = np.full((n, *IMAGE), BACKGROUND, dtype=np.float32)
    ink = rng.random(x.shape) < 0.25
    x[ink] = rng.uniform(0.0, 2.8, ink.sum()).astype(np.float32)
    return x


MEAN_SQUARE_INPUT = float(np.mean(images(200, seed=99).astype(np.float64) ** 2))


def eoc_cnn(activation: str, padding_mode: str = "zeros", *, sparsity: float = 0.8, depth: int = 3,
            channels: int = 12, seed: int = 0) -> SparseCNN:
    """A random EoC CNN (paper Sections 4-5) at the given sparsity, q^1 = q* on :func:`images`."""
    clipped = get_activation(activation).clipped
    p = solve_eoc(activation, sparsity, slope=0.7 if clipped else None)
    model = SparseCNN(IMAGE[0], 10, depth, channels, activation, p.tau, p.m, padding_mode=padding_mode).eval()
    init_from_point_(model, p, mean_square_input=MEAN_SQUARE_INPUT, generator=torch.Generator().manual_seed(seed))
    return model


def dense_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def relative_error(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per example, max |out - ref| / max |ref|, (B,)."""
    return np.abs(out - ref).max(axis=1) / np.abs(ref).max(axis=1)


@pytest.fixture(scope="module", params=[(a, p) for a in ACTIVATIONS for p in ("zeros", "circular")],
                ids=lambda ap: f"{ap[0]}-{ap[1]}")
def network(request):
    """(activation, model, 64 images)."""
    activation, padding_mode = request.param
    return activation, eoc_cnn(activation, padding_mode), images(64, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", CONV_STRATEGY_CHOICES)
@pytest.mark.parametrize("batch", BATCHES)
def test_logits_equal_the_dense_model(network, backend, strategy, batch):
    activation, model, x = network
    x = x[:batch]
    ref = dense_logits(model, x)
    for offset in (BACKGROUND, None):  # with the offset, the first layer's bias is a per-position map
        engine = SparseCNNEngine.from_model(model, input_offset=offset, strategy=strategy, backend=backend)
        out = engine(x)
        assert out.dtype == np.float32 and out.shape == (batch, 10)
        assert np.all(relative_error(out, ref) <= RTOL), (activation, offset)
        if strategy != "auto":
            assert engine.last_strategies == (strategy,) * model.depth + ("dense",)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["sparse", "dense"])
def test_zero_patterns_and_multiply_adds_are_those_of_the_dense_model(network, backend, strategy):
    _, model, x = network
    x = x[:8]
    engine = SparseCNNEngine.from_model(model, strategy=strategy, backend=backend)  # no offset: x as it is
    engine(x)
    stats = engine.last_stats
    with torch.no_grad():
        states = model.hidden_states(torch.from_numpy(x))
    assert list(stats.nnz[:-1]) == [int((x != 0).sum())] + [int((phi != 0).sum()) for _, phi in states[:-1]]
    report = cnn_flop_report(model, torch.from_numpy(x))
    assert stats.dense_macs[:-1] == report.dense_macs[:-1]
    if strategy == "sparse":  # exactly the nonzero-input multiply-adds the zeros leave
        assert stats.macs[:-1] == report.macs[:-1]
        assert stats.flop_reduction > 2.0  # 80 % sparse hidden inputs
    else:
        assert stats.macs == stats.dense_macs and stats.flop_reduction == 1.0
    assert np.allclose(stats.density, [1 - s for s in report.input_sparsity[:-1]])
    with_offset = SparseCNNEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, backend=backend)
    with_offset(x)
    assert with_offset.last_stats.nnz[0] == int((x != BACKGROUND).sum())  # the background became exact zeros
    assert with_offset.last_stats.nnz[1:] == stats.nnz[1:]


def kink_cnn(activation: str, padding_mode: str) -> tuple[SparseCNN, np.ndarray]:
    """A depth-3 CNN and 64 images (2, 5, 6) whose every sum is exact in float32, many on a kink.

    Weights, biases and pixels are small multiples of 1/2 (tau = 1/2, m = 2), so every
    pre-activation is a multiple of 1/32 below 2^10: exact whatever the order of the additions,
    and equal to a kink wherever it is one in exact arithmetic.
    """
    m = 2.0 if get_activation(activation).clipped else math.inf
    model = SparseCNN(2, 4, 3, 6, activation, 0.5, m, padding_mode=padding_mode).eval()
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for conv in model.hidden:
            conv.weight.copy_(torch.from_numpy(rng.choice([-0.5, 0.0, 0.0, 0.5], size=conv.weight.shape)))
            conv.bias.copy_(torch.from_numpy(rng.choice([-0.5, 0.0, 0.5, 1.0], size=conv.bias.shape)))
        model.readout.weight.copy_(torch.from_numpy(rng.choice([-1.0, -0.5, 0.5, 1.0], size=(4, 6))))
        model.readout.bias.zero_()
    x = rng.choice(np.array([0.5, 0.5, 0.5, 0.0, 1.0, -0.5, 1.5], np.float32), size=(64, 2, 5, 6))
    return model, x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["sparse", "dense"])
@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_pre_activations_on_the_kinks_give_the_dense_model_s_zeros_and_logits(activation, padding_mode, strategy,
                                                                               backend):
    model, x = kink_cnn(activation, padding_mode)
    with torch.no_grad():
        states = model.hidden_states(torch.from_numpy(x))
    on_kink = sum(int((h == k).sum()) for h, _ in states for k in kinks(activation, 0.5, model.act.m))
    assert on_kink > 100  # the test means something: many units exactly at a kink
    for batch in BATCHES:
        engine = SparseCNNEngine.from_model(model, input_offset=0.5, strategy=strategy, backend=backend)
        out = engine(x[:batch])
        expected = [int((x[:batch] != 0.5).sum())] + [int((phi[:batch] != 0).sum()) for _, phi in states[:-1]]
        assert list(engine.last_stats.nnz[:-1]) == expected  # the same side of every kink as the dense model
        # Exact sums; only the mean over 30 positions and the readout round (a few ulp).
        np.testing.assert_allclose(out, dense_logits(model, x[:batch]), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("batch", BATCHES)
def test_numba_and_numpy_backends_agree(network, batch):
    _, model, x = network
    engines = [SparseCNNEngine.from_model(model, input_offset=BACKGROUND, backend=b) for b in ("numpy", "numba")]
    outs = [e(x[:batch]) for e in engines]
    a, b = (e.last_stats for e in engines)
    assert a == b
    assert np.all(relative_error(outs[1], outs[0]) <= RTOL)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("strategy", ["sparse", "dense"])
@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_threads_and_tiles_do_not_change_the_logits(strategy, padding_mode):
    model = eoc_cnn("cst", padding_mode, channels=20)
    x = images(8, seed=5)
    one = SparseCNNEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy)
    # 1 KiB tiles: one image row per tile (a 9 x 32-channel row is 1152 bytes), split across threads.
    two = SparseCNNEngine.from_model(model, input_offset=BACKGROUND, strategy=strategy, threads=2, tile_bytes=1024)
    for batch in (1, 8):
        a, b = one(x[:batch]), two(x[:batch])
        np.testing.assert_array_equal(a, b)  # each output's additions come in one fixed order
        assert one.last_stats == two.last_stats


def test_torch_in_torch_out_and_one_channel_images():
    model = eoc_cnn("crelu")
    x = images(4, seed=3)
    engine = SparseCNNEngine.from_model(model, input_offset=BACKGROUND)
    out = engine(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (4, 10)
    assert np.all(relative_error(out.numpy(), dense_logits(model, x)) <= RTOL)
    p = solve_eoc("crelu", 0.85, slope=0.7)
    mnist_like = SparseCNN(1, 10, 2, 16, "crelu", p.tau, p.m).eval()
    init_from_point_(mnist_like, p, mean_square_input=1.0, generator=torch.Generator().manual_seed(1))
    x1 = images(3, seed=4)[:, :1]  # (3, 1, 7, 9)
    engine = SparseCNNEngine.from_model(mnist_like, input_offset=[BACKGROUND])
    assert np.all(relative_error(engine(x1), dense_logits(mnist_like, x1)) <= RTOL)


def test_auto_runs_a_dense_image_dense_and_sparse_hidden_layers_sparse():
    model = eoc_cnn("crelu", sparsity=0.9, channels=64, depth=3)
    x = images(8, seed=2)
    engine = SparseCNNEngine.from_model(model)  # no offset: the image has no zeros
    out = engine(x)
    assert engine.last_strategies == ("dense", "sparse", "sparse", "dense")
    assert np.all(relative_error(out, dense_logits(model, x)) <= RTOL)
    per_layer = SparseCNNEngine.from_model(model, strategy=["sparse", "dense", "sparse"])
    per_layer(x)
    assert per_layer.last_strategies == ("sparse", "dense", "sparse", "dense")


def test_the_cost_model_prefers_sparse_only_where_few_inputs_are_nonzero():
    cost = ConvCostModel()
    positions, k, c = 784, 3, 304
    dense_in = positions * c
    assert choose_conv_strategy(positions, k, c, c, dense_in, dense_in * 9, cost) == DENSE_CONV
    assert choose_conv_strategy(positions, k, c, c, dense_in // 7, dense_in * 9 // 7, cost) == SPARSE_CONV
    assert choose_conv_strategy(positions, k, 1, c, positions, positions * 9, cost) == DENSE_CONV  # an image
    with pytest.raises(ValueError, match="sparse_mac must be a finite number > 0"):
        ConvCostModel(sparse_mac=0.0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strategy": "gather"}, "strategy must be one of auto, dense, sparse"),
        ({"strategy": ["dense", "sparse"]}, "strategy must be one name or 3"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"backend": "gpu"}, "backend must be one of auto, numba, numpy"),
        ({"input_offset": np.zeros(3)}, r"input_offset must be a finite float or \(2,\) floats"),
        ({"tile_bytes": 10}, "tile_bytes must be an integer >= 1024"),
        ({"cost": "fast"}, "cost must be a ConvCostModel"),
    ],
)
def test_bad_options_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseCNNEngine.from_model(eoc_cnn("crelu"), **kwargs)


def test_bad_inputs_and_models_raise_value_errors():
    engine = SparseCNNEngine.from_model(eoc_cnn("crelu"))
    with pytest.raises(ValueError, match=r"x must be images \(B, 2, H, W\)"):
        engine(np.zeros((2, 3, 7, 9), np.float32))
    with pytest.raises(ValueError, match=r"x must be images"):
        engine(np.zeros((2, 126), np.float32))
    with pytest.raises(ValueError, match=r"x must be images"):
        engine(np.zeros((0, 2, 7, 9), np.float32))
    with pytest.raises(ValueError, match="model must be a SparseCNN"):
        SparseCNNEngine.from_model(SparseMLP(4, 2, 1, 3, "crelu", 0.5, 2.0))
    w, b, r, rb = np.zeros((4, 2, 3, 3)), np.zeros(4), np.zeros((3, 4)), np.zeros(3)
    with pytest.raises(ValueError, match="does not take the previous layer's"):
        SparseCNNEngine([w, np.zeros((4, 5, 3, 3))], [b, b], r, rb, "crelu", 0.5, 2.0)
    with pytest.raises(ValueError, match="one odd k"):
        SparseCNNEngine([np.zeros((4, 2, 2, 2))], [b], r, rb, "crelu", 0.5, 2.0)
    with pytest.raises(ValueError, match="the readout must be"):
        SparseCNNEngine([w], [b], np.zeros((3, 5)), rb, "crelu", 0.5, 2.0)
    with pytest.raises(ValueError, match="padding_mode must be one of zeros, circular"):
        SparseCNNEngine([w], [b], r, rb, "crelu", 0.5, 2.0, padding_mode="reflect")
    with pytest.raises(ValueError, match="activation must be one of"):
        SparseCNNEngine([w], [b], r, rb, "gelu")


def test_without_numba_the_numpy_path_runs_and_says_so():
    code = """
import sys, warnings
sys.modules['numba'] = None  # numba cannot be imported
import numpy as np
from sparse_eoc.infer import SparseCNNEngine
w = np.zeros((2, 1, 3, 3)); w[:, 0, 1, 1] = 1.0  # each output channel: the centre pixel
args = ([w], [np.zeros(2)], np.ones((1, 2)), np.zeros(1), 'relu_tau', 0.5)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    engine = SparseCNNEngine(*args, strategy='sparse')
print(engine.backend, 'numba' in engine.backend_note, len(caught))
x = np.zeros((1, 1, 2, 2), np.float32); x[0, 0, 0, 0] = 4.5
print(engine(x).tolist(), engine.last_strategies)
try:
    SparseCNNEngine(*args, backend='numba')
except ValueError as err:
    print('ValueError', 'numba>=0.60' in str(err))
"""
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()
    assert lines[0] == "numpy True 1"
    assert lines[1] == "[[2.0]] ('sparse', 'dense')"  # relu(4.5 - 0.5) = 4 at one of 4 positions, twice
    assert lines[2] == "ValueError True"
