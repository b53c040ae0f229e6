"""The SavedModel a server loads: encoded image bytes in, or float pixels in.

Two signatures, so one export serves both kinds of client:

- ``serving_default`` (also ``serve``) takes a vector of encoded images (JPEG, PNG,
  BMP or GIF bytes; TF Serving's REST ``{"b64": ...}`` maps onto it), decodes and
  resizes them with the ops evaluation uses (``imgtrain.data.images``, the centre crop
  included), and returns ``probabilities``, ``class_index``, ``class_name``,
  ``class_names`` and ``error``. An image that does not decode does not fail the
  request: its row has ``class_index`` -1, an empty ``class_name``, zero
  probabilities and ``error`` "undecodable image"; the other rows are unaffected.
- ``serve_pixels`` takes float32 pixels ``[batch, height, width, 3]`` at the training
  image size, RGB, 0-255 (resizing and cropping are the caller's), and returns
  ``probabilities``, ``class_index`` and ``class_name``. The TFLite exports are
  converted from it.

A server needs nothing from imgtrain. The directory is written under a temporary
name and moved into place, so a crash never leaves a half-written export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import keras
import tensorflow as tf

from imgtrain import atomic
from imgtrain.data.images import decode, eval_image

UNDECODABLE = "undecodable image"


def decode_tolerant(
    image_bytes: tf.Tensor, size: Sequence[int], crop_fraction: Optional[float]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode what decodes: ``(images of the good ones, in order; which were good)``.

    A decode error inside a batched map would fail the whole call; in a ``tf.data``
    pipeline ``ignore_errors`` drops just that element, and the index carried with each
    element says which ones survived. A sentinel element keeps the batch non-empty.
    """
    n = tf.shape(image_bytes)[0]
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
    ds = ds.map(lambda i, b: (i, eval_image(decode(b), size, crop_fraction))).ignore_errors()
    sentinel = tf.data.Dataset.from_tensors((tf.constant(-1), tf.zeros([int(size[0]), int(size[1]), 3])))
    index, images = ds.concatenate(sentinel).batch(tf.cast(n, tf.int64) + 1).get_single_element()
    real = index >= 0
    index, images = tf.boolean_mask(index, real), tf.boolean_mask(images, real)
    good = tf.scatter_nd(index[:, None], tf.ones_like(index, tf.bool), [n])
    return images, good


def export_saved_model(
    model: keras.Model,
    class_names: Sequence[str],
    image_size: Sequence[int],
    out_dir: Path,
    crop_fraction: Optional[float] = None,
) -> Path:
    """Write the SavedModel to ``out_dir`` (replacing one there). ``crop_fraction``: the centre
    crop evaluation uses (``DataConfig.eval_crop``), so serving sees what the report saw."""
    names = tf.constant(list(class_names))
    size = [int(image_size[0]), int(image_size[1])]

    def classify(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probs = tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32), axis=-1)
        top = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "class_index": top, "class_name": tf.gather(names, top)}

    def classify_some(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``classify`` without running the model on an empty batch (all images undecodable),
        which some kernels refuse."""

        def run():
            out = classify(images)
            return out["probabilities"], out["class_index"], out["class_name"]

        def nothing():
            return tf.zeros([0, len(class_names)]), tf.zeros([0], tf.int32), tf.zeros([0], tf.string)

        return tf.cond(tf.shape(images)[0] > 0, run, nothing)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        images, good = decode_tolerant(image_bytes, size, crop_fraction)
        probs, index, name = classify_some(images)
        n = tf.shape(image_bytes)[0]
        where = tf.where(good)
        return {
            "probabilities": tf.scatter_nd(where, probs, [n, len(class_names)]),
            "class_index": tf.tensor_scatter_nd_update(-tf.ones([n], tf.int32), where, index),
            "class_name": tf.tensor_scatter_nd_update(tf.fill([n], ""), where, name),
            "class_names": tf.tile(names[None], [n, 1]),
            "error": tf.where(good, "", UNDECODABLE),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, size[0], size[1], 3], tf.float32, name="pixels")])
    def serve_pixels(pixels):
        return classify(pixels)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve)  # the first endpoint is also serving_default
    archive.add_endpoint("serve_pixels", serve_pixels)
    return _write_dir(archive, Path(out_dir))


def _write_dir(archive: keras.export.ExportArchive, final: Path) -> Path:
    """Write beside ``final`` and swap it in; a failure (a full disk) leaves the old one."""
    with atomic.replacing_dir(final) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return final
