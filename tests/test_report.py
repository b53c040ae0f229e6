"""The report's content: metrics against scikit-learn, top confusions, calibration, escaping,
and report.html opened in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgtrain.evaluate import plots
from imgtrain.evaluate.calibration import reliability
from imgtrain.evaluate.html import to_html
from imgtrain.evaluate.markdown import to_markdown
from imgtrain.evaluate.metrics import classification_metrics
from imgtrain.evaluate.predictions import Predictions, misclassified
from imgtrain.evaluate.report import build_report, top_confusions, write_report
from imgtrain.evaluate.sections import FIGURES


def random_predictions(k: int = 5, n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    pred[pred == k - 1] = 0  # a class never predicted: precision's zero-division case
    return y, pred


def test_metrics_from_the_confusion_matrix_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y, pred = random_predictions()
    names = [f"c{i}" for i in range(5)]
    cm = confusion_matrix(y, pred, labels=range(5))
    ours = classification_metrics(cm, names)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, pred))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(5), zero_division=0)
    for i, name in enumerate(names):
        got = ours["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=range(5), average=avg, zero_division=0)
        got = ours[f"{avg}_avg"]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))


def test_top_confusions_are_the_largest_off_diagonal_cells():
    cm = np.array([[5, 3, 0], [1, 6, 0], [4, 0, 2]])
    top = top_confusions(cm, ["a", "b", "c"], most=2)
    assert top == [
        {"true": "c", "predicted": "a", "count": 4, "share_of_class": round(4 / 6, 4)},
        {"true": "a", "predicted": "b", "count": 3, "share_of_class": 0.375},
    ]
    assert top_confusions(np.eye(3, dtype=int) * 4, ["a", "b", "c"]) == []


def test_expected_calibration_error_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55, 0.55, 0.15])
    correct = np.array([True, False, True, True, False, False])
    got = reliability(conf, correct, bins=10)
    # bins: [0.9, 1.0]: acc 0.5 conf 0.95; [0.5, 0.6): acc 2/3 conf 0.55; [0.1, 0.2): acc 0 conf 0.15
    expected = 2 / 6 * abs(0.5 - 0.95) + 3 / 6 * abs(2 / 3 - 0.55) + 1 / 6 * abs(0 - 0.15)
    assert got["ece"] == pytest.approx(expected)
    assert sum(b["count"] for b in got["bins"]) == 6
    assert reliability(np.array([1.0]), np.array([True]), bins=10)["bins"][-1]["count"] == 1  # 1.0 is in the last bin
    assert reliability(np.ones(4), np.ones(4, bool))["ece"] == pytest.approx(0.0)


def test_misclassified_most_confident_first_and_capped():
    p = Predictions(
        ["a.png", "b.png", "c.png", "d.png"],
        np.array([0, 1, 1, 0]),
        np.array([1, 1, 0, 1]),
        np.array([0.6, 0.9, 0.8, 0.7]),
    )
    wrong = misclassified(p, ["cat", "dog"])
    assert [w["path"] for w in wrong] == ["c.png", "d.png", "a.png"]
    assert wrong[0] == {"path": "c.png", "true": "dog", "predicted": "cat", "confidence": 0.8}
    assert len(misclassified(p, ["cat", "dog"], cap=1)) == 1


def awkward_report(tmp_path: Path) -> dict:
    names = ["a|b", "<script>x</script>", "c`d"]
    cm = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 4]], float)
    totals = {"confusion": cm, "count": cm.sum(), "loss_sum": 4.0, "topk_correct": cm.sum()}
    extra = {
        "context": {"data": "photos|2024", "splits": {"train": 90, "val": 10, "test": 13}, "model": "cnn"},
        "calibration": reliability(np.linspace(0.3, 1.0, 13), np.arange(13) % 3 > 0),
        "misclassified_total": 4,
        "misclassified": [{"path": "x|<y>.png", "true": names[1], "predicted": names[2], "confidence": 0.9}],
    }
    return build_report(totals, names, [{"path": "bad`name.png", "reason": "cannot <decode>"}], 5, extra)


def test_labels_are_escaped_in_markdown_and_html(tmp_path):
    report = awkward_report(tmp_path)
    text = to_markdown(report)
    for line in text.splitlines():
        if line.startswith("| true \\ predicted"):
            assert line.count("|") - line.count("\\|") == 5  # 4 columns: pipes in names are escaped
    assert "a\\|b" in text and "&lt;script&gt;" in text and "<script>" not in text
    page = to_html(report)
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "x|&lt;y&gt;.png" in page and "cannot &lt;decode&gt;" in page


def test_html_is_self_contained(tmp_path):
    report = awkward_report(tmp_path)
    for file in FIGURES:
        Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / file)
    write_report(report, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from anywhere
    for section in ("run", "metrics", "per-class", "top-confusions", "confusion", "misclassified", "skipped"):
        assert f'id="{section}"' in page


def test_figures_are_drawn(tmp_path):
    report = awkward_report(tmp_path)
    names = report["class_names"]
    plots.reliability_png(report["calibration"], tmp_path / "cal.png")
    plots.per_class_accuracy_png(names, [0.5, 0.2, 1.0], [4, 4, 5], tmp_path / "acc.png")
    worst = [(0.9, 1, np.zeros((8, 8, 3), np.uint8)), (0.7, 0, np.full((8, 8, 3), 200, np.uint8))]
    assert plots.gallery_png(worst, ["p0", "p1"], [0, 1], [1, 2], names, tmp_path / "gal.png")
    assert not plots.gallery_png([], [], [], [], names, tmp_path / "none.png")
    for f in ("cal.png", "acc.png", "gal.png"):
        assert Image.open(tmp_path / f).size[0] > 200


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_report_html_in_a_headless_browser(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    report = awkward_report(tmp_path)
    plots.confusion_matrix_png(report["confusion_matrix"], report["class_names"], run / "confusion_matrix.png")
    plots.reliability_png(report["calibration"], run / "calibration.png")
    write_report(report, run)
    url = (run / "report.html").as_uri()
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'ud1'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-loaded="2/2"' in dom.stdout  # every inline picture decoded and rendered
    for section in ("run", "metrics", "per-class", "top-confusions", "confusion", "misclassified", "skipped"):
        assert f'id="{section}"' in dom.stdout
    assert "&lt;script&gt;x&lt;/script&gt;" in dom.stdout  # the label stayed text
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'ud2'}",
            "--window-size=1200,2000",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 10  # text, tables and pictures drawn, not a blank page
    assert (pixels < 100).mean() > 0.005  # some dark ink: the headings and table text
