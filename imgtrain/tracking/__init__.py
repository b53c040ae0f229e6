"""MLflow tracking of a training run (``tracking.mlflow``), from the chief only.

Three parts, each one job: ``record`` says what is logged, read from the run directory
alone (no MLflow); ``ledger`` keeps which MLflow run the directory logs to and which pieces
are in it (``RUN_DIR/mlflow.json``); ``sender`` talks to MLflow, and ``tracker`` runs the
sender off the training thread. The model is ``export.mlflow_model``'s package, the same
as ``export --format mlflow``. Tracking never stops a run, and never holds it up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from imgtrain.config import TrackingConfig
from imgtrain.export.mlflow_model import require
from imgtrain.tracking import sender
from imgtrain.tracking.ledger import TrackState
from imgtrain.tracking.record import RunFacts
from imgtrain.tracking.sender import HTTP_DEFAULTS, Sender, resolve_uri
from imgtrain.tracking.tracker import Tracker

__all__ = ["HTTP_DEFAULTS", "RunFacts", "TrackState", "Tracker", "open_tracker", "resolve_uri"]


def open_tracker(cfg: TrackingConfig, run_dir: Path, chief: bool, log: Callable[[str], None]) -> Optional[Tracker]:
    """The chief's tracker for ``tracking.mlflow`` (None when off, and on other workers). Every
    worker refuses, before any training, when MLflow is not installed: the user asked for it.
    ``Tracker.restore`` puts MLflow's environment and loggers back as they were."""
    if not cfg.mlflow:
        return None
    require("tracking.mlflow", "drop --mlflow / tracking.mlflow")
    if not chief:
        return None
    restore = sender.configure()
    return Tracker(Sender(run_dir, resolve_uri(cfg.uri, run_dir), cfg.experiment), log, restore)
