"""Tests for sparse_eoc/nn/resnet.py: the residual networks' depth semantics, their forward pass
against a NumPy one, the initialisation by docs/theory.md section 8, and random networks at
initialisation against the infinite-width theory (sparse_eoc.gp.residual)."""

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from scipy.stats import norm
from torch import nn

from sparse_eoc.activations import get_activation
from sparse_eoc.gp import residual_covariance, residual_init, solve_eoc
from sparse_eoc.nn import ResCNN, ResMLP, SparsityMeter, init_residual_
from sparse_eoc.nn.build import build_model, init_from_point_
from sparse_eoc.nn.init import input_weight_variance
from sparse_eoc.runs.network import NetworkSpec

POINTS = {"relu": ("relu", None, {}), "relu_tau": ("relu_tau", 0.85, {}), "st_tau": ("st_tau", 0.8, {}),
          "crelu": ("crelu", 0.85, {"slope": 0.7}), "cst": ("cst", 0.85, {"slope": 0.7})}


def plan(name, depth, *, thresholds="per-layer", convs=1, residual_scale=None):
    activation, s, kwargs = POINTS[name]
    return residual_init(solve_eoc(activation, s, **kwargs), depth, thresholds=thresholds,
                         convs_per_block=convs, residual_scale=residual_scale)


def resmlp(init, in_features, width, num_classes=10):
    p = init.base
    return ResMLP(in_features, num_classes, init.depth, width, p.activation, init.site_taus, init.site_ms,
                  residual_scale=init.residual_scale)


