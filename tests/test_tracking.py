"""tracking.mlflow's edges: where the store is, the refusals, and a server that is down (in-process,
on a synthetic run directory). The runs against a real MLflow server are in journeys/test_mlflow.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_folder

from imgtrain.config import Config, absolute_tracking_uri
from imgtrain.errors import UserError
from imgtrain.tracking import TrackState, resolve_uri


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("mlruns", "/work/here/mlruns"),
        ("./runs/../mlruns", "/work/here/mlruns"),
        ("/abs/mlruns", "/abs/mlruns"),
        ("file:./mlruns", "file:///work/here/mlruns"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
        ("sqlite:///mlflow.db", "sqlite:////work/here/mlflow.db"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("http://mlflow.internal:5000", "http://mlflow.internal:5000"),
        ("postgresql://user@db/mlflow", "postgresql://user@db/mlflow"),
        ("databricks", "databricks"),
        ("databricks://profile", "databricks://profile"),
        ("runs", "/work/here/runs"),
    ],
)
def test_a_local_store_is_made_absolute_and_a_server_is_left_alone(uri: str, expected: str) -> None:
    assert absolute_tracking_uri(uri, Path("/work/here")) == expected


def test_the_uri_comes_from_config_then_environment_then_the_run_then_mlflows_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(None)  # MLflow's own default, whatever an earlier test in this process set
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, run_dir) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    TrackState(uri="http://first:5000").write(run_dir)
    assert resolve_uri(None, run_dir) == "http://first:5000"  # a resume from anywhere: the run's store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert resolve_uri(None, run_dir) == "http://team:5000"
    assert resolve_uri("http://flag:5000", run_dir) == "http://flag:5000"


def test_the_tracking_section_is_checked_and_relative_stores_resolved(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="tracking.uri must be a non-empty string"):
        Config.load(None, ["tracking.uri=' '"])
    with pytest.raises(UserError, match=r"starts with htp://, not a scheme MLflow knows; did you mean http://\?"):
        Config.load(None, ["tracking.uri=htp://mlflow:5000"])
    Config.load(None, ["tracking.uri=postgresql+psycopg2://u@db/mlflow"])  # a driver is no typo
    cfg = Config.load(None, ["tracking.mlflow=true", "tracking.uri=mlruns"]).with_absolute_paths(tmp_path)
    assert cfg.tracking.uri == str(tmp_path / "mlruns")


def test_mlflow_missing_is_one_line_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    from imgtrain.cli import main

    data = write_folder(tmp_path / "img", per_class=3, size=8)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it fails
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(data), "--output", "run", "--mlflow", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert "pip install 'imgtrain[mlflow]'" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def synthetic_run(run_dir: Path) -> Path:
    """What a finished two-epoch run leaves for the tracker to read, with no training: history.csv,
    report.json, class_names.json and a small model.keras."""
    import keras

    run_dir.mkdir()
    (run_dir / "history.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate\n1,1.5,0.4,1.2,0.5,0.001\n2,0.9,0.7,0.8,0.8,0.001\n"
    )
    report = {"accuracy": 0.75, "loss": 0.6, "macro_avg": {"precision": 0.7, "recall": 0.7, "f1": 0.7, "support": 8}}
    (run_dir / "report.json").write_text(json.dumps(report))
    (run_dir / "class_names.json").write_text(json.dumps(["a", "b"]))
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
    model.save(run_dir / "model.keras")
    return run_dir


@pytest.mark.slow
def test_a_server_that_is_down_is_one_warning_and_the_next_attempt_logs_it(tmp_path: Path, monkeypatch) -> None:
    """The bookkeeping behind 'run the same command again': nothing reached a closed port, so
    the next tracker of the same run directory, given a store that answers, logs all of it."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from imgtrain.config import TrackingConfig
    from imgtrain.tracking import RunFacts, open_tracker

    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    run_dir = synthetic_run(tmp_path / "run")
    facts = RunFacts(params={"train.epochs": 2, "model.name": "cnn"}, tags={"imgtrain.model": "cnn"}, image_size=[8, 8])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed
    said: list[str] = []
    down = open_tracker(TrackingConfig(mlflow=True, uri=closed, experiment="down"), run_dir, True, said.append)
    down.start(facts)
    down.finish()
    down.restore()
    warnings = [line for line in said if line.startswith("warning: MLflow tracking")]
    assert len(warnings) == 1 and "Connection refused" in warnings[0], said
    assert said[-1].startswith(f"warning: not logged to MLflow at {closed}: params, epochs 1-2, test metrics"), said

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    said.clear()
    up = open_tracker(TrackingConfig(mlflow=True, uri=store, experiment="down"), run_dir, True, said.append)
    up.start(facts)
    up.finish()
    up.restore()
    assert said[-1].startswith("tracking: logged to MLflow run"), said
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("down").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [1, 2]
    assert run.data.metrics["test_accuracy"] == 0.75 and run.data.metrics["test_macro_f1"] == 0.7
    assert "report.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(client.search_logged_models(experiment_ids=[run.info.experiment_id])) == 1
    assert TrackState.read(run_dir).uri == store  # the store this run directory now logs to


