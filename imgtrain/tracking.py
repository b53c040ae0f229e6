"""MLflow tracking of a training run (``tracking.mlflow``), from the chief only.

Everything logged is read from what the run has already written to its own directory:
params from the resolved config, each epoch's metrics from ``history.csv`` (the epoch as
the step), the test metrics from ``report.json``, the report and plots as artifacts, and
``model.keras`` as an MLflow Keras model with its signature (probabilities out, so that
``mlflow.pyfunc.load_model`` predicts). So a piece can be logged whenever the server takes
it, and never twice: the MLflow run id and the pieces already logged live in
``RUN_DIR/mlflow.json`` (``rundir.TRACKING``). A resumed run continues the same MLflow run; a finished one adds
nothing; a finished one whose last pieces did not reach the server logs them when its
command runs again.

Tracking never stops a run. A failure is one warning line; later attempts follow (at most
every ``RETRY_SECONDS`` during training, and once more at the end), and the end says what
was not logged. MLflow itself is imported only when tracking is on (``imgtrain[mlflow]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from imgtrain import atomic, history, rundir
from imgtrain.config import TrackingConfig, absolute_tracking_uri
from imgtrain.errors import UserError
from imgtrain.evaluate.headline import headline

DEFAULT_EXPERIMENT = "imgtrain"
RETRY_SECONDS = 300.0
# What of the run directory goes up as the run's artifacts, once the run is finished.
ARTIFACTS = rundir.RECORDS
# A server that is down should cost seconds, not MLflow's default of 7 retries over minutes;
# a user's own setting wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # imgtrain's own line says where the run is
}
# MLflow's limits per log_batch request, and on one param's value.
BATCH_METRICS, BATCH_PARAMS, MAX_PARAM_CHARS = 1000, 100, 6000
FINAL_PIECES = ("test metrics", "report", "model", "finished")


@dataclass
class TrackState:
    """``RUN_DIR/mlflow.json`` (``rundir.TRACKING``): which MLflow run this run directory logs to, and what is in it."""

    uri: str = ""
    experiment_id: str = ""
    run_id: str = ""
    done: list[str] = field(default_factory=list)  # of FINAL_PIECES
    model_uri: str = ""

    @classmethod
    def read(cls, run_dir: Path) -> "TrackState":
        try:
            raw = json.loads((run_dir / rundir.TRACKING).read_text())
            return cls(**{k: raw[k] for k in asdict(cls()) if k in raw})
        except (OSError, ValueError, TypeError):
            return cls()

    def write(self, run_dir: Path) -> None:
        atomic.write_json(run_dir / rundir.TRACKING, asdict(self))


@dataclass
class RunFacts:
    """What the tracker is told about the run: its config as params, and its tags."""

    params: dict[str, Any]
    tags: dict[str, str]
    image_size: list[int]


def open_tracker(
    cfg: TrackingConfig, run_dir: Path, chief: bool, log: Callable[[str], None]
) -> Optional["MlflowTracker"]:
    """The chief's tracker for ``tracking.mlflow`` (None when off, and on other workers). Every
    worker refuses, before any training, when MLflow is not installed: the user asked for it."""
    if not cfg.mlflow:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(
            "tracking.mlflow needs MLflow, which is not installed; pip install 'imgtrain[mlflow]', "
            "or drop --mlflow / tracking.mlflow"
        ) from None
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Their INFO lines (store migrations) and retry notices are not the user's business: a failure
    # reaches them as imgtrain's own warning line.
    for name, level in (("mlflow", logging.WARNING), ("alembic", logging.WARNING), ("urllib3", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    if not chief:
        return None
    return MlflowTracker(run_dir, resolve_uri(cfg.uri, run_dir), cfg.experiment, log)


def resolve_uri(uri: Optional[str], run_dir: Path) -> str:
    """tracking.uri, else MLFLOW_TRACKING_URI, else the store this run directory already logs
    to, else MLflow's own default store in the working directory (what ``mlflow ui`` opens
    there); local stores made absolute, so a resume from another folder finds them."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or TrackState.read(run_dir).uri
    if not chosen:
        import mlflow

        chosen = mlflow.get_tracking_uri()
    return absolute_tracking_uri(chosen, Path.cwd()) or chosen


