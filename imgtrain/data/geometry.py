"""Every geometric augmentation of a training image with one resampling of the decoded pixels.

The random resized crop, the flips, and rotation, zoom and translation are each a map
between pixel coordinates; composed, they are one 3x3 matrix from an output pixel to a
pixel of the decoded image. With rotation, zoom or shift on, the image is resampled once,
bilinearly, straight to the output size by TensorFlow's projective-transform kernel with the
configured fill mode; without them the crop window is resized (``tf.image.resize``, several
times faster than that kernel on a CPU) and flipped. The two-pass path it replaces (resize,
then transform the resized image) interpolated every output pixel twice.

Decoding less: a JPEG's crop window that is at least twice the output size on both sides is
decoded at 1/2, 1/4 or 1/8 scale (``decode_and_crop_jpeg``'s ``ratio``: the inverse DCT
does the downscaling, averaging rather than skipping pixels), the largest ratio that
still leaves at least the output size; the matrix maps into the scaled window. A test
bounds the difference against decoding at full size.

Random draws take the seeds ``augment.augment`` takes for the same ops (a stateless split
of the example's seed), so one seed gives one image, in any order and after a resume.
Pixel coordinates put centres on integers; a resize maps ``(q + 0.5) * scale - 0.5``
(TensorFlow's half-pixel convention), so with no augmentation this is ``tf.image.resize``.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from imgtrain.config import AugmentConfig
from imgtrain.data import augment as aug
from imgtrain.data.images import decode, resize

RATIOS = (8, 4, 2)  # what libjpeg's scaled decoding offers, largest first


def has_affine(cfg: AugmentConfig) -> bool:
    return bool(cfg.rotation or cfg.zoom or cfg.translate)


def _matrix(rows: list[list[tf.Tensor]]) -> tf.Tensor:
    return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])


def jitter(seed: tf.Tensor, cfg: AugmentConfig, size: Sequence[int]) -> tf.Tensor:
    """Output pixel -> pixel of the un-augmented output-size image: the affine (rotation and
    zoom about the centre, then a shift), then the flips, as ``augment.augment`` applies them."""
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    h, w = float(size[0]), float(size[1])
    m = tf.eye(3)
    if has_affine(cfg):
        m = aug.affine_matrix(seeds[2:6], cfg, h, w)
    # A flip seen from the output: x -> (w - 1) - x on the image the affine reads.
    if cfg.horizontal_flip:
        flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
        fx = tf.where(flip, _matrix([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]]), tf.eye(3))
        m = fx @ m
    if cfg.vertical_flip:
        flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        fy = tf.where(flip, _matrix([[1, 0, 0], [0, -1, h - 1], [0, 0, 1]]), tf.eye(3))
        m = fy @ m
    return m


def window_map(top, left, height, width, size: Sequence[int]) -> tf.Tensor:
    """Pixel of the output-size image -> pixel of the source, for a window (top, left,
    height, width) of it resized to ``size`` (half-pixel centres)."""
    sy = tf.cast(height, tf.float32) / float(size[0])
    sx = tf.cast(width, tf.float32) / float(size[1])
    return _matrix(
        [
            [sx, 0, 0.5 * sx - 0.5 + tf.cast(left, tf.float32)],
            [0, sy, 0.5 * sy - 0.5 + tf.cast(top, tf.float32)],
            [0, 0, 1],
        ]
    )


def scale_map(ratio: tf.Tensor, top_s: tf.Tensor, left_s: tf.Tensor) -> tf.Tensor:
    """Full-size source pixel -> pixel of a window decoded at 1/ratio scale starting at
    (top_s, left_s) of the scaled image."""
    r = 1.0 / tf.cast(ratio, tf.float32)
    return _matrix(
        [
            [r, 0, 0.5 * r - 0.5 - tf.cast(left_s, tf.float32)],
            [0, r, 0.5 * r - 0.5 - tf.cast(top_s, tf.float32)],
            [0, 0, 1],
        ]
    )


@functools.lru_cache(maxsize=None)
def _cv2() -> Optional[object]:
    """OpenCV, set to one thread per call (tf.data's parallel map supplies the parallelism;
    OpenCV's own pool on top of it would oversubscribe the cores), or None when missing."""
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)
    return cv2


def resampler_for(choice: str, service: bool) -> str:
    """The resampler a pipeline uses: ``choice`` (auto, opencv or tensorflow) made concrete.
    A tf.data service runs the pipeline's graph in other processes, where a Python function
    cannot go, so with one (and in its local fallback, which must make the same pixels) it is
    TensorFlow's kernel."""
    if service or choice == "tensorflow":
        return "tensorflow"
    if _cv2() is None:
        if choice == "opencv":
            from imgtrain.errors import UserError

            raise UserError(
                "data.augment.resampler is opencv but OpenCV is not installed; "
                "pip install opencv-python-headless, or set data.augment.resampler=tensorflow"
            )
        return "tensorflow"
    return "opencv"


def _border(fill_mode: str) -> int:
    cv2 = _cv2()
    return {
        "reflect": cv2.BORDER_REFLECT,  # d c b a | a b c d | d c b a, as TensorFlow's reflect
        "constant": cv2.BORDER_CONSTANT,
        "nearest": cv2.BORDER_REPLICATE,
        "wrap": cv2.BORDER_WRAP,
    }[fill_mode]


