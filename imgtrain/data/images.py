"""Decoding and resizing: the one definition shared by training, evaluation, export and predict.

Keeping this in one place is what makes the exported SavedModel agree with
``imgtrain predict`` and with the evaluation report: all three turn bytes into
pixels with exactly these ops. Pixels stay on the 0..255 scale as float32;
each model normalises them itself (see ``imgtrain.models``), so an exported
model carries its own preprocessing.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes to a uint8 RGB image (first frame of a GIF)."""
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Any-size image to float32 ``size`` (height, width) on the 0..255 scale."""
    out = tf.image.resize(tf.cast(image, tf.float32), [int(size[0]), int(size[1])], method="bilinear")
    return tf.clip_by_value(out, 0.0, 255.0)


def load(path: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Path to a float32 image of ``size``: what evaluation and predict feed the model."""
    return resize(decode(tf.io.read_file(path)), size)


def bytes_to_batch(image_bytes: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """A vector of encoded images to a float32 batch; used by the exported serving signature."""
    return tf.map_fn(
        lambda b: resize(decode(b), size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([int(size[0]), int(size[1]), 3], tf.float32),
    )
