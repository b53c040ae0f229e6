"""``report.html``: the whole report in one file that opens anywhere.

Every picture is inlined as a ``data:`` URI and the style sheet is in the page, so the file
needs no network and no file beside it: it can be mailed or attached to a ticket as it is.
Every piece of user text (class names, paths, reasons) goes through ``html.escape``. A
few lines of script count, once the page has loaded, the pictures that rendered, into
``data-images-loaded`` on the root element: a browser test reads it.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any, Optional, Sequence

from imgtrain.evaluate.sections import FIGURES, context_rows, headline_rows

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
section { margin-bottom: 2em; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.documentElement.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header) if any(header) else ""
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{escape(str(v))}</td>' if i >= numeric_from else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>'


def _figure(run_dir: Path, file: str, title: str) -> str:
    path = run_dir / file
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return _section(
        file.removesuffix(".png").replace("_", "-"),
        title,
        f'<img alt="{escape(title)}" src="data:image/png;base64,{data}">',
    )


def _sections(report: dict[str, Any]) -> list[str]:
    names = report["class_names"]
    out = []
    context = context_rows(report)
    if context:
        out.append(_section("run", "Run", _table(["", ""], context, numeric_from=2)))
    out.append(_section("metrics", "Metrics", _table(["metric", "value"], headline_rows(report))))
    rows = [
        (n, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"])
        for n, m in ((n, report["per_class"][n]) for n in names)
    ]
    out.append(_section("per-class", "Per class", _table(["class", "precision", "recall", "F1", "support"], rows)))
    confusions = [
        (c["true"], c["predicted"], c["count"], f"{c['share_of_class']:.1%}") for c in report["top_confusions"]
    ]
    out.append(
        _section(
            "top-confusions",
            "Top confusions",
            _table(["true", "predicted", "count", "share of the true class"], confusions, numeric_from=2)
            if confusions
            else "<p>None: every test image is classified correctly.</p>",
        )
    )
    matrix = [(n, *row) for n, row in zip(names, report["confusion_matrix"])]
    out.append(_section("confusion", "Confusion matrix (rows true, columns predicted)", _table(["", *names], matrix)))
    if report.get("misclassified") is not None:
        wrong = [(w["path"], w["true"], w["predicted"], f"{w['confidence']:.3f}") for w in report["misclassified"]]
        total = report.get("misclassified_total", len(wrong))
        body = _table(["image", "true", "predicted", "confidence"], wrong, numeric_from=3) if wrong else "<p>None.</p>"
        if total > len(wrong):
            body += f"<p>{total - len(wrong)} more, less confident, are not listed.</p>"
        out.append(_section("misclassified", f"Misclassified images ({total}), most confident first", body))
    skipped = [(s["path"], s["reason"]) for s in report.get("skipped_files") or []]
    out.append(
        _section(
            "skipped",
            f"Skipped files ({len(skipped)})",
            _table(["file", "reason"], skipped, numeric_from=2) if skipped else "<p>None.</p>",
        )
    )
    return out


def to_html(report: dict[str, Any], run_dir: Optional[Path] = None) -> str:
    figures = [_figure(Path(run_dir), f, t) for f, t in FIGURES.items()] if run_dir else []
    summary = f"Test split: {report['num_examples']} images, {len(report['class_names'])} classes."
    body = "\n".join([f"<h1>imgtrain evaluation report</h1><p>{escape(summary)}</p>", *_sections(report), *figures])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>imgtrain report</title><style>{STYLE}</style><script>{SCRIPT}</script></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
