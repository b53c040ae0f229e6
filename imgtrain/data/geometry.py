"""Every geometric augmentation of a training image with one resampling of the decoded pixels.

The random resized crop, the flips, and rotation, zoom and translation are each a map
between pixel coordinates; composed, they are one 3x3 matrix from an output pixel to a
pixel of the decoded image, and the image is resampled once, bilinearly, straight to the
output size with the configured fill mode. Two resamplers (``data.augment.resampler``, decided
once per run by ``data/resampler.py``):

- OpenCV (the default when installed): ``cv2.warpAffine`` inside the parallel map, uint8 in
  and out, about 8x faster than TensorFlow's kernel and free of the GIL while it works;
  brightness and contrast, when they are the only per-pixel ops, ride in the same call as
  one lookup table, so the image is touched twice in all and batched as uint8.
- TensorFlow: its projective-transform kernel when rotation, zoom or shift is on, else the
  crop window resized (``tf.image.resize``) and flipped; float32 out. A tf.data service
  uses this one, since its workers run the graph where no Python function can go.

Decoding less: a JPEG's crop window that is at least twice the output size on both sides is
decoded at 1/2, 1/4 or 1/8 scale (``decode_and_crop_jpeg``'s ``ratio``: the inverse DCT
does the downscaling, averaging rather than skipping pixels), the largest ratio that
still leaves at least the output size; the matrix maps into the scaled window. A test
bounds the difference against decoding at full size.

Random draws are ``augment.augment``'s for the same ops (``augment.draws``: one stateless call
per example), so one seed gives one image, in any order, after a resume and on either
resampler.
Pixel coordinates put centres on integers; a resize maps ``(q + 0.5) * scale - 0.5``
(TensorFlow's half-pixel convention), so with no augmentation this is ``tf.image.resize``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from imgtrain import seeds
from imgtrain.config import AugmentConfig
from imgtrain.data import augment as aug
from imgtrain.data.images import decode, resize, shape_of

RATIOS = (8, 4, 2)  # what libjpeg's scaled decoding offers, largest first
# The float32 vector that carries an example's augmentation from TensorFlow to NumPy (the
# OpenCV path): its eight draws (``augment.draws``), then ``source_rows``'s window.
DRAWS = slice(0, 8)
WINDOW = slice(8, 15)  # top, left, height, width, ratio, top_s, left_s
EXTENT = slice(10, 12)  # the window's height and width (-1: the whole image, known once decoded)
PLACEMENT = slice(12, 15)  # ratio, top_s, left_s: the scale decoded at, where the window starts


def has_affine(cfg: AugmentConfig) -> bool:
    return bool(cfg.rotation or cfg.zoom or cfg.translate)


def is_geometric(cfg: AugmentConfig) -> bool:
    """Whether any op on moves pixels (crop, flips, rotation, zoom, shift)."""
    return bool(cfg.random_resized_crop or cfg.horizontal_flip or cfg.vertical_flip or has_affine(cfg))


def source_rows(u, window, cfg: AugmentConfig, size: Sequence[int], xp) -> list:
    """The top two rows of the map from an output pixel to a pixel of the decoded pixels:
    ``augment.jitter_rows`` (output -> the un-augmented output-size image), then the window
    resized to ``size`` (half-pixel centres), then a JPEG's scaled decoding. ``window``:
    [top, left, height, width, ratio, top_s, left_s] (the window in the full-size source, the
    scale-down ratio, and where the decoded window starts in the scaled image). ``xp`` is
    ``numpy`` or ``tensorflow``, as for ``jitter_rows``."""
    top, left, height, width, ratio, top_s, left_s = (window[k] for k in range(7))
    j = aug.jitter_rows(u, cfg, float(size[0]), float(size[1]), xp)
    r = 1.0 / ratio
    sy, sx = r * height / float(size[0]), r * width / float(size[1])
    oy = r * (0.5 * height / float(size[0]) - 0.5 + top) + 0.5 * r - 0.5 - top_s
    ox = r * (0.5 * width / float(size[1]) - 0.5 + left) + 0.5 * r - 0.5 - left_s
    return [sx * j[0], sx * j[1], sx * j[2] + ox, sy * j[3], sy * j[4], sy * j[5] + oy]


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


def _border(fill_mode: str) -> int:
    cv2 = _cv2()
    return {
        "reflect": cv2.BORDER_REFLECT,  # d c b a | a b c d | d c b a, as TensorFlow's reflect
        "constant": cv2.BORDER_CONSTANT,
        "nearest": cv2.BORDER_REPLICATE,
        "wrap": cv2.BORDER_WRAP,
    }[fill_mode]


def _reach(image: np.ndarray, m: np.ndarray, size: Sequence[int], border: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` padded (with ``border``) by exactly what the output's corners reach outside it,
    plus two pixels for the bilinear neighbours, and ``m`` moved onto the padded image."""
    h, w = int(size[0]), int(size[1])
    corners = np.array([[0.0, 0.0, 1.0], [w - 1.0, 0.0, 1.0], [0.0, h - 1.0, 1.0], [w - 1.0, h - 1.0, 1.0]]) @ m.T
    (x0, y0), (x1, y1) = np.floor(corners.min(0)) - 2, np.ceil(corners.max(0)) + 2
    rows, cols = image.shape[:2]
    left, top = int(max(0.0, -x0)), int(max(0.0, -y0))
    right, bottom = int(max(0.0, x1 - (cols - 1))), int(max(0.0, y1 - (rows - 1)))
    if not (left or top or right or bottom):
        return image, m
    moved = m.copy()
    moved[0, 2] += left
    moved[1, 2] += top
    return _cv2().copyMakeBorder(image, top, bottom, left, right, border), moved


