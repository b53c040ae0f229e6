"""Journey: ``--mlflow`` against a real MLflow tracking server that the test starts on localhost
(SQLite backend, a local artifact root), read back through ``mlflow.MlflowClient`` and
``mlflow.pyfunc`` as a team member would: one run, logged once, with everything in it; a
killed run continues its MLflow run; a server that is down costs one warning line and the
next run of the same command logs what was missed; a multi-worker run logs once."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from PIL import Image

from journeys import readme
from journeys.journey import SMALL, User

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

TRAIN = readme.command(".venv/bin/imgtrain train --data photos/ --output runs/photos --mlflow")
UI = readme.command(".venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db")
MULTIWORKER = readme.command(
    "python launch/multiworker.py --workers 2 -- imgtrain train --config cfg.yaml --output runs/x"
)
REPORT_FILES = {"report.html", "report.json", "report.md", "curves.png", "confusion_matrix.png", "history.csv"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(argv: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start an MLflow server (``argv`` without its port) on a free localhost port; wait until
    it answers /health."""
    port = _free_port()
    proc = subprocess.Popen(
        argv + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop(proc)
            pytest.fail(f"{' '.join(argv)} did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` as a team runs one: a SQLite backend and a local artifact root."""
    root = tmp_path_factory.mktemp("mlflow-server")
    mlflow_bin = str(Path(sys.prefix) / "bin" / "mlflow")
    argv = [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    proc, uri = serve(argv + ["--default-artifact-root", str(root / "artifacts")], root, root / "server.log")
    yield uri
    stop(proc)


def tracked(user: User, uri: str, experiment: str) -> User:
    """The user's shell pointed at ``uri`` (MLFLOW_TRACKING_URI), in an experiment of its own."""
    user.env["MLFLOW_TRACKING_URI"] = uri
    user.env["MLFLOW_EXPERIMENT_NAME"] = experiment
    return user


def only_run(uri: str, experiment: str):
    """The one MLflow run of ``experiment`` (there must be exactly one)."""
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} on the server"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one run directory"
    return client, runs[0]


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_run_is_logged_once_with_everything_in_it(user: User, server: str) -> None:
    tracked(user, server, "journey-logged")
    first = user.ok(f"{TRAIN} {SMALL} --epochs 3")
    assert "tracking: logged to MLflow run" in first.out, first.text[-2000:]
    assert first.last_line.startswith("test accuracy ")
    run_dir = user.cwd / "runs/photos"
    client, run = only_run(server, "journey-logged")
    assert run.info.status == "FINISHED" and run.info.run_name == "photos"
    assert run.info.run_id == json.loads((run_dir / "mlflow.json").read_text())["run_id"]

    # params: the resolved config, flat
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.name"] == "cnn"
    assert run.data.params["data.image_size"] == str(saved["data"]["image_size"])
    assert run.data.params["train.optimizer.learning_rate"] == str(saved["train"]["optimizer"]["learning_rate"])
    tags = run.data.tags
    assert (tags["imgtrain.model"], tags["imgtrain.strategy"], tags["imgtrain.world_size"]) == ("cnn", "single", "1")
    assert len(tags["imgtrain.data_fingerprint"]) == 16

    # every epoch's metrics, the epoch as the step, as history.csv has them
    rows = history_rows(run_dir)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows], rel=1e-6), key
    report = json.loads((run_dir / "report.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(report["accuracy"])
    assert run.data.metrics["test_loss"] == pytest.approx(report["loss"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(report["macro_avg"]["f1"])
    assert REPORT_FILES <= {a.path for a in client.list_artifacts(run.info.run_id)}

    # the model, through pyfunc, predicts what the run's own model.keras predicts
    import keras

    paths = sorted((user.cwd / "photos").rglob("*.png"))[::5]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    mlflow.set_tracking_uri(server)
    try:
        logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)  # the suite's other tests see MLflow's default again
    probabilities = np.asarray(logged.predict(pixels))
    expected = keras.ops.convert_to_numpy(
        keras.ops.softmax(keras.saving.load_model(run_dir / "model.keras")(pixels, training=False))
    )
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert logged.metadata.metadata["class_names"] == json.loads((run_dir / "class_names.json").read_text())

    # the same command again: nothing trained, nothing logged again
    again = user.ok(f"{TRAIN} {SMALL} --epochs 3")
    assert "nothing to train" in again.out and "already logged to MLflow run" in again.out, again.out[-2000:]
    client, run_again = only_run(server, "journey-logged")
    assert run_again.info.run_id == run.info.run_id
    assert steps(client, run.info.run_id, "loss") == [1, 2, 3]
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert len(models) == 1, f"{len(models)} models logged for one run"

    # more epochs on the finished run: the same MLflow run goes on, and its end is logged anew
    more = user.ok(f"{TRAIN} {SMALL} --epochs 4")
    assert "tracking: logged to MLflow run" in more.out, more.out[-2000:]
    client, run_more = only_run(server, "journey-logged")
    assert run_more.info.run_id == run.info.run_id and run_more.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "loss") == [1, 2, 3, 4]
    assert run_more.data.params["train.epochs"] == "3"  # MLflow keeps a param's first value ...
    assert "train.epochs=4" in run_more.data.tags["imgtrain.resumed_with"]  # ... the change is a tag
    report = json.loads((run_dir / "report.json").read_text())
    assert run_more.data.metrics["test_accuracy"] == pytest.approx(report["accuracy"])
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.model_id for m in models] == [json.loads((run_dir / "mlflow.json").read_text())["model_uri"][8:]]


def test_a_stopped_then_killed_run_continues_its_mlflow_run(user: User, server: str) -> None:
    tracked(user, server, "journey-resumed")
    command = f"{TRAIN} {SMALL} --epochs 3 --set train.checkpoint.every_steps=2"
    stopped = user.interrupt(command, lambda out: "\nepoch 1/3" in out, signal.SIGTERM)
    assert stopped.code != 0 and "run the same command again to resume" in stopped.out, stopped.out[-2000:]
    client, run = only_run(server, "journey-resumed")
    assert run.info.status == "KILLED"
    assert steps(client, run.info.run_id, "loss") == [1]

    # killed outright after epoch 2's line: its metrics may or may not have reached the server
    killed = user.interrupt(command, lambda out: "\nepoch 2/3" in out)
    assert killed.code == -signal.SIGKILL, killed.out[-2000:]
    done = user.ok(command)
    assert "continuing at epoch" in done.out, done.out[-2000:]
    client, resumed = only_run(server, "journey-resumed")
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    for key in ("loss", "val_accuracy", "learning_rate"):
        assert steps(client, run.info.run_id, key) == [1, 2, 3], key
    rows = history_rows(user.cwd / "runs/photos")
    logged = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.value for m in logged] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)


