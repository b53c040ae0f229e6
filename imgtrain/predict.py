"""Classify image files with a trained run: top-k class names and probabilities."""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from imgtrain import atomic, rundir
from imgtrain.config import IMAGE_EXTENSIONS, Config
from imgtrain.data.images import load
from imgtrain.data.validate import BAD, CONVERT, check_file, convert_to_png
from imgtrain.errors import UserError


def collect_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"folder {p} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p} does not exist; pass image files or folders to predict")
    if not files:
        raise UserError("no images given; pass image files or folders to predict")
    return files


def load_run(run_dir: Path) -> tuple[keras.Model, list[str], Config]:
    run_dir = Path(run_dir)
    if not (run_dir / rundir.MODEL).exists():
        raise UserError(
            f"{run_dir} has no model.keras; pass --run a directory written by 'imgtrain train' that finished"
        )
    cfg = Config.load(run_dir / rundir.CONFIG)
    class_names = json.loads((run_dir / rundir.CLASS_NAMES).read_text())
    import imgtrain.models.layers  # noqa: F401  (registers custom layers for loading)

    model = keras.models.load_model(run_dir / rundir.MODEL, compile=False)
    return model, class_names, cfg


def _decodable(path: Path, scratch: Path, position: int) -> str:
    """The file itself, or a PNG copy when only Pillow reads it: the same check and conversion
    training applies (``data.validate``), so predict takes every image train takes."""
    result = check_file(str(path))
    if result.status == BAD:
        fix = result.fix or "pass JPEG, PNG, BMP or GIF files"
        raise UserError(f"cannot decode image {path}: {result.reason}; {fix}")
    if result.status == CONVERT:
        out = scratch / f"{position}.png"
        convert_to_png(str(path), out)
        return str(out)
    return str(path)


def predict_files(run_dir: Path, paths: Sequence[str], top_k: int = 5, batch_size: int = 64) -> list[dict]:
    """One record per file: path, then the top-k (class name, probability) pairs."""
    model, class_names, cfg = load_run(run_dir)
    files = collect_files(paths)
    size, crop = cfg.data.image_size, cfg.data.eval_crop()
    k = max(1, min(top_k, len(class_names)))
    with tempfile.TemporaryDirectory(prefix="imgtrain-predict-") as scratch:
        readable = [_decodable(f, Path(scratch), i) for i, f in enumerate(files)]
        ds = (
            tf.data.Dataset.from_tensor_slices(readable)
            .map(lambda p: load(p, size, crop), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
        )
        probs = []
        for batch in ds:
            probs.append(tf.nn.softmax(tf.cast(model(batch, training=False), tf.float32), axis=-1).numpy())
    all_probs = np.concatenate(probs) if probs else np.zeros((0, len(class_names)))
    records = []
    for f, p in zip(files, all_probs):
        order = np.argsort(-p, kind="stable")[:k]
        records.append(
            {"path": str(f), "top": [(class_names[i], float(p[i])) for i in order], "probabilities": p.tolist()}
        )
    return records


def predictions_table(records: list[dict]) -> str:
    k = max((len(r["top"]) for r in records), default=1)
    header = ["path"] + [h for i in range(1, k + 1) for h in (f"class_{i}", f"prob_{i}")]
    rows = [[r["path"]] + [v for name, prob in r["top"] for v in (name, f"{prob:.4f}")] for r in records]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = io.StringIO()
    for row in [header] + rows:
        out.write("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() + "\n")
    return out.getvalue()


def write_records(records: list[dict], output: str | None) -> None:
    if output is None:
        sys.stdout.write(predictions_table(records))
        return
    path = Path(output)
    k = max((len(r["top"]) for r in records), default=1)
    if path.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--output {path} must end in .csv or .json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a new folder, as train's --output makes one
    except OSError as exc:
        raise UserError(
            f"--output {path}: cannot create the folder {path.parent} ({exc.strerror}); write elsewhere"
        ) from None
    # Whole or not at all: an existing predictions file survives a full disk or a crash.
    with atomic.replacing(path) as tmp:
        if path.suffix.lower() == ".json":
            data = [
                {"path": r["path"], "predictions": [{"class": n, "probability": p} for n, p in r["top"]]}
                for r in records
            ]
            tmp.write_text(json.dumps(atomic.finite(data), indent=2, allow_nan=False) + "\n")
        else:
            with tmp.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["path"] + [h for i in range(1, k + 1) for h in (f"class_{i}", f"prob_{i}")])
                for r in records:
                    w.writerow([r["path"]] + [v for n, p in r["top"] for v in (n, f"{p:.6f}")])
