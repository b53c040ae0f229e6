"""Run configuration: the dataclass schema and its checks, validated at the edge.

One ``Config`` describes a run completely. It is built from (in order of
precedence, lowest first) the dataclass defaults, a YAML file, and
``section.key=value`` overrides from the command line (the text side lives in
``config_parse``); then ``checked()`` normalises (one image side means a
square) and validates every value once, each section its own fields, so the
rest of the code can trust it. Lists of allowed names for components built
with Keras (optimizers, strategies, backbones) are their tables' keys, repeated
here only so validation needs no Keras; a test checks each pair agrees. The
resolved config is written to ``RUN_DIR/config.yaml`` so that ``evaluate``,
``predict`` and a resumed ``train`` see exactly what the first run saw.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from imgtrain import atomic
from imgtrain.config_parse import apply_override, from_dict, read_yaml
from imgtrain.errors import UserError
from imgtrain.storage import urls

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "ftrl")
SCHEDULES = ("constant", "step", "cosine", "plateau")
# Pretrained keras.applications backbones (frozen base, then fine-tuning); each has a
# ``model.<name>`` section of TransferConfig. imgtrain.models.backbones holds how to build them.
BACKBONES = ("resnet50", "efficientnetv2_b0", "mobilenetv3_small", "mobilenetv3_large", "convnext_tiny")
MODELS = ("cnn", "dnn") + BACKBONES
# The one table of the config's local paths, each resolved once where it enters
# (Config.with_absolute_paths); tests/test_config.py fails when a path field is not here.
PATH_KEYS = (
    "output",
    "data.path",
    "data.tfds.data_dir",
    "train.warm_start",
    *(f"model.{name}.weights" for name in BACKBONES),
)
NOT_A_PATH = ("imagenet", "none", "null")  # values of those keys that name no file (and tfds:NAME)
ERASING_FILLS = ("noise", "mean")
RESAMPLERS = ("auto", "opencv", "tensorflow")  # who resamples rotation/zoom/shift; auto: OpenCV when installed
FILL_MODES = ("reflect", "constant", "nearest", "wrap")  # ImageProjectiveTransformV3's fill_mode, lower case
# A cap checked before anything loads: at 4096 a side one float32 batch of 32 images is already
# 6 GiB before any model runs. train.assembly.check_fits_in_memory then weighs the model and the machine.
MAX_IMAGE_SIDE = 4096
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CLUSTERS = ("auto", "none", "k8s-indexed-job", "jobset")  # how TF_CONFIG is found (train/cluster.py)
STRATEGIES = ("auto", "single", "mirrored", "multiworker", "horovod")
SERVICE_ADDRESS = re.compile(r"grpc://[A-Za-z0-9._\-\[\]:]+:\d{1,5}")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclass
class SplitConfig:
    """Fractions for the hash-based split, used when the data is not already split."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def validate(self) -> None:
        for name in ("train", "val", "test"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"data.split.{name} must be between 0 and 1, got {getattr(self, name)}")
        if abs(self.train + self.val + self.test - 1.0) > 1e-6 or self.train <= 0:
            raise UserError(
                f"data.split fractions must be positive for train and sum to 1, got "
                f"train={self.train} val={self.val} test={self.test}"
            )


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
    # auto: OpenCV (decode and warpAffine a batch at a time; several times faster than
    # TensorFlow's kernels, pixels within a level) when it is installed, TensorFlow otherwise
    # and with a tf.data service (whose workers cannot run Python)
    resampler: str = "auto"
    # true: tf.data decodes, crops and resizes; the flips, rotation, zoom, shift, brightness
    # and contrast run batched in the training step, on the GPU when there is one
    on_device: bool = False
    randaugment: "RandAugmentConfig" = field(default_factory=lambda: RandAugmentConfig())
    random_erasing: "RandomErasingConfig" = field(default_factory=lambda: RandomErasingConfig())
    mixup: float = 0.0  # Beta(alpha, alpha) of the batch-level MixUp; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of the batch-level CutMix; 0: off
    mix_switch_prob: float = 0.5  # with both on: the chance a batch gets CutMix rather than MixUp
    mix_prob: float = 1.0  # the chance a batch is mixed at all

    def validate(self) -> None:
        _choice("data.augment.fill_mode", self.fill_mode, FILL_MODES)
        _choice("data.augment.resampler", self.resampler, RESAMPLERS)
        in_range("data.augment.rotation", self.rotation, 0.0, 180.0)
        in_range("data.augment.zoom", self.zoom, 0.0, 1.0, high_open=True)
        in_range("data.augment.translate", self.translate, 0.0, 1.0)
        in_range("data.augment.brightness", self.brightness, 0.0, 1.0)
        in_range("data.augment.contrast", self.contrast, 0.0, 1.0, high_open=True)
        _range_pair("data.augment.crop_scale", self.crop_scale, 0.0, 1.0)
        _range_pair("data.augment.crop_ratio", self.crop_ratio, 0.0, 100.0)
        for name in ("mixup", "cutmix"):
            in_range(f"data.augment.{name}", getattr(self, name), 0.0, 100.0)
        in_range("data.augment.mix_switch_prob", self.mix_switch_prob, 0.0, 1.0)
        in_range("data.augment.mix_prob", self.mix_prob, 0.0, 1.0)
        self.randaugment.validate()
        self.random_erasing.validate()
        if self.on_device and (self.randaugment.num_ops or self.random_erasing.probability):
            raise UserError(
                "data.augment.on_device covers flips, rotation, zoom, shift, brightness and contrast; "
                "randaugment and random_erasing run in tf.data: set data.augment.on_device=false or turn them off"
            )


