"""The evaluation report: ``report.json`` for programs, ``report.md`` and a self-contained
``report.html`` for people.

The headline metrics come from the summed confusion matrix (exact under any strategy); the
misclassified images and calibration come from the chief's per-example pass
(``evaluate.predictions``). Class names are user text: Markdown and HTML escape them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from imgtrain import atomic, rundir
from imgtrain.config import reports_top_k
from imgtrain.evaluate.headline import headline
from imgtrain.evaluate.html import to_html
from imgtrain.evaluate.markdown import to_markdown
from imgtrain.evaluate.metrics import classification_metrics


def top_confusions(confusion: np.ndarray, class_names: Sequence[str], most: int = 10) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: true -> predicted, count, and share of the true class."""
    cm = np.asarray(confusion, dtype=np.int64)
    rows = cm.sum(axis=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {"true": class_names[i], "predicted": class_names[j], "count": n, "share_of_class": round(n / rows[i], 4)}
        for n, i, j in cells[:most]
    ]


def build_report(
    totals: dict[str, Any],
    class_names: Sequence[str],
    skipped: Sequence[dict],
    top_k: int = 5,
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Everything the summed evaluation quantities of the test split say; ``extra`` (run
    context, misclassified images, calibration) is merged in."""
    confusion = np.asarray(totals["confusion"])
    n = float(totals["count"])
    metrics = classification_metrics(confusion, class_names)
    report: dict[str, Any] = {
        "class_names": list(class_names),
        "num_examples": int(n),
        "accuracy": metrics["accuracy"],
        "loss": float(totals["loss_sum"]) / n if n else float("nan"),
    }
    if reports_top_k(len(class_names), top_k):
        report[f"top{top_k}_accuracy"] = float(totals["topk_correct"]) / n if n else 0.0
    report.update(
        {
            "per_class": metrics["per_class"],
            "macro_avg": metrics["macro_avg"],
            "weighted_avg": metrics["weighted_avg"],
            "confusion_matrix": confusion.astype(int).tolist(),
            "top_confusions": top_confusions(confusion, class_names),
            "skipped_files": list(skipped),
        }
    )
    if extra:
        report.update(extra)
    report["headline"] = headline(report)  # what TensorBoard and MLflow log of the test split
    return report


def write_report(report: dict[str, Any], run_dir: Path) -> tuple[Path, Path, Path]:
    json_path, md_path, html_path = (run_dir / name for name in rundir.REPORTS)
    atomic.write_json(json_path, report)
    atomic.write_text(md_path, to_markdown(report, run_dir))
    atomic.write_text(html_path, to_html(report, run_dir))
    return json_path, md_path, html_path
