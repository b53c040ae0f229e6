"""A model on a run's test split: summed metrics, then (chief only) the report and its plots.

``evaluate_prepared`` is the last stage of training; ``evaluate_run`` is the ``evaluate``
command's work on a finished run's exported model, with the run's data or other data of the
same classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import keras

from imgtrain.config import Config
from imgtrain.data import source as data_source
from imgtrain.data.source import DataSource
from imgtrain.errors import UserError
from imgtrain.evaluate import plots
from imgtrain.evaluate.report import build_report, write_report
from imgtrain.predict import load_run
from imgtrain.train.distribution import Distribution, make_distribution
from imgtrain.train.loop import evaluate_sums


def evaluate_prepared(
    model: keras.Model, prep: DataSource, cfg: Config, dist: Distribution, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Evaluate on the test split and (chief) write report.json, report.md and the plots."""
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
    report = build_report(totals, prep.class_names, prep.skipped, top_k)
    if dist.is_chief:
        write_report(report, run_dir)
        plots.confusion_matrix_png(report["confusion_matrix"], prep.class_names, run_dir / "confusion_matrix.png")
    return report


def evaluate_run(run_dir: Path, data_path: Optional[str] = None, progress: bool = True) -> dict[str, Any]:
    """``imgtrain evaluate``: the exported (best) model on the test split, report rewritten."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not an imgtrain run (no config.yaml); pass --run RUN_DIR from 'imgtrain train'")
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
    return evaluate_prepared(model, prep, cfg, make_distribution("single"), run_dir, progress=progress)