@dataclass
class RandAugmentConfig:
    """RandAugment (Cubuk et al. 2020): ``num_ops`` random ops per image at ``magnitude`` (0..30, 10 = timm's m10)."""

    num_ops: int = 0  # 0: off; 2 is the usual choice
    magnitude: float = 9.0

    def validate(self) -> None:
        if self.num_ops < 0 or self.num_ops > 10:
            raise UserError(f"data.augment.randaugment.num_ops must be 0 (off) to 10, got {self.num_ops}")
        in_range("data.augment.randaugment.magnitude", self.magnitude, 0.0, 30.0)


@dataclass
class RandomErasingConfig:
    """Random erasing (Zhong et al. 2020): a random box replaced by noise, on ``probability`` of the images."""

    probability: float = 0.0  # 0: off; 0.25 is timm's usual choice
    area: list[float] = field(default_factory=lambda: [0.02, 1 / 3])  # of the image
    ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])  # aspect ratio of the box
    fill: str = "noise"  # noise (per-pixel normal, timm's "pixel" mode) or mean (the ImageNet mean colour)

    def validate(self) -> None:
        in_range("data.augment.random_erasing.probability", self.probability, 0.0, 1.0)
        _choice("data.augment.random_erasing.fill", self.fill, ERASING_FILLS)
        _range_pair("data.augment.random_erasing.area", self.area, 0.0, 1.0)
        _range_pair("data.augment.random_erasing.ratio", self.ratio, 0.0, 100.0)


