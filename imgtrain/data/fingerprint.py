"""A fingerprint of a run's data, so a resumed run trains on the data it started with.

It records the class names, the number of examples per split and a hash per
split of what identifies each example: its key (the path relative to the
dataset root, so a moved folder keeps its fingerprint), label and weight for
files; the shard names and counts of prepared TFRecords; the dataset name and
split sizes for TFDS. Besides, a hash per split of each file's content stamp
(``stage.stamp``: size and modification time, an object's own in a bucket and
in its staged copy), and up to ``STAMPS_KEPT`` stamps by key, to name the files
that changed. A resume whose fingerprint differs is refused with what differs,
before anything in the run directory is touched. Contents are compared by the
chief only: each machine of a multi-node run may hold its own copy of the data,
with its own times.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from imgtrain import atomic, rundir
from imgtrain.errors import UserError

SPLITS = ("train", "val", "test")
STAMPS_KEPT = 200_000  # files whose stamps are recorded one by one (about 10 MB of JSON)


def _digest(items: list[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def compute(prep: Any) -> dict[str, Any]:
    """The fingerprint of a ``data.source.DataSource``: {class_names, counts, hashes, contents,
    stamps (when there are at most ``STAMPS_KEPT``)}."""
    hashes = {split: _digest(prep.identity(split)) for split in SPLITS}
    stamped = {split: sorted(prep.contents(split)) for split in SPLITS}
    out = {
        "class_names": list(prep.class_names),
        "counts": {s: prep.count(s) for s in SPLITS},
        "hashes": hashes,
        "contents": {split: _digest(items) for split, items in stamped.items()},
    }
    if sum(len(items) for items in stamped.values()) <= STAMPS_KEPT:
        out["stamps"] = dict(item.split("\t", 1) for items in stamped.values() for item in items)
    return out


def differences(saved: dict[str, Any], now: dict[str, Any], contents: bool = True) -> Optional[str]:
    """What differs between two fingerprints, in words; None when they agree. ``contents``:
    compare the files' stamps too (a fingerprint written before they were recorded has none)."""
    if saved.get("class_names") != now["class_names"]:
        return f"its classes were {saved.get('class_names')}, the data now has {now['class_names']}"
    for split in SPLITS:
        a, b = saved.get("counts", {}).get(split), now["counts"][split]
        if a != b:
            return f"its {split} split had {a} images, the data now gives {b}"
    for split in SPLITS:
        if saved.get("hashes", {}).get(split) != now["hashes"][split]:
            return f"its {split} split had other files, labels or weights (same count, different content)"
    if not contents or not isinstance(saved.get("contents"), dict):
        return None
    for split in SPLITS:
        if saved["contents"].get(split) != now["contents"][split]:
            return _changed(saved.get("stamps"), now.get("stamps"), split)
    return None


def _changed(saved: Any, now: Any, split: str) -> str:
    if isinstance(saved, dict) and isinstance(now, dict):
        names = sorted(k for k, v in now.items() if saved.get(k) not in (None, v))
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return f"{len(names)} of its files changed since it started (other size or modification time: {shown})"
    return f"files of its {split} split changed since it started (same names, other sizes or modification times)"


def check_or_record(run_dir: Path, fingerprint: dict[str, Any], resuming: bool, chief: bool, shown: str) -> None:
    """On a resume, refuse data that differ from what the run recorded (the chief compares the
    files' contents too); otherwise the chief records it. ``shown``: the run as the user named it."""
    path = Path(run_dir) / rundir.DATA_FINGERPRINT
    if resuming and path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if saved is not None:
            diff = differences(saved, fingerprint, contents=chief)
            if diff:
                raise UserError(
                    f"{shown} holds a run trained on other data: {diff}; resume it with the same "
                    "data, or pass another --output, or --overwrite to replace it"
                )
            return
    if chief:
        atomic.write_json(path, fingerprint)


def digest(run_dir: Path) -> str:
    """One short digest of the run's recorded fingerprint (for experiment tracking's tags): equal
    for two runs exactly when they trained on the same data; '' when none is recorded."""
    try:
        saved = json.loads((Path(run_dir) / rundir.DATA_FINGERPRINT).read_text())
    except (OSError, ValueError):
        return ""
    return _digest([json.dumps(saved, sort_keys=True)])
