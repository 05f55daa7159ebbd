"""Make any torch model sparse in place: swap its activations for per-site thresholded ones.

:func:`sparsify` replaces every activation module it can (``nn.ReLU``, ``nn.ReLU6``,
``nn.LeakyReLU``, ``nn.GELU``, ``nn.SiLU``, ``nn.ELU``, this package's own, and those
functions held as module attributes, like ``nn.TransformerEncoderLayer.activation``) by a
:class:`SparseSite` of the registry (docs/theory.md section 2) whose threshold tau and clip m
are calibrated per **site**. A site is one place in the data flow where an activation runs:
a module called twice per forward (the ``relu`` of a ``BasicBlock``) is two sites, split
into two modules at ``relu.0`` and ``relu.1``. For a site whose inputs h have second moment
q = E[h^2] (over batch, positions and channels of the calibration data):

- tau is the empirical ``sparsity``-quantile of h (of |h| for the two-sided ``st_tau``/``cst``),
  so a fraction ``sparsity`` of the site's outputs is 0 on data like the calibration data,
  whatever the distribution of h (more where many h tie at the quantile, e.g. the constant
  background of MNIST images after the first conv). For Gaussian h ~ N(0, q) it is the theory's
  ``tau = sqrt(q) Phi^-1(s)`` (``Phi^-1((1 + s) / 2)`` two-sided), shown beside it in the report.
  For a one-sided activation tau < 0 where more than ``sparsity`` of h is negative.
- m = sqrt(q) x the standardised clip whose EoC slope V'(q*) is ``slope``: the m of
  :func:`sparse_eoc.gp.eoc.solve_eoc` at q* = q (docs/theory.md sections 4.2 and 4.5).

The new modules compute out of place (an ``nn.ReLU(inplace=True)`` they replace did not).

Example, a ``BasicBlock`` (``conv1 -> bn1 -> relu -> conv2 -> bn2 -> + x -> relu``, one
``nn.ReLU`` called twice)::

    report = sparsify(model, 0.7, calibration=loader)   # model.layer1[0].relu is now a SiteSplit
    model.get_submodule("layer1.0.relu.1")              # SparseSite(crelu, tau=..., m=...)
    print(report)                                       # one row per site

:func:`sparse_eoc.nn.sparsity.measure_sparsity` reads the per-site sparsity later.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from sparse_eoc.activations import ACTIVATIONS, canonical_name, get_activation
from sparse_eoc.gp.eoc import solve_eoc, sparsity_range
from sparse_eoc.nn.activations import SparseActivation
from sparse_eoc.nn.init import eoc_normal_
from sparse_eoc.nn.mlp import SparseMLP
from sparse_eoc.nn.sparsity import (
    _batch_inputs,
    _frozen_buffers,
    _model_device,
    measure_sparsity,
)

__all__ = ["REPLACEABLE", "SiteReport", "SiteSplit", "SparseSite", "SparsifyReport", "SparsifyWarning", "sparsify"]

#: The activation module types :func:`sparsify` replaces (subclasses too).
REPLACEABLE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, SparseActivation)
#: Activation functions held as module attributes (``self.activation = F.relu``) that it replaces.
_FUNCTION_ATTRS = (F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, torch.relu)
#: Functional activations inside a forward, which cannot be swapped: detected and named in a warning.
_FUNCTIONAL = {F.relu: "F.relu", torch.relu: "torch.relu", torch.relu_: "torch.relu_", Tensor.relu: "Tensor.relu",
               Tensor.relu_: "Tensor.relu_", F.relu6: "F.relu6", F.leaky_relu: "F.leaky_relu",
               F.leaky_relu_: "F.leaky_relu_", F.gelu: "F.gelu", F.silu: "F.silu", F.elu: "F.elu", F.elu_: "F.elu_"}
#: The layers ``init="eoc"`` re-initialises, and the functions they call with their own weight.
_FEEDING = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYER_FUNCTIONS = (F.linear, F.conv1d, F.conv2d, F.conv3d)
#: At most this many elements per site enter the quantile (a seeded uniform sample beyond it:
#: the quantile's standard error is then about sqrt(s(1 - s) / 2^24) < 1.2e-4 in sparsity).
MAX_SAMPLES = 2**24


class SparsifyWarning(UserWarning):
    """Something :func:`sparsify` could not replace or split (functional activations, ...)."""


class SparseSite(SparseActivation):
    """One calibrated activation site: a registry activation whose tau and m are buffers.

    Computes the registry function (paper Section 2; docs/theory.md section 2) with tensor
    tau, m (no host sync), elementwise, shape ``(*) -> (*)``, the dtype and device of the input::

        relu_tau, crelu:  min(max(x - tau, 0), m)         (m = inf for relu_tau)
        st_tau, cst:      sign(x) min(max(|x| - tau, 0), m)

    The a.e. gradient is the registry's ``derivative``, except exactly at the clip points
    (|x| = tau + m), where it passes (a measure-zero set). ``tau`` and ``m`` are 0-d buffers of
    the default dtype (float32): in ``state_dict``, moved and cast by ``.to()``. ``bias_shift`` is 0 and
    ``forward_shifted_(h)`` is ``self(h)``, so a :class:`~sparse_eoc.nn.mlp.SparseMLP` can run it
    and its forward hooks still see every call.

    Args:
        activation: registry name ``relu_tau``, ``st_tau``, ``crelu`` or ``cst``.
        tau: threshold, finite; >= 0 for the two-sided ones (a one-sided site may have tau < 0).
        m: clip, > 0 (``inf`` = unclipped; must be inf for ``relu_tau``/``st_tau``).

    Raises:
        ValueError: an unknown name, or tau, m out of range (the message names the argument).
    """

    def __init__(self, activation: str, tau: float, m: float = math.inf) -> None:
        nn.Module.__init__(self)  # tau and m are buffers here, not SparseActivation's floats
        act = get_activation(activation)
        tau, m = float(tau), float(m)
        if not math.isfinite(tau):
            raise ValueError(f"tau must be finite, got tau={tau!r}")
        act.check_params(abs(tau), m)  # m > 0, inf when unclipped
        if act.two_sided and tau < 0:
            raise ValueError(f"tau must be >= 0 for the two-sided {act.name}, got tau={tau!r}")
        self.name, self._two_sided, self._clipped = act.name, act.two_sided, act.clipped
        self.bias_shift = 0.0
        self.register_buffer("tau", torch.tensor(tau))
        self.register_buffer("m", torch.tensor(m))

    def forward(self, x: Tensor) -> Tensor:
        if self._two_sided:
            y = x - torch.clamp(x, -self.tau, self.tau)  # soft threshold: 0 on |x| <= tau
            return torch.clamp(y, -self.m, self.m) if self._clipped else y
        y = torch.relu(x - self.tau)  # 0 on x <= tau
        return torch.clamp(y, max=self.m) if self._clipped else y

    def forward_shifted_(self, h_shifted: Tensor) -> Tensor:
        return self(h_shifted)

    def extra_repr(self) -> str:
        clip = f", m={float(self.m):.4g}" if self._clipped else ""
        return f"{self.name}, tau={float(self.tau):.4g}{clip}"


class SiteSplit(nn.ModuleList):
    """One activation module called k times per forward, split into k sites ``0..k-1``.

    The i-th call of a forward runs ``self[i]`` (calls are counted modulo k; the root model's
    forward pre-hook that :func:`sparsify` registers sets the count back to 0 at every forward).
    Valid when every forward makes the same k calls in the same order, which :func:`sparsify`
    checks on the calibration data. Also stands in for the shared activation of a
    :class:`~sparse_eoc.nn.mlp.SparseMLP` / :class:`~sparse_eoc.nn.cnn.SparseCNN` (``bias_shift``
    0, ``forward_shifted_`` = a call), one site per hidden layer. Shape ``(*) -> (*)``.
    """

    bias_shift = 0.0

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        super().__init__(modules)
        self._next = 0

    def forward(self, x: Tensor) -> Tensor:
        i = self._next
        self._next = (i + 1) % len(self)
        return self[i](x)

    def forward_shifted_(self, h_shifted: Tensor) -> Tensor:
        return self(h_shifted)

    def reset_hook(self, module: nn.Module, args) -> None:
        """Forward pre-hook for the root model: the next call is site 0."""
        self._next = 0


class _FunctionActivation(nn.Module):
    """A module around an activation function held as an attribute, so hooks see its calls."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn, self.extra_args = fn, False

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        self.extra_args |= bool(args or kwargs)
        return self.fn(x, *args, **kwargs)