STAGE_MODES = ("auto", "always", "never")


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
    # A tf.data service dispatcher, grpc://HOST:PORT: the training pipeline's decoding and
    # augmentation run on its workers (launch/data_service.py) instead of this host's CPUs.
    service: Optional[str] = None
    # Seconds the service may send nothing before this host makes what it still owes itself
    # (a dead service worker otherwise stalls TensorFlow's client for good).
    service_timeout: float = 60.0
    # Data in a bucket: "always" copied once to local disk (later epochs read at disk speed),
    # "never" read from the bucket every epoch, "auto" copied when it fits the disk (with room
    # to spare) and read from the bucket when it does not.
    stage: str = "auto"
    # Prepared shards in a bucket are streamed (unless stage is "always"): each worker keeps the
    # shards it reads in a local cache of at most this many GiB (null: the disk's free space less
    # 1 GiB); with room for all of them, later epochs read the cache.
    shard_cache_gb: Optional[float] = None

    def eval_crop(self) -> Optional[float]:
        """The centre-crop fraction evaluation uses: only when training crops at random."""
        return self.eval_crop_fraction if self.augment.random_resized_crop else None

    def normalise(self) -> None:
        """One image side means a square; vocabulary entries are class-folder names, so strings."""
        if len(self.image_size) == 1:
            self.image_size = [self.image_size[0], self.image_size[0]]
        if self.label_vocabulary is not None:
            self.label_vocabulary = [str(v) for v in self.label_vocabulary]

    def validate(self) -> None:
        _choice("data.on_bad_image", self.on_bad_image, ("fail", "skip"))
        _choice("data.stage", self.stage, STAGE_MODES)
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise UserError(f"data.image_size must be one or two positive integers, got {self.image_size}")
        if max(self.image_size) > MAX_IMAGE_SIDE:
            raise UserError(
                f"data.image_size {self.image_size} is larger than {MAX_IMAGE_SIDE} pixels a side; "
                "a batch of such images cannot fit in memory. Use a smaller --image-size"
            )
        _positive("data.shuffle_buffer", self.shuffle_buffer)
        if self.split_seed is not None:
            _seed("data.split_seed", self.split_seed)
        if self.eval_crop_fraction is not None:
            in_range("data.eval_crop_fraction", self.eval_crop_fraction, 0.0, 1.0, low_open=True)
        if self.service is not None and not SERVICE_ADDRESS.fullmatch(self.service):
            raise UserError(
                f"data.service must look like grpc://HOST:PORT (a tf.data service dispatcher), got '{self.service}'"
            )
        if self.label_vocabulary is not None:
            if len(set(self.label_vocabulary)) != len(self.label_vocabulary):
                raise UserError("data.label_vocabulary has repeated entries; list each class once")
            if len(self.label_vocabulary) < 2:
                raise UserError("data.label_vocabulary needs at least two classes")
        in_range("data.service_timeout", self.service_timeout, 0.0, 86400.0, low_open=True)
        if self.shard_cache_gb is not None:
            in_range("data.shard_cache_gb", self.shard_cache_gb, 0.0, 1e6, low_open=True)
        if self.service is not None and self.augment.on_device:
            raise UserError(
                "data.augment.on_device and data.service cannot be combined: the service augments on its "
                "workers; drop one"
            )
        self.split.validate()
        self.augment.validate()


@dataclass
class CnnConfig:
    filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    convs_per_block: int = 2
    kernel_size: int = 3
    batch_norm: bool = True
    bn_momentum: float = 0.99  # evaluation statistics are re-estimated anyway (train.precise_bn)
    dropout: float = 0.1  # after each block
    head_dropout: float = 0.3

    def validate(self) -> None:
        if not self.filters or min(self.filters) < 1:
            raise UserError(f"model.cnn.filters must be a non-empty list of positive integers, got {self.filters}")
        if self.convs_per_block < 1 or self.kernel_size < 1:
            raise UserError(
                f"model.cnn needs filters >= 1 (got {self.filters}), convs_per_block >= 1 (got "
                f"{self.convs_per_block}) and kernel_size >= 1 (got {self.kernel_size})"
            )
        in_range("model.cnn.bn_momentum", self.bn_momentum, 0.0, 1.0, high_open=True)
        in_range("model.cnn.dropout", self.dropout, 0.0, 1.0, high_open=True)
        in_range("model.cnn.head_dropout", self.head_dropout, 0.0, 1.0, high_open=True)


@dataclass
class TransferConfig:
    """A pretrained backbone: a frozen base for ``freeze_epochs``, then its top layers fine-tuned."""

    weights: Optional[str] = "imagenet"  # imagenet, none, or a path to a weights file
    freeze_epochs: int = 3
    fine_tune_layers: int = 30  # top layers of the base unfrozen after freeze_epochs
    fine_tune_lr_factor: float = 0.1
    head_dropout: float = 0.2

    def validate(self, name: str) -> None:
        in_range(f"model.{name}.head_dropout", self.head_dropout, 0.0, 1.0, high_open=True)
        in_range(f"model.{name}.fine_tune_lr_factor", self.fine_tune_lr_factor, 0.0, 1e6, low_open=True)
        if self.freeze_epochs < 0 or self.fine_tune_layers < 0:
            raise UserError(f"model.{name}.freeze_epochs and fine_tune_layers must be 0 or more")


