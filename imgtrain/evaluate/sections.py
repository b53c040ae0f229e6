"""What every rendering of the report shows, decided once: its pictures and its summary rows."""

from __future__ import annotations

from typing import Any

# The pictures a report shows, by file name, in the order it shows them.
FIGURES = {
    "confusion_matrix.png": "Confusion matrix: counts, and shares of each true class",
    "per_class_accuracy.png": "Accuracy within each class",
    "calibration.png": "Reliability diagram",
    "misclassified.png": "Most confident mistakes",
    "curves.png": "Training curves",
}


def headline_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("accuracy", f"{report['accuracy']:.4f}")]
    for key in sorted(k for k in report if k.startswith("top") and k.endswith("_accuracy")):
        rows.append((key.replace("_", " "), f"{report[key]:.4f}"))
    rows.append(("loss", f"{report['loss']:.4f}"))
    for avg in ("macro_avg", "weighted_avg"):
        rows.append((f"{avg.replace('_', ' ')} F1", f"{report[avg]['f1']:.4f}"))
    if "calibration" in report:
        rows.append(("expected calibration error", f"{report['calibration']['ece']:.4f}"))
    return rows


def context_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The run around the numbers, as (what, value) rows; empty when evaluated without one."""
    c = report.get("context") or {}
    rows = []
    for key, label in (
        ("data", "data"),
        ("splits", "split sizes (train / val / test)"),
        ("model", "model"),
        ("best_epoch", "best epoch (restored)"),
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
