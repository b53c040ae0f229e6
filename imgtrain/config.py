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
SCHEDULES = ("constant", "step", "cosine", "plateau")
# Pretrained keras.applications backbones (frozen base, then fine-tuning); each has a
# ``model.<name>`` section of TransferConfig. imgtrain.models.backbones holds how to build them.
BACKBONES = ("resnet50", "efficientnetv2_b0", "mobilenetv3_small", "mobilenetv3_large", "convnext_tiny")
MODELS = ("cnn", "dnn") + BACKBONES
ERASING_FILLS = ("noise", "mean")
FILL_MODES = ("reflect", "constant", "nearest", "wrap")  # ImageProjectiveTransformV3's fill_mode, lower case
# A cap checked before anything loads: at 4096 a side one float32 batch of 32 images is already
# 6 GiB before any model runs. run.check_fits_in_memory then weighs the model and the machine.
MAX_IMAGE_SIDE = 4096
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CLUSTERS = ("auto", "none", "k8s-indexed-job")  # how TF_CONFIG is found (train/cluster.py)
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
    randaugment: "RandAugmentConfig" = field(default_factory=lambda: RandAugmentConfig())
    random_erasing: "RandomErasingConfig" = field(default_factory=lambda: RandomErasingConfig())
    mixup: float = 0.0  # Beta(alpha, alpha) of the batch-level MixUp; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of the batch-level CutMix; 0: off
    mix_switch_prob: float = 0.5  # with both on: the chance a batch gets CutMix rather than MixUp
    mix_prob: float = 1.0  # the chance a batch is mixed at all


@dataclass
class RandAugmentConfig:
    """RandAugment (Cubuk et al. 2020): ``num_ops`` random ops per image at ``magnitude`` (0..30, 10 = timm's m10)."""

    num_ops: int = 0  # 0: off; 2 is the usual choice
    magnitude: float = 9.0


@dataclass
class RandomErasingConfig:
    """Random erasing (Zhong et al. 2020): a random box replaced by noise, on ``probability`` of the images."""

    probability: float = 0.0  # 0: off; 0.25 is timm's usual choice
    area: list[float] = field(default_factory=lambda: [0.02, 1 / 3])  # of the image
    ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])  # aspect ratio of the box
    fill: str = "noise"  # noise (per-pixel normal, timm's "pixel" mode) or mean (the ImageNet mean colour)


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
    # With random resized crops, evaluation sees the central crop_fraction of each image (shorter
    # side), resized: objects then appear at the scale training saw. 1 or null: the whole image.
    eval_crop_fraction: Optional[float] = 0.875

    def eval_crop(self) -> Optional[float]:
        """The centre-crop fraction evaluation uses: only when training crops at random."""
        return self.eval_crop_fraction if self.augment.random_resized_crop else None


@dataclass
class CnnConfig:
    filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    convs_per_block: int = 2
    kernel_size: int = 3
    batch_norm: bool = True
    bn_momentum: float = 0.99  # evaluation statistics are re-estimated anyway (train.precise_bn)
    dropout: float = 0.1  # after each block
    head_dropout: float = 0.3


@dataclass
class TransferConfig:
    """A pretrained backbone: a frozen base for ``freeze_epochs``, then its top layers fine-tuned."""

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
    dnn: DnnConfig = field(default_factory=DnnConfig)
    resnet50: TransferConfig = field(default_factory=TransferConfig)
    efficientnetv2_b0: TransferConfig = field(default_factory=TransferConfig)
    mobilenetv3_small: TransferConfig = field(default_factory=TransferConfig)
    mobilenetv3_large: TransferConfig = field(default_factory=TransferConfig)
    convnext_tiny: TransferConfig = field(default_factory=TransferConfig)

    def transfer(self) -> "TransferConfig":
        """The section of the chosen backbone."""
        return getattr(self, self.name)


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
    # Linear warmup. null: none, except when the rate is scaled with the number of replicas
    # (train.scale_lr), where it is 5 epochs as in Goyal et al. 2017, at most a fifth of the run.
    warmup_epochs: Optional[float] = None
    step_epochs: int = 10  # step: multiply by step_factor every step_epochs
    step_factor: float = 0.1
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of the peak; plateau: the floor
    plateau_monitor: Optional[str] = None  # plateau: the metric watched (default: early stopping's)
    plateau_patience: int = 2  # plateau: epochs without improvement before the rate drops
    plateau_factor: float = 0.1  # plateau: what the rate is multiplied by


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
class EmaConfig:
    """An exponential moving average of the weights, used for validation, the best checkpoint,
    the report and the exports. null: off; 0.999 or 0.9999 for long runs."""

    decay: Optional[float] = None


