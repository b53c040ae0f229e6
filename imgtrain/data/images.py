"""Decoding and resizing: the one definition shared by training, evaluation, export and predict.

Keeping this in one place is what makes the exported SavedModel agree with
``imgtrain predict`` and with the evaluation report: all three turn bytes into
pixels with exactly these ops. Pixels stay on the 0..255 scale as float32;
each model normalises them itself (see ``imgtrain.models``), so an exported
model carries its own preprocessing.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes to a uint8 RGB image (first frame of a GIF)."""
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Any-size image (uint8 or float) to float32 ``size`` (height, width) on the 0..255 scale.

    The kernel reads uint8 directly, and bilinear weights are non-negative and
    sum to one, so no value leaves 0..255: no cast before and no clip after,
    two fewer passes over every pixel of every image. The cast at the end only
    acts when the image already has the size, which ``tf.image.resize`` returns
    untouched.
    """
    out = tf.image.resize(image, [int(size[0]), int(size[1])], method="bilinear")
    return tf.cast(out, tf.float32)


def central_crop(image: tf.Tensor, size: Sequence[int], fraction: Optional[float]) -> tf.Tensor:
    """The central window of ``image`` with the aspect ratio of ``size``, ``fraction`` of the
    largest such window on each side (timm's and Model Garden's ``crop_pct``: resize so the
    shorter side is size / fraction, take the centre). ``None`` or 1: the image untouched."""
    if fraction is None or fraction >= 1.0:
        return image
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    aspect = float(size[1]) / float(size[0])  # width / height of the output
    win_h = tf.minimum(h, w / aspect) * fraction
    win_w = win_h * aspect
    ch = tf.maximum(1, tf.cast(tf.round(win_h), tf.int32))
    cw = tf.maximum(1, tf.cast(tf.round(win_w), tf.int32))
    top = (tf.shape(image)[0] - ch) // 2
    left = (tf.shape(image)[1] - cw) // 2
    return tf.slice(image, tf.stack([top, left, 0]), tf.stack([ch, cw, -1]))


def eval_image(image: tf.Tensor, size: Sequence[int], crop_fraction: Optional[float] = None) -> tf.Tensor:
    """A decoded image as evaluation, predict and the exports see it: centre crop, then resize."""
    return resize(central_crop(image, size, crop_fraction), size)


def load(path: tf.Tensor, size: Sequence[int], crop_fraction: Optional[float] = None) -> tf.Tensor:
    """Path to a float32 image of ``size``: what evaluation and predict feed the model."""
    return eval_image(decode(tf.io.read_file(path)), size, crop_fraction)


def bytes_to_batch(image_bytes: tf.Tensor, size: Sequence[int], crop_fraction: Optional[float] = None) -> tf.Tensor:
    """A vector of encoded images to a float32 batch; used by the exported serving signature."""
    return tf.map_fn(
        lambda b: eval_image(decode(b), size, crop_fraction),
        image_bytes,
        fn_output_signature=tf.TensorSpec([int(size[0]), int(size[1]), 3], tf.float32),
    )