@dataclass(frozen=True)
class SiteReport:
    """One calibrated site of :func:`sparsify`.

    Attributes:
        path: the site's module path (``model.get_submodule(path)`` is its :class:`SparseSite`).
        replaced: the class (or function) it replaced, e.g. ``ReLU``, ``relu (function)``.
        q: second moment E[h^2] of the site's calibration inputs, > 0.
        tau: the threshold: the empirical quantile of h (or |h|).
        tau_gaussian: the threshold the theory gives for h ~ N(0, q) (docs/theory.md section 2).
        m: the clip, sqrt(q) x the standardised clip for the slope (inf when unclipped).
        sparsity: the target fraction of zeros.
        measured: the fraction of zeros of the site's outputs on the calibration data.
        reinitialised: with ``init="eoc"``, the paths of the layers re-initialised for this site.
    """

    path: str
    replaced: str
    q: float
    tau: float
    tau_gaussian: float
    m: float
    sparsity: float
    measured: float
    reinitialised: tuple[str, ...] = ()


@dataclass(frozen=True)
class SparsifyReport:
    """What :func:`sparsify` did: the settings, one :class:`SiteReport` per site in data-flow
    order (iterate the report, or look one up with :meth:`site`), and the warnings it issued.
    ``print(report)`` shows a table."""

    activation: str
    sparsity: float
    slope: float | None
    init: str
    num_batches: int
    num_examples: int
    sites: tuple[SiteReport, ...]
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self):
        return iter(self.sites)

    def site(self, path: str) -> SiteReport:
        """The row of the site at ``path``; KeyError if there is none."""
        for row in self.sites:
            if row.path == path:
                return row
        raise KeyError(f"no site at {path!r}; sites: {', '.join(r.path for r in self.sites)}")

    def __str__(self) -> str:
        slope = "" if self.slope is None else f", slope V'(q*) = {self.slope:g}"
        lines = [(f"sparsify: {self.activation} at sparsity {self.sparsity:g}{slope}, init={self.init}; "
                  f"{len(self.sites)} sites calibrated on {self.num_batches} batches ({self.num_examples} examples)")]
        width = max(len("site"), *(len(r.path) for r in self.sites))
        kind = max(len("replaced"), *(len(r.replaced) for r in self.sites))
        head = (f"{'site':<{width}}  {'replaced':<{kind}}  {'q':>9}  {'tau':>8}  {'tau(gauss)':>10}  {'m':>8}"
                f"  {'target':>6}  {'measured':>8}")
        lines += [head, "-" * len(head)]
        for r in self.sites:
            line = (f"{r.path:<{width}}  {r.replaced:<{kind}}  {r.q:>9.4g}  {r.tau:>8.4f}  {r.tau_gaussian:>10.4f}"
                    f"  {r.m:>8.4f}  {r.sparsity:>6.3f}  {r.measured:>8.4f}")
            lines.append(line + (f"  re-init: {', '.join(r.reinitialised)}" if r.reinitialised else ""))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ------------------------------------------------------------------------------- helpers


