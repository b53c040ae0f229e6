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


def _number(data: tf.Tensor, start: int, length: int, little_endian: bool) -> tf.Tensor:
    """The unsigned integer at ``data[start:start+length]``, as int64."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, start, length), tf.uint8), tf.int64)
    place = tf.constant([256**i for i in range(length)], tf.int64)
    return tf.reduce_sum(raw * (place if little_endian else tf.reverse(place, [0])))


def shape_of(image_bytes: tf.Tensor) -> tf.Tensor:
    """The ``[height, width, 3]`` that ``decode`` gives, read from the header (JPEG; PNG's IHDR;
    BMP's BITMAPINFOHEADER, whose negative height is a top-down image; WebP's VP8, VP8L or
    VP8X chunk), else by decoding: a GIF, whose decoded canvas is its largest frame, which
    only every frame's descriptor says, and an OS/2 bitmap. A crop window needs the size long
    before the pixels."""
    data = image_bytes
    bits = tf.bitwise.bitwise_and
    long_enough = tf.strings.length(data) >= 30

    def png():
        return tf.stack([_number(data, 20, 4, False), _number(data, 16, 4, False)])

    def bmp():
        height = _number(data, 22, 4, True)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # int32, negative when top-down
        return tf.stack([height, _number(data, 18, 4, True)])

    def webp():
        chunk = tf.strings.substr(data, 12, 4)
        lossy = lambda: tf.stack([bits(_number(data, 28, 2, True), 0x3FFF), bits(_number(data, 26, 2, True), 0x3FFF)])  # noqa: E731
        packed = _number(data, 21, 4, True)
        lossless = lambda: tf.stack([bits(tf.bitwise.right_shift(packed, 14), 0x3FFF) + 1, bits(packed, 0x3FFF) + 1])  # noqa: E731
        extended = lambda: tf.stack([_number(data, 27, 3, True) + 1, _number(data, 24, 3, True) + 1])  # noqa: E731
        return tf.case([(tf.equal(chunk, b"VP8 "), lossy), (tf.equal(chunk, b"VP8L"), lossless)], default=extended)

    def decoded():
        return tf.cast(tf.shape(decode(data))[:2], tf.int64)

    head = tf.strings.substr(data, 0, 8)
    is_png = long_enough & tf.equal(head, b"\x89PNG\r\n\x1a\n")
    is_bmp = long_enough & tf.equal(tf.strings.substr(head, 0, 2), b"BM") & (_number(data, 14, 4, True) >= 40)
    is_webp = (
        long_enough
        & tf.equal(tf.strings.substr(head, 0, 4), b"RIFF")
        & tf.equal(tf.strings.substr(data, 8, 4), b"WEBP")
        & tf.reduce_any(tf.equal(tf.strings.substr(data, 12, 4), [b"VP8 ", b"VP8L", b"VP8X"]))
    )
    size = tf.case(
        [
            (tf.io.is_jpeg(data), lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
            (is_png, png),
            (is_bmp, bmp),
            (is_webp, webp),
        ],
        default=decoded,
    )
    return tf.concat([tf.cast(size, tf.int32), [3]], 0)


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
