"""Pictures people would rather look at than read: the confusion matrix and training curves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from imgtrain import atomic  # noqa: E402


def _save(fig, path: Path) -> None:
    try:
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


def confusion_matrix_png(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    k = len(class_names)
    side = min(4 + 0.45 * k, 24)
    fig, ax = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay(np.asarray(confusion).astype(int), display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, include_values=k <= 30, xticks_rotation="vertical" if k > 8 else "horizontal")
    ax.set_title("Confusion matrix (test split): rows true, columns predicted")
    _save(fig, path)


def curves_png(history_csv: Path, path: Path) -> bool:
    """Loss and accuracy per epoch, train and validation; False when there is no history."""
    if not history_csv.exists():
        return False
    with history_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return False
    epochs = [int(r["epoch"]) for r in rows]

    def series(key: str) -> list[float] | None:
        vals = [r.get(key, "") for r in rows]
        return [float(v) for v in vals] if all(v not in ("", None) for v in vals) else None

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            ys = series(key)
            if ys is not None:
                ax.plot(epochs, ys, style, label=label, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    return True
