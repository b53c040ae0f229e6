"""Pictures people would rather look at than read: confusion matrices, per-class accuracy,
reliability, the most confident mistakes, and the training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from imgtrain import atomic  # noqa: E402


def _save(fig, path: Path) -> None:
    try:
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


def confusion_matrix_png(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Counts beside the row-normalised matrix: on the counts' colour scale a big class hides
    every error; normalised per true class, each row's mistakes show as shares of it."""
    cm = np.asarray(confusion).astype(int)
    k = len(class_names)
    side = min(4 + 0.45 * k, 20)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, values, title, fmt in (
        (axes[0], cm, "counts", "d"),
        (axes[1], normalised, "share of each true class (rows sum to 1)", ".2f"),
    ):
        ConfusionMatrixDisplay(values, display_labels=list(class_names)).plot(
            ax=ax,
            cmap="Blues",
            colorbar=False,
            include_values=k <= 30,
            values_format=fmt,
            xticks_rotation="vertical" if k > 8 else "horizontal",
        )
        ax.set_title(title)
    fig.suptitle("Confusion matrix (test split): rows true, columns predicted")
    _save(fig, path)


def per_class_accuracy_png(class_names: Sequence[str], recall: Sequence[float], support: Sequence[int], path: Path):
    """Accuracy within each true class (its recall), with its number of test images."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(8, min(2 + 0.3 * k, 30)))
    ys = np.arange(k)
    ax.barh(ys, recall, color="tab:blue")
    ax.set_yticks(ys, [f"{n} ({s})" for n, s in zip(class_names, support)])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy within the class (recall)")
    ax.set_title("Per-class accuracy on the test split (test images per class)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def reliability_png(calibration: dict, path: Path) -> None:
    """Accuracy against confidence per bin: on the diagonal a model is calibrated, below it
    overconfident. Bar widths are the bins, the grey bars how many images each holds."""
    bins = calibration["bins"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[3, 1], sharex=True)
    width = bins[0]["upper"] - bins[0]["lower"]
    filled = [b for b in bins if b["count"]]
    ax.bar(
        [b["lower"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability (test split): expected calibration error {calibration['ece']:.3f}")
    ax.legend(loc="upper left")
    hist.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="grey")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("images")
    hist.set_xlim(0, 1)
    _save(fig, path)


def gallery_png(worst: Sequence[tuple], keys: Sequence[str], labels, predicted, class_names, path: Path) -> bool:
    """The most confident mistakes, as the model saw them, each titled true / predicted (confidence)."""
    if not worst:
        return False
    cols = min(4, len(worst))
    rows = (len(worst) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (conf, pos, image) in zip(axes.flat, worst):
        ax.imshow(image if image.shape[-1] == 3 else image[..., 0], interpolation="nearest")
        name = keys[pos] if pos < len(keys) else f"#{pos}"
        ax.set_title(
            f"true {class_names[int(labels[pos])]}\npredicted {class_names[int(predicted[pos])]} ({conf:.2f})\n"
            f"{_shorten(name)}",
            fontsize=8,
        )
    fig.suptitle("Most confident mistakes (test split)")
    _save(fig, path)
    return True


def _shorten(text: str, most: int = 36) -> str:
    return text if len(text) <= most else "..." + text[-(most - 3) :]


def curves_png(
    rows: Sequence[dict],
    path: Path,
    best_epoch: Optional[int] = None,
    objective_differs: str = "",
    validation_note: str = "",
) -> bool:
    """Cross-entropy, accuracy and learning rate per epoch of ``rows`` (history.read); False when
    there are none.

    Like is plotted with like: the training curve is plain cross-entropy against hard labels
    (what validation reports), and the training objective, when label smoothing, mixing or
    class weights make it another quantity, is drawn apart and named (``objective_differs``).
    ``best_epoch`` (1-based) marks the epoch whose weights were restored.
    """
    if not rows:
        return False
    epochs = [int(r["epoch"]) for r in rows]

    def series(key: str) -> Optional[list[float]]:
        vals = [r.get(key, "") for r in rows]
        return [float(v) for v in vals] if all(v not in ("", None) for v in vals) else None

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    running = "train (running, during the epoch)"
    train_ce = series("cross_entropy") or series("loss")  # histories before 0.2 have no cross_entropy
    _metric_panel(axes[0], epochs, "loss", "cross-entropy", [(train_ce, running), (series("val_loss"), "validation")])
    _metric_panel(
        axes[1], epochs, "accuracy", "accuracy", [(series("accuracy"), running), (series("val_accuracy"), "validation")]
    )
    objective = series("loss")
    if objective_differs and objective is not None and series("cross_entropy") is not None:
        axes[0].plot(epochs, objective, ":", color="grey", label=f"train objective ({objective_differs})")
    _lr_panel(axes[2], epochs, series("learning_rate"))
    if best_epoch and best_epoch in epochs:
        for ax in axes:
            ax.axvline(
                best_epoch, color="tab:red", linestyle="--", alpha=0.6, label=f"best epoch {best_epoch} (restored)"
            )
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    note = "train: dropout and augmentation on, weights changing during the epoch"
    if validation_note:
        note += f"; validation: {validation_note}"
    fig.suptitle(note, fontsize=9, y=0.995)
    _save(fig, path)
    return True


def _metric_panel(ax, epochs: list[int], title: str, ylabel: str, lines: list) -> None:
    """Train (circles) and validation (squares) curves of one metric; a missing series is left out."""
    for (ys, label), style in zip(lines, ("-o", "-s")):
        if ys is not None:
            ax.plot(epochs, ys, style, label=label, markersize=3)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _lr_panel(ax, epochs: list[int], lr: Optional[list[float]]) -> None:
    """The learning rate per epoch, on a log scale when it spans more than a factor of 20."""
    if lr is not None:
        ax.plot(epochs, lr, "-o", markersize=3, color="tab:green")
        if min(lr) > 0 and max(lr) / min(lr) > 20:
            ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate (at the epoch's start)")
    ax.set_title("learning rate")
    ax.grid(alpha=0.3)
