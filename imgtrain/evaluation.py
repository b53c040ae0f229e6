"""A model on a run's test split: summed metrics, then (chief only) the report and its plots.

``evaluate_prepared`` is the last stage of training; ``evaluate_run`` is the ``evaluate``
command's work on a finished run's exported model, with the run's data or other data of the
same classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import keras

from imgtrain import history, rundir
from imgtrain.config import Config
from imgtrain.data import source as data_source
from imgtrain.data.pipeline import Shard
from imgtrain.data.source import DataSource
from imgtrain.errors import UserError
from imgtrain.evaluate import plots, predictions
from imgtrain.evaluate.calibration import reliability
from imgtrain.evaluate.headline import headline
from imgtrain.evaluate.report import build_report, write_report
from imgtrain.predict import load_run
from imgtrain.train.distribution import Distribution, make_distribution
from imgtrain.train.eval_sums import evaluate_sums
from imgtrain.train.tensorboard import TensorBoardLog


def evaluate_prepared(
    model: keras.Model,
    prep: DataSource,
    cfg: Config,
    dist: Distribution,
    run_dir: Path,
    progress: bool = True,
    context: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Evaluate on the test split (every worker, summed) and, on the chief, look at each
    prediction, draw the figures and write report.json, report.md and report.html."""
    top_k = cfg.evaluate.top_k
    totals = evaluate_sums(
        model,
        dist,
        lambda: prep.eval_dataset(cfg.data, "test", cfg.train.batch_size, dist.shard, dist.local_replicas),
        len(prep.class_names),
        top_k,
        progress=progress and dist.is_chief,
        desc="testing",
    )
    if not dist.is_chief:
        return build_report(totals, prep.class_names, prep.skipped, top_k)
    found = predictions.collect(
        model, prep.eval_dataset(cfg.data, "test", cfg.train.batch_size, Shard(), 1), prep.example_keys("test")
    )
    calibration = reliability(found.confidence, found.correct)
    wrong = predictions.misclassified(found, prep.class_names)
    extra = {
        "context": context or {},
        "calibration": calibration,
        "misclassified_total": int((~found.correct).sum()),
        "misclassified": wrong,
    }
    report = build_report(totals, prep.class_names, prep.skipped, top_k, extra)
    _draw(report, found, prep.class_names, run_dir)
    write_report(report, run_dir)
    log_test_to_tensorboard(report, run_dir, history.epochs(run_dir))
    return report


def log_test_to_tensorboard(report: dict[str, Any], run_dir: Path, epochs: int) -> None:
    """The test metrics and confusion matrix in TensorBoard, at the last epoch's step."""
    metrics = headline(report)
    board = TensorBoardLog(run_dir / rundir.LOGS)
    try:
        board.test(max(0, epochs - 1), metrics, run_dir / rundir.CONFUSION_MATRIX)
    finally:
        board.close()


def _draw(report: dict[str, Any], found: predictions.Predictions, names: list[str], run_dir: Path) -> None:
    """The report's figures; a figure with nothing to show is removed, not left from a last run."""
    plots.confusion_matrix_png(report["confusion_matrix"], names, run_dir / rundir.CONFUSION_MATRIX)
    per_class = [report["per_class"][n] for n in names]
    plots.per_class_accuracy_png(
        names, [m["recall"] for m in per_class], [m["support"] for m in per_class], run_dir / rundir.PER_CLASS_ACCURACY
    )
    plots.reliability_png(report["calibration"], run_dir / rundir.CALIBRATION)
    gallery = run_dir / rundir.MISCLASSIFIED
    if not plots.gallery_png(found.worst, found.keys, found.labels, found.predicted, names, gallery):
        gallery.unlink(missing_ok=True)


def evaluate_run(run_dir: Path, data_path: Optional[str] = None, progress: bool = True) -> dict[str, Any]:
    """``imgtrain evaluate``: the exported (best) model on the test split, report rewritten."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG).exists():
        raise UserError(
            f"{run_dir} is not an imgtrain run (no {rundir.CONFIG}); pass --run RUN_DIR from 'imgtrain train'"
        )
    model, class_names, cfg = load_run(run_dir)
    if data_path:
        cfg.data.path = data_path
    keras.mixed_precision.set_global_policy("float32")
    prep = data_source.get(cfg, run_dir, progress)
    if prep.class_names != class_names:
        raise UserError(
            f"the data at {cfg.data.path} has classes {prep.class_names}, but the run was trained on "
            f"{class_names}; evaluate on data with the same classes"
        )
    if not prep.has("test"):
        raise UserError(f"the data at {cfg.data.path} has no test split; add test images or set data.split.test")
    context = _context_from_run(rundir.read_summary(run_dir), cfg, prep)
    return evaluate_prepared(model, prep, cfg, make_distribution("single"), run_dir, progress, context)


def _context_from_run(summary: dict[str, Any], cfg: Config, prep: DataSource) -> dict[str, Any]:
    """The report's run section for a re-evaluation: the training run from its run.json, the
    data from what was evaluated now."""
    stopped = None
    if summary:
        stopped = "early stopping" if summary.get("stopped_early") else f"reached train.epochs ({cfg.train.epochs})"
    return {
        "data": cfg.data.path or f"tfds:{cfg.data.tfds.name}",
        "splits": {s: prep.count(s) for s in ("train", "val", "test")},
        "model": cfg.model.name,
        "best_epoch": summary.get("best_epoch"),
        "best_chosen": summary.get("best_chosen"),
        "stopped": stopped,
        "strategy": summary.get("strategy"),
        "world_size": summary.get("world_size"),
        "wall_seconds": summary.get("total_seconds"),
        "evaluated": "again, by imgtrain evaluate",
    }
