"""What every rendering of the report shows, decided once: its pictures and its summary rows."""

from __future__ import annotations

from typing import Any

from imgtrain import rundir
from imgtrain.evaluate import headline as headline_metrics

# The pictures a report shows, by file name, in the order it shows them.
FIGURES = {
    rundir.CONFUSION_MATRIX: "Confusion matrix: counts, and shares of each true class",
    rundir.PER_CLASS_ACCURACY: "Accuracy within each class",
    rundir.CALIBRATION: "Reliability diagram",
    rundir.MISCLASSIFIED: "Most confident mistakes",
    rundir.CURVES: "Training curves",
}


def headline_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline test metrics (evaluate/headline.py), as (what, value) rows."""
    return [(headline_metrics.label(name), f"{value:.4f}") for name, value in headline_metrics.headline(report).items()]


def context_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The run around the numbers, as (what, value) rows; empty when evaluated without one."""
    c = report.get("context") or {}
    rows = []
    for key, label in (
        ("data", "data"),
        ("splits", "split sizes (train / val / test)"),
        ("model", "model"),
        ("best_epoch", "best epoch (restored)"),
        ("best_chosen", "best epoch's metrics"),
        ("stopped", "training stopped"),
        ("strategy", "strategy"),
        ("world_size", "world size"),
        ("wall_seconds", "wall time (s)"),
        ("evaluated", "evaluated"),
    ):
        if c.get(key) is not None:
            value = c[key]
            if isinstance(value, dict):
                value = " / ".join(str(value.get(s, 0)) for s in ("train", "val", "test"))
            rows.append((label, str(value)))
    return rows