@dataclass
class DnnConfig:
    hidden_units: list[int] = field(default_factory=lambda: [256, 128])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False

    def validate(self) -> None:
        if not self.hidden_units or min(self.hidden_units) < 1:
            raise UserError(
                f"model.dnn.hidden_units must be a non-empty list of positive integers, got {self.hidden_units}"
            )
        in_range("model.dnn.dropout", self.dropout, 0.0, 1.0, high_open=True)


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

    def validate(self) -> None:
        _choice("model.name", self.name, MODELS)
        self.cnn.validate()
        self.dnn.validate()
        for name in BACKBONES:
            getattr(self, name).validate(name)


@dataclass
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: Optional[float] = None
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    clipnorm: Optional[float] = None

    def validate(self) -> None:
        _choice("train.optimizer.name", self.name, OPTIMIZERS)
        _positive("train.optimizer.learning_rate", self.learning_rate)
        if self.weight_decay is not None:
            in_range("train.optimizer.weight_decay", self.weight_decay, 0.0, 10.0)
        in_range("train.optimizer.momentum", self.momentum, 0.0, 1.0, high_open=True)
        if self.clipnorm is not None:
            _positive("train.optimizer.clipnorm", self.clipnorm)


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

    def validate(self, epochs: int) -> None:
        _choice("train.schedule.name", self.name, SCHEDULES)
        if self.warmup_epochs is not None:
            in_range("train.schedule.warmup_epochs", self.warmup_epochs, 0.0, float(epochs))
        _positive("train.schedule.step_epochs", self.step_epochs)
        in_range("train.schedule.step_factor", self.step_factor, 0.0, 1.0, low_open=True)
        in_range("train.schedule.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        in_range("train.schedule.plateau_factor", self.plateau_factor, 0.0, 1.0, low_open=True, high_open=True)
        if self.plateau_patience < 0:
            raise UserError(f"train.schedule.plateau_patience must be 0 or more, got {self.plateau_patience}")


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "auto"  # min, max, or auto (max for accuracy-like metrics)
    patience: int = 5
    min_delta: float = 0.0
    # Epochs closer than this many standard errors of the validation metric are a tie (the
    # later one kept, patience held); 0: exact comparisons, as Keras' EarlyStopping. Two is
    # about a 95% band; python -m imgtrain.tie_study chose it: at one, the restored epoch fell
    # up to 10 points below the last one trained on small validation splits.
    noise_band: float = 2.0

    def validate(self) -> None:
        _choice("train.early_stopping.mode", self.mode, ("auto", "min", "max"))
        in_range("train.early_stopping.min_delta", self.min_delta, 0.0, float("1e30"))
        in_range("train.early_stopping.noise_band", self.noise_band, 0.0, 10.0)
        if self.patience < 0:
            raise UserError(f"train.early_stopping.patience must be 0 or more, got {self.patience}")


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: once per epoch only
    keep: int = 3
    # Several workers look together at whether one was told to stop (SIGTERM, SIGINT) every
    # this many steps: one all-reduce of a number each time (a single process looks every step).
    stop_check_steps: int = 10

    def validate(self) -> None:
        _positive("train.checkpoint.keep", self.keep)
        if not 1 <= self.stop_check_steps <= 10_000:
            raise UserError(f"train.checkpoint.stop_check_steps must be 1 to 10000, got {self.stop_check_steps}")
        if self.every_steps < 0:
            raise UserError("train.checkpoint.every_steps must be 0 (per epoch only) or positive")


@dataclass
class EmaConfig:
    """An exponential moving average of the weights, used for validation, the best checkpoint,
    the report and the exports. null: off; 0.999 or 0.9999 for long runs."""

    decay: Optional[float] = None

    def validate(self) -> None:
        if self.decay is not None:
            in_range("train.ema.decay", self.decay, 0.0, 1.0, low_open=True, high_open=True)


@dataclass
class PreciseBnConfig:
    """Re-estimate BatchNorm statistics on training batches before every evaluation ("precise BN")."""

    # null (auto): when an epoch is too short for BatchNorm's moving averages to forget their
    # past (momentum ** steps_per_epoch > 0.05: under 300 steps at Keras' 0.99); true/false: always/never
    enabled: Optional[bool] = None
    samples: int = 1024  # training images to estimate from (at most one epoch)

    def validate(self) -> None:
        _positive("train.precise_bn.samples", self.samples)


MAX_GLOBAL_BATCH = 10**9  # examples per step: far beyond any cluster's, and a bound on the divisor search
MAX_ACCUMULATE = 256  # micro-batches per step: each is a call of the model in the step's graph


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
    # Training steps per call into the TensorFlow runtime (Keras' steps_per_execution): more
    # steps per call, fewer round trips from Python; the weights are the same.
    steps_per_execution: int = 1
    # Micro-batches of batch_size each replica adds up before one optimizer step: a global batch
    # larger than the devices hold at once. On a resume it follows from global_batch.
    accumulate: int = 1
    # Examples per optimizer step over all replicas: batch_size x replicas x accumulate at the
    # run's first start, recorded in config.yaml and kept on every resume, whatever the number of
    # workers (train.batching). Given, it sets accumulate; changed on a resume, the run trains on
    # with it (a new learning rate and schedule), and says so.
    global_batch: Optional[int] = None
    ema: EmaConfig = field(default_factory=EmaConfig)
    precise_bn: PreciseBnConfig = field(default_factory=PreciseBnConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    warm_start: Optional[str] = None  # another run dir, .keras or .weights.h5 file
    strategy: str = "auto"
    cluster: str = "auto"  # how TF_CONFIG is found: auto, none, k8s-indexed-job or jobset (from the pod's env)
    scale_lr: bool = True  # linear scaling rule with the number of replicas

    def validate(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        if not 1 <= self.steps_per_execution <= 10_000:
            raise UserError(f"train.steps_per_execution must be 1 to 10000, got {self.steps_per_execution}")
        if not 1 <= self.accumulate <= MAX_ACCUMULATE:
            raise UserError(
                f"train.accumulate must be 1 to {MAX_ACCUMULATE} micro-batches per step, got {self.accumulate}"
            )
        if self.global_batch is not None and not 1 <= self.global_batch <= MAX_GLOBAL_BATCH:
            raise UserError(
                f"train.global_batch must be 1 to {MAX_GLOBAL_BATCH:,} examples per step, got {self.global_batch}"
            )
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.strategy", self.strategy, STRATEGIES)
        _choice("train.cluster", self.cluster, CLUSTERS)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            raise UserError(
                "train.class_weights must be 'balanced' or a mapping of class name to weight, "
                f"got '{self.class_weights}'"
            )
        self.optimizer.validate()
        self.schedule.validate(self.epochs)
        self.early_stopping.validate()
        self.checkpoint.validate()
        self.ema.validate()
        self.precise_bn.validate()


@dataclass
class EvaluateConfig:
    top_k: int = 5

    def validate(self) -> None:
        _positive("evaluate.top_k", self.top_k)


@dataclass
class ExportConfig:
    """What a finished training writes besides ``model.keras`` (which evaluate, predict and a
    resume read, so it is always written). ``imgtrain export`` writes any format later."""

    saved_model: bool = True  # saved_model/: serving signatures for TF Serving and tf.saved_model.load


def reports_top_k(num_classes: int, k: int) -> bool:
    """Top-k accuracy means something only with more than k classes (with k or fewer it is 1);
    validation (``train``) and the report (``evaluate``) both ask here, below both."""
    return num_classes > k


@dataclass
class TrackingConfig:
    """Where a run is tracked beyond its own directory and TensorBoard (imgtrain/tracking/)."""

    mlflow: bool = False  # log params, metrics, the report and the model to MLflow (imgtrain[mlflow])
    uri: Optional[str] = None  # MLflow tracking URI; unset: MLFLOW_TRACKING_URI, else MLflow's local store here
    experiment: Optional[str] = None  # unset: MLFLOW_EXPERIMENT_NAME, else "imgtrain"

    def validate(self) -> None:
        for name in ("uri", "experiment"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UserError(f"tracking.{name} must be a non-empty string, got {value!r}; or leave it unset")
        if self.uri:
            check_tracking_uri(self.uri, "tracking.uri")


# MLflow's own stores; a scheme a letter or two from one of these is a typo (a plugin's own
# scheme, further off, is left to MLflow).
TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(uri: str, where: str) -> None:
    """Refuse a tracking URI whose scheme is a near miss of MLflow's (``htp://``, ``sqlte:///``)."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        near = difflib.get_close_matches(scheme, TRACKING_SCHEMES, n=1, cutoff=0.6)
        if near:
            raise UserError(
                f"{where} {uri!r} starts with {scheme}://, not a scheme MLflow knows; did you mean {near[0]}://?"
            )


@dataclass
class Config:
    seed: int = 42
    deterministic: bool = False
    output: str = "runs/latest"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

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
        return cfg.checked()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the resolved config atomically so a crash never leaves half a file."""
        atomic.write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_absolute_paths(self, cwd: Optional[Path] = None) -> "Config":
        """Resolve every path the user gave (``PATH_KEYS``) against the working directory, once,
        where it enters; the tracking store too (``absolute_tracking_uri``).

        The rule, for flags and config files alike: a relative path is relative to the directory
        imgtrain runs in, not to the config file. The run's saved ``config.yaml`` then holds
        absolute paths, so a resume, ``evaluate``, ``predict`` and ``export`` find the data (and
        a backbone's weights file) from any folder.
        """
        base = Path(cwd) if cwd is not None else Path.cwd()
        for key in PATH_KEYS:
            *parents, leaf = key.split(".")
            section = self
            for name in parents:
                section = getattr(section, name)
            value = getattr(section, leaf)
            text = str(value or "")
            urls.check(text, key)  # a bucket URL stays as written; another scheme is refused
            if text and not text.startswith("tfds:") and text.lower() not in NOT_A_PATH and not urls.is_url(text):
                setattr(section, leaf, os.path.normpath(base / Path(str(value)).expanduser()))
        self.tracking.uri = absolute_tracking_uri(self.tracking.uri, base)
        return self

    # -- checking -------------------------------------------------------------------

    def checked(self) -> "Config":
        """Normalise, then validate: what every entry point calls before trusting the config."""
        self.data.normalise()
        self.validate()
        return self

    def validate(self) -> None:
        """Check every value once, so a bad one fails before any work starts. Each section checks
        its own fields; what is left here ties sections together."""
        _seed("seed", self.seed)
        self.data.validate()
        self.model.validate()
        self.train.validate()
        self.evaluate.validate()
        self.tracking.validate()
        if self.model.name in BACKBONES and min(self.data.image_size) < 32:
            raise UserError(
                f"data.image_size {self.data.image_size} is too small for {self.model.name}, which needs at least "
                "32x32; set --image-size 224 (or at least 32)"
            )
        if self.deterministic and self.train.jit_compile:
            raise UserError(
                "deterministic and train.jit_compile cannot be combined: XLA has no deterministic "
                "kernels for some gradients (MaxPool); drop --deterministic or train.jit_compile"
            )

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed


# -- helpers ------------------------------------------------------------------------


def absolute_tracking_uri(uri: Optional[str], base: Path) -> Optional[str]:
    """A tracking URI naming a local store (a path, ``file:``, ``sqlite:///``) made absolute
    against ``base``, so that a resume from another folder reaches the same store; any other
    (``http://``, a database server) is returned as it is."""
    if not uri or uri == "databricks":  # MLflow's one bare-word URI: a Databricks workspace
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.normpath(base / uri[len("sqlite:///") :])
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return Path(os.path.normpath(base / uri[len("file:") :].lstrip("/"))).as_uri()
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return os.path.normpath(base / Path(uri).expanduser())
    return uri


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise UserError(f"unknown {name} '{value}'{extra}; choose one of: {', '.join(allowed)}")


def _seed(name: str, value: int) -> None:
    if not 0 <= value < 2**31:
        raise UserError(f"{name} must be an integer from 0 to 2147483647, got {value}")


def _positive(name: str, value: float) -> None:
    if not value > 0 or value != value or value == float("inf"):
        raise UserError(f"{name} must be a positive finite number, got {value}")


def in_range(name: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    """Refuse a value outside [low, high] (open ends as asked); NaN fails every comparison."""
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise UserError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {value}")


def _range_pair(name: str, pair: list[float], low: float, high: float) -> None:
    if len(pair) != 2 or not (low < pair[0] <= pair[1] <= high):
        raise UserError(f"{name} must be two numbers [min, max] with {low:g} < min <= max <= {high:g}, got {pair}")
