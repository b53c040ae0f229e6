"""TFLite models for phones and edge devices, converted from the SavedModel's pixel signature.

The bytes signature cannot be converted (TFLite has no ``DecodeImage``; with select TF
ops it converts, but the stock interpreter refuses ``FlexDecodeImage``), so a TFLite
model takes what ``serve_pixels`` takes: float32 pixels ``[batch, height, width, 3]``,
RGB, 0-255, at the training size; it returns ``probabilities``, ``class_index`` and
``class_name`` through its ``serve_pixels`` signature runner. ``int8`` is dynamic-range
quantization: weights stored as int8 (about 4x smaller), activations float, no
calibration data needed. The read-back check uses LiteRT (``ai-edge-litert``, the
successor of the deprecated ``tf.lite.Interpreter``), and the stock interpreter where
LiteRT is not installed.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

SIGNATURE = "serve_pixels"
READER = "ai_edge_litert.interpreter.Interpreter"


def read(path: Path):
    """A classifier over float pixels from a ``.tflite`` file: its ``serve_pixels`` runner."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
    except ImportError:  # the stock interpreter reads the same files, with a deprecation warning
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(SIGNATURE)
    return lambda x: runner(pixels=x)["probabilities"]


def convert(saved_model_dir: Path, int8: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()
