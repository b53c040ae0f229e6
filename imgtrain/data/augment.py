"""Stateless, seeded augmentations for the training split.

Every random choice takes an explicit seed derived from (run seed, epoch,
example index), never from a global generator, so the same seed gives the
same batches in any order of execution, with any number of parallel calls,
and after a resume. TensorFlow has stateless crop, flip, brightness and
contrast ops; rotation, zoom and translation are composed into one affine
matrix and applied by TensorFlow's projective-transform kernel in one pass
(the training pipeline's faster path is in ``data.geometry``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

from imgtrain import seeds
from imgtrain.config import AugmentConfig
from imgtrain.data.images import decode, resize
from imgtrain.data.randaugment import randaugment, random_erasing


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


def draws(seed: tf.Tensor) -> tf.Tensor:
    """The eight uniforms in [0, 1) behind the flips, the affine, brightness and contrast, in
    one stateless call (every op per image costs): horizontal flip, vertical flip, angle,
    zoom, horizontal shift, vertical shift, brightness, contrast."""
    return tf.random.stateless_uniform([8], seed)


def jitter_rows(u, cfg: AugmentConfig, h: float, w: float, xp) -> list:
    """The top two rows of the 3x3 map from an output pixel to a pixel of an ``h`` x ``w`` image:
    rotate and scale about the centre, shift, then the flips (seen from the output:
    x -> (w - 1) - x), from the draws ``u`` of ``draws``. ``xp`` is ``numpy`` or ``tensorflow``: the one
    definition serves OpenCV's path, computed in its NumPy call, and TensorFlow's graph."""
    a, b = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    if cfg.rotation or cfg.zoom or cfg.translate:
        angle = (2.0 * u[2] - 1.0) * (cfg.rotation * math.pi / 180.0)
        zoom = 1.0 + (2.0 * u[3] - 1.0) * cfg.zoom
        tx = (2.0 * u[4] - 1.0) * cfg.translate * w
        ty = (2.0 * u[5] - 1.0) * cfg.translate * h
        cos, sin = xp.cos(angle) / zoom, xp.sin(angle) / zoom
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        a = [cos, -sin, cx - cos * cx + sin * cy - tx]
        b = [sin, cos, cy - sin * cx - cos * cy - ty]
    if cfg.horizontal_flip:
        sx = xp.where(u[0] < 0.5, -1.0, 1.0)
        a = [sx * a[0], sx * a[1], sx * a[2] + (1.0 - sx) * (w - 1.0) / 2.0]
    if cfg.vertical_flip:
        sy = xp.where(u[1] < 0.5, -1.0, 1.0)
        b = [sy * b[0], sy * b[1], sy * b[2] + (1.0 - sy) * (h - 1.0) / 2.0]
    return a + b


def project(images: tf.Tensor, rows: list, output_shape, fill_mode: str, fill_value: float = 0.0) -> tf.Tensor:
    """float32 ``images`` [batch, h, w, 3] sampled bilinearly at the affine ``rows`` (a0, a1,
    a2, b0, b1, b2: each a number or one per image) from every output pixel, by TensorFlow's
    projective-transform kernel: one call for the pipeline's TensorFlow path, the on-device
    batch and the reference ``augment``."""
    ones = tf.ones([tf.shape(images)[0]])
    transforms = tf.stack([ones * tf.cast(v, tf.float32) for v in rows] + [ones * 0.0] * 2, axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=output_shape,
        fill_value=fill_value,
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )


def augment(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, fill_mode: str = "reflect") -> tf.Tensor:
    """Apply the enabled augmentations to one float32 image already at its final size: the
    flips, then the affine, each its own pass (the training pipeline composes them with the
    resize instead, in ``data.geometry``), then ``photometric``."""
    u = draws(seed)
    if cfg.horizontal_flip:
        image = tf.cond(u[0] < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
    if cfg.vertical_flip:
        image = tf.cond(u[1] < 0.5, lambda: tf.reverse(image, [0]), lambda: image)
    if cfg.rotation or cfg.zoom or cfg.translate:
        h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
        flipless = dataclasses.replace(cfg, horizontal_flip=False, vertical_flip=False)
        image = project(image[None], jitter_rows(u, flipless, h, w, tf), tf.shape(image)[:2], fill_mode)[0]
    return photometric(image, seed, cfg)


def tone(u, cfg: AugmentConfig) -> tuple:
    """(brightness delta on 0..255, contrast factor) from the draws ``u`` of ``draws``; (0, 1)
    for what is off. Plain arithmetic, so TensorFlow's path and OpenCV's NumPy call share it."""
    delta = (2.0 * u[6] - 1.0) * cfg.brightness * 255.0 if cfg.brightness else 0.0
    factor = 1.0 + (2.0 * u[7] - 1.0) * cfg.contrast if cfg.contrast else 1.0
    return delta, factor


def fusable(cfg: AugmentConfig) -> bool:
    """Whether every per-pixel op on is a per-channel ``a * x + b`` (brightness, contrast), which
    a lookup table applies to uint8 pixels in one pass, rather than RandAugment or erasing."""
    return not cfg.randaugment.num_ops and not cfg.random_erasing.probability


def photometric(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """RandAugment, brightness, contrast and random erasing on a float32 image at its final size,
    with the seeds ``augment`` gives them."""
    if cfg.randaugment.num_ops:  # every op keeps 0..255 itself
        image = randaugment(image, seeds.fold(seed, seeds.RANDAUGMENT), cfg.randaugment)
    delta, factor = tone(draws(seed), cfg)
    if cfg.brightness:
        image = tf.image.adjust_brightness(image, delta)
    if cfg.contrast:
        image = tf.image.adjust_contrast(image, factor)
    if cfg.brightness or cfg.contrast:
        # Only these can leave 0..255; flips and the bilinear affine cannot, and a clip is a
        # full pass over the image (about 7% of the pipeline's throughput at 224x224).
        image = tf.clip_by_value(image, 0.0, 255.0)
    if cfg.random_erasing.probability:  # last, as timm does: the box hides augmented pixels
        image = random_erasing(image, seeds.fold(seed, seeds.RANDOM_ERASING), cfg.random_erasing)
    return image
