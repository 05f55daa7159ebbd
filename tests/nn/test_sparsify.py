"""sparsify: per-site calibration on MLPs, this package's models, a ResNet-18-shaped CNN and a
transformer layer; splitting, fused paths, functional activations, errors, init="eoc", measure_sparsity.

The central check (issue 14): after ``sparsify`` at target s, in eval mode under ``no_grad``, the
fraction of zeros at every site on a held-out batch is within 0.03 of s. The threshold is the
s-quantile of the site's calibration inputs, so on the calibration data the fraction is s up to
1/N; on a held-out batch of the same distribution it moves by the sampling error of both batches,
sqrt(2 s (1 - s) / n_eff), where n_eff counts independent units (examples x channels, less than
the elements: positions within one channel are correlated). With >= 256 examples and >= 4
channels, n_eff >= 1000 and 0.03 is at least 4 standard errors.
"""

import copy
import io
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_eoc.activations import ACTIVATIONS, get_activation
from sparse_eoc.gp import solve_eoc
from sparse_eoc.nn import (
    ResCNN,
    ResMLP,
    SiteSplit,
    SparseCNN,
    SparseMLP,
    SparseSite,
    SparsifyWarning,
    SparsityMeter,
    measure_sparsity,
)
from sparse_eoc.nn.sparsify import sparsify

TOL = 0.03  # the tolerance (module docstring)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def held_out_sparsity(model, report, x):
    """Per-site zero fraction of ``model(x)`` in eval mode under no_grad, by forward hooks on
    ``model.get_submodule(path)`` for each row of the report (independent of measure_sparsity)."""
    zeros = {}

    def hook(path):
        def count(module, args, out):
            z, n = zeros.get(path, (0, 0))
            zeros[path] = (z + int((out == 0).sum()), n + out.numel())
        return count

    handles = [model.get_submodule(row.path).register_forward_hook(hook(row.path)) for row in report]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {path: z / n for path, (z, n) in zeros.items()}


def assert_on_target(model, report, x, s):
    got = held_out_sparsity(model, report, x)
    assert set(got) == {row.path for row in report}, "every site ran on the held-out batch"
    off = {path: v for path, v in got.items() if abs(v - s) > TOL}
    assert not off, f"sites off target {s}: {off}"


# ------------------------------------------------------------------------------ models


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one nn.ReLU module applied twice."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18's shape (stem, 4 stages of 2 BasicBlocks, pooled linear head) at a small width."""

    def __init__(self, width=4, in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin, stages = width, []
        for i, c in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stages.append(nn.Sequential(BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c)))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))  # (B, w, H, W)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 8w, H/8, W/8)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, classes)


