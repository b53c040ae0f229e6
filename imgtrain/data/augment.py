"""Stateless, seeded augmentations for the training split.

Every random choice takes an explicit seed derived from (run seed, epoch,
example index), never from a global generator, so the same seed gives the
same batches in any order of execution, with any number of parallel calls,
and after a resume. TensorFlow has stateless crop, flip, brightness and
contrast ops; rotation, zoom and translation are composed into one affine
matrix and applied by TensorFlow's projective-transform kernel in one pass.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from imgtrain.config import AugmentConfig
from imgtrain.data.images import decode, resize
from imgtrain.data.randaugment import randaugment, random_erasing


def example_seed(seed: int, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """A stateless seed (shape [2]) unique to one example in one epoch of one run."""
    base = tf.constant([seed, 0x1A6E], dtype=tf.int64)
    s = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(s, tf.cast(index, tf.int64))


def crop_window(shape: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Inception-style crop box ``(begin, size)`` for an image of ``shape``: a random area and
    aspect ratio. Only height and width matter, so a JPEG's header shape gives the same box as
    the decoded image."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=tuple(cfg.crop_ratio),
        area_range=tuple(cfg.crop_scale),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, crop_size


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, size: Sequence[int]) -> tf.Tensor:
    """Crop a decoded image at a random box and resize it to ``size``."""
    begin, crop_size = crop_window(tf.shape(image), seed, cfg)
    return resize(tf.slice(image, begin, crop_size), size)


def decode_random_resized_crop(
    encoded: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, size: Sequence[int]
) -> tf.Tensor:
    """Encoded bytes to a random resized crop, decoding only the crop window of a JPEG.

    The box depends on the image's size alone, which a JPEG header gives
    without decoding; ``decode_and_crop_jpeg`` then skips the blocks outside the
    box, so the smaller the crop the less is decoded. Other formats are decoded
    whole and cropped. Both give the box ``random_resized_crop`` gives.
    """

    def jpeg() -> tf.Tensor:
        begin, crop_size = crop_window(tf.image.extract_jpeg_shape(encoded), seed, cfg)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

    def other() -> tf.Tensor:
        image = decode(encoded)
        begin, crop_size = crop_window(tf.shape(image), seed, cfg)
        return tf.slice(image, begin, crop_size)

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    crop.set_shape([None, None, 3])
    return resize(crop, size)


def affine_matrix(seeds: tf.Tensor, cfg: AugmentConfig, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """The random affine as a 3x3 map from an output pixel to an input pixel of an ``h`` x ``w``
    image: rotate and scale about the centre, then shift. ``seeds``: four stateless seeds
    (angle, zoom, horizontal and vertical shift)."""
    h, w = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    angle = tf.random.stateless_uniform([], seeds[0], -1.0, 1.0) * (cfg.rotation * math.pi / 180.0)
    zoom = 1.0 + tf.random.stateless_uniform([], seeds[1], -1.0, 1.0) * cfg.zoom
    tx = tf.random.stateless_uniform([], seeds[2], -1.0, 1.0) * cfg.translate * w
    ty = tf.random.stateless_uniform([], seeds[3], -1.0, 1.0) * cfg.translate * h
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    a2 = cx - cos * cx + sin * cy - tx
    b2 = cy - sin * cx - cos * cy - ty
    return tf.reshape(tf.stack([cos, -sin, a2, sin, cos, b2, 0.0, 0.0, 1.0]), [3, 3])


def _affine(image: tf.Tensor, seeds: tf.Tensor, cfg: AugmentConfig, fill_mode: str) -> tf.Tensor:
    transform = tf.reshape(affine_matrix(seeds, cfg, tf.shape(image)[0], tf.shape(image)[1]), [9])[None, :8]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )
    return out[0]


def augment(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, fill_mode: str = "reflect") -> tf.Tensor:
    """Apply the enabled augmentations to one float32 image already at its final size: the
    flips and the affine here (the training pipeline composes them with the resize instead,
    in ``data.geometry``), then ``photometric``."""
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    if cfg.horizontal_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    if cfg.vertical_flip:
        image = tf.image.stateless_random_flip_up_down(image, seed=seeds[1])
    if cfg.rotation or cfg.zoom or cfg.translate:
        image = _affine(image, seeds[2:6], cfg, fill_mode)
    return photometric(image, seed, cfg)


def photometric(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """RandAugment, brightness, contrast and random erasing on a float32 image at its final size,
    with the seeds ``augment`` gives them."""
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    if cfg.randaugment.num_ops:  # every op keeps 0..255 itself
        image = randaugment(image, tf.random.experimental.stateless_fold_in(seed, 101), cfg.randaugment)
    if cfg.brightness:
        image = tf.image.stateless_random_brightness(image, cfg.brightness * 255.0, seed=seeds[6])
    if cfg.contrast:
        image = tf.image.stateless_random_contrast(image, 1.0 - cfg.contrast, 1.0 + cfg.contrast, seed=seeds[7])
    if cfg.brightness or cfg.contrast:
        # Only these can leave 0..255; flips and the bilinear affine cannot, and a clip is a
        # full pass over the image (about 7% of the pipeline's throughput at 224x224).
        image = tf.clip_by_value(image, 0.0, 255.0)
    if cfg.random_erasing.probability:  # last, as timm does: the box hides augmented pixels
        image = random_erasing(image, tf.random.experimental.stateless_fold_in(seed, 102), cfg.random_erasing)
    return image
