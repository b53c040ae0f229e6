"""The evaluation report: ``report.json`` for programs, ``report.md`` for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imgtrain import atomic
from imgtrain.evaluate.metrics import classification_metrics, reports_top_k


def build_report(
    totals: dict[str, Any],
    class_names: Sequence[str],
    skipped: Sequence[dict],
    top_k: int = 5,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the report says, from the summed evaluation quantities of the test split."""
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
            "skipped_files": list(skipped),
        }
    )
    if extra:
        report.update(extra)
    return report


def write_report(report: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
    json_path, md_path = run_dir / "report.json", run_dir / "report.md"
    atomic.write_json(json_path, report)
    atomic.write_text(md_path, to_markdown(report))
    return json_path, md_path


def to_markdown(report: dict[str, Any]) -> str:
    names = report["class_names"]
    lines = ["# imgtrain evaluation report", ""]
    lines.append(f"Test split: {report['num_examples']} images, {len(names)} classes.")
    lines.append("")
    lines.append("| metric | value |")
    lines.append("| --- | --- |")
    lines.append(f"| accuracy | {report['accuracy']:.4f} |")
    for key in sorted(k for k in report if k.startswith("top") and k.endswith("_accuracy")):
        lines.append(f"| {key.replace('_', ' ')} | {report[key]:.4f} |")
    lines.append(f"| loss | {report['loss']:.4f} |")
    for avg in ("macro_avg", "weighted_avg"):
        a = report[avg]
        lines.append(f"| {avg.replace('_', ' ')} F1 | {a['f1']:.4f} |")
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in names:
        m = report["per_class"][name]
        lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    lines += ["", "## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
    lines.append("| true \\ predicted | " + " | ".join(names) + " |")
    lines.append("| --- " * (len(names) + 1) + "|")
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![training curves](curves.png)", ""]
    skipped = report.get("skipped_files") or []
    lines.append(f"## Skipped files ({len(skipped)})")
    lines.append("")
    if skipped:
        for s in skipped[:200]:
            lines.append(f"- `{s['path']}`: {s['reason']}")
        if len(skipped) > 200:
            lines.append(f"- ... and {len(skipped) - 200} more (see report.json)")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"
