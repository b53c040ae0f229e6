import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from imgtrain import history
from imgtrain.evaluate import plots
from imgtrain.evaluate.metrics import classification_metrics
from imgtrain.evaluate.report import build_report, write_report


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    pred[pred == 4] = 3  # class 4 is never predicted: precision 0 by convention
    cm = confusion_matrix(y, pred, labels=range(5))
    m = classification_metrics(cm, list("abcde"))
    for avg in (None, "macro", "weighted"):
        p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(5), average=avg, zero_division=0)
        if avg is None:
            for i, name in enumerate("abcde"):
                got = m["per_class"][name]
                assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
                    (p[i], r[i], f[i], s[i])
                )
        else:
            got = m[f"{avg}_avg"]
            assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))
    assert m["accuracy"] == pytest.approx((y == pred).mean())


def test_report_files(tmp_path: Path):
    cm = np.array(
        [
            [5, 1, 0, 0, 0, 0],
            [0, 4, 0, 0, 0, 0],
            [0, 0, 3, 0, 0, 1],
            [0, 0, 0, 2, 0, 0],
            [0, 0, 0, 0, 2, 0],
            [0, 0, 0, 0, 0, 2],
        ],
        float,
    )
    totals = {"confusion": cm, "count": cm.sum(), "loss_sum": 3.0, "correct": np.trace(cm), "topk_correct": 20.0}
    names = [f"c{i}" for i in range(6)]
    report = build_report(totals, names, [{"path": "x/bad.png", "reason": "cannot decode"}])
    assert report["top5_accuracy"] == pytest.approx(20 / 20)
    assert report["accuracy"] == pytest.approx(18 / 20)
    assert report["loss"] == pytest.approx(0.15)
    json_path, md_path, _html_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["confusion_matrix"][0] == [5, 1, 0, 0, 0, 0]
    md = md_path.read_text()
    assert "| c0 | 0.833 | 0.833 |" not in md  # precision of c0 is 1.0
    assert "| c0 | 1.000 | 0.833 | 0.909 | 6 |" in md
    assert "`x/bad.png`: cannot decode" in md
    plots.confusion_matrix_png(cm, names, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "history.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy\n1,1.0,0.5,1.1,0.4\n2,0.5,0.8,0.6,0.7\n"
    )
    assert plots.curves_png(history.read(tmp_path), tmp_path / "curves.png")
    assert not plots.curves_png(history.read(tmp_path / "missing"), tmp_path / "none.png")


def test_curves_plot_like_with_like(tmp_path, monkeypatch):
    """The training curve is plain cross-entropy; the smoothed objective is drawn apart, named."""
    (tmp_path / "history.csv").write_text(
        "epoch,loss,cross_entropy,accuracy,val_loss,val_accuracy,learning_rate\n"
        "1,0.90,0.50,0.8,0.45,0.82,0.001\n2,0.80,0.30,0.9,0.28,0.91,0.0005\n3,0.78,0.25,0.92,0.27,0.92,0.0001\n"
    )
    drawn = {}
    real_save = plots._save

    def capture(fig, path):
        for ax in fig.axes:
            drawn[ax.get_title()] = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        real_save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    assert plots.curves_png(
        history.read(tmp_path), tmp_path / "c.png", best_epoch=2, objective_differs="label smoothing 0.1"
    )
    loss = drawn["loss"]
    assert loss["train (running, during the epoch)"] == [0.5, 0.3, 0.25]
    assert loss["train objective (label smoothing 0.1)"] == [0.9, 0.8, 0.78]
    assert any(k.startswith("best epoch 2") for k in loss)
    assert drawn["learning rate"]["_child0"] == [0.001, 0.0005, 0.0001]


def test_top_k_is_reported_the_same_way_in_validation_and_the_report():
    from imgtrain.evaluate.report import build_report
    from imgtrain.train.eval_sums import summarize

    for classes, k, shown in ((5, 5, False), (6, 5, True), (4, 3, True), (3, 3, False)):
        totals = {
            "loss_sum": 1.0,
            "loss_sq_sum": 1.0,
            "correct": 1.0,
            "topk_correct": 2.0,
            "count": 2.0,
            "confusion": np.eye(classes) * 0,
        }
        totals["confusion"][0, 0] = 2
        names = [f"c{i}" for i in range(classes)]
        assert (f"val_top{k}_accuracy" in summarize(totals, top_k=k)) is shown
        assert (f"top{k}_accuracy" in build_report(totals, names, [], k)) is shown