class _SiteReached(Exception):
    """Raised by a calibration hook once its site's input is captured: the rest of the forward is not needed."""


class _Edits:
    """An undo log of the changes to the model, rolled back if :func:`sparsify` fails."""

    def __init__(self) -> None:
        self._undo: list = []

    def assign(self, parent: nn.Module, name: str, value) -> None:
        old = parent._modules[name] if name in parent._modules else getattr(parent, name)
        self._undo.append(lambda: _assign(parent, name, old))
        _assign(parent, name, value)

    def save(self, tensor: Tensor | None) -> None:
        if tensor is not None:
            value = tensor.detach().clone()
            self._undo.append(lambda: tensor.data.copy_(value))

    def keep(self, handle) -> None:
        self._undo.append(handle.remove)

    def rollback(self) -> None:
        with torch.no_grad():
            for undo in reversed(self._undo):
                undo()


def _assign(parent: nn.Module, name: str, value) -> None:
    if not isinstance(value, nn.Module) and name in parent._modules:
        del parent._modules[name]  # a module attribute going back to a function
    setattr(parent, name, value)


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return model.get_submodule(parent), name


class _Spy(TorchFunctionMode):
    """Sees every torch function call: functional activations outside the activation modules
    (with the innermost module path), and the inputs and outputs of the watched layers'
    ``F.linear``/``F.conv*`` calls (by weight identity)."""

    def __init__(self, layers: dict[int, nn.Module]) -> None:
        super().__init__()
        self.layers = layers  # id(weight) -> layer
        self.node_layer: dict = {}  # output grad_fn -> layer
        self.input_moments: dict[int, list[float]] = {}  # id(layer) -> [sum of squares, elements]
        self.functional: dict[tuple[str, str], int] = {}  # (function, module path) -> calls
        self.stack: list[str] = []
        self.depth = 0  # > 0 inside an activation module

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _LAYER_FUNCTIONS:
            weight = args[1] if len(args) > 1 else (kwargs or {}).get("weight")
            layer = self.layers.get(id(weight))
            if layer is not None:
                moments = self.input_moments.setdefault(id(layer), [0.0, 0])
                moments[0] += float(args[0].detach().double().square().sum())
                moments[1] += args[0].numel()
                if out.grad_fn is not None:
                    self.node_layer[out.grad_fn] = layer
        elif self.depth == 0 and func in _FUNCTIONAL:
            key = (_FUNCTIONAL[func], self.stack[-1] if self.stack else "the model")
            self.functional[key] = self.functional.get(key, 0) + 1
        return out


