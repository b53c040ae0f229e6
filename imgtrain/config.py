"""Run configuration: dataclasses, YAML, ``--set`` overrides, validated at the edge.

One ``Config`` describes a run completely. It is built from (in order of
precedence, lowest first) the dataclass defaults, a YAML file, and
``section.key=value`` overrides from the command line; then ``validate()``
checks every value once, so the rest of the code can trust it. The resolved
config is written to ``RUN_DIR/config.yaml`` so that ``evaluate``, ``predict``
and a resumed ``train`` see exactly what the first run saw.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from imgtrain import atomic
from imgtrain.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "ftrl")
SCHEDULES = ("constant", "step", "cosine")
MODELS = ("cnn", "resnet50", "dnn")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "single", "mirrored", "multiworker", "horovod")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclass
class SplitConfig:
    """Fractions for the hash-based split, used when the data is not already split."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1


@dataclass
class TfdsConfig:
    """Where a TFDS dataset comes from; ``data.path`` of the form ``tfds:NAME`` selects it."""

    name: Optional[str] = None
    data_dir: Optional[str] = None
    train_split: str = "train[:90%]"
    val_split: Optional[str] = "train[90%:]"
    test_split: Optional[str] = "test"
    download: bool = True


@dataclass
class AugmentConfig:
    """Training-split augmentations; every one is off (zero/false) unless set."""

    random_resized_crop: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotation: float = 0.0  # maximum degrees either way
    zoom: float = 0.0  # maximum relative zoom in or out, e.g. 0.1
    translate: float = 0.0  # maximum shift as a fraction of the side
    brightness: float = 0.0  # maximum delta on the 0..1 scale
    contrast: float = 0.0  # maximum relative change, e.g. 0.2
    fill_mode: str = "reflect"  # how rotation/zoom/translate fill the border: reflect, constant, nearest, wrap


@dataclass
class DataConfig:
    path: Optional[str] = None  # image folder, CSV manifest or tfds:NAME
    tfds: TfdsConfig = field(default_factory=TfdsConfig)
    label_vocabulary: Optional[list[str]] = None
    split: SplitConfig = field(default_factory=SplitConfig)
    split_seed: Optional[int] = None  # defaults to the run seed
    image_size: list[int] = field(default_factory=lambda: [224, 224])
    on_bad_image: str = "fail"
    cache: bool = False
    shuffle_buffer: int = 10000  # for streamed sources (TFDS); file lists shuffle fully
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class CnnConfig:
    filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    convs_per_block: int = 2
    kernel_size: int = 3
    batch_norm: bool = True
    bn_momentum: float = 0.99  # lower (e.g. 0.9) when epochs have few steps
    dropout: float = 0.1  # after each block
    head_dropout: float = 0.3


@dataclass
class ResNetConfig:
    weights: Optional[str] = "imagenet"  # imagenet, none, or a path to a weights file
    freeze_epochs: int = 3
    fine_tune_layers: int = 30  # top layers of the base unfrozen after freeze_epochs
    fine_tune_lr_factor: float = 0.1
    head_dropout: float = 0.2


@dataclass
class DnnConfig:
    hidden_units: list[int] = field(default_factory=lambda: [256, 128])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False


@dataclass
class ModelConfig:
    name: str = "cnn"
    cnn: CnnConfig = field(default_factory=CnnConfig)
    resnet50: ResNetConfig = field(default_factory=ResNetConfig)
    dnn: DnnConfig = field(default_factory=DnnConfig)


@dataclass
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: Optional[float] = None
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    clipnorm: Optional[float] = None


