"""Pretrained ``keras.applications`` backbones: a frozen base, then fine-tuning of its top.

Phase 1 trains only the new head while the base is frozen, so the random head
cannot wreck the pretrained features. Phase 2 unfreezes the top
``fine_tune_layers`` layers of the base at ``fine_tune_lr_factor`` times the
learning rate. A pretrained base is always called with ``training=False``:
its BatchNorm layers keep their ImageNet statistics, which small fine-tuning
batches would otherwise overwrite. Without pretrained weights the base is an
ordinary network, trained whole in one phase, BatchNorm included.

Every model takes RGB pixels on 0..255 and carries its own ImageNet
preprocessing made of built-in Keras layers and ops, so its ``model.keras``
loads with plain ``keras.saving.load_model``: EfficientNetV2, MobileNetV3 and
ConvNeXt include theirs (``include_preprocessing``); ResNet50's "caffe" mode
(RGB->BGR, mean subtraction) is a channel flip and a ``Normalization`` layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import keras
from keras import layers

from imgtrain.config import ModelConfig
from imgtrain.errors import UserError
from imgtrain.models.phases import BuiltModel, Phase

BASE_NAME = "backbone"
# ImageNet channel means in BGR order, as keras.applications.resnet50.preprocess_input uses them.
CAFFE_BGR_MEAN = [103.939, 116.779, 123.68]


def _resnet_preprocess(x):
    x = keras.ops.flip(x, axis=-1)  # RGB -> BGR
    return layers.Normalization(mean=CAFFE_BGR_MEAN, variance=[1.0, 1.0, 1.0], name="caffe_mean")(x)


@dataclass(frozen=True)
class Backbone:
    """How to build one ``keras.applications`` base and what it expects in front of it."""

    constructor: Callable[..., keras.Model]
    has_preprocessing_switch: bool  # takes include_preprocessing=True and then expects 0..255
    preprocess: Optional[Callable] = None  # otherwise: what goes between the input and the base


# The one table of backbones; config.BACKBONES names the same keys (a test checks they agree).
TABLE: dict[str, Backbone] = {
    "resnet50": Backbone(lambda **kw: keras.applications.ResNet50(**kw), False, _resnet_preprocess),
    "efficientnetv2_b0": Backbone(lambda **kw: keras.applications.EfficientNetV2B0(**kw), True),
    "mobilenetv3_small": Backbone(lambda **kw: keras.applications.MobileNetV3Small(**kw), True),
    "mobilenetv3_large": Backbone(lambda **kw: keras.applications.MobileNetV3Large(**kw), True),
    "convnext_tiny": Backbone(lambda **kw: keras.applications.ConvNeXtTiny(**kw), True),
}


def _weights_arg(name: str, weights: Optional[str]) -> Optional[str]:
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"{name} weights file {path} does not exist; set model.{name}.weights to a file, imagenet or none"
        )
    return str(path)


def _base(name: str, shape: tuple[int, int, int], weights: Optional[str]) -> keras.Model:
    spec = TABLE[name]
    kwargs = dict(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    if spec.has_preprocessing_switch:
        kwargs["include_preprocessing"] = True
    try:
        base = spec.constructor(**kwargs)
    except Exception as exc:
        if weights == "imagenet":
            raise UserError(
                f"could not download the ImageNet weights for {name} (no network access?); "
                f"run once online, or set model.{name}.weights to a local .h5 file or none"
            ) from None
        raise UserError(f"could not load {name} weights from {weights}: {str(exc).splitlines()[0][:160]}") from None
    base.name = BASE_NAME  # type: ignore[misc]
    return base


def build(cfg: ModelConfig, num_classes: int, shape: tuple[int, int, int]) -> BuiltModel:
    name, t = cfg.name, cfg.transfer()
    weights = _weights_arg(name, t.weights)
    base = _base(name, shape, weights)
    inputs = keras.Input(shape, name="image")
    x = TABLE[name].preprocess(inputs) if TABLE[name].preprocess else inputs
    x = base(x, training=False) if weights else base(x)
    if t.head_dropout:
        x = layers.Dropout(t.head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    model = keras.Model(inputs, outputs, name=name)
    if weights is None:
        return BuiltModel(model)

    def frozen(m: keras.Model) -> None:
        m.trainable = True
        m.get_layer(BASE_NAME).trainable = False

    def fine_tune(m: keras.Model) -> None:
        m.trainable = True
        b = m.get_layer(BASE_NAME)
        b.trainable = True
        cut = max(0, len(b.layers) - t.fine_tune_layers)
        for layer in b.layers[:cut]:
            layer.trainable = False

    phases = [Phase(0, 1.0, frozen, "frozen base")]
    if t.fine_tune_layers > 0:
        phases.append(Phase(t.freeze_epochs, t.fine_tune_lr_factor, fine_tune, "fine-tune"))
    return BuiltModel(model, phases, batch_stat_layers=[])
