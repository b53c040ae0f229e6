"""The run directory: what each of its files is called, what makes a run in it finished or
resumable, and what ``--overwrite`` removes.

The one module that names a run's files (tests/test_structure.py holds the others to it):
every other module joins a run directory with these names. A run directory is a local
folder; the storage seam for buckets attaches here, so what leaves or enters a run
directory goes through this module.

Invariants: ``OUTPUTS`` is everything a run writes except the lock and the data cache, so
``--overwrite`` leaves nothing of the earlier run behind (a stale figure would be reported
and tracked as the new run's) and nothing of the user's own files in the same folder. A run
is finished when its summary exists; a finished run without checkpoints can only be
replaced, never silently retrained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from imgtrain import atomic
from imgtrain.config import Config
from imgtrain.errors import UserError

CONFIG = "config.yaml"  # the resolved config, written once the data are known to be the run's
CLASS_NAMES = "class_names.json"
DATA_FINGERPRINT = "data_fingerprint.json"
DATA_CACHE = "data_cache"  # image checks and converted copies: kept by --overwrite, reused
CHECKPOINTS = "checkpoints"
CHECKPOINT_STATE = "checkpoint"  # TensorFlow's CheckpointManager index, inside CHECKPOINTS
LOGS = "logs"  # TensorBoard
HISTORY = "history.csv"
SUMMARY = "run.json"
MODEL = "model.keras"
SAVED_MODEL = "saved_model"
EXPORTS = "export"  # `imgtrain export` without --output writes export/<format>
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CURVES = "curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
PER_CLASS_ACCURACY = "per_class_accuracy.png"
CALIBRATION = "calibration.png"
MISCLASSIFIED = "misclassified.png"
TRACKING = "mlflow.json"  # the MLflow run id and the pieces already logged
LOCK = ".lock"

FIGURES = (CONFUSION_MATRIX, PER_CLASS_ACCURACY, CALIBRATION, MISCLASSIFIED, CURVES)
REPORTS = (REPORT_JSON, REPORT_MD, REPORT_HTML)
OUTPUTS = (
    CONFIG,
    CLASS_NAMES,
    DATA_FINGERPRINT,
    CHECKPOINTS,
    LOGS,
    HISTORY,
    SUMMARY,
    MODEL,
    SAVED_MODEL,
    EXPORTS,
    *REPORTS,
    *FIGURES,
    TRACKING,  # a replaced run is logged as a new MLflow run
)
# What evaluate, predict and export read of a finished run, and all they may write into it: a
# reader never writes the training's own files (its records, checkpoints, model, MLflow ledger).
MODEL_READS = (CONFIG, CLASS_NAMES, DATA_FINGERPRINT, HISTORY, SUMMARY, MODEL, REPORT_JSON)
READER_WRITES = (*REPORTS, *(f for f in FIGURES if f != CURVES), EXPORTS, LOGS)
# What describes the run (not the model): what experiment tracking uploads as the run's files.
RECORDS = (*REPORTS, *FIGURES, HISTORY, CONFIG, SUMMARY, CLASS_NAMES)
# Any of these without checkpoints: a finished run that can no longer be resumed, only replaced.
FINISHED = (MODEL, SUMMARY, REPORT_JSON)
OVERWRITE_HINT = "pass another --output, or --overwrite to replace it"

# Keys that may change between a run and its resumption; anything else would make the
# checkpoint mean something different.
RESUMABLE_CHANGES = (
    "output",
    "deterministic",
    "data.path",
    "data.tfds.data_dir",
    "train.epochs",
    "train.early_stopping",
    "train.checkpoint",
    "train.strategy",
    "train.cluster",
    "train.warm_start",
    "train.steps_per_execution",  # how many steps per call, not which steps
    "data.service",  # where the pipeline runs, not what it makes
    "data.service_timeout",
    "data.stage",  # where the images are read from, not which
    "tracking",  # where the run is logged, not what it trains
    "export",  # what the end of the run writes, not what it trains
)
AUTO_RESAMPLER = ("data.augment.resampler", "auto")


def make(run_dir: Path) -> None:
    """Create the run directory (and its parents), or say in one line why it cannot be one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--output {run_dir} is a file; pass a directory (it is created if missing)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the run directory {run_dir}: {exc.strerror}; pass a writable --output"
        ) from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"the run directory {run_dir} is not writable; pass a writable --output")


def clear(run_dir: Path, say: Callable[[str], None]) -> None:
    """``--overwrite``: remove an earlier run's OUTPUTS, and nothing else."""
    found = [name for name in OUTPUTS if (run_dir / name).exists() or (run_dir / name).is_symlink()]
    for name in found:
        atomic.remove_path(run_dir / name)
    if found:
        say(f"--overwrite: removed the earlier run's {', '.join(found)} from {run_dir}")


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINTS / CHECKPOINT_STATE).exists()


def is_finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY).exists()


def resumable_config(run_dir: Path) -> Optional[Config]:
    """The config of the run to resume in run_dir (None when there is none to resume)."""
    if not has_checkpoint(run_dir) or not (run_dir / CONFIG).exists():
        return None
    return Config.load(run_dir / CONFIG)


def check_resumable(cfg: Config, run_dir: Path) -> bool:
    """True when run_dir holds a run to resume; refuses one trained with another setup, and a
    finished run whose checkpoints are gone (training would silently replace its results)."""
    if not has_checkpoint(run_dir):
        finished = [name for name in FINISHED if (run_dir / name).exists()]
        if finished:
            raise UserError(
                f"{cfg.output} holds a finished run ({', '.join(finished)}) with no checkpoints to resume from, "
                f"and training would replace it; {OVERWRITE_HINT}"
            )
        return False
    saved = resumable_config(run_dir)
    if saved is None:
        return True
    a, b = _flat(saved.to_dict()), _flat(cfg.to_dict())
    if a.get(AUTO_RESAMPLER[0]) == AUTO_RESAMPLER[1]:  # recorded before runs decided it: either kernel
        a[AUTO_RESAMPLER[0]] = b.get(AUTO_RESAMPLER[0])
    for key in sorted(set(a) | set(b)):
        if any(key == c or key.startswith(c + ".") for c in RESUMABLE_CHANGES):
            continue
        if a.get(key) != b.get(key):
            raise UserError(
                f"{cfg.output} holds a run trained with {key}={a.get(key)!r}, not {b.get(key)!r}; "
                f"resume it with the same settings, or {OVERWRITE_HINT}"
            )
    return True


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A config's settings by dotted key; a mapping of class names to weights stays one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and key not in ("train.class_weights",):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def read_summary(run_dir: Path) -> dict[str, Any]:
    """run.json, or {} when there is none (or it cannot be read)."""
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic.write_json(run_dir / SUMMARY, summary)


def class_names_beside(model_file: Path) -> Path:
    """Where a ``.keras`` file's class names go: ``class_names.json`` beside ``model.keras`` (a
    run directory, an export folder), ``NAME.class_names.json`` beside any other name, so two
    exports into one folder keep their own."""
    model_file = Path(model_file)
    if model_file.name == MODEL:
        return model_file.parent / CLASS_NAMES
    return model_file.with_name(f"{model_file.stem}.{CLASS_NAMES}")
