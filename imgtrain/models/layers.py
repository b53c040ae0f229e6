"""Layers kept only so that runs exported by imgtrain 0.1 still load.

New models use built-in Keras layers alone (see ``models/backbones.py``).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="imgtrain")
class CaffePreprocess(keras.layers.Layer):
    """ResNet50's ImageNet preprocessing (RGB->BGR, mean subtraction), as 0.1 exported it."""

    def call(self, inputs):
        return keras.applications.resnet50.preprocess_input(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
