"""The training settings: one small frozen dataclass, validated at the boundary (no torch).

Each field carries its help text, its kind (what it is about: see SETTING_KINDS) and its
choices; the CLI's ``train`` options, the sweep's ``--set``, the run names and the resume
rules are all made from these. The settings of a run are layered by :func:`layer_settings`
(defaults < ``--config`` file < ``--preset`` < options); a resume reads them back with
:func:`resume_settings`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from sparse_eoc.activations import ACTIVATIONS, ALIASES, RELU_SPARSITY, canonical_name, get_activation
from sparse_eoc.checks import check_int
from sparse_eoc.runs.files import CONFIG_FILE
from sparse_eoc.runs.presets import PRESETS, SPARSE_RECIPE_SETTINGS, get_preset

__all__ = [
    "TrainConfig", "OPTIMIZERS", "MODELS", "PADDING_MODES", "WEIGHT_INITS", "DATASETS", "LR_SCHEDULES",
    "KERNEL_CHOICES", "RESIDUAL_MODELS", "CONV_MODELS", "DENSE_MODELS", "THRESHOLD_CHOICES",
    "ACTIVATION_CHOICES", "SETTING_KINDS", "RESOLVED_KEYS", "NAME_FREE_SETTINGS", "RESUME_FREE_SETTINGS",
    "CELL_FREE_SETTINGS", "settings_of_kind", "default_settings", "name_settings", "settings_differences",
    "check_same_settings", "setting_type", "option_name", "parse_overrides", "read_config_file", "layer_settings",
    "resume_settings",
]

# The choice lists of the settings: the one place each is written (nn, train and the CLI read them here).
OPTIMIZERS = ("sgd", "adam")
MODELS = ("mlp", "cnn", "resmlp", "rescnn")
RESIDUAL_MODELS = ("resmlp", "rescnn")  # h + alpha (branch): docs/theory.md section 8
CONV_MODELS = ("cnn", "rescnn")  # on images (B, C, H, W): channels, kernel_size, padding_mode, augment
DENSE_MODELS = ("mlp", "resmlp")  # on flattened inputs: width; the sparse training kernels
#: Thresholds of a residual model: ``tracked`` starts from ``per-layer`` (sparse_eoc.gp.residual.THRESHOLDS)
#: and holds each site's sparsity in training (sparse_eoc.nn.resnet.ThresholdTracker).
THRESHOLD_CHOICES = ("tracked", "per-layer", "fixed")
DATASETS = ("mnist", "cifar10")
PADDING_MODES = ("zeros", "circular")  # of the CNN's "same" convolutions
WEIGHT_INITS = ("gaussian", "delta_orthogonal")  # of init_eoc_ (delta_orthogonal: cnn and rescnn only)
LR_SCHEDULES = ("none", "cosine")  # constant, or per-step cosine decay to 0
KERNEL_CHOICES = ("dense", "sparse", "auto")  # the MLP's training kernels (sparse_eoc.nn.sparse_linear)
ACTIVATION_CHOICES = (*ALIASES, *ACTIVATIONS)
MAX_STEP_SIZE = 1e30  # lr (x readout_lr_scale): a float32 optimiser overflows near 3.4e38
Q_STAR_RANGE = (1e-6, 1e6)  # q* of a trained network: tau and m ~ sqrt(q*) and their squares stay in float32
MAX_THREADS = 1024

#: What a setting is about, in its field's metadata ``kind``:
#:   what        it changes what the run computes: in the run's name, compared on resume, splits a table cell
#:   diagnostic  it records more and changes nothing else: in the name, compared on resume, splits no cell
#:   where       where the inputs are (data_dir): not in the name, compared on resume, splits no cell
#:   record      where the settings came from (preset): not in the name, compared on resume, splits no cell
#:   how         how the run executes (device, threads): not in the name, may change on resume, splits no cell
SETTING_KINDS = ("what", "diagnostic", "where", "record", "how")
#: The sections ``config.json`` holds besides the settings (what they resolved to, and versions).
RESOLVED_KEYS = ("eoc", "network", "data", "sparse_eoc_version", "torch_version", "device_resolved")


def _setting(default: Any, help: str, *, kind: str = "what", choices: tuple[str, ...] | None = None,
             missing_means: Any = dataclasses.MISSING):
    """A TrainConfig field with its help text, kind and choices (the CLI options are made from these).

    ``missing_means``: for a setting added after the run-file format of 6b2918f, the value a
    ``config.json`` without it stands for (the behaviour before the setting existed); such a
    setting enters a run's name only when it differs from its default.
    """
    assert kind in SETTING_KINDS, kind
    metadata = {"help": help, "kind": kind, "choices": choices}
    if missing_means is not dataclasses.MISSING:
        metadata["missing_means"] = missing_means
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; ``config.json`` stores it with what it resolves to.

    ``model="mlp"``: ``depth`` hidden layers of ``width`` units each followed by the
    activation, then a linear readout: depth = 3 means
    Linear(784, 300) -> phi -> Linear(300, 300) -> phi -> Linear(300, 300) -> phi -> Linear(300, 10).
    ``model="cnn"``: ``depth`` k x k conv layers of ``channels`` channels each followed
    by the activation, then global average pooling and a linear readout.
    ``model="resmlp"``: a linear stem, ``depth`` residual blocks h + alpha (W phi(h) + b) of
    ``width`` units, the head activation, a linear readout (docs/theory.md section 8): depth = 2 means
    h1 = Linear(784, 300)(x), h2 = h1 + alpha Linear(300, 300)(phi(h1)), h3 = h2 + alpha
    Linear(300, 300)(phi(h2)), Linear(300, 10)(phi(h3)): 3 activation sites.
    ``model="rescnn"``: a conv stem, ``depth`` blocks of two k x k convs
    h + alpha conv(phi(conv(phi(h)))), the head activation, pooling and the readout
    (2 x depth + 1 activation sites).
    """

    activation: str = _setting("crelu", "activation (relu = relu_tau with tau = 0)", choices=ACTIVATION_CHOICES)
    sparsity: float | None = _setting(None, "target fraction of zeros s at q*, in (0, 1) (relu: 0.5, implied)")
    slope: float | None = _setting(None, "target V'(q*) in (0, 1) for crelu/cst (default 0.7 when m is not given)")
    m: float | None = _setting(None, "the clip m > 0 for crelu/cst (exclusive with slope)")
    q_star: float = _setting(1.0, "fixed point q* of the variance map (the paper: 1)")
    model: str = _setting("mlp", "network kind", choices=MODELS)
    depth: int = _setting(30, "hidden (MLP) or conv (CNN) layers, or residual blocks (resmlp, rescnn)")
    width: int = _setting(300, "units per hidden layer (MLP, resmlp)")
    channels: int = _setting(32, "channels per conv layer (CNN, rescnn)")
    kernel_size: int = _setting(3, "odd kernel size k of the k x k convolutions (CNN, rescnn)")
    padding_mode: str = _setting("zeros", "padding of the CNN's same convolutions", choices=PADDING_MODES)
    weight_init: str = _setting("gaussian", "gaussian, or delta_orthogonal (CNN, rescnn; Xiao et al. 2018)",
                                choices=WEIGHT_INITS)
    residual_scale: float | None = _setting(None, "branch scale alpha of resmlp/rescnn, h + alpha (W phi(h) + b), "
                                                  "> 0 (none: 2 / sqrt(depth))", missing_means=None)
    thresholds: str = _setting("tracked", "resmlp/rescnn: per-layer (tau, m of each activation site solved at "
                                          "its predicted variance: the sparsity holds at every site at init), "
                                          "tracked (per-layer at init, then each site's tau follows the running "
                                          "s-quantile of its input in training, m in proportion: the sparsity "
                                          "holds as the weights grow) or fixed (the EoC point at q* everywhere)",
                               choices=THRESHOLD_CHOICES, missing_means="tracked")
    epochs: int = _setting(5, "passes over the training split (0: initialise and save the weights only)")
    optimizer: str = _setting("sgd", "optimiser (sgd with momentum is the paper's)", choices=OPTIMIZERS)
    lr: float = _setting(1e-3, "learning rate")
    readout_lr_scale: float = _setting(1.0, "the readout layer learns at lr x this (the hidden layers at lr)")
    momentum: float = _setting(0.9, "SGD momentum, in [0, 1)")
    weight_decay: float = _setting(0.0, "weight decay (L2), >= 0")
    lr_schedule: str = _setting("none", "none (constant) or cosine (per-step decay to 0 over all epochs)",
                                choices=LR_SCHEDULES)
    label_smoothing: float = _setting(0.0, "label smoothing epsilon in [0, 1) of the training loss only "
                                           "(evaluation: plain cross-entropy)")
    batch_size: int = _setting(128, "training examples per step")
    seed: int = _setting(0, "seed of the initialisation, the shuffling and the validation split")
    val_size: int = _setting(0, "training examples held out for validation (the paper: 0)")
    device: str = _setting("cpu", "cpu, cuda, cuda:N, or auto (cuda when present)", kind="how")
    threads: int | None = _setting(None, "torch CPU threads (default: all cores)", kind="how")
    kernels: str = _setting("auto", "training kernels of the MLP: dense (plain torch), sparse (exact kernels that "
                                    "skip the zeros of each hidden layer's input) or auto (sparse where the "
                                    "density and the layer's shape say it pays); may change on --resume",
                            kind="how", choices=KERNEL_CHOICES, missing_means="dense")
    dataset: str = _setting("mnist", "mnist: any MNIST-format IDX files; cifar10: the python pickle batches",
                            choices=DATASETS)
    data_dir: str | None = _setting(None, "directory with the dataset's files", kind="where")
    augment: bool = _setting(False, "random crop (padding 4) and horizontal flip of training images (CNN)")
    log_layer_stats: bool = _setting(False, "per epoch, each hidden layer's mean weight-gradient norm and "
                                            "pre-activation variance on 256 test inputs (metrics.jsonl; at init: "
                                            "result.json)", kind="diagnostic")
    preset: str | None = _setting(None, "named settings to start from; explicit options override them",
                                  kind="record", choices=tuple(PRESETS))

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
                            ("dataset", DATASETS), ("lr_schedule", LR_SCHEDULES), ("thresholds", THRESHOLD_CHOICES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {name}={getattr(self, name)!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got kernel_size={self.kernel_size!r}")
        if self.weight_init == "delta_orthogonal" and self.model not in CONV_MODELS:
            raise ValueError("weight_init=delta_orthogonal applies to model=cnn or rescnn only")
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got kernels={self.kernels!r}")
        if self.kernels == "sparse" and self.model not in DENSE_MODELS:
            raise ValueError(f"--kernels sparse applies to --model mlp only (or resmlp), not to --model {self.model}; "
                             "use --kernels dense or auto (auto runs the CNN dense)")
        if self.augment and self.model not in CONV_MODELS:
            raise ValueError("augment (random crop and flip) applies to model=cnn or rescnn only")
        if self.model not in RESIDUAL_MODELS:
            if self.residual_scale is not None:
                raise ValueError(f"residual_scale applies to model=resmlp or rescnn only, got "
                                 f"residual_scale={self.residual_scale!r} with model={self.model!r}")
            if self.thresholds not in ("tracked", "per-layer"):
                raise ValueError(f"thresholds={self.thresholds!r} applies to model=resmlp or rescnn only (a plain "
                                 f"network on the EoC has the same variance q* at every layer)")
            # A plain network has one threshold at every layer either way: one value, so that configs
            # written when per-layer was the default keep their names and compare equal.
            object.__setattr__(self, "thresholds", "tracked")
        value = self.residual_scale
        if value is not None and (isinstance(value, bool) or not (isinstance(value, (int, float))
                                                                  and math.isfinite(value) and value > 0)):
            raise ValueError(f"residual_scale must be a finite number > 0 (none: 2 / sqrt(depth)), "
                             f"got residual_scale={value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("lr", "q_star", "readout_lr_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
        # Training runs in float32: the step sizes and the activation's scale sqrt(q*) must stay representable.
        if self.lr * self.readout_lr_scale > MAX_STEP_SIZE or self.lr > MAX_STEP_SIZE:
            raise ValueError(f"lr x readout_lr_scale must be at most {MAX_STEP_SIZE:g} (float32 arithmetic), "
                             f"got lr={self.lr!r}, readout_lr_scale={self.readout_lr_scale!r}")
        if not Q_STAR_RANGE[0] <= self.q_star <= Q_STAR_RANGE[1]:
            raise ValueError(f"q_star must be in [{Q_STAR_RANGE[0]:g}, {Q_STAR_RANGE[1]:g}] for training in float32 "
                             f"(tau and m scale with sqrt(q*)), got q_star={self.q_star!r}")
        if self.threads is not None and self.threads > MAX_THREADS:
            raise ValueError(f"threads must be an integer in 1..{MAX_THREADS}, got threads={self.threads!r}")
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

        for f in fields(self):  # every type, for what the checks above leave (a JSON file may hold "0.85")
            _check_type(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, strict: bool = False) -> "TrainConfig":
        """Build from a mapping: a run's ``config.json`` (its resolved sections are skipped), a
        ``--config`` file, or a checkpoint's settings. A setting the mapping lacks takes its
        ``missing_means`` value (the behaviour before the setting existed) or its default.

        Args:
            strict: refuse keys that are neither settings nor resolved sections (a typo such
                as ``"epoch": 7`` in a hand-written file).

        Raises:
            ValueError: unknown keys (with ``strict``), or settings TrainConfig rejects.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"settings must be a JSON object, got a {type(values).__name__}")
        names = {f.name for f in fields(cls)}
        if strict:
            unknown = sorted(k for k in values if k not in names and k not in RESOLVED_KEYS)
            if unknown:
                raise ValueError(f"unknown setting(s) {', '.join(map(repr, unknown))}; valid settings: "
                                 f"{', '.join(sorted(names))}")
        missing = {f.name: f.metadata["missing_means"] for f in fields(cls)
                   if f.name not in values and "missing_means" in f.metadata}
        return cls(**missing, **{k: v for k, v in values.items() if k in names})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


_HINTS = typing.get_type_hints(TrainConfig)


def setting_type(name: str) -> type:
    """The value type of a setting: bool, int, float or str (``None`` aside)."""
    args = typing.get_args(_HINTS[name])
    return ([a for a in args if a is not type(None)] if args else [_HINTS[name]])[0]


def _optional(name: str) -> bool:
    """Whether the setting may be None."""
    return type(None) in typing.get_args(_HINTS[name])


def _check_type(name: str, value: Any) -> None:
    """Refuse a value of the wrong JSON type for the field ``name`` (ranges are checked after)."""
    kind = setting_type(name)
    if value is None:
        if _optional(name):
            return
    elif kind is bool:
        if isinstance(value, bool):
            return
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return
    elif isinstance(value, kind):
        return
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    raise ValueError(f"{name} must be {expected}{' or null' if _optional(name) else ''}, "
                     f"got {name}={value!r} ({type(value).__name__})")


def settings_of_kind(*kinds: str) -> tuple[str, ...]:
    """The TrainConfig settings whose metadata ``kind`` is one of ``kinds`` (see SETTING_KINDS)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata["kind"] in kinds)


#: Settings that say where or how a run executes, or where its settings came from: they
#: change neither a run's name nor its seed (the same run may move machines or thread counts).
NAME_FREE_SETTINGS = settings_of_kind("where", "record", "how")
#: Settings a resume may change (then the numbers are no longer promised bit-identical).
RESUME_FREE_SETTINGS = settings_of_kind("how")
#: Settings that never split a table cell: the seed (averaged over) and all but the "what" kind.
CELL_FREE_SETTINGS = ("seed", *settings_of_kind("diagnostic", "where", "record", "how"))


def default_settings() -> dict[str, Any]:
    """Every setting at its default."""
    return {f.name: f.default for f in fields(TrainConfig)}


def name_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that make a run's name (and seed): all but NAME_FREE_SETTINGS, and a
    setting added after 6b2918f only when it differs from its default (so that runs and
    sweeps written before it keep their names)."""
    out = {}
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name in NAME_FREE_SETTINGS or ("missing_means" in f.metadata and value == f.default):
            continue
        out[f.name] = value
    return out


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any], *, ignore=()) -> list[str]:
    """The setting names whose values differ between two settings dicts (sorted), skipping ``ignore``.

    A key missing on one side counts as different. Example:
    ``settings_differences({"lr": 0.1, "depth": 3}, {"lr": 0.01, "depth": 3}) == ["lr"]``.
    """
    keys = (set(saved) | set(current)) - set(ignore)
    return sorted(k for k in keys if k not in saved or k not in current or saved[k] != current[k])


def check_same_settings(saved: Mapping[str, Any], config: TrainConfig, where: str | os.PathLike) -> None:
    """Refuse to resume ``where`` with ``config`` when any setting but RESUME_FREE_SETTINGS differs.

    Raises:
        ValueError: naming the differing settings and both values.
    """
    missing = {f.name: f.metadata["missing_means"] for f in fields(TrainConfig)
               if f.name not in saved and "missing_means" in f.metadata}  # saved before the setting existed
    saved = {**missing, **saved}
    if saved.get("model", "mlp") not in RESIDUAL_MODELS and saved.get("thresholds") == "per-layer":
        saved["thresholds"] = "tracked"  # a plain network's one value (TrainConfig normalises it the same way)
    differing = settings_differences(saved, config.to_dict(), ignore=RESUME_FREE_SETTINGS)
    if differing:
        details = ", ".join(f"{k}={saved.get(k)!r} there, {getattr(config, k, None)!r} here" for k in differing)
        raise ValueError(f"cannot resume {where}: its settings differ in {', '.join(differing)} ({details})")


def option_name(setting: str) -> str:
    """The command-line option of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + setting.replace("_", "-")


def _parse_value(key: str, text: str) -> Any:
    optional, kind = _optional(key), setting_type(key)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text}: {key} takes true or false")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: {key} takes {'an integer' if kind is int else 'a number'}"
                             + (" or none" if optional else "")) from None
    return text


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["epochs=3", "lr=0.01", "threads=none"]`` -> ``{"epochs": 3, "lr": 0.01, "threads": None}``.

    Each value is parsed by its TrainConfig field's type (int, float, bool: true/false,
    str; ``none`` for an optional setting); a later item replaces an earlier one. Whether
    the value is in range is checked when the configs are built.

    Raises:
        ValueError: an item without ``=``, an unknown key (the message lists the valid
            ones), or a value that does not parse as the field's type.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set takes key=value, got {item!r}")
        if key not in _HINTS:
            raise ValueError(f"--set {item}: unknown setting {key!r}; valid keys: "
                             f"{', '.join(f.name for f in fields(TrainConfig))}")
        out[key] = _parse_value(key, text)
    return out