def _render(image, params, cfg: AugmentConfig, size: Sequence[int], tone: bool) -> np.ndarray:
    """The OpenCV path, in one NumPy call: the matrix (``source_rows``), ``cv2.warpAffine`` with
    it as the output -> source map (WARP_INVERSE_MAP, bilinear), then, with ``tone``,
    brightness and contrast as one per-channel ``a * x + b``; uint8 out. OpenCV releases the
    GIL, so tf.data's parallel calls run on every core. ``params``: the eight draws of
    ``augment.draws``, then the seven numbers of ``source_rows``'s window."""
    cv2 = _cv2()
    if image.dtype != np.uint8:  # the in-memory cache holds float32 pixels
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    params = params.astype(np.float64)
    m = np.asarray(source_rows(params[DRAWS], params[WINDOW], cfg, size, np), np.float64).reshape(2, 3)
    border = _border(cfg.fill_mode)
    if cfg.fill_mode in ("reflect", "wrap"):
        # warpAffine's reflect and wrap borders take a generic path about twice as slow as its
        # replicate border; padding first, by what the output reaches, then replicating, gives
        # the same pixels.
        image, m = _reach(image, m, size, border)
        border = cv2.BORDER_REPLICATE
    out = cv2.warpAffine(
        np.ascontiguousarray(image),
        m,
        (int(size[1]), int(size[0])),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=(0, 0, 0, 0),
    )
    if tone:
        # adjust_brightness then adjust_contrast, as TensorFlow does them with no clip between:
        # factor * (x + delta - mean') + mean', where mean' = mean + delta, is factor * x + offset.
        # cv2.transform applies it (a 3x4 matrix: factor on the diagonal, offset per channel),
        # rounded and saturated, in one SIMD pass: five times cv2.LUT's speed with a table
        # per channel.
        delta, factor = aug.tone(params[DRAWS], cfg)
        offset = (1.0 - factor) * np.asarray(cv2.mean(out)[:3]) + delta
        out = cv2.transform(out, np.hstack([np.eye(3) * factor, offset[:, None]]))
    return out


def _decode_render(encoded, params, cfg: AugmentConfig, size: Sequence[int], tone: bool) -> np.ndarray:
    """An encoded image through OpenCV alone: ``cv2.imdecode``, then ``_render``. A JPEG is
    decoded at the largest 1/2, 1/4 or 1/8 scale that keeps the crop window (``params[WINDOW]``'s
    top, left, height, width; a height of -1 is the whole image) at least ``size`` (libjpeg's
    scaled IDCT, as ``decode_and_crop_jpeg``'s ``ratio``). OpenCV's libjpeg-turbo with its
    accurate IDCT gives the pixels ``decode_jpeg(dct_method="INTEGER_ACCURATE")`` gives; PNG,
    GIF, BMP and WebP decode as ``decode_image`` decodes them; EXIF orientation is ignored, as
    there."""
    cv2 = _cv2()
    data = encoded.item() if isinstance(encoded, np.ndarray) else encoded  # a tf.string scalar: bytes
    params = params.astype(np.float64)
    height, width = params[EXTENT]
    ratio = 1
    if data[:3] == b"\xff\xd8\xff":  # what tf.io.is_jpeg checks
        ratio = next((r for r in RATIOS if height >= r * int(size[0]) and width >= r * int(size[1])), 1)
    reduced = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4}
    reduced[8] = cv2.IMREAD_REDUCED_GRAYSCALE_8  # the scale bits only: colour comes from COLOR_RGB
    flags = reduced[ratio] | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:  # a format this OpenCV build lacks (an older one without GIF): Pillow, as validation read it
        image = _pillow_rgb(data)
    if height < 0:  # no crop: the window is the whole image, as decoded
        params[EXTENT] = image.shape[0] * ratio, image.shape[1] * ratio
    params[PLACEMENT] = (ratio, 0, 0)  # the window sits in the whole scaled image
    return _render(image, params, cfg, size, tone)