def _feeding_layers(starts: list, node_layer: dict, stops: set) -> list[nn.Module]:
    """The watched layers whose outputs reach the autograd nodes ``starts`` through other
    operations only: the walk stops at a watched layer's output and at a site's output."""
    found, seen, todo = [], set(), [n for n in starts if n is not None]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        layer = node_layer.get(node)
        if layer is not None:
            if layer not in found:
                found.append(layer)
        elif node not in stops:
            todo.extend(fn for fn, _ in node.next_functions if fn is not None)
    return found


@dataclass
class _Site:
    """A site to calibrate: the ``call``-th call of ``target`` (None: all its calls, pooled)."""

    target: nn.Module
    call: int | None
    paths: list[str]
    replaced: str
    order: tuple[int, int]
    feeding: list[nn.Module]
    captures: int = 1  # calls captured per forward


def _forward(model: nn.Module, inputs: list[Tensor], device) -> None:
    for x in inputs:
        try:
            model(x if device is None else x.to(device))
        except _SiteReached:
            pass


def _stop_hook(site: _Site, on_input):
    """A forward pre-hook for ``site.target``: calls ``on_input(x)`` at the site's call(s), then
    stops the forward (a pooled site runs on). Its ``calls`` counter must be zeroed per forward."""

    def hook(module: nn.Module, args) -> None:
        j, hook.calls = hook.calls, hook.calls + 1
        if site.call is None or j == site.call:
            on_input(args[0])
            if site.call is not None:
                raise _SiteReached

    hook.calls = 0
    return hook


def _run_to_site(model: nn.Module, inputs: list[Tensor], device, site: _Site, on_input) -> None:
    hook = _stop_hook(site, on_input)
    handle = site.target.register_forward_pre_hook(hook)
    try:
        for x in inputs:
            hook.calls = 0
            _forward(model, [x], device)
    finally:
        handle.remove()