def read_config_file(path: str | os.PathLike, *, option: str = "--config") -> dict[str, Any]:
    """The settings of a ``config.json`` (a run's, or written by hand), all of them, defaults filled in.

    Raises:
        ValueError: the file is missing, not a JSON object, holds an unknown key or a
            setting of the wrong type or range; the message names ``option`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option} {path}: not found (pass a run's config.json)")
    try:
        values = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{option} {path}: not valid JSON ({err})") from err
    try:
        return TrainConfig.from_dict(values, strict=True).to_dict()
    except ValueError as err:
        raise ValueError(f"{option} {path}: {err}") from err


def layer_settings(*, config_file: str | os.PathLike | None = None, preset: str | None = None,
                   explicit: Mapping[str, Any] | None = None) -> TrainConfig:
    """The settings of a new run, layered: defaults < ``config_file`` < ``preset`` < ``explicit``
    (the command line's options).

    An explicit choice replaces what it excludes in the layers below: ``m`` and ``slope``
    are alternatives, an unclipped activation takes neither, ``relu`` fixes the sparsity (and
    drops the sparse recipe, SPARSE_RECIPE_SETTINGS, of a preset that fixes its activation: its
    ReLU baseline), and a model that is not residual takes no ``residual_scale`` or ``thresholds``.

    Raises:
        ValueError: an unreadable config file, an unknown preset, or settings TrainConfig rejects.
    """
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings.update(read_config_file(config_file))
    explicit = dict(explicit or {})
    if preset is not None:
        values = dict(get_preset(preset))
        if explicit.get("activation") == "relu" and "activation" in values:
            # a preset that fixes a sparse recipe (mlp-mnist-s90): its ReLU baseline drops the recipe
            for name in SPARSE_RECIPE_SETTINGS:
                values.pop(name, None)
        settings.update(values, preset=preset)
    if "m" in explicit or "slope" in explicit or "activation" in explicit:
        settings.pop("m", None), settings.pop("slope", None)
    if explicit.get("activation") == "relu":
        settings.pop("sparsity", None)
    if "model" in explicit and explicit["model"] not in RESIDUAL_MODELS:
        settings.pop("residual_scale", None), settings.pop("thresholds", None)
    return TrainConfig(**{**settings, **explicit})


def resume_settings(run_dir: str | os.PathLike, changes: Mapping[str, Any] | None = None, *,
                    other_options: Sequence[str] = ()) -> TrainConfig:
    """The settings to resume ``run_dir`` with: its ``config.json``, with ``changes`` to the
    settings a resume may change (RESUME_FREE_SETTINGS: device, threads).

    Args:
        other_options: options given beside ``--resume`` that are not settings (``--out``,
            ``--config``, ...): all are refused.

    Raises:
        ValueError: ``changes`` names any other setting, or ``other_options`` is not empty
            (the message names the options), or the run's ``config.json`` is missing or unreadable.
    """
    changes = dict(changes or {})
    fixed = [option_name(k) for k in changes if k not in RESUME_FREE_SETTINGS] + list(other_options)
    path = Path(run_dir) / CONFIG_FILE
    if fixed:
        raise ValueError(f"--resume takes the settings from {path}: drop {', '.join(fixed)} (only "
                         f"{', '.join(map(option_name, RESUME_FREE_SETTINGS))} and --no-progress go with --resume)")
    if not path.is_file():
        raise ValueError(f"--resume {run_dir}: {path} not found (pass a run directory)")
    return TrainConfig(**{**read_config_file(path, option="--resume"), **changes})
