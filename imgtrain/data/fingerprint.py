"""A fingerprint of a run's data, so a resumed run trains on the data it started with.

It records the class names, the number of examples per split and a hash per
split of what identifies each example: its key (the path relative to the
dataset root, so a moved folder keeps its fingerprint), label and weight for
files; the shard names and counts of prepared TFRecords; the dataset name and
split sizes for TFDS. A resume whose fingerprint differs is refused with what
differs, before anything in the run directory is touched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from imgtrain import atomic, rundir
from imgtrain.errors import UserError

SPLITS = ("train", "val", "test")


def _digest(items: list[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def compute(prep: Any) -> dict[str, Any]:
    """The fingerprint of a ``data.source.DataSource``: {class_names, counts, hashes}."""
    hashes = {split: _digest(prep.identity(split)) for split in SPLITS}
    return {"class_names": list(prep.class_names), "counts": {s: prep.count(s) for s in SPLITS}, "hashes": hashes}


def differences(saved: dict[str, Any], now: dict[str, Any]) -> Optional[str]:
    """What differs between two fingerprints, in words; None when they agree."""
    if saved.get("class_names") != now["class_names"]:
        return f"its classes were {saved.get('class_names')}, the data now has {now['class_names']}"
    for split in SPLITS:
        a, b = saved.get("counts", {}).get(split), now["counts"][split]
        if a != b:
            return f"its {split} split had {a} images, the data now gives {b}"
    for split in SPLITS:
        if saved.get("hashes", {}).get(split) != now["hashes"][split]:
            return f"its {split} split had other files, labels or weights (same count, different content)"
    return None


def check_or_record(run_dir: Path, fingerprint: dict[str, Any], resuming: bool, write: bool) -> None:
    """On a resume, refuse data that differ from what the run recorded; otherwise record it."""
    path = Path(run_dir) / rundir.DATA_FINGERPRINT
    if resuming and path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if saved is not None:
            diff = differences(saved, fingerprint)
            if diff:
                raise UserError(
                    f"{run_dir} holds a run trained on other data: {diff}; resume it with the same "
                    "data, or pass another --output, or --overwrite to replace it"
                )
            return
    if write:
        atomic.write_json(path, fingerprint)


def digest(run_dir: Path) -> str:
    """One short digest of the run's recorded fingerprint (for experiment tracking's tags): equal
    for two runs exactly when they trained on the same data; '' when none is recorded."""
    try:
        saved = json.loads((Path(run_dir) / rundir.DATA_FINGERPRINT).read_text())
    except (OSError, ValueError):
        return ""
    return _digest([json.dumps(saved, sort_keys=True)])
