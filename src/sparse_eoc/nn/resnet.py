"""Residual networks with sparsity-inducing activations, initialised by docs/theory.md section 8.

**Depth** is the number of residual blocks; the stem, the head activation and the readout are
not counted. Example, :class:`ResMLP` with depth=2, width=300, MNIST::

    h1 = Linear(784, 300)(x)                                the stem (no activation)
    h2 = h1 + alpha * Linear(300, 300)(phi_1(h1))           block 1
    h3 = h2 + alpha * Linear(300, 300)(phi_2(h2))           block 2
    logits = Linear(300, 10)(phi_3(h3))                     the head site, then the readout

so a depth-L ResMLP has L + 2 ``nn.Linear`` layers and L + 1 **activation sites**: ``hidden[0]``
is the stem, ``hidden[l]`` (l = 1..L) block l's W^l, b^l; ``sites[i]`` is the activation of site
i + 1 in forward order, and ``hidden[i]`` (i >= 1) reads the output of ``sites[i - 1]``.
:class:`ResCNN` has two k x k convolutions per block (``hidden[2l - 1]``, ``hidden[2l]``) with a
site before each, so 2 L + 1 sites, then global average pooling and the readout::

    h^{l+1} = h^l + alpha * conv_{l,2}(phi(conv_{l,1}(phi(h^l))))

Every site has its own (tau, m): the per-layer thresholds of docs/theory.md section 8.3 make
them grow with the predicted stream variance q^l; the fixed ones use one (tau, m) everywhere.
Training moves the stream's variance away from the prediction (the weights grow), and a
threshold set at init then loses the sparsity (docs/theory.md section 8.8); with
``tracked_sparsity`` a :class:`ThresholdTracker` holds it, as BatchNorm holds a mean.
``residual_scale`` is alpha (default 2 / sqrt(depth)). The sparsity meter counts every site, the
head included, so ``layer_sparsity`` has one entry per site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_eoc.activations import get_activation
from sparse_eoc.checks import check_int
from sparse_eoc.gp.residual import ResidualInit, default_residual_scale
from sparse_eoc.nn.activations import make_activation
from sparse_eoc.nn.init import delta_orthogonal_, eoc_normal_
from sparse_eoc.nn.sparse_linear import _sparse_linear_input
from sparse_eoc.nn.sparsity import SparsityMeter
from sparse_eoc.runs.config import PADDING_MODES, WEIGHT_INITS

#: Momentum of the running thresholds of ``tracked_sparsity`` (BatchNorm's default for its statistics).
THRESHOLD_MOMENTUM = 0.1
#: At most this many values of a site's input (whole examples, at least one) enter its quantile at each step.
QUANTILE_SAMPLE = 1 << 16
#: A tracked threshold stays above this fraction of its initial value (a batch whose s-quantile is
#: <= 0 would otherwise make tau, and with it m, zero).
TAU_FLOOR = 1e-6

__all__ = ["ResCNN", "ResMLP", "ThresholdTracker", "init_residual_"]


def _per_site(name: str, value: float | Sequence[float], n_sites: int) -> list[float]:
    """One value for every site, or a sequence of exactly ``n_sites`` values."""
    if isinstance(value, (int, float)):
        return [float(value)] * n_sites
    values = [float(v) for v in value]
    if len(values) != n_sites:
        raise ValueError(f"{name} must be one number or {n_sites} numbers (one per activation site), "
                         f"got {len(values)}")
    return values


def _check_scale(residual_scale: float | None, depth: int) -> float:
    if residual_scale is None:
        return default_residual_scale(depth)
    if isinstance(residual_scale, bool) or not (isinstance(residual_scale, (int, float))
                                                and math.isfinite(residual_scale) and residual_scale > 0):
        raise ValueError(f"residual_scale must be a finite number > 0 (None: 2 / sqrt(depth)), "
                         f"got residual_scale={residual_scale!r}")
    return float(residual_scale)


def _sites(activation: str, tau, m, n_sites: int) -> nn.ModuleList:
    taus, ms = _per_site("tau", tau, n_sites), _per_site("m", m, n_sites)
    return nn.ModuleList(make_activation(activation, t, c) for t, c in zip(taus, ms))


class ThresholdTracker(nn.Module):
    """Running thresholds that hold every activation site's sparsity at its target while training.

    In training mode, before site i is applied to its input h, its threshold becomes the
    running average (momentum ``momentum``, as BatchNorm's running statistics) of the batch's
    s-quantile of h (of |h| for the two-sided ``st_tau`` and ``cst``): the empirical rule of
    ``sparse_eoc.sparsify``, applied at every step. Its clip keeps its ratio to the threshold,
    m_i = m_i^0 tau_i / tau_i^0 (the initial (tau_i^0, m_i^0) of the site), so the slope of the
    clipped activation stays where the theory put it for a Gaussian input. The quantile is taken
    over the batch's first examples, as many as ``QUANTILE_SAMPLE`` values hold (at least one; the
    whole batch of a width-300 MLP), every unit and position of each. Only training steps move the
    thresholds (training mode with gradients enabled): eval mode, and forward passes under
    ``torch.no_grad()`` (calibration, ``measure_sparsity``), use them unchanged. docs/theory.md
    section 8.8.

    Args:
        sites: the model's activation modules (n_sites); their (tau, m) at construction are the
            initial thresholds (tau_i^0 > 0 each).
        sparsity: the target fraction of zeros s, in (0, 1).
        momentum: weight of each new batch quantile, in (0, 1].

    Attributes:
        running_tau: buffer ``(n_sites,)`` float64, the thresholds (in ``state_dict``; loading a
            state dict sets the sites' (tau, m) from it).

    Raises:
        ValueError: a sparsity or momentum out of range, or a site with tau = 0 (nothing to scale).
    """

    def __init__(self, sites: Sequence[nn.Module], sparsity: float, momentum: float = THRESHOLD_MOMENTUM) -> None:
        super().__init__()
        if isinstance(sparsity, bool) or not (isinstance(sparsity, (int, float)) and 0 < sparsity < 1):
            raise ValueError(f"tracked_sparsity must be in (0, 1), got {sparsity!r}")
        if isinstance(momentum, bool) or not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
            raise ValueError(f"threshold momentum must be in (0, 1], got {momentum!r}")
        self.initial = tuple((float(site.tau), float(site.m)) for site in sites)
        if any(tau <= 0 for tau, _ in self.initial):
            raise ValueError("tracked thresholds need tau > 0 at every site (plain ReLU has no threshold to track)")
        self.sparsity, self.momentum = float(sparsity), float(momentum)
        self.two_sided = [get_activation(site.name).two_sided for site in sites]
        self.register_buffer("running_tau", torch.tensor([tau for tau, _ in self.initial], dtype=torch.float64))

    @torch.no_grad()
    def update_(self, i: int, h: Tensor, site: nn.Module) -> None:
        """Fold the batch quantile of ``h`` (site i's input, any shape) into site i's thresholds."""
        h = h.detach()
        per_example = h[0].numel()
        x = h[: max(1, QUANTILE_SAMPLE // per_example)].reshape(-1)  # whole examples: every unit and position
        if self.two_sided[i]:
            x = x.abs()
        k = min(x.numel(), max(1, round(self.sparsity * x.numel())))
        quantile = float(x.kthvalue(k).values)
        if not math.isfinite(quantile):  # a diverging run: keep the thresholds, let the loss report it
            return
        tau = (1.0 - self.momentum) * float(self.running_tau[i]) + self.momentum * max(quantile, 0.0)
        tau = max(tau, TAU_FLOOR * self.initial[i][0])  # tau, m > 0 whatever the batch
        self.running_tau[i] = tau
        self._set(i, site, tau)

    def apply_(self, sites: Sequence[nn.Module]) -> None:
        """Give every site the running thresholds (after loading a state dict)."""
        for i, (site, tau) in enumerate(zip(sites, self.running_tau.tolist())):
            self._set(i, site, tau)

    def _set(self, i: int, site: nn.Module, tau: float) -> None:
        tau0, m0 = self.initial[i]
        site.tau, site.m = tau, m0 * tau / tau0  # m = inf stays inf
        site.bias_shift = 0.0 if self.two_sided[i] else tau

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity:g}, momentum={self.momentum:g}, sites={len(self.initial)}"


def _apply_loaded_thresholds(module: nn.Module, _keys) -> None:
    """load_state_dict post hook: the sites take the loaded running thresholds."""
    module.tracker.apply_(module.sites)


def _tracker(model: nn.Module, tracked_sparsity: float | None) -> ThresholdTracker | None:
    if tracked_sparsity is None:
        return None
    tracker = ThresholdTracker(model.sites, tracked_sparsity)
    model.register_load_state_dict_post_hook(_apply_loaded_thresholds)
    return tracker


def _linear(layer: nn.Linear, x: Tensor, bias: Tensor) -> Tensor:
    return F.linear(x, layer.weight, bias)  # (B, out_features)


class ResMLP(nn.Module):
    """Residual MLP: a linear stem, ``depth`` blocks h + alpha (W phi(h) + b), a head activation, a readout.

    Args:
        in_features: input dimension N_0 (784 for MNIST); inputs ``(B, *)`` are flattened.
        num_classes: logits, >= 1.
        depth: residual blocks L >= 1 (see the module docstring for an example).
        width: units of the stream and of every block, >= 1.
        activation: registry name (``relu_tau``, ``st_tau``, ``crelu``, ``cst``, ``relu``).
        tau: the threshold, >= 0: one number for every site, or depth + 1 numbers (forward order,
            the head site last).
        m: the clip, > 0 (inf: unclipped), one number or depth + 1 numbers.
        residual_scale: alpha > 0; None means 2 / sqrt(depth).
        tracked_sparsity: s in (0, 1): in training, every site's (tau, m) follows its input so
            that its sparsity stays s (:class:`ThresholdTracker`; needs tau > 0); None keeps them.

    Attributes:
        hidden: ``nn.ModuleList`` of the stem ``Linear(in_features, width)`` and the L block
            layers ``Linear(width, width)``; ``hidden[i]`` (i >= 1) reads ``sites[i - 1]``'s output.
        sites: ``nn.ModuleList`` of the L + 1 activation modules.
        readout: ``Linear(width, num_classes)`` on the head site's output.
        residual_scale: alpha.
        meter: a :class:`~sparse_eoc.nn.sparsity.SparsityMeter` or None; while set, each forward
            counts the zeros of all L + 1 sites.
        tracker: the :class:`ThresholdTracker` of ``tracked_sparsity``, or None.
        kernels: the training kernels (``sparse_eoc.nn.sparse_linear.set_kernels_``), ``dense`` here.

    Raises:
        ValueError: a non-positive size, a bad residual_scale, a tau or m list of the wrong
            length, or an invalid activation / (tau, m).
    """

    def __init__(self, in_features: int, num_classes: int, depth: int, width: int, activation: str,
                 tau: float | Sequence[float] = 0.0, m: float | Sequence[float] = math.inf, *,
                 residual_scale: float | None = None, tracked_sparsity: float | None = None) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features)
        num_classes = check_int("num_classes", num_classes)
        depth = check_int("depth", depth)
        width = check_int("width", width)
        self.residual_scale = _check_scale(residual_scale, depth)
        self.sites = _sites(activation, tau, m, depth + 1)
        self.hidden = nn.ModuleList(nn.Linear(in_features if i == 0 else width, width) for i in range(depth + 1))
        self.readout = nn.Linear(width, num_classes)
        self.meter: SparsityMeter | None = None
        self.kernels = "dense"
        self.tracker = _tracker(self, tracked_sparsity)

    @property
    def depth(self) -> int:
        """Residual blocks L."""
        return len(self.hidden) - 1

    @property
    def width(self) -> int:
        return self.readout.in_features

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of inputs ``(B, in_features)`` or ``(B, *)``."""
        if x.dim() > 2:
            x = x.flatten(1)  # (B, *) -> (B, in_features)
        pre_activation = _linear if self.kernels == "dense" else _sparse_linear_input(self)
        meter, counts = self.meter, []
        track = self.tracker.update_ if self.tracker is not None and self.training and torch.is_grad_enabled() else None
        h = self.hidden[0](x)  # (B, width): h^1, the stem
        for i, (site, layer) in enumerate(zip(self.sites, self.hidden[1:])):
            if track:
                track(i, h, site)
            a = site(h)  # (B, width): phi(h^l)
            if meter is not None:
                counts.append(meter.count_nonzero(a))
            h = torch.add(h, pre_activation(layer, a, layer.bias), alpha=self.residual_scale)  # h^{l+1}
        if track:
            track(self.depth, h, self.sites[-1])
        a = self.sites[-1](h)  # (B, width): the head site
        if meter is not None:
            counts.append(meter.count_nonzero(a))
            meter.add_counts(torch.stack(counts), a.numel(), a.shape[0])  # (L + 1,)
        return self.readout(a)

    def hidden_states(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The L + 1 pairs (h, phi(h)) of the sites, each ``(B, width)``: computed the plain way
        (any dtype and grad mode, not metered, dense kernels)."""
        if x.dim() > 2:
            x = x.flatten(1)  # (B, *) -> (B, in_features)
        h, states = self.hidden[0](x), []
        for site, layer in zip(self.sites, self.hidden[1:]):
            a = site(h)
            states.append((h, a))
            h = h + self.residual_scale * layer(a)
        states.append((h, self.sites[-1](h)))
        return states

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}, residual_scale={self.residual_scale:g}"


class ResCNN(nn.Module):
    """Residual CNN: a conv stem, ``depth`` blocks of two k x k convs, a head activation, pooling, a readout.

    Block l: h^{l+1} = h^l + alpha (conv_{l,2}(phi(conv_{l,1}(phi(h^l))))); all convs have stride
    1, "same" padding and ``channels`` channels (the stem maps ``in_channels`` to them); no
    normalisation. The head site's output is averaged over (H, W) and read out.

    Args:
        in_channels: channels of the input image (1 for MNIST, 3 for CIFAR-10).
        num_classes: logits, >= 1.
        depth: residual blocks L >= 1 (2 L + 1 activation sites).
        channels: channels of the stream and of every conv, >= 1.
        activation: registry name.
        tau, m: one number for every site, or 2 L + 1 numbers (forward order: block 1's outer
            and inner sites, ..., the head site).
        kernel_size: odd k >= 1.  padding_mode: ``zeros`` or ``circular``.
        residual_scale: alpha > 0; None means 2 / sqrt(depth).
        tracked_sparsity: s in (0, 1): in training, every site's (tau, m) follows its input so
            that its sparsity stays s (:class:`ThresholdTracker`; needs tau > 0); None keeps them.

    Attributes:
        hidden: ``nn.ModuleList`` of the stem conv and the 2 L block convs; ``hidden[i]`` (i >= 1)
            reads ``sites[i - 1]``'s output.
        sites: the 2 L + 1 activation modules.  readout: ``Linear(channels, num_classes)``.
        residual_scale: alpha.  meter, tracker: as for :class:`ResMLP`.

    Raises:
        ValueError: a non-positive size, an even kernel, an unknown padding mode, a bad
            residual_scale, tau or m lists of the wrong length, or an invalid activation.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, channels: int, activation: str,
                 tau: float | Sequence[float] = 0.0, m: float | Sequence[float] = math.inf, *,
                 kernel_size: int = 3, padding_mode: str = "zeros", residual_scale: float | None = None,
                 tracked_sparsity: float | None = None) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("depth", depth),
                            ("channels", channels), ("kernel_size", kernel_size)):
            check_int(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got kernel_size={kernel_size!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        self.residual_scale = _check_scale(residual_scale, depth)
        self.sites = _sites(activation, tau, m, 2 * depth + 1)
        self.hidden = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size, padding=kernel_size // 2,
                      padding_mode=padding_mode)
            for i in range(2 * depth + 1)
        )
        self.readout = nn.Linear(channels, num_classes)
        self.meter: SparsityMeter | None = None
        self.tracker = _tracker(self, tracked_sparsity)

    @property
    def depth(self) -> int:
        """Residual blocks L."""
        return (len(self.hidden) - 1) // 2

    @property
    def channels(self) -> int:
        return self.readout.in_features

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, in_channels, H, W)``."""
        meter, counts = self.meter, []
        track = self.tracker.update_ if self.tracker is not None and self.training and torch.is_grad_enabled() else None
        h = self.hidden[0](x)  # (B, C, H, W): h^1, the stem
        for l in range(self.depth):
            outer, inner = self.sites[2 * l], self.sites[2 * l + 1]
            conv1, conv2 = self.hidden[2 * l + 1], self.hidden[2 * l + 2]
            if track:
                track(2 * l, h, outer)
            a = outer(h)  # (B, C, H, W): phi(h^l)
            if track:  # the inner site's threshold comes from conv1's output, so it cannot be folded first
                g = conv1(a)
                track(2 * l + 1, g, inner)
                g = inner.forward_shifted_(g - inner.bias_shift if inner.bias_shift else g)  # phi(g^l)
            else:
                shift = inner.bias_shift  # fold the inner site's tau into conv1's bias, then phi in place
                g = inner.forward_shifted_(conv1._conv_forward(a, conv1.weight, conv1.bias - shift if shift else
                                                               conv1.bias))  # phi(g^l), (B, C, H, W)
            if meter is not None:
                counts += [meter.count_nonzero(a), meter.count_nonzero(g)]
            h = torch.add(h, conv2(g), alpha=self.residual_scale)  # h^{l+1}
        if track:
            track(2 * self.depth, h, self.sites[-1])
        a = self.sites[-1](h)  # (B, C, H, W): the head site
        if meter is not None:
            counts.append(meter.count_nonzero(a))
            meter.add_counts(torch.stack(counts), a.numel(), a.shape[0])  # (2 L + 1,)
        return self.readout(a.mean(dim=(2, 3)))  # (B, C) -> (B, classes)

    def hidden_states(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The 2 L + 1 pairs (h, phi(h)) of the sites, each ``(B, channels, H, W)``, the plain way."""
        h, states = self.hidden[0](x), []
        for l in range(self.depth):
            outer, inner = self.sites[2 * l], self.sites[2 * l + 1]
            a = outer(h)
            g = self.hidden[2 * l + 1](a)  # the inner site's pre-activation
            b = inner(g)
            states += [(h, a), (g, b)]
            h = h + self.residual_scale * self.hidden[2 * l + 2](b)
        states.append((h, self.sites[-1](h)))
        return states

    def extra_repr(self) -> str:
        k = self.hidden[0].kernel_size[0]
        return (f"depth={self.depth}, channels={self.channels}, kernel_size={k}, "
                f"residual_scale={self.residual_scale:g}")


