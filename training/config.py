"""Run configuration: frozen dataclasses read from a TOML file plus ``section.key=value`` overrides.

An unknown key anywhere is an error that names it, so a typo never silently trains the
default. The config is stored with every checkpoint and published model.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from contract.layout import NAME_PATTERN as MODEL_NAME


# A published model's name: a folder of the model repository and a URL path segment.


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    # digits | digits32 | diabetes | npz | csv | folder (class sub-folders of image files)
    source: str = "digits"
    path: str = ""
    ood_path: str = ""
    # Column of the target in a CSV file.
    target: str = "target"
    # Rows whose target is missing (an empty cell, NA, NaN, ...; see training.tables):
    # refuse (the error lists their lines) | drop (left out, counted in the log and metadata).
    missing_targets: str = "refuse"
    # classification | regression; taken from the source when empty.
    task: str = ""
    # Image folders: every image is resized to [height, width] (empty: all must share one
    # size) and read with this many channels (1 grey, 3 RGB).
    image_size: tuple[int, ...] = ()
    channels: int = 3
    calibration_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    # test: the final report. validation: a split of the training rows (test rows unused),
    # for choosing settings without looking at the test and OOD sets.
    evaluate_on: str = "test"


@dataclass(frozen=True)
class ModelConfig:
    # Registered body (mlp | cnn | resnet) and head (linear | mlp | block) names; see
    # training.networks.
    body: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    # CNN conv layers, or ResNet stage widths.
    channels: tuple[int, ...] = (32, 64)
    # ResNet: basic blocks per stage (one entry per entry of channels).
    blocks: tuple[int, ...] = (2, 2)
    # For the CNN body: how to view a flat feature vector as an image (C, H, W).
    image_shape: tuple[int, ...] = ()
    head: str = "linear"
    head_hidden: int = 64
    dropout: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # At least this many optimizer steps: on a small data set, ``epochs`` alone would leave the
    # network undertrained (100 rows at batch 64 is 2 steps an epoch). 0 turns it off.
    min_steps: int = 0


@dataclass(frozen=True)
class EnsembleConfig:
    members: int = 10
    seed: int = 0
    # Optional .npz with the members' predictions on the transfer set (logits [N, M, C], or
    # for regression mean and var [N, M, D]) plus X; replaces training members.
    predictions: str = ""
    # Or the members themselves as files, one per member (see training.members): .onnx,
    # .pt2 (torch.export) or .pt/.pth (a state dict of member_model); teacher outputs are
    # then computed on the whole transfer set.
    models: tuple[str, ...] = ()
    # What a member file's classification output holds: logits | probabilities.
    member_output: str = "logits"
    # The architecture of .pt/.pth state-dict members (registered body and head, one head).
    member_model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass(frozen=True)
class TransferConfig:
    """Inputs the student imitates the teachers on, beyond the training inputs.

    Members agree on their training inputs, so distilling only there passes on little of
    their disagreement; these widen the transfer set toward where they disagree.
    """

    copies: int = 4
    noise_std: float = 0.0
    mixup_alpha: float = 0.0
    # Perturbation steps that raise member disagreement (in normalized input units).
    perturb_steps: int = 0
    perturb_step_size: float = 0.1
    # Uniform noise inputs as a share of the training set size.
    uniform_fraction: float = 0.0
    # Images ([C, H, W] features): each copy mirrored left-right with probability 1/2, and
    # cropped back to size after zero-padding by this many pixels on every side.
    flip: bool = False
    crop_padding: int = 0
    seed: int = 0
    # Make the inputs batch by batch while training and label them there, instead of holding
    # the whole set and its teacher outputs in memory (see training.stream).
    stream: bool = False


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 1.0
    # Weight of the ground-truth loss (cross-entropy or Gaussian NLL) beside distillation.
    gt_weight: float = 0.0
    phase1: OptimConfig = field(default_factory=OptimConfig)
    phase2: OptimConfig = field(default_factory=OptimConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    seed: int = 0
    # Worker processes making a streamed transfer set's batches (0: in the training process).
    loader_workers: int = 0


@dataclass(frozen=True)
class CalibrationConfig:
    alpha: float = 0.05
    score: str = "model_uncertainty"
    drift_bins: int = 10


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    # Largest absolute difference allowed between ONNX Runtime and PyTorch, per output.
    atol: float = 1e-4
    rtol: float = 1e-3
    # Publish even when the newest version of this name has another task, class labels or
    # feature shape (clients of the name would then get answers of another kind).
    replace_model: bool = False


@dataclass(frozen=True)
class RunConfig:
    name: str = "digits"
    # auto | cpu | cuda
    device: str = "auto"
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!r}; known keys of {where or 'the top level'}"
            f" are {sorted(known)}"
        )
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        kwargs[name] = _coerce(hints[name], raw, f"{where}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, raw: Any, key: str) -> Any:
    if is_dataclass(hint):
        if not isinstance(raw, dict):
            raise ConfigError(f"{key} must be a table, got {raw!r}")
        return _build(hint, raw, key + ".")
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {raw!r}")
        (item,) = get_args(hint)[:1]
        return tuple(_coerce(item, r, key) for r in raw)
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{key} must be true or false, got {raw!r}")
        return raw
    if hint in (int, float):
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"{key} must be a number, got {raw!r}")
        if hint is int and float(raw) != int(raw):
            raise ConfigError(f"{key} must be an integer, got {raw!r}")
        return hint(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{key} must be a string, got {raw!r}")
        return raw
    raise ConfigError(f"{key}: unsupported type {hint}")


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override must look like section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare string
    return key.strip().split("."), parsed


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or the defaults) and apply ``a.b=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            values = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    config = _build(RunConfig, values, "")
    validate(config)
    return config


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    config = _build(RunConfig, values, "")
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    def positive(value: float, key: str) -> None:
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")

    if not MODEL_NAME.match(config.name):
        raise ConfigError(f"model name (the config's name) must match {MODEL_NAME.pattern}, got "
                          f"{config.name!r}")
    positive(config.ensemble.members, "ensemble.members")
    if config.ensemble.predictions and config.ensemble.models:
        raise ConfigError("give the ensemble either as ensemble.predictions or as ensemble.models, "
                          "not both")
    positive(config.distill.temperature, "distill.temperature")
    for name in ("ensemble.optim", "distill.phase1", "distill.phase2"):
        section, sub = name.split(".")
        optim = getattr(getattr(config, section), sub)
        positive(optim.epochs, f"{name}.epochs")
        if optim.min_steps < 0:
            raise ConfigError(f"{name}.min_steps must be >= 0, got {optim.min_steps}")
        positive(optim.batch_size, f"{name}.batch_size")
        positive(optim.lr, f"{name}.lr")
    if not 0.0 < config.calibration.alpha < 1.0:
        raise ConfigError(f"calibration.alpha must be in (0, 1), got {config.calibration.alpha}")
    fractions = config.data.calibration_fraction + config.data.test_fraction
    if not (0 < config.data.calibration_fraction < 1 and 0 < config.data.test_fraction < 1
            and fractions < 1):
        raise ConfigError(
            "data.calibration_fraction and data.test_fraction must be in (0, 1) and sum below 1"
        )
    if config.data.missing_targets not in ("refuse", "drop"):
        raise ConfigError(f"data.missing_targets must be refuse or drop, got "
                          f"{config.data.missing_targets!r}")
    if config.data.evaluate_on not in ("test", "validation"):
        raise ConfigError(f"data.evaluate_on must be test or validation, got {config.data.evaluate_on!r}")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {config.device!r}")
    if config.distill.gt_weight < 0:
        raise ConfigError(f"distill.gt_weight must be >= 0, got {config.distill.gt_weight}")
    if config.distill.loader_workers < 0:
        raise ConfigError(f"distill.loader_workers must be >= 0, got {config.distill.loader_workers}")
    if config.distill.transfer.stream:
        if config.ensemble.predictions:
            raise ConfigError("distill.transfer.stream needs the members themselves: a member "
                              "predictions file (ensemble.predictions) fixes the transfer inputs; "
                              "set stream = false")
    elif config.distill.loader_workers > 0:
        raise ConfigError("distill.loader_workers applies to a streamed transfer set only; set "
                          "distill.transfer.stream = true or loader_workers = 0")