def _calibration_inputs(model, inputs, device, site: _Site, two_sided: bool):
    """(q, sample) of the site's inputs: E[h^2] over all elements, and up to MAX_SAMPLES of h (|h|)."""
    per_capture = max(1, MAX_SAMPLES // (len(inputs) * site.captures))
    moments, samples = [0.0, 0], []

    def capture(h: Tensor) -> None:
        if not h.is_floating_point():
            raise ValueError(f"calibration: the site {site.paths[0]!r} got a {h.dtype} input; it needs floats")
        h = h.detach().float().flatten()  # (numel,)
        moments[0] += float(h.double().square().sum())
        moments[1] += h.numel()
        h = h.abs() if two_sided else h
        if h.numel() > per_capture:  # a seeded uniform sample (with replacement)
            gen = torch.Generator(device=h.device).manual_seed(len(samples))
            h = h[torch.randint(h.numel(), (per_capture,), generator=gen, device=h.device)]
        samples.append(h)

    _run_to_site(model, inputs, device, site, capture)
    if not samples:
        raise ValueError(f"calibration: the site {site.paths[0]!r} did not run on the calibration data")
    return moments[0] / moments[1], torch.cat(samples)


def _quantile(sample: Tensor, s: float) -> float:
    """The k-th smallest of ``sample`` with k = ceil(s N): at least a fraction s is <= it (0 for k = 0)."""
    k = math.ceil(s * sample.numel())
    return 0.0 if k == 0 else float(sample.kthvalue(k).values)


def _check_arguments(model, sparsity, activation, slope, init) -> tuple[str, float, float]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")  # noqa: TRY004
    name = canonical_name(activation)
    if name != activation:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got activation={activation!r} "
                         "(plain ReLU has a fixed sparsity 0.5)")
    lo, hi = sparsity_range(name)
    s = float(sparsity)
    if not lo <= s < hi:
        raise ValueError(f"sparsity for {name} must be in [{lo}, {hi}), got sparsity={sparsity!r}")
    slope = float(slope)
    if not 0.0 < slope < 1.0:
        raise ValueError(f"slope (the target V'(q*) of the clip) must be in (0, 1), got slope={slope!r}")
    if init not in ("keep", "eoc"):
        raise ValueError(f"init must be 'keep' or 'eoc', got init={init!r}")
    return name, s, slope


def _prepare(model: nn.Module, edits: _Edits) -> dict[int, tuple[object, str]]:
    """Put a stand-in where an activation would run unseen by hooks: a :class:`SparseSite` of the
    same (name, tau, m) for each of this package's activation modules (SparseMLP, SparseCNN and
    ResCNN call theirs through ``forward_shifted_``), a module around each activation function
    held as an attribute. Returns {id(stand-in): (the original, its description)}."""
    for path, sub in model.named_modules():
        if isinstance(sub, SparseMLP) and sub.kernels != "dense":
            raise ValueError(f"model: the SparseMLP at {path or 'the root'!r} uses kernels={sub.kernels!r}, "
                             "which take one clip for all layers; set_kernels_(model, 'dense') first")
    originals: dict[int, tuple[object, str]] = {}
    shared: dict[int, nn.Module] = {}  # id(original module) -> its stand-in (one per module, so sharing stays)
    for path, mod in list(model.named_modules(remove_duplicate=False)):
        if path and isinstance(mod, SparseActivation) and not isinstance(mod, SparseSite):
            standin = shared.get(id(mod))
            if standin is None:
                standin = shared[id(mod)] = SparseSite(mod.name, mod.tau, mod.m)
                originals[id(standin)] = (mod, type(mod).__name__)
            edits.assign(*_parent(model, path), standin)
    for sub in list(model.modules()):
        for attr, value in list(vars(sub).items()):
            if not attr.startswith("__") and any(value is fn for fn in _FUNCTION_ATTRS):
                wrapper = _FunctionActivation(value)
                edits.assign(sub, attr, wrapper)
                originals[id(wrapper)] = (value, f"{value.__name__} (function)")
    return originals


def _candidates(model: nn.Module) -> dict[int, tuple[nn.Module, list[str]]]:
    """{id: (module, its paths)} of the replaceable modules (a SiteSplit's own sites excluded)."""
    found: dict[int, tuple[nn.Module, list[str]]] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        kind = isinstance(mod, (*REPLACEABLE, SiteSplit, _FunctionActivation))
        if path and kind and not isinstance(_parent(model, path)[0], SiteSplit):
            found.setdefault(id(mod), (mod, []))[1].append(path)
    return found


@dataclass
class _Discovery:
    """What the first pass over the calibration data saw (see :func:`_discover`)."""

    calls: list[dict[int, int]]  # per batch: id(candidate) -> calls in that forward
    first: dict[tuple[int, int], tuple[int, int]]  # (id, call) -> (batch, position) of its first run
    starts: dict[tuple[int, int], object]  # (id, call) -> grad_fn of its input on batch 0
    stops: set  # grad_fn of every candidate output on batch 0
    spy: _Spy