@pytest.mark.slow
def test_the_headline_test_metrics_have_one_name_in_the_report_tensorboard_and_mlflow(
    tmp_path: Path, monkeypatch
) -> None:
    """A dashboard comparing the three sees one name for one number: report.json's headline,
    TensorBoard's test run (``epoch_<name>``) and MLflow (``test_<name>``)."""
    pytest.importorskip("mlflow")
    import numpy as np
    import tensorflow as tf
    from mlflow import MlflowClient

    from imgtrain.config import TrackingConfig
    from imgtrain.evaluate.calibration import reliability
    from imgtrain.evaluate.report import build_report, write_report
    from imgtrain.evaluation import log_test_to_tensorboard
    from imgtrain.tracking import RunFacts, open_tracker

    monkeypatch.chdir(tmp_path)
    run_dir = synthetic_run(tmp_path / "run")
    names = [f"c{i}" for i in range(6)]
    cm = np.eye(6) * 3 + np.roll(np.eye(6), 1, axis=1)
    totals = {"confusion": cm, "count": cm.sum(), "loss_sum": 9.0, "correct": np.trace(cm), "topk_correct": 23.0}
    calibration = reliability(np.linspace(0.3, 0.99, 24), np.arange(24) % 4 != 0)
    report = build_report(totals, names, [], 5, {"calibration": calibration})
    write_report(report, run_dir)
    log_test_to_tensorboard(report, run_dir, epochs=2)

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = open_tracker(TrackingConfig(mlflow=True, uri=store, experiment="names"), run_dir, True, print)
    tracker.start(RunFacts(params={"model.name": "cnn"}, tags={}, image_size=[8, 8]))
    tracker.finish()
    tracker.restore()
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("names").experiment_id])

    in_report = set(json.loads((run_dir / "report.json").read_text())["headline"])
    in_mlflow = {k.removeprefix("test_") for k in run.data.metrics if k.startswith("test_")}
    events = [str(p) for p in (run_dir / "logs" / "test").iterdir()]
    in_tensorboard = {
        v.tag.removeprefix("epoch_")
        for e in tf.compat.v1.train.summary_iterator(events[0])
        for v in e.summary.value
        if v.tag.startswith("epoch_")
    }
    assert {"accuracy", "top5_accuracy", "loss", "macro_f1", "weighted_recall", "ece"} <= in_report
    assert in_report == in_mlflow == in_tensorboard


