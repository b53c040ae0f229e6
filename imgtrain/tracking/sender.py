"""The MLflow side of tracking: where the store is, MLflow's process-wide settings while a run
is tracked, and ``Sender``, which puts ``record``'s pieces into one MLflow run.

``Sender``'s calls are synchronous and raise on any failure; ``tracker.Tracker`` runs them
off the training thread and turns failures into warnings. Everything goes through one
``MlflowClient``: MLflow's global tracking URI and experiment are never set, so a notebook
that calls ``train_run`` finds them as it left them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from imgtrain import rundir
from imgtrain.config import absolute_tracking_uri, check_tracking_uri
from imgtrain.errors import UserError
from imgtrain.tracking import record
from imgtrain.tracking.ledger import TrackState

DEFAULT_EXPERIMENT = "imgtrain"
# A server that is down should cost seconds, not MLflow's default of 7 retries over minutes;
# a user's own setting wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # imgtrain's own line says where the run is
}
# Their INFO lines (store migrations) and retry warnings (a store it cannot open: seven and more
# four-line blocks) are not the user's business: a failure reaches them as imgtrain's own line.
QUIET_LOGGERS = {"mlflow": logging.ERROR, "alembic": logging.WARNING, "urllib3": logging.ERROR}
BATCH_METRICS, BATCH_PARAMS = 1000, 100  # MLflow's limits per log_batch request


def configure() -> Callable[[], None]:
    """Set ``HTTP_DEFAULTS`` (where unset) and quiet ``QUIET_LOGGERS`` for a tracked run; return
    what puts both back as they were."""
    added = [key for key in HTTP_DEFAULTS if key not in os.environ]
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for key in added:
        os.environ[key] = HTTP_DEFAULTS[key]
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)

    def restore() -> None:
        for key in added:
            if os.environ.get(key) == HTTP_DEFAULTS[key]:
                del os.environ[key]
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    return restore


def resolve_uri(uri: Optional[str], run_dir: Path) -> str:
    """tracking.uri, else MLFLOW_TRACKING_URI, else the store this run directory already logs
    to, else MLflow's own default store in the working directory (what ``mlflow ui`` opens
    there); local stores made absolute, so a resume from another folder finds them."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and from_env:
        check_tracking_uri(from_env, "MLFLOW_TRACKING_URI")
    chosen = uri or from_env or TrackState.read(run_dir).uri
    if not chosen:
        import mlflow

        chosen = mlflow.get_tracking_uri()
    return absolute_tracking_uri(chosen, Path.cwd()) or chosen


class Sender:
    """Logs one run directory to one MLflow run; each call completes or raises."""

    def __init__(self, run_dir: Path, uri: str, experiment: Optional[str]) -> None:
        self.run_dir, self.uri = Path(run_dir), uri
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.state = TrackState.read(self.run_dir)
        self.client: Any = None
        self.connected = False
        self.run_params: dict[str, str] = {}
        self.params_logged = False
        self.epochs_logged = 0

    def connect(self, tags: dict[str, str]) -> None:
        """The MLflow run ``mlflow.json`` names, found again (and marked running), or a new one."""
        if self.connected:
            return
        from mlflow import MlflowClient

        self.client = client = MlflowClient(tracking_uri=self.uri)
        run = self._existing_run() if self.state.uri == self.uri else None
        if run is None:
            self.state = TrackState(uri=self.uri, experiment_id=self._experiment_id())
            run = client.create_run(self.state.experiment_id, run_name=self.run_dir.name, tags=tags)
            self.state.run_id = run.info.run_id
            self.state.write(self.run_dir)
        elif run.info.status != "RUNNING":
            client.update_run(self.state.run_id, status="RUNNING")
        self.run_params = dict(run.data.params)
        logged = client.get_metric_history(self.state.run_id, "loss")
        self.epochs_logged = max((m.step for m in logged), default=0)
        self.params_logged = False
        self.connected = True

    def _existing_run(self) -> Any:
        """The MLflow run mlflow.json names, if this store still has it (not deleted)."""
        if not self.state.run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(self.state.run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None and found.lifecycle_stage != "deleted":
            return found.experiment_id
        if found is not None:
            raise UserError(
                f"the MLflow experiment '{self.experiment}' is deleted; restore it or set tracking.experiment"
            )
        return self.client.create_experiment(self.experiment)

    def log_params(self, facts: record.RunFacts) -> None:
        """The config as params (those the MLflow run lacks) and the run's tags."""
        if self.params_logged:
            return
        from mlflow.entities import Param, RunTag

        missing, extra_tags = record.param_changes(facts.params, self.run_params)
        params = [Param(k, v) for k, v in missing.items()]
        tags = [RunTag(k, v) for k, v in {**facts.tags, **extra_tags}.items()]
        for i in range(0, max(len(params), 1), BATCH_PARAMS):
            self.client.log_batch(self.state.run_id, params=params[i : i + BATCH_PARAMS], tags=tags if i == 0 else [])
        self.run_params.update(missing)
        self.params_logged = True

    def log_epochs(self) -> None:
        """history.csv's rows past the last epoch the MLflow run has, the epoch as the step."""
        from mlflow.entities import Metric

        metrics, last = record.epoch_metrics(self.run_dir, self.epochs_logged)
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value, step in metrics]
        for i in range(0, len(batch), BATCH_METRICS):
            self.client.log_batch(self.state.run_id, metrics=batch[i : i + BATCH_METRICS])
        self.epochs_logged = last

    def log_final(self, image_size: list[int]) -> None:
        """The test metrics, the report and the model, each once, then the run marked finished."""
        steps = (
            ("test metrics", self._log_test_metrics),
            ("report", self._log_records),
            ("model", lambda: self._log_model(image_size)),
            ("finished", lambda: self.client.set_terminated(self.state.run_id, "FINISHED")),
        )
        for piece, do in steps:
            if piece not in self.state.done:
                do()
                self.state.done.append(piece)
                self.state.write(self.run_dir)

    def forget_final(self) -> None:
        """More epochs were trained: the end (test metrics, report, model) is new too."""
        if self.state.done:
            self.state.done = []
            self.state.write(self.run_dir)

    def terminate(self, status: str) -> None:
        """The MLflow run ends as ``status`` (KILLED, FAILED)."""
        if self.connected and self.state.run_id:
            self.client.set_terminated(self.state.run_id, status)

    def _log_test_metrics(self) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in record.test_metrics(self.run_dir).items()]
        if metrics:
            self.client.log_batch(self.state.run_id, metrics=metrics)

    def _log_records(self) -> None:
        for path in record.artifacts(self.run_dir):
            self.client.log_artifact(self.state.run_id, str(path))

    def _log_model(self, image_size: list[int]) -> None:
        """The run's model, packaged as ``export --format mlflow`` packages it. More epochs
        replace model.keras: the MLflow run keeps one model, the one its files hold."""
        import json

        import keras

        from imgtrain.export import mlflow_model

        path = self.run_dir / rundir.MODEL
        if not path.is_file():
            return
        model = keras.saving.load_model(str(path))
        names = json.loads((self.run_dir / rundir.CLASS_NAMES).read_text())
        uri = mlflow_model.log(self.client, self.state.experiment_id, self.state.run_id, model, names, image_size)
        replaced, self.state.model_uri = self.state.model_uri, uri
        if replaced.startswith("models:/") and replaced != uri:
            try:
                self.client.delete_logged_model(replaced[len("models:/") :])
            except Exception:  # noqa: BLE001 - the new model is logged; an old one left is harmless
                pass
