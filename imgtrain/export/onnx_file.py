"""ONNX, through Keras' own ``Model.export(format="onnx")`` (which drives tf2onnx).

tf2onnx 1.17 converts Keras 3 models on TensorFlow 2.21 when given a function with an
input signature, which is what Keras' exporter does; its ``from_keras`` entry point
does not work with Keras 3 (onnx/tensorflow-onnx#2329, #2348). The ONNX model takes
float32 pixels ``[batch, height, width, 3]`` (RGB, 0-255, the training size) and
returns the probabilities. tf2onnx and onnxruntime come with ``pip install
'imgtrain[onnx]'``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from imgtrain.errors import UserError


def write(probabilities: keras.Model, class_names: Sequence[str], path: Path) -> None:
    """``path``: the ONNX model, with the class names in its ``metadata_props`` (key
    ``class_names``, a JSON list), which onnxruntime shows as
    ``session.get_modelmeta().custom_metadata_map``."""
    _export(probabilities, path)
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps(list(class_names))
    onnx.save(model, str(path))


def _export(probabilities: keras.Model, path: Path) -> None:
    try:
        import tf2onnx  # noqa: F401  (Keras imports it lazily; say what to install if absent)
    except ImportError:
        raise UserError("--format onnx needs tf2onnx: pip install 'imgtrain[onnx]'") from None
    # Keras' exporter traces a model that has run at least once; a freshly wrapped one has not.
    shape = [1, *probabilities.inputs[0].shape[1:]]
    probabilities([np.zeros(shape, np.float32)], training=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probing np.object under NumPy 2
        probabilities.export(str(path), format="onnx", verbose=False)
