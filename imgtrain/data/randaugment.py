"""RandAugment and random erasing as stateless, per-example ops.

RandAugment (Cubuk et al. 2020) applies ``num_ops`` operations drawn
uniformly from a fixed list, each at one shared ``magnitude``; here the
magnitude is on timm's scale (10 is the usual maximum, level 1.0), and each
op's sign is random where it has one. Random erasing (Zhong et al. 2020)
replaces a random box with noise or the mean colour.

Keras 3 ships ``RandAugment`` and ``RandomErasing`` layers, but their random
draws come from a stateful ``SeedGenerator``: they depend on how many images
the layer has seen in this process, so neither the parallel ``map`` nor a
resumed run would reproduce them. Every draw here comes from an explicit
stateless seed of (run seed, epoch, example), like the rest of
``imgtrain.data.augment``.

Images are float32 on 0..255 at their final size; outputs stay in 0..255.
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from imgtrain.config import RandAugmentConfig, RandomErasingConfig

GRAY = 128.0  # what geometric ops fill the border with
# The mean ImageNet colour (RGB, 0..255): "mean" fill, timm's "const" mode in pixel space.
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


def _uniform(seed: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=seed, minval=low, maxval=high)


def _signed(seed: tf.Tensor, value: float) -> tf.Tensor:
    return tf.where(_uniform(seed) < 0.5, -value, value)


def _blend(image: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's ImageEnhance: other + factor * (image - other), clipped."""
    return tf.clip_by_value(other + factor * (image - other), 0.0, 255.0)


def _gray(image: tf.Tensor) -> tf.Tensor:
    return tf.image.rgb_to_grayscale(image)


def _transform(image: tf.Tensor, matrix: list) -> tf.Tensor:
    """Output pixel -> input pixel affine ``[a0, a1, a2, b0, b1, b2]``, constant grey border."""
    transform = tf.stack([*matrix, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.cast(transform, tf.float32),
        output_shape=tf.shape(image)[:2],
        fill_value=GRAY,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]


def _rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    a = degrees * math.pi / 180.0
    cos, sin = tf.cos(a), tf.sin(a)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    return _transform(image, [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])


def _equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation per channel, as PIL's ImageOps.equalize."""
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.int32)

    def channel(c: tf.Tensor) -> tf.Tensor:
        hist = tf.math.bincount(tf.reshape(c, [-1]), minlength=256, maxlength=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(lut, 0, 255)
        return tf.where(step > 0, tf.gather(lut, c), c)

    return tf.cast(tf.stack([channel(pixels[..., i]) for i in range(3)], axis=-1), tf.float32)


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
    offset = tf.where(high > low, low, 0.0)
    return tf.clip_by_value((image - offset) * scale, 0.0, 255.0)


def _sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "SAME")[0]
    return _blend(image, smooth, factor)


def _ops(level: float, image_shape: tf.Tensor) -> list[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]:
    """The op list, each ``(image, seed) -> image`` at this level (1.0 = magnitude 10)."""
    h = tf.cast(image_shape[0], tf.float32)
    w = tf.cast(image_shape[1], tf.float32)
    enhance = 0.9 * level  # colour, contrast, brightness, sharpness: factor 1 +- this
    shear, shift = 0.3 * level, 0.45 * level
    bits = max(1, 8 - int(round(4 * level)))
    threshold = max(0.0, 256.0 * (1.0 - level))

    def factor(s):
        return 1.0 + _signed(s, enhance)

    return [
        lambda x, s: x,  # identity
        lambda x, s: _autocontrast(x),
        lambda x, s: _equalize(x),
        lambda x, s: _rotate(x, _signed(s, 30.0 * level)),
        lambda x, s: tf.where(x >= threshold, 255.0 - x, x),  # solarize
        lambda x, s: _blend(x, _gray(x), factor(s)),  # colour (saturation)
        lambda x, s: tf.floor(x / 2.0 ** (8 - bits)) * 2.0 ** (8 - bits),  # posterize
        lambda x, s: _blend(x, tf.reduce_mean(_gray(x)), factor(s)),  # contrast
        lambda x, s: _blend(x, tf.zeros_like(x), factor(s)),  # brightness
        lambda x, s: _sharpness(x, factor(s)),
        lambda x, s: _transform(x, [1.0, _signed(s, shear), 0.0, 0.0, 1.0, 0.0]),  # shear x
        lambda x, s: _transform(x, [1.0, 0.0, 0.0, _signed(s, shear), 1.0, 0.0]),  # shear y
        lambda x, s: _transform(x, [1.0, 0.0, _signed(s, shift) * w, 0.0, 1.0, 0.0]),  # translate x
        lambda x, s: _transform(x, [1.0, 0.0, 0.0, 0.0, 1.0, _signed(s, shift) * h]),  # translate y
    ]


OP_NAMES = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "posterize",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def randaugment(image: tf.Tensor, seed: tf.Tensor, cfg: RandAugmentConfig) -> tf.Tensor:
    """``cfg.num_ops`` ops drawn uniformly (with replacement), each at ``cfg.magnitude``."""
    ops = _ops(cfg.magnitude / 10.0, tf.shape(image))
    seeds = tf.random.experimental.stateless_split(seed, num=2 * cfg.num_ops)
    for i in range(cfg.num_ops):
        index = tf.random.stateless_uniform([], seed=seeds[2 * i], maxval=len(ops), dtype=tf.int32)
        s = seeds[2 * i + 1]
        image = tf.switch_case(index, [lambda op=op, x=image, s=s: op(x, s) for op in ops])
        image.set_shape([None, None, 3])
    return image


def random_erasing(image: tf.Tensor, seed: tf.Tensor, cfg: RandomErasingConfig) -> tf.Tensor:
    """With ``cfg.probability``, one box of random area and aspect ratio replaced by the fill."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    area = _uniform(seeds[1], cfg.area[0], cfg.area[1]) * h * w
    log_ratio = _uniform(seeds[2], math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    box_h = tf.clip_by_value(tf.round(tf.sqrt(area / tf.exp(log_ratio))), 1.0, h)
    box_w = tf.clip_by_value(tf.round(tf.sqrt(area * tf.exp(log_ratio))), 1.0, w)
    top = tf.floor(_uniform(seeds[3]) * (h - box_h + 1.0))
    left = tf.floor(_uniform(seeds[4]) * (w - box_w + 1.0))
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    inside = ((rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w))[..., None]
    if cfg.fill == "noise":  # timm's "pixel" mode: a normal draw per pixel in normalised space
        fill = tf.random.stateless_normal(tf.shape(image), seed=seeds[5]) * tf.constant(STD_RGB) + tf.constant(MEAN_RGB)
        fill = tf.clip_by_value(fill, 0.0, 255.0)
    else:  # "mean": zero in normalised space
        fill = tf.broadcast_to(tf.constant(MEAN_RGB), tf.shape(image))
    erased = tf.where(inside, fill, image)
    return tf.cond(_uniform(seeds[0]) < cfg.probability, lambda: erased, lambda: image)
