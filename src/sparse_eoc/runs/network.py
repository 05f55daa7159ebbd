"""The network a run builds, as data: :class:`NetworkSpec` (no torch).

``config.json["network"]`` holds one; :func:`sparse_eoc.nn.build.build_model` turns it into
a module. It owns the one convention for an unclipped activation: m = inf in Python, ``null``
in JSON (strict JSON has no Infinity).

Example (an MLP of depth 3 on MNIST)::

    spec = NetworkSpec(kind="mlp", image_shape=(1, 28, 28), num_classes=10, depth=3,
                       activation="crelu", tau=1.04, m=0.81, width=300)
    spec.to_dict()["m"]          # 0.81; with m = inf: None
    NetworkSpec.from_dict(spec.to_dict()) == spec
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from sparse_eoc.activations import canonical_name
from sparse_eoc.checks import check_int
from sparse_eoc.runs.config import MODELS, PADDING_MODES, TrainConfig

__all__ = ["NetworkSpec"]


@dataclass(frozen=True)
class NetworkSpec:
    """What rebuilds a network: its kind, sizes and activation parameters.

    Attributes:
        kind: ``mlp`` or ``cnn``.
        image_shape: (C, H, W) of one input image.
        num_classes: outputs of the readout, >= 1.
        depth: hidden (MLP) or conv (CNN) layers, >= 1.
        activation: a registry name (``relu_tau``, ``st_tau``, ``crelu``, ``cst``).
        tau: the threshold, >= 0.
        m: the clip, > 0; ``math.inf`` when unclipped.
        width: units per hidden layer (MLP only).
        channels, kernel_size, padding_mode: the conv layers (CNN only).
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
        if self.kind == "mlp":
            check_int("width", self.width)
        else:
            check_int("channels", self.channels)
            check_int("kernel_size", self.kernel_size)
            if self.padding_mode not in PADDING_MODES:
                raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, "
                                 f"got padding_mode={self.padding_mode!r}")

    @property
    def in_features(self) -> int:
        """Inputs of the MLP's first layer: C x H x W."""
        return math.prod(self.image_shape)

    def n_parameters(self) -> int:
        """Weights and biases of the whole network, readout included."""
        if self.kind == "mlp":
            n_in, n = self.in_features, self.width
            return n_in * n + n + (self.depth - 1) * (n * n + n) + n * self.num_classes + self.num_classes
        c_in, c, k2 = self.image_shape[0], self.channels, self.kernel_size**2
        return c_in * c * k2 + c + (self.depth - 1) * (c * c * k2 + c) + c * self.num_classes + self.num_classes

    def hidden_values_per_example(self) -> int:
        """Hidden-layer outputs of one example, all layers: depth x width, or depth x channels x H x W."""
        if self.kind == "mlp":
            return self.depth * self.width
        return self.depth * self.channels * math.prod(self.image_shape[1:])

    def memory_bytes(self, batch_size: int, *, training: bool = True, bytes_per_value: int = 4) -> int:
        """A lower estimate of the memory a batch needs. Training: the parameters four times
        (weights, gradients, two optimiser moments) and the hidden outputs of the batch twice
        (the values autograd saves, and their gradients); a forward pass: the parameters once
        and two layers' outputs."""
        hidden = batch_size * self.hidden_values_per_example()
        if training:
            return bytes_per_value * (4 * self.n_parameters() + 2 * hidden)
        return bytes_per_value * (self.n_parameters() + 2 * hidden // self.depth)

    @classmethod
    def from_config(cls, config: TrainConfig, point, image_shape, num_classes: int) -> "NetworkSpec":
        """The network of a run: sizes from ``config``, activation parameters from the EoC ``point``."""
        common = dict(kind=config.model, image_shape=tuple(image_shape), num_classes=int(num_classes),
                      depth=config.depth, activation=point.activation, tau=point.tau, m=point.m)
        if config.model == "mlp":
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
        if self.kind == "mlp":
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
            if kind == "mlp":
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