@dataclass
class ScheduleConfig:
    name: str = "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step: multiply by step_factor every step_epochs
    step_factor: float = 0.1
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of the peak


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "auto"  # min, max, or auto (max for accuracy-like metrics)
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: once per epoch only
    keep: int = 3


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32  # per replica
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    class_weights: Union[None, str, dict[str, float]] = None  # None, "balanced" or {class: weight}
    precision: str = "float32"
    jit_compile: bool = False
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    warm_start: Optional[str] = None  # another run dir, .keras or .weights.h5 file
    strategy: str = "auto"
    cluster: str = "auto"  # how TF_CONFIG is found: auto, none, or k8s-indexed-job (built from the Job's env)
    scale_lr: bool = True  # linear scaling rule with the number of replicas


@dataclass
class EvaluateConfig:
    top_k: int = 5


@dataclass
class Config:
    seed: int = 42
    deterministic: bool = False
    output: str = "runs/latest"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    # -- building -----------------------------------------------------------------

    @classmethod
    def load(cls, path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> "Config":
        """Defaults, then the YAML file, then ``key=value`` overrides; validated."""
        raw: dict[str, Any] = {}
        where = "the defaults"
        if path is not None:
            raw = read_yaml(Path(path))
            where = str(path)
        cfg = from_dict(cls, raw, where=where, prefix="")
        for item in overrides or []:
            cfg = apply_override(cfg, item)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the resolved config atomically so a crash never leaves half a file."""
        atomic.write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    # -- validation -----------------------------------------------------------------

    def validate(self) -> None:
        """Check every value once, so a bad one fails before any work starts."""
        d, m, t = self.data, self.model, self.train
        _choice("model.name", m.name, MODELS)
        _choice("train.optimizer.name", t.optimizer.name, OPTIMIZERS)
        _choice("train.schedule.name", t.schedule.name, SCHEDULES)
        _choice("train.precision", t.precision, PRECISIONS)
        _choice("train.strategy", t.strategy, STRATEGIES)
        _choice("train.cluster", t.cluster, ("auto", "none", "k8s-indexed-job"))
        _choice("data.on_bad_image", d.on_bad_image, ("fail", "skip"))
        _choice("data.augment.fill_mode", d.augment.fill_mode, ("reflect", "constant", "nearest", "wrap"))
        _choice("train.early_stopping.mode", t.early_stopping.mode, ("auto", "min", "max"))
        if len(d.image_size) == 1:
            d.image_size = [d.image_size[0], d.image_size[0]]
        if len(d.image_size) != 2 or min(d.image_size) < 1:
            raise UserError(f"data.image_size must be one or two positive integers, got {d.image_size}")
        if m.name == "resnet50" and min(d.image_size) < 32:
            raise UserError(
                f"data.image_size {d.image_size} is too small for resnet50, which needs at least 32x32; "
                "set --image-size 224 (or at least 32)"
            )
        fr = d.split
        for name in ("train", "val", "test"):
            if not 0.0 <= getattr(fr, name) <= 1.0:
                raise UserError(f"data.split.{name} must be between 0 and 1, got {getattr(fr, name)}")
        if abs(fr.train + fr.val + fr.test - 1.0) > 1e-6 or fr.train <= 0:
            raise UserError(
                f"data.split fractions must be positive for train and sum to 1, got "
                f"train={fr.train} val={fr.val} test={fr.test}"
            )
        if self.deterministic and t.jit_compile:
            raise UserError("deterministic and train.jit_compile cannot be combined: XLA has no deterministic "
                            "kernels for some gradients (MaxPool); drop --deterministic or train.jit_compile")
        _positive("train.epochs", t.epochs)
        _positive("train.batch_size", t.batch_size)
        _positive("train.optimizer.learning_rate", t.optimizer.learning_rate)
        _positive("evaluate.top_k", self.evaluate.top_k)
        _positive("train.checkpoint.keep", t.checkpoint.keep)
        if t.checkpoint.every_steps < 0:
            raise UserError("train.checkpoint.every_steps must be 0 (per epoch only) or positive")
        if not 0.0 <= t.label_smoothing < 1.0:
            raise UserError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
        for name, value in (("model.cnn.dropout", m.cnn.dropout), ("model.cnn.head_dropout", m.cnn.head_dropout),
                            ("model.dnn.dropout", m.dnn.dropout), ("model.resnet50.head_dropout", m.resnet50.head_dropout)):
            if not 0.0 <= value < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {value}")
        if isinstance(t.class_weights, str) and t.class_weights != "balanced":
            raise UserError(
                f"train.class_weights must be 'balanced' or a mapping of class name to weight, got '{t.class_weights}'"
            )
        if not m.dnn.hidden_units or min(m.dnn.hidden_units) < 1:
            raise UserError(f"model.dnn.hidden_units must be a non-empty list of positive integers, got {m.dnn.hidden_units}")
        if not m.cnn.filters or min(m.cnn.filters) < 1:
            raise UserError(f"model.cnn.filters must be a non-empty list of positive integers, got {m.cnn.filters}")
        if d.label_vocabulary is not None:
            d.label_vocabulary = [str(v) for v in d.label_vocabulary]
            if len(set(d.label_vocabulary)) != len(d.label_vocabulary):
                raise UserError("data.label_vocabulary has repeated entries; list each class once")
            if len(d.label_vocabulary) < 2:
                raise UserError("data.label_vocabulary needs at least two classes")

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed


# -- helpers ------------------------------------------------------------------------


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise UserError(f"unknown {name} '{value}'{extra}; choose one of: {', '.join(allowed)}")


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every way it can go wrong into one clear line."""
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}; fix the file and retry") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data:, model:, train:), not {type(data).__name__}")
    return data


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, key: str, where: str) -> Any:
    """Coerce one YAML value to the field's declared type, or say which key is wrong."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' in {where} must be a mapping, got {value!r}")
        return from_dict(hint, value, where=where, prefix=key + ".")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[-1] if errors else f"config key '{key}' in {where} has an invalid value {value!r}")
    if origin is list:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and args and args[0] in (int, float):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' in {where} must be a list, got {value!r}")
        return [_convert(v, args[0], key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' in {where} must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], key, where) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' in {where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{key}' in {where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}' in {where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}' in {where} must be a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting keys it does not know."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; known keys: {', '.join(prefix + n for n in names)}"
            raise UserError(f"unknown config key '{prefix}{key}' in {where}{extra}")
        kwargs[key] = _convert(value, hints[key], prefix + key, where)
    return cls(**kwargs)


def apply_override(cfg: Config, item: str) -> Config:
    """Apply one ``section.key=value`` override; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set '{item}' must look like section.key=value, e.g. train.epochs=5")
    dotted, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return set_value(cfg, dotted, value, where="--set")


