"""The run directory: what each of its files is called, what makes a run in it finished, and
what ``--overwrite`` removes (whether a run resumes with a config: ``resumption``).

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
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from imgtrain import atomic
from imgtrain.errors import UserError

CONFIG = "config.yaml"  # the resolved config, written once the data are known to be the run's
CLASS_NAMES = "class_names.json"
DATA_FINGERPRINT = "data_fingerprint.json"
DATA_CACHE = "data_cache"  # image checks and converted copies: kept by --overwrite, reused
CHECKPOINTS = "checkpoints"
CHECKPOINT_STATE = "checkpoint"  # TensorFlow's CheckpointManager index, inside CHECKPOINTS
LOGS = "logs"  # TensorBoard
HISTORY = "history.csv"
RESIZES = "resizes.json"  # each resume on another number of replicas (train.batching)
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
    RESIZES,
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


# TensorFlow's names inside CHECKPOINTS: a checkpoint ``ckpt-N`` is its files ``ckpt-N.index``
# and ``ckpt-N.data-K-of-M``; the state file lists the checkpoints TensorFlow restores from.
_CHECKPOINT_FILE = re.compile(r"^(?P<name>[^/]+-(?P<n>\d+))\.(?P<part>index|data-\d+-of-\d+)$")
_STATE_NAMES = re.compile(r'^(?:model_checkpoint_path|all_model_checkpoint_paths): "(.*)"$', re.M)


def checkpoint_of(rel: str) -> Optional[str]:
    """``ckpt-N`` for a checkpoint's data or index file (``rel`` from the run directory), else None."""
    head, _, name = rel.rpartition("/")
    if head != CHECKPOINTS:
        return None
    match = _CHECKPOINT_FILE.match(name)
    return match.group("name") if match else None


def checkpoint_number(name: str) -> int:
    match = re.search(r"-(\d+)$", name)
    return int(match.group(1)) if match else -1


def checkpoints_named(state_text: str) -> list[str]:
    """The checkpoint names (``ckpt-N``) a state file lists, newest first, without folders."""
    names = [os.path.basename(n) for n in _STATE_NAMES.findall(state_text or "")]
    return sorted(set(names), key=checkpoint_number, reverse=True)


def checkpoint_state_text(names: list[str]) -> str:
    """A checkpoint state file naming ``names`` (the newest as the one to restore), as
    TensorFlow reads it."""
    if not names:
        return ""
    ordered = sorted(names, key=checkpoint_number)
    return f'model_checkpoint_path: "{ordered[-1]}"\n' + "".join(
        f'all_model_checkpoint_paths: "{n}"\n' for n in ordered
    )


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


# Inside the folders of OUTPUTS, what imgtrain (TensorFlow, Keras) writes there, by path relative
# to the run directory; --overwrite removes these and leaves (and names) anything else there.
_WRITTEN_INSIDE = re.compile(
    rf"^(?:{CHECKPOINTS}/(?:{CHECKPOINT_STATE}|ckpt-\d+(?:_temp[^/]*)?(?:/.*|\.index|\.data-\d+-of-\d+))"
    rf"|{LOGS}/(?:.+/)?(?:events\.out\.tfevents\.[^/]+|plugins/.+)"
    rf"|(?:{SAVED_MODEL}|{EXPORTS})/.+"
    r"|.+/\.tmp-\d+-[0-9a-f]{8}-[^/]+)$"
)


def clear(run_dir: Path, say: Callable[[str], None]) -> None:
    """``--overwrite``: remove an earlier run's OUTPUTS (inside their folders only what imgtrain
    writes there), and nothing else; name what it leaves there."""
    files = []
    for name in OUTPUTS:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            files += [p.relative_to(run_dir).as_posix() for p in path.rglob("*") if not p.is_dir() or p.is_symlink()]
        elif path.exists() or path.is_symlink():
            files.append(name)
    removed, left = overwritten(files)
    for rel in removed:
        (Path(run_dir) / rel).unlink(missing_ok=True)
    for name in OUTPUTS:  # the folders emptied, deepest first
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [path]:
                if not any(folder.iterdir()):
                    folder.rmdir()
    say_overwritten(removed, left, str(run_dir), say)


def overwritten(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """Of a run directory's files (paths relative to it: a folder's, a bucket listing's), what
    ``--overwrite`` removes (an earlier run's OUTPUTS, inside their folders what imgtrain writes
    there) and what it leaves in those folders (the user's own files), each sorted."""
    removed, left = [], []
    for rel in paths:
        if rel.split("/", 1)[0] in OUTPUTS:
            (removed if "/" not in rel or _WRITTEN_INSIDE.match(rel) else left).append(rel)
    return sorted(removed), sorted(left)


def say_overwritten(removed: list[str], left: list[str], where: str, say: Callable[[str], None]) -> None:
    tops = sorted({rel.split("/", 1)[0] for rel in removed})
    if tops:
        say(f"--overwrite: removed the earlier run's {', '.join(tops)} from {where}")
    if left:
        shown = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
        say(f"--overwrite: left {len(left)} file(s) in {where} that imgtrain did not write: {shown}")


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINTS / CHECKPOINT_STATE).exists()


def is_finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY).exists()


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