class MlflowTracker:
    """Logs one run directory to one MLflow run; also a loop listener (``on_epoch_end``)."""

    def __init__(self, run_dir: Path, uri: str, experiment: Optional[str], log: Callable[[str], None]) -> None:
        self.run_dir, self.uri, self.log = Path(run_dir), uri, log
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.state = TrackState.read(self.run_dir)
        self.facts: Optional[RunFacts] = None
        self.client: Any = None
        self.connected = False
        self.run_params: dict[str, str] = {}
        self.params_logged = False
        self.epochs_logged = 0
        self.retry_at = 0.0
        self.warned = False
        self.trained = False  # an epoch was trained in this process

    # -- what run.py calls --------------------------------------------------------------
    def start(self, facts: RunFacts) -> None:
        """Before training: the MLflow run (found again or created), its params and tags, and the
        epochs a crash may have left unlogged. Nothing at all for a run already fully logged."""
        self.facts = facts
        if self._all_done():
            return
        if self._attempt(final=False):
            self.log(f"tracking: MLflow run {self.state.run_id} in experiment '{self.experiment}'; {self._where()}")

    def finish(self) -> None:
        """After the run's files are complete: the rest, then one line on where it all is (or on
        what could not be logged)."""
        if self._all_done():
            self.log(f"tracking: already logged to MLflow run {self.state.run_id}; {self._where()}")
            return
        self._attempt(final=True)
        pending = self._pending()
        if pending:
            self.log(
                f"warning: not logged to MLflow at {self.uri}: {', '.join(pending)}; the run itself is complete "
                f"in {self.run_dir}; run the same command again to log the rest"
            )
        else:
            model = f", model {self.state.model_uri}" if self.state.model_uri else ""
            self.log(f"tracking: logged to MLflow run {self.state.run_id}{model}; {self._where()}")

    def end(self, status: str) -> None:
        """A run leaving early (KILLED: stopped by a signal; FAILED: an error) says so in MLflow.
        One quick attempt: a signal's grace period is short."""
        if self.connected and self.state.run_id:
            try:
                self.client.set_terminated(self.state.run_id, status)
            except Exception:  # noqa: BLE001 - tracking never changes how a run ends
                pass

    # -- the loop's listener interface -------------------------------------------------------
    def on_train_begin(self, hparams: dict[str, Any], sample: Optional[np.ndarray]) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float], lr: float, img_s: float, improved: bool) -> None:
        if not self.trained:
            # A finished run given more epochs: its end (test metrics, report, model) is new too.
            self.trained = True
            if self.state.done:
                self.state.done = []
                self.state.write(self.run_dir)
        if time.monotonic() >= self.retry_at:
            self._attempt(final=False)

    def close(self) -> None:
        pass

    # -- the pieces ------------------------------------------------------------------------
    def _attempt(self, final: bool) -> bool:
        """Log what is pending; on failure warn (once) and wait before the next try."""
        try:
            self._connect()
            self._log_params()
            self._log_epochs()
            if final:
                self._log_final()
            self.retry_at = 0.0
            return True
        except Exception as exc:  # noqa: BLE001 - any failure of tracking is a warning, never a crash
            self.connected = False
            self.retry_at = time.monotonic() + RETRY_SECONDS
            if not self.warned:
                self.warned = True
                self.log(
                    f"warning: MLflow tracking at {self.uri} failed ({_reason(exc)}); training goes on, "
                    "and imgtrain tries again later"
                )
            return False

    def _connect(self) -> None:
        if self.connected:
            return
        from mlflow import MlflowClient

        self.client = client = MlflowClient(tracking_uri=self.uri)
        run = self._existing_run() if self.state.uri == self.uri else None
        if run is None:
            self.state = TrackState(uri=self.uri, experiment_id=self._experiment_id())
            run = client.create_run(self.state.experiment_id, run_name=self.run_dir.name, tags=self._tags())
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

    def _tags(self) -> dict[str, str]:
        return dict(self.facts.tags) if self.facts else {}

    def _log_params(self) -> None:
        """The config as params: those the MLflow run lacks. A resume may change a few keys
        (train.epochs, ...); MLflow keeps a param's first value, so those go in one tag."""
        if self.params_logged or self.facts is None:
            return
        from mlflow.entities import Param, RunTag

        params = {k: str(v)[:MAX_PARAM_CHARS] for k, v in self.facts.params.items()}
        missing = [Param(k, v) for k, v in params.items() if k not in self.run_params]
        changed = [f"{k}={v}" for k, v in params.items() if k in self.run_params and self.run_params[k] != v]
        tags = [RunTag(k, v) for k, v in self._tags().items()]
        if changed:
            tags.append(RunTag("imgtrain.resumed_with", "; ".join(changed)[:MAX_PARAM_CHARS]))
        for i in range(0, max(len(missing), 1), BATCH_PARAMS):
            self.client.log_batch(self.state.run_id, params=missing[i : i + BATCH_PARAMS], tags=tags if i == 0 else [])
        self.run_params.update({p.key: p.value for p in missing})
        self.params_logged = True

    def _log_epochs(self) -> None:
        """history.csv's rows past the last epoch the MLflow run has, the epoch as the step."""
        from mlflow.entities import Metric

        rows = [r for r in history.read(self.run_dir) if int(r["epoch"]) > self.epochs_logged]
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, int(row["epoch"]))
            for row in rows
            for key, value in _numbers(row, skip=("epoch", "phase")).items()
        ]
        # The "loss" of the last epoch goes last: it is what marks the epoch as logged.
        metrics.sort(key=lambda m: (m.step, m.key == "loss"))
        for i in range(0, len(metrics), BATCH_METRICS):
            self.client.log_batch(self.state.run_id, metrics=metrics[i : i + BATCH_METRICS])
        if rows:
            self.epochs_logged = int(rows[-1]["epoch"])

    def _log_final(self) -> None:
        """The test metrics, the report and the model, each once, then the run marked finished."""
        steps = (
            ("test metrics", self._log_test_metrics),
            ("report", self._log_report),
            ("model", self._log_model),
            ("finished", lambda: self.client.set_terminated(self.state.run_id, "FINISHED")),
        )
        for piece, do in steps:
            if piece not in self.state.done:
                do()
                self.state.done.append(piece)
                self.state.write(self.run_dir)

    def _log_test_metrics(self) -> None:
        from mlflow.entities import Metric

        try:
            report = json.loads((self.run_dir / rundir.REPORT_JSON).read_text())
        except (OSError, ValueError):
            return  # no test split: nothing to log
        now = int(time.time() * 1000)
        metrics = [Metric(f"test_{k}", v, now, 0) for k, v in headline(report).items()]
        self.client.log_batch(self.state.run_id, metrics=metrics)

    def _log_report(self) -> None:
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.state.run_id, str(self.run_dir / name))

    def _log_model(self) -> None:
        """``model.keras`` with a softmax on top, as an MLflow Keras model: float32 pixels
        [n, h, w, 3] (RGB, 0-255, the training size) in, probabilities out."""
        import keras
        import mlflow
        import mlflow.keras
        import tensorflow as tf
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        from imgtrain.export import probability_model

        path = self.run_dir / rundir.MODEL
        if not path.is_file():
            return
        model = probability_model(keras.saving.load_model(str(path)))
        names = json.loads((self.run_dir / rundir.CLASS_NAMES).read_text())
        h, w = (self.facts.image_size if self.facts else model.input_shape[1:3])[:2]
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, h, w, 3), "image")]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(names)), "probabilities")]),
        )
        # Model.log reaches the store through MLflow's global URI, and files the model under the
        # global experiment, not its run's (MLflow 3.17): both set to this run's, or runs:/ID/model
        # would not find it.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=self.state.experiment_id)
        info = Model.log(
            name="model",
            artifact_path=None,
            flavor=mlflow.keras,
            model=model,
            run_id=self.state.run_id,
            signature=signature,
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__.split('+')[0]}"],
            metadata={"class_names": names},
        )
        replaced, self.state.model_uri = self.state.model_uri, info.model_uri
        if replaced.startswith("models:/") and replaced != info.model_uri:
            # More epochs replaced the run's model.keras: the run keeps one model, so that
            # runs:/ID/model names the one its files hold.
            try:
                self.client.delete_logged_model(replaced[len("models:/") :])
            except Exception:  # noqa: BLE001 - the new model is logged; an old one left is harmless
                pass

    def _where(self) -> str:
        """Where a person looks at the run: the server's page, or the command opening a local store."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.state.experiment_id}/runs/{self.state.run_id}"
        return f"see it with: mlflow ui --backend-store-uri {self.uri}"

    # -- bookkeeping ---------------------------------------------------------------------------
    def _all_done(self) -> bool:
        return self.state.uri == self.uri and all(p in self.state.done for p in FINAL_PIECES)

    def _pending(self) -> list[str]:
        pending = []
        last = history.epochs(self.run_dir)
        if not self.params_logged:
            pending.append("params")
        if last > self.epochs_logged:
            pending.append(f"epochs {self.epochs_logged + 1}-{last}")
        return pending + [p for p in FINAL_PIECES if p not in self.state.done and p != "finished"]


def _numbers(row: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The entries of ``row`` that are finite numbers (or their text), as floats."""
    out = {}
    for key, text in row.items():
        if key in skip or key is None:
            continue
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key] = value
    return out


def _reason(exc: BaseException) -> str:
    """The useful end of a failure's text: 'Connection refused', a status, not a page of URL."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    return text[:200]
