"""Exports: ``model.keras`` and a SavedModel that takes encoded image bytes.

The SavedModel's ``serving_default`` signature takes a vector of encoded
images (JPEG, PNG, BMP or GIF bytes), decodes and resizes them with the same
ops as training (``imgtrain.data.images``), and returns the probabilities, the
top class name and the class-name vocabulary. A server needs nothing from
imgtrain to use it. Both files are written under a temporary name and moved
into place, so a crash never leaves a half-written export.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import keras
import tensorflow as tf

from imgtrain import atomic
from imgtrain.data.images import bytes_to_batch


def export_keras(model: keras.Model, run_dir: Path) -> Path:
    final = run_dir / "model.keras"
    with atomic.replacing(final) as tmp:
        model.save(str(tmp))
    return final


def write_class_names(class_names: Sequence[str], run_dir: Path) -> Path:
    path = run_dir / "class_names.json"
    atomic.write_json(path, list(class_names), indent=1)
    return path


def export_saved_model(
    model: keras.Model,
    class_names: Sequence[str],
    image_size: Sequence[int],
    run_dir: Path,
    crop_fraction: Optional[float] = None,
) -> Path:
    """``crop_fraction``: the centre crop evaluation uses (``DataConfig.eval_crop``), so serving
    sees what the report saw."""
    names = tf.constant(list(class_names))
    size = [int(image_size[0]), int(image_size[1])]

    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        probs = tf.nn.softmax(
            tf.cast(model(bytes_to_batch(image_bytes, size, crop_fraction), training=False), tf.float32), axis=-1
        )
        top = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probs,
            "class_index": top,
            "class_name": tf.gather(names, top),
            "class_names": tf.tile(names[None], [tf.shape(probs)[0], 1]),
        }

    archive.add_endpoint("serve", serve)
    final = run_dir / "saved_model"
    tmp = run_dir / ".tmp-saved_model"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive.write_out(str(tmp), verbose=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half export behind
        raise
    old = run_dir / ".old-saved_model"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