def warm_batchnorm(model, x):
    """Set BatchNorm running statistics to those of ``x`` (as after training), then eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def mlp(activation_modules, width=64, seed=0):
    torch.manual_seed(seed)
    layers, n_in = [], 20
    for act in activation_modules:
        layers += [nn.Linear(n_in, width), act]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, 3))


# ------------------------------------------------------------------------------ the sites


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_sequential_mlp_every_site_on_target(name):
    s = 0.85 if get_activation(name).two_sided else 0.7
    model = mlp([nn.ReLU(), nn.GELU(), nn.SiLU(), nn.LeakyReLU(0.1), nn.ELU(), nn.ReLU6()])
    report = sparsify(model, s, activation=name, calibration=torch.randn(512, 20, generator=gen(1)))
    assert [row.path for row in report] == ["1", "3", "5", "7", "9", "11"]
    assert [row.replaced for row in report] == ["ReLU", "GELU", "SiLU", "LeakyReLU", "ELU", "ReLU6"]
    for row in report:
        site = model.get_submodule(row.path)
        assert isinstance(site, SparseSite) and site.name == name
        assert float(site.tau) == pytest.approx(row.tau, rel=1e-6, abs=1e-7)
        # on the calibration data the quantile gives s up to one element in N = 512 * 64
        assert s <= row.measured <= s + 1e-3 and row.sparsity == s
        point = solve_eoc(name, s, row.q, slope=0.7 if get_activation(name).clipped else None)
        assert row.m == pytest.approx(point.m, rel=1e-9) and row.tau_gaussian == pytest.approx(point.tau, rel=1e-9)
        assert math.isinf(row.m) != get_activation(name).clipped
    assert_on_target(model, report, torch.randn(512, 20, generator=gen(2)), s)


@pytest.mark.parametrize("make,sites", [
    (lambda: SparseMLP(20, 3, depth=4, width=64, activation="crelu", tau=0.5, m=1.0), "act"),
    (lambda: SparseCNN(3, 3, depth=3, channels=8, activation="relu_tau", tau=0.2), "act"),
    (lambda: ResMLP(20, 3, depth=3, width=64, activation="cst", tau=0.6, m=1.0), "sites"),
    (lambda: ResCNN(3, 3, depth=2, channels=8, activation="crelu", tau=0.3, m=2.0), "sites"),
])
def test_package_models_are_recalibrated_per_site(make, sites):
    torch.manual_seed(0)
    model = make()
    shape = (20,) if isinstance(model, (SparseMLP, ResMLP)) else (3, 8, 8)
    report = sparsify(model, 0.8, calibration=torch.randn(512, *shape, generator=gen(1)))
    n_sites = len(getattr(model, sites))
    assert [row.path for row in report] == [f"{sites}.{i}" for i in range(n_sites)]
    assert all(isinstance(model.get_submodule(row.path), SparseSite) for row in report)
    if sites == "act":  # the shared activation module was split, one site per hidden layer
        assert isinstance(model.act, SiteSplit) and len(model.act) == model.depth
    x = torch.randn(512, *shape, generator=gen(2))
    assert_on_target(model, report, x, 0.8)
    if hasattr(model, "meter"):  # the model's own meter still counts, and agrees with the hooks
        meter = SparsityMeter()
        with meter.attach(model), torch.no_grad():
            model(x)
        assert meter.per_layer() == pytest.approx(list(held_out_sparsity(model, report, x).values()), abs=1e-12)


def test_resnet18_basic_blocks_split_and_on_target():
    x = torch.randn(256, 3, 16, 16, generator=gen(0))
    torch.manual_seed(0)
    model = warm_batchnorm(ResNet18(), x)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    report = sparsify(model, 0.7, calibration=[(x[:128], None), (x[128:], None)])
    assert len(report) == 17 and report.num_examples == 256 and report.num_batches == 2
    assert report.sites[0].path == "relu"
    assert [row.path for row in report][1:5] == ["layer1.0.relu.0", "layer1.0.relu.1",
                                                   "layer1.1.relu.0", "layer1.1.relu.1"]
    assert isinstance(model.layer1[0].relu, SiteSplit)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stats.items()), "BatchNorm statistics unchanged"
    assert "layer2.1.relu.0.tau" in state and "layer2.1.relu.0.m" in state
    assert_on_target(model, report, torch.randn(256, 3, 16, 16, generator=gen(1)), 0.7)
    assert str(report).count("\n") == 2 + 17 and "layer4.1.relu.1" in str(report)
    model.double()  # the buffers follow .to()
    assert model.layer1[0].relu[1].tau.dtype == torch.float64
    assert model(torch.randn(2, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_sites_with_zero_threshold_and_no_clip_give_back_the_relu_network():
    """The plumbing, checked exactly: with every site set to tau = 0, m = inf (CReLU = ReLU),
    the sparsified ResNet computes the original network's logits bit for bit, so each split
    site runs at its own call, in order."""
    x = torch.randn(64, 3, 16, 16, generator=gen(0))
    torch.manual_seed(0)
    model = warm_batchnorm(ResNet18(), x)
    with torch.no_grad():
        dense = model(x)
    report = sparsify(model, 0.8, calibration=x)
    with torch.no_grad():
        assert not torch.allclose(model(x), dense, atol=1e-3)
        for row in report:
            site = model.get_submodule(row.path)
            site.tau.zero_()
            site.m.fill_(math.inf)
        assert torch.equal(model(x), dense)


def test_calibration_in_train_mode_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = ResNet18(width=2).train()
    before = copy.deepcopy(model.state_dict())
    sparsify(model, 0.8, calibration=torch.randn(64, 3, 8, 8, generator=gen(0)))
    after = model.state_dict()
    assert model.training
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("activation", ["relu", "gelu", nn.ReLU(), nn.GELU()])
def test_transformer_feed_forward_runs_its_site_in_every_mode(activation):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation=activation, batch_first=True)
    layer.eval()
    x = torch.randn(64, 8, 16, generator=gen(1))  # (B, S, E)
    with torch.no_grad():
        dense = layer(x)
    report = sparsify(layer, 0.85, activation="cst", calibration=x)
    assert [row.path for row in report] == ["activation"] and isinstance(layer.activation, SparseSite)
    assert layer.activation_relu_or_gelu == 0
    y = torch.randn(64, 8, 16, generator=gen(2))
    with torch.no_grad():  # eval + no_grad, no hooks: the fused fast path would skip the site
        fast = layer(y)
        layer.train()  # train mode never takes the fast path
        slow = layer(y)
        layer.eval()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(layer(x), dense, atol=1e-3), "the sparse site is in the forward"
    assert_on_target(layer, report, y, 0.85)


# ------------------------------------------------------------------------------ sharing


def test_aliased_module_is_split_at_every_path():
    torch.manual_seed(0)
    act = nn.ReLU()  # one module at two paths ("1" and "3"), two call sites
    model = nn.Sequential(nn.Linear(20, 64), act, nn.Linear(64, 64), act)
    report = sparsify(model, 0.75, calibration=torch.randn(512, 20, generator=gen(0)))
    assert model[1] is model[3] and isinstance(model[1], SiteSplit)
    assert [row.path for row in report] == ["1.0", "1.1"]
    assert report.sites[0].q != report.sites[1].q
    assert_on_target(model, report, torch.randn(512, 20, generator=gen(1)), 0.75)
    twin = copy.deepcopy(model)  # the split (and its reset hook) survive a copy and a save
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    y = torch.randn(9, 20, generator=gen(2))
    with torch.no_grad():
        assert torch.equal(twin(y), model(y)) and torch.equal(loaded(y), model(y))


def test_varying_call_count_is_pooled_with_a_warning():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(20, 20), nn.ReLU()

        def forward(self, x):
            for _ in range(len(x) % 3 + 1):  # 2 calls for 64 examples, 3 for 65
                x = self.act(self.fc(x))
            return x

    with pytest.warns(SparsifyWarning, match=r"'act' \(ReLU\) ran 2 to 3 times"):
        report = sparsify(Loop(), 0.7, calibration=[torch.randn(64, 20), torch.randn(65, 20)])
    assert [row.path for row in report] == ["act"] and len(report.warnings) == 1


def test_functional_activations_are_named_in_a_warning():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 20)
            self.unused = nn.GELU()

        def forward(self, x):
            return self.fc2(F.relu(self.act(self.fc1(x))).relu())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = sparsify(Mixed(), 0.7, calibration=torch.randn(64, 20))
    messages = [str(w.message) for w in caught if w.category is SparsifyWarning]
    assert any(m.startswith("F.relu runs functionally in the forward of the model (Mixed)") for m in messages)
    assert any(m.startswith("Tensor.relu runs functionally") for m in messages)
    assert any("'unused' (GELU) did not run" in m for m in messages)
    assert [row.path for row in report] == ["act"] and len(report.warnings) == 3

    class OnlyFunctional(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    with pytest.raises(ValueError, match=r"model has no replaceable activation site.*torch.relu runs functionally"):
        sparsify(OnlyFunctional(), 0.7, calibration=torch.randn(4, 3))


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 0.3}, r"sparsity for crelu must be in \[0.5, 1.0\), got sparsity=0.3"),
    ({"sparsity": 1.0}, r"sparsity for crelu must be in"),
    ({"sparsity": 0.7, "slope": 1.0}, r"slope .* must be in \(0, 1\)"),
    ({"sparsity": 0.7, "slope": 0.0}, r"slope"),
    ({"sparsity": 0.7, "activation": "relu"}, r"activation must be one of"),
    ({"sparsity": 0.7, "activation": "tanh"}, r"activation must be one of"),
    ({"sparsity": 0.7, "init": "xavier"}, r"init must be 'keep' or 'eoc'"),
    ({"sparsity": 0.7, "calibration": []}, r"calibration must hold at least one batch"),
    ({"sparsity": 0.7, "calibration": ["a"]}, r"calibration\[0\] must be a tensor"),
    ({"sparsity": 0.7, "calibration": torch.randn(4, 5)}, r"calibration batch 0 .* was rejected by the model"),
])
def test_bad_arguments_raise_and_leave_the_model_alone(kwargs, match):
    model = mlp([nn.ReLU(), nn.ReLU()])
    before = copy.deepcopy(model.state_dict())
    kwargs = {"calibration": torch.randn(8, 20), **kwargs}
    with pytest.raises(ValueError, match=match):
        sparsify(model, **kwargs)
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_failure_midway_rolls_back():
    """The second site sees only zeros (q = 0): the error names it and the first site is undone."""
    model = mlp([nn.ReLU(), nn.ReLU()])
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    with pytest.raises(ValueError, match=r"calibration: the inputs of the site '3' have second moment q=0"):
        sparsify(model, 0.7, calibration=torch.randn(8, 20))
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="kernels='sparse'"):
        fake = SparseMLP(4, 2, 2, 8, "crelu", 0.5, 1.0)
        fake.kernels = "sparse"
        sparsify(fake, 0.7, calibration=torch.randn(8, 4))
    assert not isinstance(fake.act, SiteSplit)


# ------------------------------------------------------------------------------ the pieces


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_sparse_site_equals_the_registry(name):
    act = get_activation(name)
    tau, m = 0.4, (0.9 if act.clipped else math.inf)
    site = SparseSite(name, tau, m).double()
    tau, m = float(site.tau), float(site.m)  # the float32 buffers' values
    x = torch.linspace(-3, 3, 6001, dtype=torch.float64, requires_grad=True)
    y = site(x)
    np.testing.assert_allclose(y.detach().numpy(), act.fn(x.detach().numpy(), tau, m), rtol=0, atol=1e-15)
    y.sum().backward()
    away = (torch.abs(x.abs() - tau) > 1e-9) & (torch.abs(x.abs() - tau - m) > 1e-9)  # off the kinks
    np.testing.assert_array_equal(x.grad[away].numpy(), act.derivative(x.detach().numpy(), tau, m)[away.numpy()])
    assert set(site.state_dict()) == {"tau", "m"}
    with pytest.raises(ValueError, match="tau"):
        SparseSite(name, math.nan, m)
    if act.two_sided:
        with pytest.raises(ValueError, match="tau must be >= 0"):
            SparseSite(name, -0.1, m)
    else:
        assert float(SparseSite(name, -0.5, m)(torch.tensor(-0.5))) == 0.0  # a one-sided site may shift left


def deep_mlp(depth, width, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(depth):
        layers += [nn.Linear(784 if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def test_init_eoc_keeps_the_scale_through_depth():
    """A deep plain MLP re-initialised on the EoC: each site's q stays at q^1 (the fixed point)
    up to finite-width fluctuations, where PyTorch's default init loses it; the readout is kept.

    Band: per layer, q (averaged over N units) moves by the chi^2 of the weights, sqrt(2 / N) =
    0.045 relative for N = 1000, and by the empirical tau (the quantile of N nearly independent
    unit offsets, off by sqrt(s (1 - s) / N) / varphi(Phi^-1(s)) = 0.04 sqrt(q)), which moves
    E[phi^2] by about 0.06; the EoC map damps a deviation by V'(q*) = 0.7 a layer, so deviations
    settle at about 0.075 / sqrt(1 - 0.7^2) = 0.1 (seeds 0-2 give at most 0.2): 0.3 allowed."""
    depth, width = 8, 1000
    x = torch.randn(256, 784, generator=gen(1))
    model = deep_mlp(depth, width)
    readout = model[-1].weight.clone()
    report = sparsify(model, 0.7, calibration=x, init="eoc", generator=gen(2))
    point = solve_eoc("crelu", 0.7, 1.0, slope=0.7)
    assert [row.reinitialised for row in report] == [(str(2 * i),) for i in range(depth)]
    q_star = point.sigma_w2 * 1.0 / (1 - point.sigma_b2)  # unit-variance inputs
    qs = np.array([row.q for row in report])
    assert qs[0] == pytest.approx(q_star, rel=0.05)  # 784 inputs, 1000 units: ~2 % s.e.
    assert np.all(np.abs(qs / qs[0] - 1) < 0.3), qs
    fan_in_var = [float(model[2 * i].weight.detach().var()) * model[2 * i].in_features for i in range(depth)]
    assert fan_in_var == pytest.approx([point.sigma_w2] * depth, rel=0.02)  # >= 784k draws: 0.16 % s.e.
    assert torch.equal(model[-1].weight, readout)
    assert_on_target(model, report, torch.randn(256, 784, generator=gen(3)), 0.7)
    kept = sparsify(deep_mlp(depth, width), 0.7, calibration=x)  # default init: q decays ~3x a layer
    assert kept.sites[-1].q / kept.sites[0].q < 0.01


def test_init_eoc_finds_the_convs_behind_batchnorm_and_residuals():
    torch.manual_seed(0)
    model = ResNet18(width=2).train()
    report = sparsify(model, 0.7, calibration=torch.randn(32, 3, 8, 8, generator=gen(0)), init="eoc")
    feeds = {row.path: row.reinitialised for row in report}
    assert feeds["relu"] == ("conv1",)
    assert feeds["layer1.0.relu.0"] == ("layer1.0.conv1",)
    assert feeds["layer1.0.relu.1"] == ("layer1.0.conv2",)  # the identity branch is the site "relu"
    assert set(feeds["layer2.0.relu.1"]) == {"layer2.0.conv2", "layer2.0.downsample.0"}
    assert "fc" not in {p for paths in feeds.values() for p in paths}


def test_measure_sparsity_matches_hooks_and_needs_sites():
    model = mlp([nn.ReLU(), nn.SiLU()])
    report = sparsify(model, 0.9, activation="relu_tau", calibration=torch.randn(256, 20, generator=gen(0)))
    x = torch.randn(100, 20, generator=gen(1))
    got = measure_sparsity(model.train(), [(x[:50], 0), [x[50:], 1]])
    assert got == held_out_sparsity(model, report, x)
    assert list(got) == ["1", "3"]
    with pytest.raises(ValueError, match="no sparse activation site"):
        measure_sparsity(mlp([nn.ReLU()]), x)
    with pytest.raises(ValueError, match="no sparse activation site"):
        measure_sparsity(SparseMLP(20, 3, 2, 8, "crelu", 0.5, 1.0), x)  # its fused loop: use SparsityMeter


def test_state_dict_round_trip_and_resparsify():
    model = mlp([nn.ReLU(), nn.ReLU()])
    sparsify(model, 0.8, calibration=torch.randn(128, 20, generator=gen(0)))
    other = mlp([nn.ReLU(), nn.ReLU()], seed=1)
    sparsify(other, 0.6, activation="crelu", calibration=torch.randn(16, 20, generator=gen(1)))
    other.load_state_dict(model.state_dict())
    x = torch.randn(5, 20)
    assert torch.equal(other(x), model(x))
    report = sparsify(model, 0.9, calibration=torch.randn(512, 20, generator=gen(2)))  # again, new target
    assert [row.replaced for row in report] == ["SparseSite", "SparseSite"]
    assert_on_target(model, report, torch.randn(512, 20, generator=gen(3)), 0.9)


def test_lazy_top_level_attribute_keeps_torch_out_of_import():
    code = ("import sys, sparse_eoc\nassert 'torch' not in sys.modules\n"
            "from sparse_eoc import sparsify\nassert 'torch' in sys.modules and callable(sparsify)\n"
            "assert sparsify is sparse_eoc.sparsify\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ok"
    import sparse_eoc

    with pytest.raises(AttributeError, match="no attribute 'sparsfy'"):
        sparse_eoc.sparsfy  # noqa: B018
