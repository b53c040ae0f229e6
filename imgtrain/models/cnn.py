"""A configurable convolutional network: blocks of conv (+BN) + ReLU, pooled, then a linear head."""

from __future__ import annotations

import keras
from keras import layers

from imgtrain.config import ModelConfig
from imgtrain.models.phases import BuiltModel


def build(cfg: ModelConfig, num_classes: int, shape: tuple[int, int, int]) -> BuiltModel:
    c = cfg.cnn
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for b, filters in enumerate(c.filters):
        for i in range(c.convs_per_block):
            x = layers.Conv2D(
                filters, c.kernel_size, padding="same", use_bias=not c.batch_norm, name=f"block{b + 1}_conv{i + 1}"
            )(x)
            if c.batch_norm:
                x = layers.BatchNormalization(momentum=c.bn_momentum, name=f"block{b + 1}_bn{i + 1}")(x)
            x = layers.ReLU(name=f"block{b + 1}_relu{i + 1}")(x)
        if min(x.shape[1], x.shape[2]) >= 2:
            x = layers.MaxPooling2D(name=f"block{b + 1}_pool")(x)
        if c.dropout:
            x = layers.Dropout(c.dropout, name=f"block{b + 1}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if c.head_dropout:
        x = layers.Dropout(c.head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return BuiltModel(keras.Model(inputs, outputs, name="cnn"))