def _discover(model: nn.Module, inputs: list[Tensor], device, candidates: dict, *, graph: bool) -> _Discovery:
    """Run every batch once with hooks: which candidate runs how often and in which order; on
    batch 0 the functional activations and, with ``graph``, the autograd graph (grad on).

    Raises:
        ValueError: a batch the model rejects (naming ``calibration`` and the batch).
    """
    layers = {id(m.weight): m for m in model.modules() if isinstance(m, _FEEDING)} if graph else {}
    found = _Discovery([], {}, {}, set(), _Spy(layers))
    spy = found.spy
    labels = {id(m): f"{p!r} ({type(m).__name__})" if p else f"the model ({type(m).__name__})"
              for p, m in model.named_modules()}

    def pre(module, args):
        calls = found.calls[-1]
        j = calls[id(module)] = calls.get(id(module), 0) + 1
        found.first.setdefault((id(module), j - 1), (len(found.calls) - 1, len(found.first)))
        if len(found.calls) == 1:
            found.starts[(id(module), j - 1)] = getattr(args[0], "grad_fn", None)
        spy.depth += 1

    def post(module, args, out):
        spy.depth -= 1
        if len(found.calls) == 1 and getattr(out, "grad_fn", None) is not None:
            found.stops.add(out.grad_fn)

    def enter(module, args):
        spy.stack.append(labels[id(module)])

    def leave(module, args, out):
        spy.stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m, _ in candidates.values()]
    handles += [m.register_forward_hook(post, always_call=True) for m, _ in candidates.values()]
    handles += [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave, always_call=True) for m in model.modules()]
    frozen = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad] if graph else []
    try:
        for p in frozen:
            p.requires_grad_(True)  # so that the graph links every layer
        for i, x in enumerate(inputs):
            found.calls.append({})
            try:
                with torch.set_grad_enabled(graph and i == 0), spy if i == 0 else contextlib.nullcontext():
                    model(x if device is None else x.to(device))
            except Exception as err:
                raise ValueError(f"calibration batch {i} (shape {tuple(x.shape)}, {x.dtype}) was rejected by the "
                                 f"model: {type(err).__name__}: {err}") from err
    finally:
        for handle in handles:
            handle.remove()
        for p in frozen:
            p.requires_grad_(False)
    return found


def _plan(model: nn.Module, candidates: dict, originals: dict, found: _Discovery,
          edits: _Edits) -> tuple[list[_Site], list[str]]:
    """The sites in data-flow order, and the warnings; splits the modules called k > 1 times.

    Raises:
        ValueError: no site (naming ``model``).
    """
    notes = [f"{fn} runs functionally in the forward of {where} ({n} calls on batch 0): "
             "it cannot be swapped; use an activation module there"
             for (fn, where), n in found.spy.functional.items()]
    sites: list[_Site] = []
    for key, (mod, paths) in candidates.items():
        counts = [calls.get(key, 0) for calls in found.calls]
        original, kind = originals.get(key, (mod, type(mod).__name__))
        extra_args = isinstance(mod, _FunctionActivation) and mod.extra_args
        if original is not mod and (max(counts) == 0 or extra_args):
            for p in paths:  # not a site: the original goes back
                edits.assign(*_parent(model, p), original)
        if extra_args:
            notes.append(f"{paths[0]!r} holds {kind} called with extra arguments; left as is")
            continue
        if max(counts) == 0:
            notes.append(f"{paths[0]!r} ({kind}) did not run on the calibration data; left as is")
            continue

        def feeding(calls: Iterable[int], key=key) -> list[nn.Module]:
            return _feeding_layers([found.starts.get((key, j)) for j in calls], found.spy.node_layer, found.stops)

        if min(counts) != max(counts):
            notes.append(f"{paths[0]!r} ({kind}) ran {min(counts)} to {max(counts)} times per forward: it cannot "
                         "be split per call, so one tau and m are calibrated over all its calls")
            order = min(v for (k, _), v in found.first.items() if k == key)
            sites.append(_Site(mod, None, paths, kind, order, feeding(range(counts[0])), captures=max(counts)))
            continue
        target = mod
        if isinstance(mod, SiteSplit) and counts[0] != len(mod):
            raise ValueError(f"model: the split site {paths[0]!r} ran {counts[0]} times per forward "
                             f"but has {len(mod)} sites")
        if counts[0] > 1 and not isinstance(mod, SiteSplit):
            target = SiteSplit([mod] * counts[0])
            for p in paths:
                edits.assign(*_parent(model, p), target)
            edits.keep(model.register_forward_pre_hook(target.reset_hook))
        for j in range(counts[0]):
            kind_j = type(mod[j]).__name__ if isinstance(mod, SiteSplit) else kind
            sites.append(_Site(target, j, paths, kind_j, found.first[(key, j)], feeding([j])))
    if not sites:
        why = "; ".join(notes) if notes else "no activation module or activation function attribute was found"
        raise ValueError(f"model has no replaceable activation site ({type(model).__name__}): {why}")
    return sorted(sites, key=lambda site: site.order), notes