def test_a_server_that_is_down_is_one_warning_and_the_next_run_logs_it(user: User, server: str) -> None:
    tracked(user, f"http://127.0.0.1:{_free_port()}", "journey-down")  # nothing listens there
    down = user.ok(f"{TRAIN} {SMALL} --epochs 2")
    warnings = [line for line in down.text.splitlines() if line.startswith("warning: MLflow tracking")]
    assert len(warnings) == 1, down.text[-3000:]
    assert "Connection refused" in warnings[0]
    assert "warning: not logged to MLflow" in down.out and "run the same command again" in down.out
    assert "Traceback" not in down.text
    assert down.last_line.startswith("test accuracy ")
    assert (user.cwd / "runs/photos/model.keras").is_file()

    tracked(user, server, "journey-down")
    again = user.ok(f"{TRAIN} {SMALL} --epochs 2")
    assert "nothing to train" in again.out and "tracking: logged to MLflow run" in again.out, again.out[-2000:]
    client, run = only_run(server, "journey-down")
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert steps(client, run.info.run_id, "val_loss") == [1, 2]
    assert "test_accuracy" in run.data.metrics
    assert client.search_logged_models(experiment_ids=[run.info.experiment_id])


def test_a_multi_worker_run_logs_once(user: User, server: str) -> None:
    tracked(user, server, "journey-workers")
    (user.cwd / "cfg.yaml").write_text(
        yaml.safe_dump(
            {
                "seed": 5,
                "data": {"path": "photos/", "image_size": [16, 16]},
                "model": {"name": "cnn", "cnn": {"filters": [8, 16], "convs_per_block": 1}},
                "train": {"epochs": 2, "batch_size": 8},
            }
        )
    )
    result = user.ok(f"{MULTIWORKER} --mlflow --no-progress")
    assert result.text.count("tracking: logged to MLflow run") == 1, result.text[-3000:]
    client, run = only_run(server, "journey-workers")
    assert run.data.tags["imgtrain.world_size"] == "2"
    assert run.data.tags["imgtrain.strategy"] == "multiworker"
    assert steps(client, run.info.run_id, "loss") == [1, 2]
    assert len(client.search_logged_models(experiment_ids=[run.info.experiment_id])) == 1


def test_the_local_store_opens_in_mlflow_ui(user: User) -> None:
    user.env.pop("MLFLOW_TRACKING_URI", None)
    user.ok(f"{TRAIN} {SMALL} --epochs 1")
    assert (user.cwd / "mlflow.db").is_file(), "not MLflow's default store in the working directory"
    proc, uri = serve([str(user.cwd / p) for p in user.argv(UI)[:1]] + user.argv(UI)[1:], user.cwd, user.cwd / "ui.log")
    try:
        _client, run = only_run(uri, "imgtrain")
        assert run.info.status == "FINISHED" and run.info.run_name == "photos"
        assert REPORT_FILES <= {a.path for a in _client.list_artifacts(run.info.run_id)}
    finally:
        stop(proc)