def set_value(cfg: Config, dotted: str, value: Any, where: str = "--set") -> Config:
    """A copy of ``cfg`` with one dotted key set to an already-parsed value."""
    data = cfg.to_dict()
    node = data
    parts = dotted.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is None:
                node[part] = {}
            else:
                _unknown(parts, i, node)
        node = node[part]
    last = parts[-1]
    if last not in node and not _is_mapping_field(cfg, parts[:-1]):
        _unknown(parts, len(parts) - 1, node)
    node[last] = value
    return from_dict(Config, data, where=where, prefix="")


def _is_mapping_field(cfg: Config, parts: list[str]) -> bool:
    obj: Any = cfg
    for p in parts:
        obj = getattr(obj, p, None) if not isinstance(obj, dict) else obj.get(p)
    return isinstance(obj, dict) and not dataclasses.is_dataclass(obj)


def _unknown(parts: list[str], i: int, node: dict[str, Any]) -> None:
    key = ".".join(parts[: i + 1])
    hint = difflib.get_close_matches(parts[i], list(node), n=1)
    prefix = ".".join(parts[:i])
    suggestion = f"; did you mean '{(prefix + '.' if prefix else '') + hint[0]}'?" if hint else ""
    raise UserError(f"unknown config key '{key}' in --set{suggestion}")