def _reinitialise(model: nn.Module, inputs: list[Tensor], device, site: _Site, layers: list[nn.Module],
                  point1, edits: _Edits, generator) -> None:
    """``init="eoc"``: refill ``layers`` (feeding ``site``) at the EoC point for their input moments."""
    if not layers:
        return
    probe = _Spy({id(layer.weight): layer for layer in layers})
    with probe:
        _run_to_site(model, inputs, device, site, lambda h: None)  # the layers' inputs, upstream final
    for layer in layers:
        sum_sq, n = probe.input_moments.get(id(layer), (0.0, 1))
        q_star = point1.sigma_w2 * (sum_sq / n) / (1.0 - point1.sigma_b2)
        edits.save(layer.weight)
        edits.save(layer.bias)
        eoc_normal_(layer, point1.sigma_w2, point1.sigma_b2 * q_star, generator=generator)


def _calibrate(model: nn.Module, inputs: list[Tensor], device, site: _Site, point1, edits: _Edits):
    """Measure the site's q and tau, install its :class:`SparseSite`; returns (site module, q, tau, EoC point).

    Raises:
        ValueError: the site's inputs have q = 0 or a non-finite q (naming ``calibration``).
    """
    name, s = point1.activation, point1.sparsity
    q, sample = _calibration_inputs(model, inputs, device, site, get_activation(name).two_sided)
    if not (math.isfinite(q) and q > 0):
        raise ValueError(f"calibration: the inputs of the site {site.paths[0]!r} have second moment q={q!r}; "
                         "it needs a finite q > 0 (a dead or diverging site)")
    point = solve_eoc(name, s, q, m=point1.m * math.sqrt(q))  # m = sqrt(q) x the standardised clip
    tau = _quantile(sample, s)
    new = SparseSite(name, tau, point.m).to(device=sample.device)
    if isinstance(site.target, SiteSplit) and site.call is not None:
        edits.assign(site.target, str(site.call), new)
    else:
        for p in site.paths:
            edits.assign(*_parent(model, p), new)
    for p in site.paths:
        parent = _parent(model, p)[0]
        if getattr(parent, "activation_relu_or_gelu", 0):  # its fused fast path would skip the new module
            edits.assign(parent, "activation_relu_or_gelu", 0)
    return new, q, tau, point


# -------------------------------------------------------------------------------- the API


