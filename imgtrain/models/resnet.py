"""ResNet50 transfer learning: a frozen ImageNet base, then fine-tuning of its top layers.

Phase 1 trains only the new head while the base is frozen, so the random head
cannot wreck the pretrained features. Phase 2 unfreezes the top
``fine_tune_layers`` layers of the base at ``fine_tune_lr_factor`` times the
learning rate. The base is always called with ``training=False``: its
BatchNorm layers keep their ImageNet statistics, which small fine-tuning
batches would otherwise overwrite.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from imgtrain.config import ModelConfig
from imgtrain.errors import UserError
from imgtrain.models.layers import CaffePreprocess
from imgtrain.models.registry import BuiltModel, Phase

BASE_NAME = "resnet50_base"


def _weights_arg(weights: str | None) -> str | None:
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"ResNet50 weights file {path} does not exist; set model.resnet50.weights to a file, imagenet or none")
    return str(path)


def build(cfg: ModelConfig, num_classes: int, shape: tuple[int, int, int]) -> BuiltModel:
    r = cfg.resnet50
    weights = _weights_arg(r.weights)
    try:
        base = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    except Exception as exc:
        if weights == "imagenet":
            raise UserError(
                "could not download the ImageNet weights for ResNet50 (no network access?); "
                "run once online, or set model.resnet50.weights to a local .h5 file or none"
            ) from None
        raise UserError(f"could not load ResNet50 weights from {weights}: {str(exc).splitlines()[0][:160]}") from None
    base.name = BASE_NAME  # type: ignore[misc]
    inputs = keras.Input(shape, name="image")
    x = CaffePreprocess(name="preprocess")(inputs)
    x = base(x, training=False)
    if r.head_dropout:
        x = layers.Dropout(r.head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    model = keras.Model(inputs, outputs, name="resnet50")

    def frozen(m: keras.Model) -> None:
        m.trainable = True
        m.get_layer(BASE_NAME).trainable = False

    def fine_tune(m: keras.Model) -> None:
        m.trainable = True
        b = m.get_layer(BASE_NAME)
        b.trainable = True
        cut = max(0, len(b.layers) - r.fine_tune_layers)
        for layer in b.layers[:cut]:
            layer.trainable = False

    def everything(m: keras.Model) -> None:
        m.trainable = True

    if weights is None:
        return BuiltModel(model, [Phase(0, 1.0, everything, "train")])
    phases = [Phase(0, 1.0, frozen, "frozen base")]
    if r.fine_tune_layers > 0:
        phases.append(Phase(r.freeze_epochs, r.fine_tune_lr_factor, fine_tune, "fine-tune"))
    return BuiltModel(model, phases)
