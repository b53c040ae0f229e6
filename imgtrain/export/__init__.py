"""Exports of a trained run, one format per row of ``FORMATS``.

``train`` writes ``model.keras`` (logits) and ``saved_model/`` itself; ``imgtrain
export`` makes any format on demand from a finished run, under ``RUN_DIR/export/<format>``
unless told otherwise, and checks it: the format's own reader (TF's SavedModel loader,
``keras.saving.load_model``, LiteRT's interpreter, onnxruntime) classifies the run's test
images, and the top-1 agreement with the run's Keras model is reported with the file size.
Every format but ``saved_model`` takes float32 pixels ``[batch, height, width, 3]`` (RGB,
0-255, the training size) and returns probabilities (index i is ``class_names[i]``).

``--output`` is a folder (``model.keras``, ``model.tflite``, ... and ``class_names.json``
inside), or a file name ending in the format's suffix (``m.tflite``, ``m.keras``,
``m.onnx``), written as named; ``mlflow`` writes an MLflow model directory at ``--output``
(``mlflow.pyfunc.load_model`` reads it), the same package tracking logs. The class names
travel inside the file where the format has a place for them (the TFLite signature's
``class_name`` output; the ONNX model's ``metadata_props``, key ``class_names``, a JSON
list; the MLflow model's metadata) and in ``class_names.json`` beside a ``.keras`` file,
which has none that loading keeps.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np

from imgtrain import atomic, rundir
from imgtrain.errors import UserError
from imgtrain.export import mlflow_model, onnx_file, tflite
from imgtrain.export.keras_file import export_keras, probability_model, write_class_names, write_keras
from imgtrain.export.saved_model import export_saved_model

__all__ = ["FORMATS", "export_keras", "export_run", "export_saved_model", "write_class_names"]

Classifier = Callable[[np.ndarray], np.ndarray]  # float pixels [n, h, w, 3] -> probabilities [n, k]


@dataclass
class Exported:
    format: str
    path: Path  # the file, or the SavedModel's version directory
    size_bytes: int
    agreement: Optional[float] = None  # top-1 agreement with the Keras model on the test images
    images_checked: int = 0
    reader: str = ""


@dataclass(frozen=True)
class Target:
    """Where an export goes: a folder, and the file's name in it (None: the format's default,
    with ``class_names.json`` beside it)."""

    folder: Path
    name: Optional[str] = None

    def file(self, default: str) -> Path:
        return self.folder / (self.name or default)


@dataclass(frozen=True)
class Format:
    write: Callable[[keras.Model, list, "RunInfo", Target], Path]
    read: Callable[[Path], Classifier]
    reader: str  # what reads it, said in the output
    suffix: str = ""  # a file --output ending in it is written as that file
    ready: Callable[[], None] = lambda: None  # refuses, before the run is loaded, what cannot be written


@dataclass(frozen=True)
class RunInfo:
    image_size: list
    crop_fraction: Optional[float]
    version: int


def _write_saved_model(model: keras.Model, names: list, info: RunInfo, target: Target) -> Path:
    return export_saved_model(model, names, info.image_size, target.folder / str(info.version), info.crop_fraction)


def _read_saved_model(path: Path) -> Classifier:
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serve_pixels"]
    return lambda x: fn(pixels=tf.constant(x))["probabilities"].numpy()


def _write_keras(model: keras.Model, names: list, info: RunInfo, target: Target) -> Path:
    return write_keras(model, names, target.folder, target.name or rundir.MODEL)


def _read_keras(path: Path) -> Classifier:
    loaded = keras.saving.load_model(str(path), compile=False)
    return lambda x: np.asarray(loaded.predict(x, verbose=0))


def _tflite_writer(int8: bool) -> Callable[[keras.Model, list, RunInfo, Target], Path]:
    def write(model: keras.Model, names: list, info: RunInfo, target: Target) -> Path:
        target.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.folder, prefix=".tmp-") as tmp:
            saved = export_saved_model(model, names, info.image_size, Path(tmp) / "saved_model", info.crop_fraction)
            blob = tflite.convert(saved, int8)
        final = target.file("model_int8.tflite" if int8 else "model.tflite")
        with atomic.replacing(final) as part:
            part.write_bytes(blob)
        if target.name is None:  # the signature returns the names; the folder layout keeps its json too
            write_class_names(names, target.folder)
        return final

    return write


def _read_tflite(path: Path) -> Classifier:
    return tflite.read(path)


def _write_onnx(model: keras.Model, names: list, info: RunInfo, target: Target) -> Path:
    target.folder.mkdir(parents=True, exist_ok=True)
    final = target.file("model.onnx")
    with tempfile.TemporaryDirectory(dir=target.folder, prefix=".tmp-") as tmp:
        onnx_file.write(probability_model(model), names, Path(tmp) / "model.onnx")
        os.replace(Path(tmp) / "model.onnx", final)  # whole or not at all
    if target.name is None:
        write_class_names(names, target.folder)
    return final


def _read_onnx(path: Path) -> Classifier:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _write_mlflow(model: keras.Model, names: list, info: RunInfo, target: Target) -> Path:
    return mlflow_model.save(model, names, info.image_size, target.folder)


# The one table of export formats; the CLI's --format choices are its keys.
FORMATS: dict[str, Format] = {
    "saved_model": Format(_write_saved_model, _read_saved_model, "tf.saved_model.load, signature serve_pixels"),
    "keras": Format(_write_keras, _read_keras, "keras.saving.load_model", ".keras"),
    "tflite": Format(_tflite_writer(False), _read_tflite, tflite.READER, ".tflite"),
    "tflite-int8": Format(_tflite_writer(True), _read_tflite, tflite.READER, ".tflite"),
    "onnx": Format(_write_onnx, _read_onnx, "onnxruntime", ".onnx"),
    "mlflow": Format(
        _write_mlflow,
        mlflow_model.read,
        mlflow_model.READER,
        ready=lambda: mlflow_model.require("export --format mlflow", "choose another --format"),
    ),
}


def format_for(fmt: Optional[str], out: Optional[Path]) -> str:
    """The format: ``fmt``, or the one ``out``'s suffix names. A name whose suffix is another
    format's (``--format tflite --output m.onnx``) is refused: it would be a folder named like
    a file of the wrong kind."""
    suffix = Path(out).suffix.lower() if out else ""
    named = [name for name, f in FORMATS.items() if f.suffix and f.suffix == suffix]
    if fmt is None:
        if not named:
            raise UserError(
                f"which format? pass --format ({', '.join(FORMATS)}), or an --output ending in "
                f"{', '.join(sorted({f.suffix for f in FORMATS.values() if f.suffix}))}"
            )
        return named[0]
    if named and fmt not in named:
        raise UserError(
            f"--output {out} names a {suffix} file but --format is {fmt}; name it "
            f"{Path(out).with_suffix(FORMATS[fmt].suffix or '').name} (or a folder), or pass --format {named[0]}"
        )
    return fmt


def target_of(fmt: str, out: Path) -> Target:
    """``out`` as a file when it ends in ``fmt``'s suffix, else as a folder."""
    suffix = FORMATS[fmt].suffix
    if suffix and out.suffix.lower() == suffix and not out.is_dir():
        return Target(out.parent, out.name)
    return Target(out)


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def export_model(
    model: keras.Model, class_names: list, fmt: str, out: Path, image_size: list, crop: Optional[float], version: int
) -> Exported:
    """Write ``model`` (logits) in format ``fmt`` to ``out`` (a folder, or a file named with the
    format's suffix); no check."""
    info = RunInfo(list(image_size), crop, version)
    path = FORMATS[fmt].write(model, list(class_names), info, target_of(fmt, Path(out)))
    return Exported(fmt, path, size_of(path), reader=FORMATS[fmt].reader)