@dataclass
class PreciseBnConfig:
    """Re-estimate BatchNorm statistics on training batches before every evaluation ("precise BN")."""

    # null (auto): when an epoch is too short for BatchNorm's moving averages to forget their
    # past (momentum ** steps_per_epoch > 0.05: under 300 steps at Keras' 0.99); true/false: always/never
    enabled: Optional[bool] = None
    samples: int = 1024  # training images to estimate from (at most one epoch)


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
    ema: EmaConfig = field(default_factory=EmaConfig)
    precise_bn: PreciseBnConfig = field(default_factory=PreciseBnConfig)
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
        _choice("train.cluster", t.cluster, CLUSTERS)
        _choice("data.on_bad_image", d.on_bad_image, ("fail", "skip"))
        _choice("data.augment.fill_mode", d.augment.fill_mode, FILL_MODES)
        _choice("train.early_stopping.mode", t.early_stopping.mode, ("auto", "min", "max"))
        if len(d.image_size) == 1:
            d.image_size = [d.image_size[0], d.image_size[0]]
        if len(d.image_size) != 2 or min(d.image_size) < 1:
            raise UserError(f"data.image_size must be one or two positive integers, got {d.image_size}")
        if m.name in BACKBONES and min(d.image_size) < 32:
            raise UserError(
                f"data.image_size {d.image_size} is too small for {m.name}, which needs at least 32x32; "
                "set --image-size 224 (or at least 32)"
            )
        self._validate_recipes()
        self._validate_numbers()
        if not 0 <= self.seed < 2**31:
            raise UserError(f"seed must be an integer from 0 to 2147483647, got {self.seed}")
        c = m.cnn
        if not c.filters or min(c.filters) < 1 or c.convs_per_block < 1 or c.kernel_size < 1:
            raise UserError(
                f"model.cnn needs filters >= 1 (got {c.filters}), convs_per_block >= 1 (got "
                f"{c.convs_per_block}) and kernel_size >= 1 (got {c.kernel_size})"
            )
        if m.dnn.hidden_units and min(m.dnn.hidden_units) < 1:
            raise UserError(f"model.dnn.hidden_units must all be >= 1, got {m.dnn.hidden_units}")
        if max(d.image_size) > MAX_IMAGE_SIDE:
            raise UserError(
                f"data.image_size {d.image_size} is larger than {MAX_IMAGE_SIDE} pixels a side; "
                "a batch of such images cannot fit in memory. Use a smaller --image-size"
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
            raise UserError(
                "deterministic and train.jit_compile cannot be combined: XLA has no deterministic "
                "kernels for some gradients (MaxPool); drop --deterministic or train.jit_compile"
            )
        _positive("train.epochs", t.epochs)
        _positive("train.batch_size", t.batch_size)
        _positive("train.optimizer.learning_rate", t.optimizer.learning_rate)
        _positive("evaluate.top_k", self.evaluate.top_k)
        _positive("train.checkpoint.keep", t.checkpoint.keep)
        if t.checkpoint.every_steps < 0:
            raise UserError("train.checkpoint.every_steps must be 0 (per epoch only) or positive")
        if not 0.0 <= t.label_smoothing < 1.0:
            raise UserError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
        dropouts = [
            ("model.cnn.dropout", m.cnn.dropout),
            ("model.cnn.head_dropout", m.cnn.head_dropout),
            ("model.dnn.dropout", m.dnn.dropout),
        ]
        dropouts += [(f"model.{b}.head_dropout", getattr(m, b).head_dropout) for b in BACKBONES]
        for name, value in dropouts:
            _in_range(name, value, 0.0, 1.0, high_open=True)
        for b in BACKBONES:
            tc = getattr(m, b)
            _in_range(f"model.{b}.fine_tune_lr_factor", tc.fine_tune_lr_factor, 0.0, 1e6, low_open=True)
            if tc.freeze_epochs < 0 or tc.fine_tune_layers < 0:
                raise UserError(f"model.{b}.freeze_epochs and fine_tune_layers must be 0 or more")
        if isinstance(t.class_weights, str) and t.class_weights != "balanced":
            raise UserError(
                f"train.class_weights must be 'balanced' or a mapping of class name to weight, got '{t.class_weights}'"
            )
        if not m.dnn.hidden_units or min(m.dnn.hidden_units) < 1:
            raise UserError(
                f"model.dnn.hidden_units must be a non-empty list of positive integers, got {m.dnn.hidden_units}"
            )
        if not m.cnn.filters or min(m.cnn.filters) < 1:
            raise UserError(f"model.cnn.filters must be a non-empty list of positive integers, got {m.cnn.filters}")
        if d.label_vocabulary is not None:
            d.label_vocabulary = [str(v) for v in d.label_vocabulary]
            if len(set(d.label_vocabulary)) != len(d.label_vocabulary):
                raise UserError("data.label_vocabulary has repeated entries; list each class once")
            if len(d.label_vocabulary) < 2:
                raise UserError("data.label_vocabulary needs at least two classes")

    def _validate_numbers(self) -> None:
        """The plain numeric knobs: finite and in the range each one means something in."""
        a, t, m = self.data.augment, self.train, self.model
        _in_range("data.augment.rotation", a.rotation, 0.0, 180.0)
        _in_range("data.augment.zoom", a.zoom, 0.0, 1.0, high_open=True)
        _in_range("data.augment.translate", a.translate, 0.0, 1.0)
        _in_range("data.augment.brightness", a.brightness, 0.0, 1.0)
        _in_range("data.augment.contrast", a.contrast, 0.0, 1.0, high_open=True)
        _positive("data.shuffle_buffer", self.data.shuffle_buffer)
        _in_range("model.cnn.bn_momentum", m.cnn.bn_momentum, 0.0, 1.0, high_open=True)
        o = t.optimizer
        if o.weight_decay is not None:
            _in_range("train.optimizer.weight_decay", o.weight_decay, 0.0, 10.0)
        _in_range("train.optimizer.momentum", o.momentum, 0.0, 1.0, high_open=True)
        if o.clipnorm is not None:
            _positive("train.optimizer.clipnorm", o.clipnorm)
        _in_range("train.schedule.step_factor", t.schedule.step_factor, 0.0, 1.0, low_open=True)
        _positive("train.schedule.step_epochs", t.schedule.step_epochs)
        es = t.early_stopping
        _in_range("train.early_stopping.min_delta", es.min_delta, 0.0, float("1e30"))
        if es.patience < 0:
            raise UserError(f"train.early_stopping.patience must be 0 or more, got {es.patience}")

    def _validate_recipes(self) -> None:
        """Augmentation recipes, EMA, precise BN and the schedule's extra knobs: finite and in range."""
        a, t = self.data.augment, self.train
        ra, er = a.randaugment, a.random_erasing
        if ra.num_ops < 0 or ra.num_ops > 10:
            raise UserError(f"data.augment.randaugment.num_ops must be 0 (off) to 10, got {ra.num_ops}")
        _in_range("data.augment.randaugment.magnitude", ra.magnitude, 0.0, 30.0)
        _in_range("data.augment.random_erasing.probability", er.probability, 0.0, 1.0)
        _choice("data.augment.random_erasing.fill", er.fill, ERASING_FILLS)
        _range_pair("data.augment.random_erasing.area", er.area, 0.0, 1.0)
        _range_pair("data.augment.random_erasing.ratio", er.ratio, 0.0, 100.0)
        _range_pair("data.augment.crop_scale", a.crop_scale, 0.0, 1.0)
        _range_pair("data.augment.crop_ratio", a.crop_ratio, 0.0, 100.0)
        for name in ("mixup", "cutmix"):
            _in_range(f"data.augment.{name}", getattr(a, name), 0.0, 100.0)
        _in_range("data.augment.mix_switch_prob", a.mix_switch_prob, 0.0, 1.0)
        _in_range("data.augment.mix_prob", a.mix_prob, 0.0, 1.0)
        if self.data.eval_crop_fraction is not None:
            _in_range("data.eval_crop_fraction", self.data.eval_crop_fraction, 0.0, 1.0, low_open=True)
        if t.ema.decay is not None:
            _in_range("train.ema.decay", t.ema.decay, 0.0, 1.0, low_open=True, high_open=True)
        _positive("train.precise_bn.samples", t.precise_bn.samples)
        sc = t.schedule
        if sc.warmup_epochs is not None:
            _in_range("train.schedule.warmup_epochs", sc.warmup_epochs, 0.0, float(t.epochs))
        _in_range("train.schedule.min_lr_ratio", sc.min_lr_ratio, 0.0, 1.0)
        _in_range("train.schedule.plateau_factor", sc.plateau_factor, 0.0, 1.0, low_open=True, high_open=True)
        if sc.plateau_patience < 0:
            raise UserError(f"train.schedule.plateau_patience must be 0 or more, got {sc.plateau_patience}")

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
    if not value > 0 or value != value or value == float("inf"):
        raise UserError(f"{name} must be a positive finite number, got {value}")


def _in_range(
    name: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """Refuse a value outside [low, high] (open ends as asked); NaN fails every comparison."""
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise UserError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {value}")


def _range_pair(name: str, pair: list[float], low: float, high: float) -> None:
    if len(pair) != 2 or not (low < pair[0] <= pair[1] <= high):
        raise UserError(f"{name} must be two numbers [min, max] with {low:g} < min <= max <= {high:g}, got {pair}")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every way it can go wrong into one clear line."""
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}; fix the file and retry") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping of sections (data:, model:, train:), not {type(data).__name__}"
        )
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
            extra = (
                f"; did you mean '{prefix}{hint[0]}'?"
                if hint
                else f"; known keys: {', '.join(prefix + n for n in names)}"
            )
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
