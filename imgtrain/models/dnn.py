"""A dense classifier with the options of ``tf.estimator.DNNClassifier``.

``hidden_units``, ``activation``, ``dropout`` and ``batch_norm`` mean what they
meant there: each hidden layer is Dense -> (BatchNorm) -> activation ->
(Dropout). Example weights (``weight_column``), a string label vocabulary
(``label_vocabulary``) and warm starting (``warm_start_from``) are handled by
the data source and the run, so they work for every model, not only this one.
"""

from __future__ import annotations

import keras
from keras import layers

from imgtrain.config import ModelConfig
from imgtrain.errors import UserError
from imgtrain.models.phases import BuiltModel


def build(cfg: ModelConfig, num_classes: int, shape: tuple[int, int, int]) -> BuiltModel:
    d = cfg.dnn
    try:
        activation = keras.activations.get(d.activation)
    except ValueError:
        raise UserError(
            f"unknown model.dnn.activation '{d.activation}'; use a Keras activation such as relu, elu, gelu, tanh"
        ) from None
    inputs = keras.Input(shape, name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(d.hidden_units):
        x = layers.Dense(units, use_bias=not d.batch_norm, name=f"hidden{i + 1}")(x)
        if d.batch_norm:
            x = layers.BatchNormalization(name=f"hidden{i + 1}_bn")(x)
        x = layers.Activation(activation, name=f"hidden{i + 1}_{d.activation}")(x)
        if d.dropout:
            x = layers.Dropout(d.dropout, name=f"hidden{i + 1}_dropout")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return BuiltModel(keras.Model(inputs, outputs, name="dnn"))
