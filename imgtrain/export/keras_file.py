"""``model.keras`` files: the training run's own (logits), and the export (probabilities).

Both hold Keras' built-in layers only, so ``keras.saving.load_model`` reads them in a
process that never imports imgtrain. A ``.keras`` file has no place for user metadata
that loading keeps, so the class names travel beside it in ``class_names.json`` (index i
of the model's output is ``class_names[i]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import keras

from imgtrain import atomic, rundir


def export_keras(model: keras.Model, run_dir: Path) -> Path:
    """``RUN_DIR/model.keras`` as trained: its output is logits (apply a softmax for probabilities)."""
    final = run_dir / rundir.MODEL
    with atomic.replacing(final) as tmp:
        model.save(str(tmp))
    return final


def write_class_names(class_names: Sequence[str], folder: Path) -> Path:
    path = folder / rundir.CLASS_NAMES
    atomic.write_json(path, list(class_names), indent=1)
    return path


def probability_model(model: keras.Model) -> keras.Model:
    """The same weights with a softmax on top: float pixels (0-255, RGB, at the training image
    size) in, one probability per class out, in float32 whatever the training precision."""
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(model.outputs[0])
    return keras.Model(model.inputs, probabilities, name=model.name)


def write_keras(model: keras.Model, class_names: Sequence[str], out_dir: Path, name: str = rundir.MODEL) -> Path:
    """``out_dir/name`` (probabilities) and its class names beside it (``rundir.class_names_beside``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / name
    with atomic.replacing(final) as tmp:
        probability_model(model).save(str(tmp))
    atomic.write_json(rundir.class_names_beside(final), list(class_names), indent=1)
    return final