def sparsify(
    model: nn.Module,
    sparsity: float,
    *,
    activation: str = "crelu",
    slope: float = 0.7,
    calibration: Tensor | Iterable,
    init: str = "keep",
    generator: torch.Generator | None = None,
) -> SparsifyReport:
    """Replace every activation of ``model`` in place by a calibrated sparse one, site by site.

    The model runs on ``calibration`` in its current mode (train or eval) under
    ``torch.no_grad()``, once to find the sites and their data-flow order, then site by site,
    each one after the sites upstream of it are replaced, each pass stopping at its site.
    BatchNorm running statistics (every buffer) are left unchanged. Per site, tau and m are set
    as in the module docstring and a :class:`SparseSite` is installed at the same attribute path
    (a module called k > 1 times per forward becomes a :class:`SiteSplit` of k sites,
    ``path.0`` ... ``path.{k-1}``; this package's SparseMLP / SparseCNN become ``act.0`` ...
    ``act.{L-1}``, one per hidden layer). Fused paths that would skip the new module are
    disabled (``nn.TransformerEncoderLayer``'s fast path in eval mode under ``no_grad``).
    Calibrate in the mode the model will run in: train mode for training from scratch with
    BatchNorm, eval mode for a pretrained model evaluated.

    ``init="eoc"`` also re-initialises the layers that feed each site: every ``nn.Linear`` /
    ``nn.Conv1d/2d/3d`` whose output reaches the site's input through other operations only
    (BatchNorm, additions, ...; not through another layer or site), found on the autograd graph
    of the first batch. Each gets the EoC point of the site's activation, sparsity and slope
    (docs/theory.md section 3.3): W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2) with
    sigma_b^2 = sigma_b^2(q* = 1) q*, where q* = sigma_w^2 E[x^2] / (1 - sigma_b^2(q* = 1)) is the
    fixed point for the layer's measured input second moment E[x^2] (for x = phi(h) from an
    upstream EoC site at q', q* = q', so a chain keeps its scale; docs/theory.md section 4.5).

    Activations applied functionally inside a forward (``F.relu(x)``, ``x.relu()``) cannot be
    swapped: those that run on the first calibration batch are named in a :class:`SparsifyWarning`,
    as are modules that did not run and modules called a varying number of times per forward
    (those get one tau and m over all their calls).

    Args:
        model: any ``nn.Module``; changed in place (restored if this raises).
        sparsity: the target fraction of zeros s at every site, in [0.5, 1) for ``relu_tau`` /
            ``crelu``, [0, 1) for ``st_tau`` / ``cst``.
        activation: registry name: ``crelu`` (default), ``cst``, ``relu_tau`` or ``st_tau``.
        slope: the target V'(q*) in (0, 1) that fixes the clip of ``crelu`` / ``cst``
            (docs/theory.md section 4.2); unused by the unclipped ones.
        calibration: a tensor (one batch), or an iterable of tensors or of (input, target) pairs;
            each input is moved to the model's device and run as ``model(input)``.
        init: ``keep`` (the weights, e.g. a pretrained model) or ``eoc`` (see above).
        generator: random source of ``init="eoc"``, on the parameters' device; None = global RNG.

    Returns:
        A :class:`SparsifyReport`, one row per site in data-flow order.

    Raises:
        ValueError: naming the argument: ``sparsity``, ``slope``, ``activation`` or ``init`` out of
            range; ``calibration`` empty or malformed, a calibration batch the model rejects, or a
            site whose calibration inputs are all 0; ``model`` not a module or without a
            replaceable site.
    """
    name, s, slope = _check_arguments(model, sparsity, activation, slope, init)
    clipped = get_activation(name).clipped
    inputs = _batch_inputs(calibration, "calibration")
    device = _model_device(model)
    edits = _Edits()
    try:
        with _frozen_buffers(model):
            originals = _prepare(model, edits)
            candidates = _candidates(model)
            found = _discover(model, inputs, device, candidates, graph=init == "eoc")
            sites, notes = _plan(model, candidates, originals, found, edits)
            point1 = solve_eoc(name, s, 1.0, slope=slope if clipped else None)  # the scale-free EoC point
            rows, done_init = [], set()
            with torch.no_grad():
                for site in sites:
                    fresh = [layer for layer in site.feeding if id(layer) not in done_init]
                    _reinitialise(model, inputs, device, site, fresh, point1, edits, generator)
                    done_init.update(id(layer) for layer in fresh)
                    rows.append((*_calibrate(model, inputs, device, site, point1, edits), site, fresh))
            measured = measure_sparsity(model, inputs)
    except BaseException:
        edits.rollback()
        raise
    where = {id(m): p for p, m in model.named_modules()}
    reports = tuple(
        SiteReport(where[id(new)], site.replaced, q, tau, point.tau, point.m, s, measured.get(where[id(new)], math.nan),
                   tuple(where[id(layer)] for layer in fresh))
        for new, q, tau, point, site, fresh in rows
    )
    for note in notes:
        warnings.warn(note, SparsifyWarning, stacklevel=2)
    return SparsifyReport(name, s, slope if clipped else None, init, len(inputs), sum(len(x) for x in inputs),
                          reports, tuple(notes))
