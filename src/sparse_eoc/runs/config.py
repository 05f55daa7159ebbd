"""The training configuration: one small frozen dataclass, validated at the boundary."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from sparse_eoc.activations import canonical_name, get_activation
from sparse_eoc.checks import check_int
from sparse_eoc.gp import RELU_SPARSITY

__all__ = ["TrainConfig", "OPTIMIZERS", "MODELS", "PADDING_MODES", "WEIGHT_INITS", "DATASETS", "LR_SCHEDULES"]

# The choice lists of the settings: the one place each is written (nn, train and the CLI read them here).
OPTIMIZERS = ("sgd", "adam")
MODELS = ("mlp", "cnn")
DATASETS = ("mnist", "cifar10")
PADDING_MODES = ("zeros", "circular")  # of the CNN's "same" convolutions
WEIGHT_INITS = ("gaussian", "delta_orthogonal")  # of init_eoc_ (delta_orthogonal: CNN only)
LR_SCHEDULES = ("none", "cosine")  # constant, or per-step cosine decay to 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; ``config.json`` stores it with what it resolves to.

    ``model="mlp"``: ``depth`` hidden layers of ``width`` units each followed by the
    activation, then a linear readout: depth = 3 means
    Linear(784, 300) -> phi -> Linear(300, 300) -> phi -> Linear(300, 300) -> phi -> Linear(300, 10).
    ``model="cnn"``: ``depth`` k x k conv layers of ``channels`` channels each followed
    by the activation, then global average pooling and a linear readout.
    """

    activation: str = "crelu"  # relu, relu_tau, st_tau, crelu, cst
    sparsity: float | None = None  # target fraction of zeros at q*; relu: 0.5 (None means 0.5)
    slope: float | None = None  # target V'(q*) in (0, 1), clipped only; default 0.7 if m is None too
    m: float | None = None  # the clip; clipped only, exclusive with slope
    q_star: float = 1.0  # the fixed point of the variance map (paper: 1)
    model: str = "mlp"  # mlp or cnn
    depth: int = 30  # hidden layers (MLP) or conv layers (CNN)
    width: int = 300  # units per hidden layer (MLP)
    channels: int = 32  # channels per conv layer (CNN)
    kernel_size: int = 3  # odd k of the k x k kernels (CNN)
    padding_mode: str = "zeros"  # zeros or circular (CNN)
    weight_init: str = "gaussian"  # gaussian, or delta_orthogonal (CNN; Xiao et al. 2018)
    epochs: int = 5
    optimizer: str = "sgd"  # sgd (the paper's) or adam
    lr: float = 1e-3
    readout_lr_scale: float = 1.0  # the readout layer learns at lr x this (the hidden layers at lr)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    lr_schedule: str = "none"  # none (constant) or cosine (per-step decay to 0 over all epochs)
    label_smoothing: float = 0.0  # epsilon in [0, 1) of the training loss only (evaluation: plain cross-entropy)
    batch_size: int = 128
    seed: int = 0  # initialisation, shuffling and the validation split
    val_size: int = 0  # training examples held out for validation (the paper: 0)
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda when present)
    threads: int | None = None  # torch CPU threads; None: torch's default (all cores)
    dataset: str = "mnist"  # mnist (any MNIST-format IDX files) or cifar10 (python pickle batches)
    data_dir: str | None = None
    augment: bool = False  # random crop (padding 4) and horizontal flip of training images
    log_layer_stats: bool = False  # per-layer gradient norms and pre-activation variances per epoch
    preset: str | None = None  # the named preset these settings started from (a record)

    def __post_init__(self):
        canonical_name(self.activation)  # raises for an unknown name
        act = get_activation(self.activation)
        if self.activation == "relu":
            if self.sparsity is not None and self.sparsity != RELU_SPARSITY:
                raise ValueError(
                    f"sparsity for relu is {RELU_SPARSITY} (tau = 0), got sparsity={self.sparsity!r}; "
                    "use relu_tau, st_tau, crelu or cst for another sparsity"
                )
        elif self.sparsity is None:
            raise ValueError(f"sparsity is required for activation {self.activation!r}")
        if not act.clipped and (self.slope is not None or self.m is not None):
            raise ValueError(f"slope and m apply only to crelu and cst, not to {self.activation!r}")
        if self.slope is not None and self.m is not None:
            raise ValueError("give either m or slope, not both")
        check_int("depth", self.depth)
        check_int("width", self.width)
        check_int("epochs", self.epochs, minimum=0)
        check_int("batch_size", self.batch_size)
        check_int("val_size", self.val_size, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_int("channels", self.channels)
        check_int("kernel_size", self.kernel_size)
        if self.threads is not None:
            check_int("threads", self.threads)
        for name, valid in (("model", MODELS), ("padding_mode", PADDING_MODES), ("weight_init", WEIGHT_INITS),
                            ("dataset", DATASETS), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {name}={getattr(self, name)!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got kernel_size={self.kernel_size!r}")
        if self.weight_init == "delta_orthogonal" and self.model != "cnn":
            raise ValueError("weight_init=delta_orthogonal applies to model=cnn only")
        if self.augment and self.model != "cnn":
            raise ValueError("augment (random crop and flip) applies to model=cnn only")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("lr", "q_star", "readout_lr_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got momentum={self.momentum!r}")
        value = self.label_smoothing
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ValueError(f"label_smoothing must be a number in [0, 1), got label_smoothing={value!r}")
        for name in ("augment", "log_layer_stats"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {name}={getattr(self, name)!r}")

    @property
    def resolved_sparsity(self) -> float:
        """The target sparsity, with relu's implicit 0.5 filled in."""
        return RELU_SPARSITY if self.sparsity is None else float(self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping, ignoring keys that are not settings (e.g. a config.json's
        resolved ``eoc``/``model``/``data`` sections)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
