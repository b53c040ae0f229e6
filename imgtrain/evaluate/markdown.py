"""``report.md``: the report as Markdown tables, pictures linked beside it. Class names and
paths are user text: every cell is escaped (``md``)."""

from __future__ import annotations

import html as html_lib
from pathlib import Path
from typing import Any, Optional

from imgtrain.evaluate.sections import FIGURES, context_rows, headline_rows


def md(text: Any) -> str:
    """User text safe inside a Markdown table cell: HTML-escaped, pipes and backticks escaped,
    line breaks flattened."""
    escaped = html_lib.escape(str(text), quote=False).replace("|", "\\|").replace("`", "\\`")
    return " ".join(escaped.splitlines())


def to_markdown(report: dict[str, Any], run_dir: Optional[Path] = None) -> str:
    names = report["class_names"]
    lines = ["# imgtrain evaluation report", ""]
    lines += [f"Test split: {report['num_examples']} images, {len(names)} classes.", ""]
    context = context_rows(report)
    if context:
        lines += ["## Run", "", "| | |", "| --- | --- |", *[f"| {k} | {md(v)} |" for k, v in context], ""]
    lines += ["| metric | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in headline_rows(report)]]
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in names:
        m = report["per_class"][name]
        lines.append(f"| {md(name)} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    lines += _confusion_md(report)
    lines += _mistakes_md(report)
    for file, title in FIGURES.items():
        if run_dir is None or (Path(run_dir) / file).exists():
            lines += [f"![{title}]({file})", ""]
    lines += _skipped_md(report)
    return "\n".join(lines) + "\n"


def _confusion_md(report: dict[str, Any]) -> list[str]:
    names = report["class_names"]
    lines = ["", "## Top confusions", ""]
    if report.get("top_confusions"):
        lines += ["| true | predicted | count | share of the true class |", "| --- | --- | --- | --- |"]
        for c in report["top_confusions"]:
            lines.append(f"| {md(c['true'])} | {md(c['predicted'])} | {c['count']} | {c['share_of_class']:.1%} |")
    else:
        lines.append("None: every test image is classified correctly.")
    lines += ["", "## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
    lines.append("| true \\ predicted | " + " | ".join(md(n) for n in names) + " |")
    lines.append("| --- " * (len(names) + 1) + "|")
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"| **{md(name)}** | " + " | ".join(str(v) for v in row) + " |")
    return lines + [""]


def _mistakes_md(report: dict[str, Any]) -> list[str]:
    wrong = report.get("misclassified")
    if wrong is None:
        return []
    total = report.get("misclassified_total", len(wrong))
    lines = [f"## Misclassified images ({total})", ""]
    if not wrong:
        return lines + ["None.", ""]
    lines += ["Most confident first.", "", "| image | true | predicted | confidence |", "| --- | --- | --- | --- |"]
    for w in wrong[:50]:
        lines.append(f"| {md(w['path'])} | {md(w['true'])} | {md(w['predicted'])} | {w['confidence']:.3f} |")
    if total > 50:
        lines.append(f"| ... {total - 50} more in report.json | | | |")
    return lines + [""]


def _skipped_md(report: dict[str, Any]) -> list[str]:
    skipped = report.get("skipped_files") or []
    lines = [f"## Skipped files ({len(skipped)})", ""]
    if not skipped:
        return lines + ["None."]
    lines += [f"- {_code(s['path'])}: {md(s['reason'])}" for s in skipped[:200]]
    if len(skipped) > 200:
        lines.append(f"- ... and {len(skipped) - 200} more (see report.json)")
    return lines


def _code(text: str) -> str:
    """A path as inline code; Markdown cannot escape a backtick inside one, so such a path is
    written as escaped text instead."""
    text = " ".join(str(text).splitlines())
    return f"`{text}`" if "`" not in text else md(text)