def init_residual_(
    model: ResMLP | ResCNN,
    init: ResidualInit,
    *,
    input_sigma_w2: float,
    readout_sigma_w2: float = 1.0,
    weight_init: str = "gaussian",
    generator: torch.Generator | None = None,
) -> ResMLP | ResCNN:
    """Initialise a residual network in place by the theory of docs/theory.md section 8.

    - the stem: W ~ N(0, input_sigma_w2 / fan_in), b ~ N(0, init.base.sigma_b2), so that
      q^1 = q* (:func:`~sparse_eoc.nn.init.input_weight_variance`);
    - ``hidden[i]``, i >= 1, the layer that reads site i: W ~ N(0, sigma_w2 / fan_in),
      b ~ N(0, sigma_b2) of ``init.sites[i - 1]``;
    - readout: W ~ N(0, readout_sigma_w2 / channels or width), b = 0 (as ``init_eoc_``).

    Layers are filled in that order, so one generator state gives one network.

    Args:
        model: a :class:`ResMLP` (``init.convs_per_block`` = 1) or :class:`ResCNN` (2) of
            ``init.depth`` blocks whose sites hold ``init``'s (tau, m).
        init: from :func:`sparse_eoc.gp.residual_init`.
        input_sigma_w2: the stem's sigma_w^2 > 0.  readout_sigma_w2: > 0.
        weight_init: ``gaussian``, or ``delta_orthogonal`` (ResCNN only).
        generator: random source on the model's device; None = the global RNG.

    Returns:
        ``model``.

    Raises:
        ValueError: a model that does not match ``init`` (kind, depth, or a site's tau or m),
            a bad variance, or an unknown weight_init.
    """
    convs = 1 if isinstance(model, ResMLP) else 2 if isinstance(model, ResCNN) else None
    if convs is None:
        raise ValueError(f"model must be a ResMLP or ResCNN, got a {type(model).__name__}")
    if (convs, model.depth) != (init.convs_per_block, init.depth):
        raise ValueError(f"init describes depth {init.depth} with {init.convs_per_block} site(s) per block, "
                         f"the model depth {model.depth} with {convs}")
    for i, (site, p) in enumerate(zip(model.sites, init.sites)):
        if not (math.isclose(site.tau, p.tau, rel_tol=1e-12, abs_tol=1e-300) and
                (site.m == p.m or math.isclose(site.m, p.m, rel_tol=1e-12))):
            raise ValueError(f"site {i + 1} of the model has (tau, m) = ({site.tau!r}, {site.m!r}), "
                             f"init has ({p.tau!r}, {p.m!r}): build the model from the same ResidualInit")
    if not math.isclose(model.residual_scale, init.residual_scale, rel_tol=1e-12):
        raise ValueError(f"the model's residual_scale {model.residual_scale!r} is not init's {init.residual_scale!r}")
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got weight_init={weight_init!r}")
    if weight_init == "delta_orthogonal" and convs == 1:
        raise ValueError("weight_init=delta_orthogonal applies to conv layers (ResCNN) only")
    fill = eoc_normal_ if weight_init == "gaussian" else delta_orthogonal_
    fill(model.hidden[0], input_sigma_w2, init.base.sigma_b2, generator=generator)
    for layer, p in zip(model.hidden[1:], init.sites):
        fill(layer, p.sigma_w2, p.sigma_b2, generator=generator)
    eoc_normal_(model.readout, readout_sigma_w2, 0.0, generator=generator)
    return model