def _warp(image: np.ndarray, m: np.ndarray, height: np.ndarray, width: np.ndarray, border: np.ndarray) -> np.ndarray:
    """cv2.warpAffine with ``m`` as the output -> source map (WARP_INVERSE_MAP), bilinear; it
    releases the GIL, so tf.data's parallel calls run it on every core."""
    cv2 = _cv2()
    out = cv2.warpAffine(
        np.ascontiguousarray(image),
        np.asarray(m, np.float64)[:2],
        (int(width), int(height)),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=int(border),
        borderValue=(0, 0, 0, 0),
    )
    return out.astype(np.float32)


def resample(
    image: tf.Tensor, m: tf.Tensor, size: Sequence[int], fill_mode: str, resampler: str = "tensorflow"
) -> tf.Tensor:
    """``image`` sampled at ``m @ [x, y, 1]`` for every output pixel: float32 ``size``, by
    OpenCV (uint8 in, fixed-point bilinear: within a level or two of TensorFlow's float
    kernel, about 8x faster) or by TensorFlow's projective-transform kernel."""
    if resampler == "opencv":
        args = [image, m, int(size[0]), int(size[1]), _border(fill_mode)]
        out = tf.numpy_function(_warp, args, tf.float32, stateful=False)
        return tf.ensure_shape(out, [int(size[0]), int(size[1]), 3])
    # Float in: the uint8 kernel truncates its bilinear result, and fixing that afterwards
    # costs more passes over the output than one cast of the source costs.
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=tf.reshape(m, [9])[None, :8],
        output_shape=[int(size[0]), int(size[1])],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )[0]


def resize_and_flip(window: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, size: Sequence[int]) -> tf.Tensor:
    """No rotation, zoom or shift: the window resized (``tf.image.resize`` reads uint8 and is
    the fastest resampler TensorFlow has on a CPU), then the flips, with ``augment``'s seeds."""
    image = resize(window, size)
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    if cfg.horizontal_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[0])
    if cfg.vertical_flip:
        image = tf.image.stateless_random_flip_up_down(image, seed=seeds[1])
    return image


def _window(shape: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """(begin [top, left], size [height, width]) of the crop in an image of ``shape``."""
    if cfg.random_resized_crop:
        begin, crop = aug.crop_window(shape, seed, cfg)
        return begin[:2], crop[:2]
    return tf.zeros([2], tf.int32), tf.cast(shape[:2], tf.int32)


def _ratio(window: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """The largest JPEG scale-down that keeps the window at least the output size."""
    ratio = tf.constant(1)
    for r in reversed(RATIOS):  # 2, 4, 8: each one that fits replaces the smaller
        fits = tf.logical_and(window[0] >= r * int(size[0]), window[1] >= r * int(size[1]))
        ratio = tf.where(fits, r, ratio)
    return ratio


def _decode_jpeg_window(encoded, shape, begin, extent, ratio):
    """Decode the window at 1/ratio scale: (pixels, top and left of the window in the scaled image)."""
    scaled = (shape[:2] + ratio - 1) // ratio  # libjpeg rounds scaled sizes up
    start = begin // ratio
    stop = tf.minimum(scaled, (begin + extent + ratio - 1) // ratio)
    window = tf.concat([start, stop - start], 0)
    branches = {r: (lambda r=r: tf.io.decode_and_crop_jpeg(encoded, window, channels=3, ratio=r)) for r in (1, *RATIOS)}
    image = tf.case([(tf.equal(ratio, r), fn) for r, fn in branches.items()], exclusive=True)
    image.set_shape([None, None, 3])
    return image, start


def from_bytes(
    encoded: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, size: Sequence[int], resampler: str = "tensorflow"
) -> tf.Tensor:
    """Encoded image -> augmented float32 ``size`` image, geometry in one pass (JPEGs decoded
    only in the crop window, at reduced scale when it is large)."""
    crop_seed, jitter_seed = seed, tf.random.experimental.stateless_fold_in(seed, 1)
    affine = has_affine(cfg)

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(encoded)
        begin, extent = _window(shape, crop_seed, cfg)
        ratio = _ratio(extent, size)
        pixels, start = _decode_jpeg_window(encoded, shape, begin, extent, ratio)
        if not affine:
            return resize_and_flip(pixels, jitter_seed, cfg, size)
        m = scale_map(ratio, start[0], start[1]) @ window_map(begin[0], begin[1], extent[0], extent[1], size)
        return resample(pixels, m @ jitter(jitter_seed, cfg, size), size, cfg.fill_mode, resampler)

    def other() -> tf.Tensor:
        return from_image(decode(encoded), seed, cfg, size, resampler)

    out = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    out.set_shape([int(size[0]), int(size[1]), 3])
    return out


def from_image(
    image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, size: Sequence[int], resampler: str = "tensorflow"
) -> tf.Tensor:
    """A decoded image of any size -> augmented float32 ``size`` image, geometry in one pass."""
    begin, extent = _window(tf.shape(image), seed, cfg)
    jitter_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    if has_affine(cfg):
        m = window_map(begin[0], begin[1], extent[0], extent[1], size)
        out = resample(image, m @ jitter(jitter_seed, cfg, size), size, cfg.fill_mode, resampler)
    else:
        window = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([extent, [-1]], 0))
        out = resize_and_flip(window, jitter_seed, cfg, size)
    out.set_shape([int(size[0]), int(size[1]), 3])
    return out