def agreement(model: keras.Model, read: Classifier, batches) -> tuple[float, int]:
    """Top-1 agreement between ``model`` and an exported classifier over ``(pixels, real)``
    batches (padding rows, ``real == 0``, left out)."""
    same = total = 0
    for x, real in batches:
        keep = np.asarray(real) > 0
        x = np.asarray(x, np.float32)
        ours = np.asarray(model.predict(x, verbose=0)).argmax(-1)
        theirs = np.asarray(read(x)).argmax(-1)
        same += int((ours == theirs)[keep].sum())
        total += int(keep.sum())
    return (same / total if total else float("nan")), total


def _check_writable(out: Path) -> None:
    """Refuse, before any conversion, a place the export cannot be written to."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot write the export to {out} ({exc.strerror or exc}); pass --output a writable place"
        ) from None


def export_run(
    run_dir: Path,
    fmt: Optional[str],
    out: Optional[Path] = None,
    version: int = 1,
    check: bool = True,
    max_check_images: int = 2000,
    log: Callable[[str], None] = print,
) -> Exported:
    """``imgtrain export``: one format from a finished run, then read back and checked."""
    from imgtrain.export.check import test_batches
    from imgtrain.predict import load_run

    run_dir = Path(run_dir)
    fmt = format_for(fmt, out)
    FORMATS[fmt].ready()
    model, class_names, cfg = load_run(run_dir)
    out = Path(out) if out else run_dir / rundir.EXPORTS / fmt
    _check_writable(target_of(fmt, out).folder)
    result = export_model(model, class_names, fmt, out, cfg.data.image_size, cfg.data.eval_crop(), version)
    if check:
        batches = test_batches(cfg, run_dir, max_check_images, log)
        if batches is not None:
            result.agreement, result.images_checked = agreement(model, FORMATS[fmt].read(result.path), batches)
    return result