def _pillow_rgb(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)  # a GIF's first frame, as decode_image(expand_animations=False)
        return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def encoded_params(encoded: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Per example, in TensorFlow, what ``render_batch`` needs besides the bytes: the draws and
    the crop window (15 float32). The header gives the size (``images.shape_of``): a JPEG's
    sets the scale to decode at, and a crop's window is drawn from it without decoding."""
    u = aug.draws(seeds.draws(seed))
    if cfg.random_resized_crop:
        shape = shape_of(encoded)
    else:
        jpeg = lambda: tf.image.extract_jpeg_shape(encoded)  # noqa: E731
        whole = lambda: tf.constant([-1, -1, 3])  # noqa: E731  (the whole image, its size read on decoding)
        shape = tf.cond(tf.io.is_jpeg(encoded), jpeg, whole)
    begin, extent = _window(shape, seed, cfg)
    return tf.concat([u, tf.cast(tf.concat([begin, extent, [0, 0, 0]], 0), tf.float32)], 0)


def _render_batch(encoded, params, cfg: AugmentConfig, size: Sequence[int], tone: bool) -> np.ndarray:
    out = np.empty((len(encoded), int(size[0]), int(size[1]), 3), np.uint8)
    for k in range(len(encoded)):
        out[k] = _decode_render(encoded[k], params[k], cfg, size, tone)
    return out


def render_batch(
    encoded: tf.Tensor, params: tf.Tensor, cfg: AugmentConfig, size: Sequence[int], tone: bool
) -> tf.Tensor:
    """A batch of encoded images and their ``encoded_params`` -> uint8 [batch, *size, 3], by
    ``_decode_render`` in one NumPy call per batch: a ``tf.numpy_function`` costs about as
    much as OpenCV's resampling of one image, so a call per image would double that cost."""
    call = functools.partial(_render_batch, cfg=cfg, size=tuple(int(v) for v in size), tone=tone)
    out = tf.numpy_function(call, [encoded, params], tf.uint8, stateful=False)
    return tf.ensure_shape(out, [None, int(size[0]), int(size[1]), 3])


def _opencv(fn, first: tf.Tensor, u, window, cfg: AugmentConfig, size: Sequence[int], tone: bool) -> tf.Tensor:
    """``fn`` (``_render`` or ``_decode_render``) through one ``tf.numpy_function`` with two
    inputs: every input and every TensorFlow op costs per image, more than NumPy's arithmetic."""
    params = tf.concat([u, tf.cast(window, tf.float32)], 0)
    call = functools.partial(fn, cfg=cfg, size=tuple(int(v) for v in size), tone=tone)
    out = tf.numpy_function(call, [first, params], tf.uint8, stateful=False)
    return tf.ensure_shape(out, [int(size[0]), int(size[1]), 3])


def resample(
    image: tf.Tensor,
    u: tf.Tensor,
    window: tf.Tensor,
    cfg: AugmentConfig,
    size: Sequence[int],
    resampler: str = "tensorflow",
    tone: bool = False,
) -> tf.Tensor:
    """``image`` sampled at ``source_rows`` for every output pixel, at ``size``: uint8 from
    OpenCV (fixed-point bilinear, within a level of TensorFlow's float kernel, several times
    faster; with ``tone``, brightness and contrast by ``augment.tone`` in the same call),
    float32 from TensorFlow's projective-transform kernel."""
    if resampler == "opencv":
        return _opencv(_render, image, u, window, cfg, size, tone)
    rows = source_rows(u, tf.unstack(tf.cast(window, tf.float32)), cfg, size, tf)
    # Float in: the uint8 kernel truncates its bilinear result, and fixing that afterwards
    # costs more passes over the output than one cast of the source costs.
    return aug.project(tf.cast(image, tf.float32)[None], rows, [int(size[0]), int(size[1])], cfg.fill_mode)[0]


def resize_and_flip(window: tf.Tensor, u: tf.Tensor, cfg: AugmentConfig, size: Sequence[int]) -> tf.Tensor:
    """TensorFlow's path without rotation, zoom or shift: the window resized
    (``tf.image.resize`` reads uint8 and is TensorFlow's fastest resampler on a CPU), then
    flipped by the draws ``u`` as ``augment.augment`` flips."""
    image = resize(window, size)
    if cfg.horizontal_flip:
        image = tf.cond(u[0] < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
    if cfg.vertical_flip:
        image = tf.cond(u[1] < 0.5, lambda: tf.reverse(image, [0]), lambda: image)
    return image


def _window(shape: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """(begin [top, left], size [height, width]) of the crop in an image of ``shape``."""
    if cfg.random_resized_crop:
        begin, crop = aug.crop_window(shape, seed, cfg)
        return begin[:2], crop[:2]
    return tf.zeros([2], tf.int32), tf.cast(shape[:2], tf.int32)


def _ratio(window: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """The largest JPEG scale-down that keeps the window at least the output size (or 1)."""
    ratios = tf.constant(RATIOS)
    fits = tf.reduce_all(window[None, :2] >= ratios[:, None] * tf.constant([int(size[0]), int(size[1])]), axis=1)
    return tf.reduce_max(tf.where(fits, ratios, 1))


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
    encoded: tf.Tensor,
    seed: tf.Tensor,
    cfg: AugmentConfig,
    size: Sequence[int],
    resampler: str = "tensorflow",
    tone: bool = False,
) -> tf.Tensor:
    """Encoded image -> augmented ``size`` image, geometry in one pass, JPEGs decoded at reduced
    scale when the crop window is large: uint8 by OpenCV (a JPEG in one NumPy call, decode
    included, since every TensorFlow op and Python call per image costs), float32 by
    TensorFlow (decoding only the crop window)."""
    u = aug.draws(seeds.draws(seed))
    one_pass = resampler == "opencv" or has_affine(cfg)

    def jpeg_opencv() -> tf.Tensor:
        begin, extent = _window(tf.image.extract_jpeg_shape(encoded), seed, cfg)
        window = tf.concat([begin, extent, [0, 0, 0]], 0)  # ratio and start: chosen in the call
        return _opencv(_decode_render, encoded, u, window, cfg, size, tone)

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(encoded)
        begin, extent = _window(shape, seed, cfg)
        ratio = _ratio(extent, size)
        pixels, start = _decode_jpeg_window(encoded, shape, begin, extent, ratio)
        if not one_pass:
            return resize_and_flip(pixels, u, cfg, size)
        window = tf.concat([begin, extent, [ratio], start], 0)
        return resample(pixels, u, window, cfg, size, resampler, tone)

    def other() -> tf.Tensor:
        return from_image(decode(encoded), seed, cfg, size, resampler, tone)

    out = tf.cond(tf.io.is_jpeg(encoded), jpeg_opencv if resampler == "opencv" else jpeg, other)
    out.set_shape([int(size[0]), int(size[1]), 3])
    return out


def from_image(
    image: tf.Tensor,
    seed: tf.Tensor,
    cfg: AugmentConfig,
    size: Sequence[int],
    resampler: str = "tensorflow",
    tone: bool = False,
) -> tf.Tensor:
    """A decoded image of any size -> augmented ``size`` image, geometry in one pass: uint8 by
    OpenCV, float32 by TensorFlow."""
    begin, extent = _window(tf.shape(image), seed, cfg)
    u = aug.draws(seeds.draws(seed))
    if resampler == "opencv" or has_affine(cfg):
        window = tf.concat([begin, extent, [1, 0, 0]], 0)
        out = resample(image, u, window, cfg, size, resampler, tone)
    else:
        pixels = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([extent, [-1]], 0))
        out = resize_and_flip(pixels, u, cfg, size)
    out.set_shape([int(size[0]), int(size[1]), 3])
    return out


def on_host(cfg: AugmentConfig) -> AugmentConfig:
    """What tf.data still does with ``on_device``: the crop (decoded, cropped and resized to the
    training size); the rest is ``augment_batch``'s."""
    return dataclasses.replace(
        cfg,
        horizontal_flip=False,
        vertical_flip=False,
        rotation=0.0,
        zoom=0.0,
        translate=0.0,
        brightness=0.0,
        contrast=0.0,
        on_device=False,
    )


def augment_batch(images: tf.Tensor, u: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """``data.augment.on_device``: a batch at the training size (uint8 or float32) and its
    examples' draws ``u`` [batch, 8] (``augment.draws``) -> float32, with the flips and the
    affine in one batched call of TensorFlow's projective-transform kernel and brightness and
    contrast batched, inside the training step and so on its device. The same matrices and
    kernel as the pipeline's TensorFlow path: from an image already at the training size,
    the same pixels."""
    x = tf.cast(images, tf.float32)
    h, w = int(x.shape[1]), int(x.shape[2])
    cols = tf.unstack(tf.cast(u, tf.float32), num=8, axis=1)  # one vector per draw: every formula batches
    ones = tf.ones_like(cols[0])
    if has_affine(cfg) or cfg.horizontal_flip or cfg.vertical_flip:
        x = aug.project(x, aug.jitter_rows(cols, cfg, float(h), float(w), tf), [h, w], cfg.fill_mode)
    if cfg.brightness or cfg.contrast:
        delta, factor = aug.tone(cols, cfg)
        x = x + tf.reshape(ones * delta, [-1, 1, 1, 1])
        if cfg.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = (x - mean) * tf.reshape(ones * factor, [-1, 1, 1, 1]) + mean
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x
