"""What the model is fed from a training batch's images: the one place the training step and
the BatchNorm re-estimation turn the pipeline's images into model inputs."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from imgtrain.config import AugmentConfig
from imgtrain.data.geometry import augment_batch


def model_input(x, on_device: Optional[AugmentConfig] = None) -> tf.Tensor:
    """float32 images from a training batch's ``x``: uint8 (the pipeline's OpenCV path) or
    float32 images, cast here, on the step's device; or, with ``data.augment.on_device``,
    ``(images, draws)``, augmented here by ``geometry.augment_batch``."""
    if isinstance(x, (tuple, list)):
        images, draws = x
        return augment_batch(images, draws, on_device) if on_device is not None else tf.cast(images, tf.float32)
    return tf.cast(x, tf.float32)