def test_depth_semantics_and_shapes():
    """Depth 3 = 3 blocks: the stem, 3 block layers and the readout are 5 linear layers, 4 sites."""
    model = ResMLP(784, 10, depth=3, width=300, activation="crelu", tau=1.0, m=1.0)
    linears = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    assert len(linears) == 5 and model.depth == 3 and model.width == 300 and len(model.sites) == 4
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 300)] + [(300, 300)] * 3 + [(300, 10)]
    assert model.residual_scale == pytest.approx(2 / math.sqrt(3))
    assert model(torch.randn(7, 1, 28, 28)).shape == (7, 10)
    states = model.hidden_states(torch.randn(7, 784))
    assert len(states) == 4 and all(h.shape == a.shape == (7, 300) for h, a in states)
    cnn = ResCNN(3, 10, depth=2, channels=8, activation="crelu", tau=1.0, m=1.0, padding_mode="circular")
    convs = [mod for mod in cnn.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 5 and len(cnn.sites) == 5 and cnn.depth == 2 and cnn.channels == 8
    assert cnn(torch.randn(2, 3, 6, 6)).shape == (2, 10)
    assert len(cnn.hidden_states(torch.randn(2, 3, 6, 6))) == 5


def naive_forward(model, x):
    """The residual MLP in NumPy float64 with the registry's phi, site by site: logits and states."""
    fn = get_activation(model.sites[0].name).fn
    w = [(layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()) for layer in model.hidden]
    h = x @ w[0][0].T + w[0][1]  # the stem
    states = []
    for site, (weight, bias) in zip(model.sites, w[1:]):
        a = fn(h, site.tau, site.m)
        states.append((h, a))
        h = h + model.residual_scale * (a @ weight.T + bias)
    a = fn(h, model.sites[-1].tau, model.sites[-1].m)
    states.append((h, a))
    r = model.readout
    return a @ r.weight.detach().double().numpy().T + r.bias.detach().double().numpy(), states


@pytest.mark.parametrize("name", list(POINTS))
def test_forward_matches_numpy_and_the_meter_counts_every_site(name):
    init = plan(name, 5, residual_scale=0.6)
    model = resmlp(init, 12, 32, num_classes=4).double()
    init_from_point_(model, init, mean_square_input=1.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(9, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logits, states = naive_forward(model, x.numpy())
    meter = SparsityMeter()
    with torch.no_grad(), meter.attach(model):
        out = model(x)
    np.testing.assert_allclose(out.numpy(), logits, rtol=0, atol=1e-12)
    with torch.no_grad():
        for (h, a), (h_np, a_np) in zip(model.hidden_states(x), states):
            np.testing.assert_allclose(h.numpy(), h_np, rtol=0, atol=1e-12)
            np.testing.assert_allclose(a.numpy(), a_np, rtol=0, atol=1e-12)
    assert meter.per_layer() == [float(np.mean(a == 0)) for _, a in states]  # 6 sites, the head included


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_rescnn_forward_folds_the_inner_threshold_exactly(padding_mode):
    """The fast forward (inner site's tau folded into the first conv's bias, phi in place) equals the
    plain computation of ``hidden_states``, and the meter counts its 2 L + 1 sites."""
    init = plan("crelu", 3, convs=2)
    p = init.base
    model = ResCNN(2, 5, 3, 6, p.activation, init.site_taus, init.site_ms, padding_mode=padding_mode,
                   residual_scale=init.residual_scale).double()
    init_from_point_(model, init, mean_square_input=1.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 2, 7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    meter = SparsityMeter()
    with torch.no_grad(), meter.attach(model):
        out = model(x)
        states = model.hidden_states(x)
    torch.testing.assert_close(out, model.readout(states[-1][1].mean(dim=(2, 3))), rtol=0, atol=1e-12)
    assert len(states) == 7 and meter.per_layer() == [float((a == 0).double().mean()) for _, a in states]


def test_init_draws_each_layer_from_its_sites_variances():
    """Each branch layer's weights have variance sigma_w2 / fan_in and biases sigma_b2 of the site it
    reads; the empirical variances of the n draws sit within 5 sqrt(2 / n) (chi-square) of them."""
    init = plan("crelu", 6, residual_scale=0.8)
    width, n_in = 400, 50
    model = resmlp(init, n_in, width).double()
    msi = 1.7
    input_sigma_w2 = init_from_point_(model, init, mean_square_input=msi, generator=torch.Generator().manual_seed(3))
    assert input_sigma_w2 == pytest.approx(input_weight_variance(1.0, init.base.sigma_b2, msi))
    expected = [(input_sigma_w2 / n_in, init.base.sigma_b2)] + [(p.sigma_w2 / width, p.sigma_b2) for p in init.sites]
    for layer, (w_var, b_var) in zip(model.hidden, expected):
        n_w, n_b = layer.weight.numel(), layer.bias.numel()
        assert layer.weight.detach().pow(2).mean().item() == pytest.approx(w_var, rel=5 * math.sqrt(2 / n_w))
        assert layer.bias.detach().pow(2).mean().item() == pytest.approx(b_var, rel=5 * math.sqrt(2 / n_b))
    assert model.readout.bias.abs().max().item() == 0.0
    # the per-layer sigma_b2 grows with q^l: the last branch layer's (at q^6) is (1 + alpha^2)^5 times the first's
    assert expected[6][1] / expected[1][1] == pytest.approx((1 + 0.64) ** 5, rel=1e-9)


def test_init_refuses_a_model_that_does_not_match_its_plan():
    init = plan("crelu", 4)
    with pytest.raises(ValueError, match="init describes depth 4"):
        init_residual_(resmlp(plan("crelu", 3), 8, 16), init, input_sigma_w2=1.0)
    fixed = resmlp(plan("crelu", 4, thresholds="fixed"), 8, 16)
    with pytest.raises(ValueError, match=r"site 2 of the model has \(tau, m\)"):
        init_residual_(fixed, init, input_sigma_w2=1.0)
    with pytest.raises(ValueError, match="the model's residual_scale 0.3 is not init's 1.0"):
        init_residual_(resmlp(plan("crelu", 4, thresholds="fixed", residual_scale=0.3), 8, 16),
                       plan("crelu", 4, thresholds="fixed"), input_sigma_w2=1.0)
    with pytest.raises(ValueError, match="a ResMLP is initialised from a ResidualInit"):
        init_from_point_(resmlp(init, 8, 16), init.base, mean_square_input=1.0)
    with pytest.raises(ValueError, match="delta_orthogonal applies to conv layers"):
        init_residual_(resmlp(init, 8, 16), init, input_sigma_w2=1.0, weight_init="delta_orthogonal")
    with pytest.raises(ValueError, match="one per activation site"):
        ResMLP(8, 10, 4, 16, "crelu", tau=[1.0] * 4, m=1.0)
    with pytest.raises(ValueError, match="residual_scale must be a finite number > 0"):
        ResMLP(8, 10, 4, 16, "crelu", tau=1.0, m=1.0, residual_scale=-1.0)


def _moment_ratio(p, q):
    """sd(phi^2) / E[phi^2] for h ~ N(0, q), by quadrature between the kinks."""
    fn, s = get_activation(p.activation).fn, math.sqrt(q)
    edges = sorted({-12.0, 12.0, *(k / s for k in (p.tau, -p.tau, p.tau + p.m, -p.tau - p.m) if abs(k / s) < 12)})

    def moment(k):
        return sum(integrate.quad(lambda z: fn(np.array(s * z), p.tau, p.m) ** k * norm.pdf(z), lo, hi)[0]
                   for lo, hi in itertools.pairwise(edges))

    e2 = moment(2)
    return math.sqrt(moment(4) - e2**2) / e2


def finite_width_bands(init, width):
    """Per-network standard-deviation bounds at each site, relative for q, absolute for the sparsity.

    q: the stem's N shared biases and weight rows give at most sqrt(2 / N) (chi-square); the
    sites then share one sample of N units, so the error of the branch's sigma_w2 mean(phi^2) is
    sd(phi^2) / E(phi^2) / sqrt(N) of its weight part, carried over the fraction 1 - q^1 / q^l of
    q^l that the branches added. Sparsity: the mean over N units of each unit's fraction of zeros
    (at most sqrt(s (1 - s) / N)), plus |ds / dlog q| times the q band.
    """
    rel_q, s_band, worst = [], [], 0.0
    for p, q, s in zip(init.sites, init.site_q, init.site_sparsity):
        weight_part = 1 - p.sigma_b2 / float(p.sigma_b2 + p.sigma_w2 * _e_phi2(p, q))
        worst = max(worst, _moment_ratio(p, q) * weight_part)
        rq = math.sqrt(2 / width) + (1 - init.site_q[0] / q) * worst / math.sqrt(width)
        a = p.tau / math.sqrt(q)
        slope = (2 if get_activation(p.activation).two_sided else 1) * norm.pdf(a) * a / 2  # |ds / dlog q|
        rel_q.append(rq)
        s_band.append(math.sqrt(s * (1 - s) / width) + slope * rq)
    return np.array(rel_q), np.array(s_band)


def _e_phi2(p, q):
    from sparse_eoc.gp import second_moment

    return float(second_moment(q, p.activation, p.tau, p.m))


def measure(spec, init, *, seeds, batch):
    """Per network and site: mean h^2 and the fraction of zeros (Gaussian inputs, float64)."""
    q, s = [], []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, *spec.image_shape[1:], generator=gen, dtype=torch.float64)
        net = build_model(spec).double()
        init_from_point_(net, init, mean_square_input=float(x.pow(2).mean()), generator=gen)
        with torch.no_grad():
            states = net.hidden_states(x)
        q.append([h.pow(2).mean().item() for h, _ in states])
        s.append([(a == 0).double().mean().item() for _, a in states])
    return np.array(q), np.array(s)  # (seeds, n_sites) each


@pytest.mark.parametrize("name, thresholds", [("crelu", "per-layer"), ("crelu", "fixed"), ("relu_tau", "per-layer")])
def test_random_resmlps_follow_the_theory_at_every_site(name, thresholds):
    """Width 1000, depth 12, 6 networks of 8 Gaussian inputs: the mean over networks of each
    site's q and sparsity within 4 / sqrt(6) of the per-network bands of ``finite_width_bands``."""
    width, depth, seeds = 1000, 12, 6
    init = plan(name, depth, thresholds=thresholds)
    p = init.base
    spec = NetworkSpec(kind="resmlp", image_shape=(1, width), num_classes=10, depth=depth, activation=p.activation,
                       tau=p.tau, m=p.m, width=width, residual_scale=init.residual_scale,
                       site_taus=init.site_taus, site_ms=init.site_ms)
    q, s = measure(spec, init, seeds=seeds, batch=8)
    rel_q, s_band = finite_width_bands(init, width)
    assert np.all(np.abs(q.mean(axis=0) / np.array(init.site_q) - 1) <= 4 * rel_q / math.sqrt(seeds))
    assert np.all(np.abs(s.mean(axis=0) - np.array(init.site_sparsity)) <= 4 * s_band / math.sqrt(seeds))
    if thresholds == "per-layer":
        assert np.all(np.abs(s.mean(axis=0) - 0.85) <= 0.03)  # the criterion, at init
    else:
        assert s.mean(axis=0)[-1] < 0.80  # the drift of docs/theory.md section 8.4 is real


def test_two_inputs_correlate_as_the_covariance_recursion_says():
    """Two independent Gaussian inputs: the stem gives them variances q1_a, q1_b and covariance c1
    (exact given the inputs, in expectation over the weights); the head site's covariance, per unit,
    follows residual_covariance within 4 / sqrt(S) of the relative q band (times sqrt(q_a q_b))."""
    width, depth, seeds = 1000, 12, 6
    init = plan("crelu", depth, residual_scale=1 / math.sqrt(depth))
    p = init.base
    model_errors, band = [], finite_width_bands(init, width)[0][-1]
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(2, width, generator=gen, dtype=torch.float64)  # (2, N0)
        msi = float(x.pow(2).mean())
        net = resmlp(init, width, width).double()
        sw2_in = init_from_point_(net, init, mean_square_input=msi, generator=gen)
        q1 = sw2_in * x.pow(2).mean(dim=1) + p.sigma_b2  # (2,)
        c1 = sw2_in * (x[0] @ x[1]).item() / width + p.sigma_b2
        qa, qb, c = residual_covariance(q1[0].item(), q1[1].item(), c1, init)
        with torch.no_grad():
            h = net.hidden_states(x)[-1][0]  # (2, width): the head site's pre-activations
        model_errors.append(((h[0] @ h[1]).item() / width - c[-1]) / math.sqrt(qa[-1] * qb[-1]))
    assert abs(np.mean(model_errors)) <= 4 * band / math.sqrt(seeds)
    # the inputs start correlated through the shared stem bias (rho^1 ~ sigma_b2 / q* = 0.6) and stay
    # distinguishable (docs/theory.md section 8.5), where a plain depth-20 network's correlation nears 1
    assert c1 / math.sqrt(q1[0] * q1[1]) < c[-1] / math.sqrt(qa[-1] * qb[-1]) < 0.8


def test_spec_round_trip_and_parameter_count():
    init = plan("relu_tau", 3, convs=2)
    p = init.base
    common = dict(num_classes=7, depth=3, activation=p.activation, tau=p.tau, m=p.m,
                  residual_scale=init.residual_scale, site_taus=init.site_taus, site_ms=init.site_ms)
    cnn = NetworkSpec(kind="rescnn", image_shape=(1, 8, 8), channels=5, kernel_size=3, padding_mode="zeros", **common)
    mlp_init = plan("crelu", 3)
    mlp = NetworkSpec(kind="resmlp", image_shape=(1, 6, 6), width=9, num_classes=7, depth=3,
                      activation="crelu", tau=mlp_init.base.tau, m=mlp_init.base.m,
                      residual_scale=mlp_init.residual_scale, site_taus=mlp_init.site_taus,
                      site_ms=mlp_init.site_ms)
    for spec, kind in ((cnn, ResCNN), (mlp, ResMLP)):
        d = json.loads(json.dumps(spec.to_dict(), allow_nan=False))
        assert NetworkSpec.from_dict(d) == spec
        model = build_model(spec)
        assert isinstance(model, kind) and spec.n_parameters() == sum(t.numel() for t in model.parameters())
        assert [site.tau for site in model.sites] == list(spec.site_taus)
    assert cnn.to_dict()["site_ms"] == [None] * 7 and cnn.n_sites == 7 and mlp.n_sites == 4
    with pytest.raises(ValueError, match=r"site_taus must hold 4 numbers"):
        NetworkSpec(**{**mlp.__dict__, "site_taus": (1.0,)})
    with pytest.raises(ValueError, match="describe resmlp or rescnn only"):
        NetworkSpec(**{**mlp.__dict__, "kind": "mlp"})


def test_sparse_kernels_serve_the_block_layers_with_each_sites_clip():
    """set_kernels_("sparse") on a ResMLP gives dense autograd's gradients (float64, 1e-10). The
    sites' clips differ, so reading another site's clip would pass the gradient of saturated units."""
    pytest.importorskip("numba")
    from sparse_eoc.nn.sparse_linear import set_kernels_

    depth = 4
    taus, ms = [0.25 * i for i in range(depth + 1)], [0.25 + 0.125 * i for i in range(depth + 1)]
    dense = ResMLP(10, 3, depth, 16, "crelu", taus, ms, residual_scale=0.7).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in dense.parameters():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64))
    sparse = set_kernels_(copy.deepcopy(dense), "sparse")
    assert sparse.kernels == "sparse" and [layer.sparse_input for layer in sparse.hidden] == [False] + [True] * depth
    x = torch.randn(11, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (11,), generator=gen)
    saturated = [(a == site.m).any().item() for (_, a), site in zip(dense.hidden_states(x), dense.sites)]
    assert all(saturated[:-1])  # every block's input has units at its clip
    grads = []
    for model in (dense, sparse):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        grads.append({name: t.grad.clone() for name, t in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-10, msg=name)
    cnn = ResCNN(1, 3, 1, 4, "crelu", 0.5, 0.25)
    assert set_kernels_(cnn, "auto") is cnn and getattr(cnn, "kernels", "dense") == "dense"
    with pytest.raises(ValueError, match="--kernels sparse applies to the MLP only"):
        set_kernels_(cnn, "sparse")


def tracked_resmlp(name, depth, width, in_features=20, seed=0):
    init = plan(name, depth)
    p = init.base
    model = ResMLP(in_features, 10, depth, width, p.activation, init.site_taus, init.site_ms,
                   residual_scale=init.residual_scale, tracked_sparsity=p.sparsity)
    init_residual_(model, init, input_sigma_w2=1.0, generator=torch.Generator().manual_seed(seed))
    return model, p.sparsity


@pytest.mark.parametrize("name", ["crelu", "cst"])
def test_tracked_thresholds_bring_every_site_back_to_its_sparsity_as_the_stream_grows(name):
    """Scale the stem by 3 (the variance training adds to the stream): thresholds kept from init
    lose the sparsity at every site; the running quantile brings each back to s. On one batch of
    256 x 64 values the running tau converges to that batch's quantile (0.9^100 of the gap left),
    so the fraction of zeros is s within a few ties."""
    model, s = tracked_resmlp(name, 6, 64)
    with torch.no_grad():
        model.hidden[0].weight.mul_(3.0)
        model.hidden[0].bias.mul_(3.0)
    kept = copy.deepcopy(model)
    kept.tracker = None
    x = torch.randn(256, 20, generator=torch.Generator().manual_seed(1))

    def site_sparsity(net):
        return np.array([float((a == 0).double().mean()) for _, a in net.eval().hidden_states(x)])

    assert np.all(site_sparsity(kept) < s - 0.05)
    model.train()
    for _ in range(100):
        model(x)
    np.testing.assert_allclose(site_sparsity(model), s, atol=2e-3)
    taus = model.tracker.running_tau.tolist()
    assert [site.tau for site in model.sites] == taus and all(t > t0 for t, (t0, _) in zip(taus, model.tracker.initial))
    for site, (t0, m0) in zip(model.sites, model.tracker.initial):  # the clip keeps its ratio to tau
        assert site.m == pytest.approx(m0 * site.tau / t0, rel=1e-12)


def test_tracked_thresholds_live_in_the_state_dict_and_only_move_in_training():
    model, _ = tracked_resmlp("crelu", 3, 32)
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.hidden[0].weight.mul_(2.0)
    model.eval()
    before = model.tracker.running_tau.clone()
    model(x)
    assert torch.equal(model.tracker.running_tau, before)  # eval: the running thresholds are used as they are
    model.train()
    with torch.no_grad():  # a forward pass that is not a training step (calibration, measure_sparsity)
        model(x)
    assert torch.equal(model.tracker.running_tau, before)
    model(x)
    assert not torch.equal(model.tracker.running_tau, before)
    fresh, _ = tracked_resmlp("crelu", 3, 32, seed=5)
    fresh.load_state_dict(model.state_dict())  # the sites take the loaded thresholds
    assert [site.tau for site in fresh.sites] == [site.tau for site in model.sites]
    assert [site.m for site in fresh.sites] == [site.m for site in model.sites]
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert "tracker.running_tau" in model.state_dict()


def test_tracked_rescnn_trains_through_the_unfolded_inner_site():
    """In training the inner site's threshold comes from conv1's output, so it is applied after
    conv1 rather than folded into its bias: the same function as the folded eval path."""
    init = plan("crelu", 2, convs=2)
    p = init.base
    model = ResCNN(1, 3, 2, 6, p.activation, init.site_taus, init.site_ms, residual_scale=init.residual_scale,
                   tracked_sparsity=p.sparsity).double()
    init_residual_(model, init, input_sigma_w2=1.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = model.train()(x)
    assert model.tracker.running_tau.tolist() != list(init.site_taus)
    torch.testing.assert_close(out, model.eval()(x), rtol=0, atol=1e-12)


def test_sparse_kernels_read_the_tracked_clips():
    """The sparse kernels read each site's clip when its layer runs, after the tracker moved it."""
    pytest.importorskip("numba")
    from sparse_eoc.nn.sparse_linear import set_kernels_

    dense, _ = tracked_resmlp("crelu", 4, 16, in_features=10)
    dense = dense.double()
    with torch.no_grad():
        dense.hidden[0].weight.mul_(4.0)  # a stream the init thresholds no longer fit
    sparse = set_kernels_(copy.deepcopy(dense), "sparse")
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(32, 10, generator=gen, dtype=torch.float64), torch.randint(0, 10, (32,), generator=gen)
    grads = []
    for model in (dense.train(), sparse.train()):
        F.cross_entropy(model(x), y).backward()
        grads.append({name: t.grad for name, t in model.named_parameters()})
    # the same quantiles, up to the rounding of the sparse forward's sums
    torch.testing.assert_close(sparse.tracker.running_tau, dense.tracker.running_tau, rtol=1e-12, atol=0)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-10, msg=name)


def test_tracking_needs_a_threshold_and_a_sparsity_in_range():
    init = plan("relu", 2)
    with pytest.raises(ValueError, match="tau > 0 at every site"):
        ResMLP(4, 2, 2, 8, "relu", init.site_taus, init.site_ms, tracked_sparsity=0.5)
    init = plan("crelu", 2)
    for bad in (0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="tracked_sparsity must be in"):
            ResMLP(4, 2, 2, 8, "crelu", init.site_taus, init.site_ms, tracked_sparsity=bad)
    spec = dict(kind="resmlp", image_shape=(1, 2, 2), width=8, num_classes=2, depth=2, activation="crelu",
                tau=init.base.tau, m=init.base.m, residual_scale=init.residual_scale, site_taus=init.site_taus,
                site_ms=init.site_ms, tracked_sparsity=0.85)
    d = json.loads(json.dumps(NetworkSpec(**spec).to_dict(), allow_nan=False))
    assert NetworkSpec.from_dict(d).tracked_sparsity == 0.85
    assert NetworkSpec.from_dict({k: v for k, v in d.items() if k != "tracked_sparsity"}).tracked_sparsity is None
    with pytest.raises(ValueError, match="tracked_sparsity must be None or in"):
        NetworkSpec(**{**spec, "tracked_sparsity": 2.0})


def test_a_diverging_batch_leaves_the_tracked_thresholds_as_they_were():
    """Non-finite pre-activations (a diverging run) do not reach the thresholds, so the forward
    runs on and the training loop records the divergence; a batch whose quantile is <= 0 keeps
    tau and m positive."""
    model, _ = tracked_resmlp("crelu", 2, 16)
    before = model.tracker.running_tau.clone()
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(6))
    x[0, 0] = math.nan
    with torch.no_grad():
        model.hidden[0].weight.fill_(math.nan)
    assert torch.isnan(model.train()(x)).all()
    assert torch.equal(model.tracker.running_tau, before)
    model.tracker.momentum = 1.0
    model.tracker.update_(0, -torch.ones(4, 16), model.sites[0])
    assert 0 < model.sites[0].tau < 1e-5 and 0 < model.sites[0].m


def test_the_quantile_of_a_large_input_is_taken_over_whole_examples():
    """A conv site's input (B, C, H, W) over QUANTILE_SAMPLE values: the quantile of the batch's
    first examples, every channel and position of each (a strided subsample would see a few fixed
    positions, e.g. only an image border)."""
    from sparse_eoc.nn.resnet import QUANTILE_SAMPLE

    model, s = tracked_resmlp("crelu", 1, 8)
    tracker, site = model.tracker, model.sites[0]
    tracker.momentum = 1.0
    h = torch.randn(200, 8, 28, 28, generator=torch.Generator().manual_seed(7))
    h[:, :, :, 0] = 50.0  # the left border: would dominate a sample of column 0
    tracker.update_(0, h, site)
    first = h[: QUANTILE_SAMPLE // h[0].numel()].reshape(-1)  # 10 whole examples
    assert first.numel() == 10 * 8 * 28 * 28
    assert site.tau == float(first.kthvalue(round(s * first.numel())).values) < 3.0
