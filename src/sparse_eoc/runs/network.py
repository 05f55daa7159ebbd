"""The network a run builds, as data: :class:`NetworkSpec` (no torch).

``config.json["network"]`` holds one; :func:`sparse_eoc.nn.build.build_model` turns it into
a module. It owns the one convention for an unclipped activation: m = inf in Python, ``null``
in JSON (strict JSON has no Infinity).

Example (an MLP of depth 3 on MNIST)::

    spec = NetworkSpec(kind="mlp", image_shape=(1, 28, 28), num_classes=10, depth=3,
                       activation="crelu", tau=1.04, m=0.81, width=300)
    spec.to_dict()["m"]          # 0.81; with m = inf: None
    NetworkSpec.from_dict(spec.to_dict()) == spec

A residual network (``resmlp``, ``rescnn``; docs/theory.md section 8) also records its branch scale
alpha and one (tau, m) per activation site (``site_taus``, ``site_ms``, forward order, the head
site last: depth + 1 sites for ``resmlp``, 2 depth + 1 for ``rescnn``); its ``tau`` and ``m`` are
the first site's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from sparse_eoc.activations import canonical_name
from sparse_eoc.checks import check_int
from sparse_eoc.runs.config import (
    CONV_MODELS,
    MODELS,
    PADDING_MODES,
    RESIDUAL_MODELS,
    TrainConfig,
)

__all__ = ["NetworkSpec"]


@dataclass(frozen=True)
class NetworkSpec:
    """What rebuilds a network: its kind, sizes and activation parameters.

    Attributes:
        kind: ``mlp``, ``cnn``, ``resmlp`` or ``rescnn``.
        image_shape: (C, H, W) of one input image.
        num_classes: outputs of the readout, >= 1.
        depth: hidden (MLP) or conv (CNN) layers, or residual blocks (resmlp, rescnn), >= 1.
        activation: a registry name (``relu_tau``, ``st_tau``, ``crelu``, ``cst``).
        tau: the threshold, >= 0 (a residual network's first site).
        m: the clip, > 0; ``math.inf`` when unclipped (a residual network's first site).
        width: units per hidden layer (mlp, resmlp only).
        channels, kernel_size, padding_mode: the conv layers (cnn, rescnn only).
        residual_scale: the branch scale alpha > 0 (resmlp, rescnn only).
        site_taus, site_ms: one tau and one m per activation site (resmlp, rescnn only; ``n_sites`` each).
        tracked_sparsity: resmlp, rescnn: the sparsity s in (0, 1) that running thresholds hold at
            every site in training (``thresholds="tracked"``; ``sparse_eoc.nn.resnet.ThresholdTracker``),
            or None (the thresholds stay as built).
    """

    kind: str
    image_shape: tuple[int, ...]
    num_classes: int
    depth: int
    activation: str
    tau: float
    m: float
    width: int | None = None
    channels: int | None = None
    kernel_size: int | None = None
    padding_mode: str | None = None
    residual_scale: float | None = None
    site_taus: tuple[float, ...] | None = None
    site_ms: tuple[float, ...] | None = None
    tracked_sparsity: float | None = None

    def __post_init__(self):
        if self.kind not in MODELS:
            raise ValueError(f"kind must be one of {', '.join(MODELS)}, got kind={self.kind!r}")
        canonical_name(self.activation)
        object.__setattr__(self, "image_shape", tuple(check_int("image_shape", d) for d in self.image_shape))
        check_int("num_classes", self.num_classes)
        check_int("depth", self.depth)
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"tau must be a finite number >= 0, got tau={self.tau!r}")
        if not (isinstance(self.m, (int, float)) and self.m > 0):
            raise ValueError(f"m must be a number > 0 (inf: unclipped), got m={self.m!r}")
        if self.kind in CONV_MODELS:
            check_int("channels", self.channels)
            check_int("kernel_size", self.kernel_size)
            if self.padding_mode not in PADDING_MODES:
                raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, "
                                 f"got padding_mode={self.padding_mode!r}")
        else:
            check_int("width", self.width)
        if self.kind in RESIDUAL_MODELS:
            self._check_residual()
        elif (self.residual_scale, self.site_taus, self.site_ms, self.tracked_sparsity) != (None,) * 4:
            raise ValueError(f"residual_scale, site_taus, site_ms and tracked_sparsity describe resmlp or rescnn only, "
                             f"not {self.kind}")

    def _check_residual(self) -> None:
        a = self.residual_scale
        if isinstance(a, bool) or not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0):
            raise ValueError(f"residual_scale must be a finite number > 0, got residual_scale={a!r}")
        for name in ("site_taus", "site_ms"):
            values = getattr(self, name)
            if values is None or isinstance(values, (str, bytes)) or len(values) != self.n_sites:
                raise ValueError(f"{name} must hold {self.n_sites} numbers (one per activation site) for a "
                                 f"depth-{self.depth} {self.kind}, got {name}={values!r}")
            object.__setattr__(self, name, tuple(values))
        for tau in self.site_taus:
            if isinstance(tau, bool) or not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
                raise ValueError(f"site_taus must be finite numbers >= 0, got {tau!r}")
        for m in self.site_ms:
            if isinstance(m, bool) or not (isinstance(m, (int, float)) and m > 0):
                raise ValueError(f"site_ms must be numbers > 0 (inf: unclipped), got {m!r}")
        s = self.tracked_sparsity
        if s is not None and (isinstance(s, bool) or not (isinstance(s, (int, float)) and 0 < s < 1)):
            raise ValueError(f"tracked_sparsity must be None or in (0, 1), got tracked_sparsity={s!r}")

    @property
    def n_sites(self) -> int:
        """Activation sites (the entries of ``layer_sparsity``): depth (mlp, cnn), depth + 1 (resmlp:
        one per block and the head), 2 depth + 1 (rescnn: two per block and the head)."""
        return {"resmlp": self.depth + 1, "rescnn": 2 * self.depth + 1}.get(self.kind, self.depth)

    @property
    def in_features(self) -> int:
        """Inputs of the MLP's first layer: C x H x W."""
        return math.prod(self.image_shape)

    def n_parameters(self) -> int:
        """Weights and biases of the whole network, readout included."""
        # weight layers after the first: mlp/cnn depth - 1, resmlp depth, rescnn 2 depth
        more = {"resmlp": self.depth, "rescnn": 2 * self.depth}.get(self.kind, self.depth - 1)
        if self.kind not in CONV_MODELS:
            n_in, n = self.in_features, self.width
            return n_in * n + n + more * (n * n + n) + n * self.num_classes + self.num_classes
        c_in, c, k2 = self.image_shape[0], self.channels, self.kernel_size**2
        return c_in * c * k2 + c + more * (c * c * k2 + c) + c * self.num_classes + self.num_classes

    def hidden_values_per_example(self) -> int:
        """Activation outputs of one example, all sites: n_sites x width, or n_sites x channels x H x W."""
        if self.kind not in CONV_MODELS:
            return self.n_sites * self.width
        return self.n_sites * self.channels * math.prod(self.image_shape[1:])

    def memory_bytes(self, batch_size: int, *, training: bool = True, bytes_per_value: int = 4) -> int:
        """A lower estimate of the memory a batch needs. Training: the parameters four times
        (weights, gradients, two optimiser moments) and the hidden outputs of the batch twice
        (the values autograd saves, and their gradients); a forward pass: the parameters once
        and two layers' outputs."""
        hidden = batch_size * self.hidden_values_per_example()
        if training:
            return bytes_per_value * (4 * self.n_parameters() + 2 * hidden)
        return bytes_per_value * (self.n_parameters() + 2 * hidden // self.n_sites)

    @classmethod
    def from_config(cls, config: TrainConfig, point, image_shape, num_classes: int, *,
                    residual=None) -> "NetworkSpec":
        """The network of a run: sizes from ``config``, activation parameters from the EoC ``point``
        (a residual model: from ``residual``, a :class:`sparse_eoc.gp.ResidualInit`).

        Raises:
            ValueError: a residual model without ``residual``.
        """
        common = dict(kind=config.model, image_shape=tuple(image_shape), num_classes=int(num_classes),
                      depth=config.depth, activation=point.activation, tau=point.tau, m=point.m)
        if config.model in RESIDUAL_MODELS:
            if residual is None:
                raise ValueError(f"model={config.model!r} needs its ResidualInit (sparse_eoc.gp.residual_init)")
            tracked = config.thresholds == "tracked" and point.tau > 0  # plain ReLU has no threshold to track
            common.update(residual_scale=residual.residual_scale, site_taus=residual.site_taus,
                          site_ms=residual.site_ms, tracked_sparsity=point.sparsity if tracked else None)
        if config.model not in CONV_MODELS:
            return cls(**common, width=config.width)
        return cls(**common, channels=config.channels, kernel_size=config.kernel_size,
                   padding_mode=config.padding_mode)

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json["network"]`` holds (m = inf as None; the MLP's ``in_features`` and
        the CNN's ``in_channels`` spelled out for readers)."""
        out: dict[str, Any] = {"kind": self.kind, "image_shape": list(self.image_shape),
                               "num_classes": self.num_classes, "depth": self.depth,
                               "activation": self.activation, "tau": self.tau,
                               "m": None if math.isinf(self.m) else self.m}
        if self.kind in RESIDUAL_MODELS:
            out.update(residual_scale=self.residual_scale, site_taus=list(self.site_taus),
                       site_ms=[None if math.isinf(m) else m for m in self.site_ms],
                       tracked_sparsity=self.tracked_sparsity)
        if self.kind not in CONV_MODELS:
            return {**out, "in_features": self.in_features, "width": self.width}
        return {**out, "in_channels": self.image_shape[0], "channels": self.channels,
                "kernel_size": self.kernel_size, "padding_mode": self.padding_mode}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "NetworkSpec":
        """Read ``config.json["network"]`` (also as written before this class: no ``kind`` means mlp).

        Raises:
            ValueError: a missing or bad field (the message names it).
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"the network section must be a JSON object, got {type(values).__name__}")
        kind = values.get("kind", "mlp")
        try:
            image_shape = values.get("image_shape")
            if image_shape is None:  # the oldest configs: an MLP's in_features only
                image_shape = (1, int(values["in_features"]))
            m = values.get("m")
            common = dict(kind=kind, image_shape=tuple(image_shape), num_classes=values["num_classes"],
                          depth=values["depth"], activation=values["activation"], tau=values["tau"],
                          m=math.inf if m is None else m)
            if kind in RESIDUAL_MODELS:
                ms = values["site_ms"]
                common.update(residual_scale=values["residual_scale"], site_taus=values["site_taus"],
                              site_ms=[math.inf if v is None else v for v in ms] if isinstance(ms, list) else ms,
                              tracked_sparsity=values.get("tracked_sparsity"))
            if kind not in CONV_MODELS:
                spec = cls(**common, width=values["width"])
                if "in_features" in values and values["in_features"] != spec.in_features:
                    raise ValueError(f"in_features={values['in_features']!r} does not match "
                                     f"image_shape={list(spec.image_shape)}")
                return spec
            return cls(**common, channels=values["channels"], kernel_size=values["kernel_size"],
                       padding_mode=values["padding_mode"])
        except KeyError as err:
            raise ValueError(f"the network section lacks the field {err.args[0]!r}") from None
        except TypeError as err:
            raise ValueError(f"the network section has a field of the wrong type ({err})") from None
