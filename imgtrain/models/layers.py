"""Small serialisable layers shared by the models, so ``.keras`` files load without custom code."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="imgtrain")
class CaffePreprocess(keras.layers.Layer):
    """ResNet50's ImageNet preprocessing (RGB->BGR, mean subtraction) inside the model."""

    def call(self, inputs):
        return keras.applications.resnet50.preprocess_input(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