def test_a_server_that_never_answers_never_holds_training_up(tmp_path: Path, monkeypatch) -> None:
    """A dead proxy: the port accepts connections and never answers. Each epoch's call returns
    at once, the end waits FINAL_WAIT_SECONDS at most and says what was not logged, and
    MLflow's global URI, the environment and the loggers are left as they were found."""
    mlflow = pytest.importorskip("mlflow")
    import logging
    import os
    import time

    from imgtrain.config import TrackingConfig
    from imgtrain.tracking import HTTP_DEFAULTS, RunFacts, open_tracker, tracker

    for key in HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(tracker, "START_WAIT_SECONDS", 1.0)  # the waits' bounds, not their lengths, are tested
    monkeypatch.setattr(tracker, "FINAL_WAIT_SECONDS", 2.0)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.csv").write_text("epoch,loss,accuracy\n1,1.5,0.4\n2,0.9,0.7\n")
    before = (mlflow.get_tracking_uri(), dict(os.environ), logging.getLogger("mlflow").level)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshakes; nothing ever reads or answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        said: list[str] = []
        t = open_tracker(TrackingConfig(mlflow=True, uri=uri, experiment="silent"), run_dir, True, said.append)
        t0 = time.monotonic()
        t.start(RunFacts(params={"model.name": "cnn"}, tags={}, image_size=[8, 8]))
        started = time.monotonic() - t0
        epochs = []
        for epoch in (1, 2):
            t0 = time.monotonic()
            t.on_epoch_end(epoch, {"loss": 1.0}, 0.001, 100.0, True)
            epochs.append(time.monotonic() - t0)
        t0 = time.monotonic()
        t.finish()
        finished = time.monotonic() - t0
        t.restore()
    assert started < tracker.START_WAIT_SECONDS + 1 and finished < tracker.FINAL_WAIT_SECONDS + 1, (started, finished)
    assert max(epochs) < 0.05, epochs  # handed over, not sent
    assert said[-1].startswith(f"warning: not logged to MLflow at {uri}: params, epochs 1-2, test metrics"), said
    assert (mlflow.get_tracking_uri(), dict(os.environ), logging.getLogger("mlflow").level) == before


_UNOPENABLE = """
import sys
from pathlib import Path
from imgtrain.config import TrackingConfig
from imgtrain.tracking import RunFacts, open_tracker, tracker

tracker.START_WAIT_SECONDS, tracker.FINAL_WAIT_SECONDS = 1.0, 3.0
uri, run_dir = sys.argv[1], Path(sys.argv[2])
t = open_tracker(TrackingConfig(mlflow=True, uri=uri, experiment="nowhere"), run_dir, True, print)
t.start(RunFacts(params={"model.name": "cnn"}, tags={}, image_size=[8, 8]))
t.on_epoch_end(1, {"loss": 1.0}, 0.001, 100.0, True)
t.finish()
t.restore()
"""


def test_a_store_it_cannot_open_is_one_warning_line_not_mlflows_retries(tmp_path: Path) -> None:
    """A SQLite store it cannot open: MLflow retries opening it, with a four-line
    warning each time; none reaches the terminal (MLflow's handler writes to the process's
    stderr), and imgtrain's own line says what was not logged."""
    pytest.importorskip("mlflow")
    (tmp_path / "a-folder").mkdir()  # SQLite cannot open a folder as its database (as it cannot a file in /sys)
    uri = f"sqlite:///{tmp_path / 'a-folder'}"
    (tmp_path / "run").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _UNOPENABLE, uri, str(tmp_path / "run")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "retried" not in done.stderr and "mlflow" not in done.stderr.lower(), done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith(f"warning: not logged to MLflow at {uri}"), done.stdout


def test_a_model_that_fails_to_build_ends_its_mlflow_run_failed(tmp_path: Path, monkeypatch, capsys) -> None:
    """The MLflow run is started before the model is built: a backbone's weights file that
    does not load is one line, and the MLflow run says FAILED, not RUNNING for ever."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from imgtrain.cli import main

    monkeypatch.chdir(tmp_path)
    data = write_folder(tmp_path / "img", per_class=4, size=8)
    Path("broken.weights.h5").write_bytes(b"not an HDF5 file")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", "--data", str(data), "--output", "run", "--mlflow", "--no-progress", "--image-size", "32"]
    args += ["--set", f"tracking.uri={store}", "--set", "model.name=mobilenetv3_small"]
    assert main([*args, "--set", "model.mobilenetv3_small.weights=broken.weights.h5"]) == 2
    assert "could not load mobilenetv3_small weights" in capsys.readouterr().err
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("imgtrain").experiment_id])
    assert run.info.status == "FAILED"
