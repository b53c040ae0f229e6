"""history.csv: one row per completed epoch, the only module that reads or writes it.

The training loop writes it (chief only, whole, atomically, after each epoch); the curves,
the test pass's TensorBoard step and experiment tracking read it. Invariant: every row
``read`` returns has a whole-number ``epoch``, in the order written; a row past a
checkpoint (written before a crash the checkpoint does not cover) is dropped on resume by
``read(run_dir, upto_epoch=...)``, never by the reader's own rules.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

from imgtrain import atomic, rundir
from imgtrain.train.early_stopping import standard_error

# The columns, in order; {k} is the run's evaluate.top_k.
FIELDS = (
    "epoch",
    "phase",
    "loss",
    "cross_entropy",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "val_top{k}_accuracy",
    standard_error("val_loss"),
    standard_error("val_accuracy"),
    "learning_rate",
    "images_per_sec",
    "seconds",
)


def path(run_dir: Path) -> Path:
    return Path(run_dir) / rundir.HISTORY


def read(run_dir: Path, upto_epoch: Optional[int] = None) -> list[dict[str, str]]:
    """The rows of completed epochs (all of them, or those up to ``upto_epoch``); [] when
    there is no history yet or it cannot be read."""
    try:
        with path(run_dir).open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if (r.get("epoch") or "").isdigit()]
    except OSError:
        return []
    return [r for r in rows if upto_epoch is None or int(r["epoch"]) <= upto_epoch]


def write(run_dir: Path, rows: Sequence[dict], top_k: int) -> None:
    """Replace the history with ``rows`` (whole or not at all); columns not in FIELDS are left out."""
    fields = [f.format(k=top_k) for f in FIELDS]
    with atomic.replacing(path(run_dir)) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in fields})


def epochs(run_dir: Path) -> int:
    """How many epochs the history holds (the last one's number)."""
    return max((int(r["epoch"]) for r in read(run_dir)), default=0)
