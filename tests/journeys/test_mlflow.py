"""Journey: ``--mlflow`` against a real MLflow tracking server that the test starts on localhost
(SQLite backend, a local artifact root), read back through ``mlflow.MlflowClient`` and
``mlflow.pyfunc`` as a team member would: one run, logged once, with everything in it. A
run stopped and killed again and again continues its MLflow run, each epoch once, in
tests/test_preemption.py's crash-point sweep. A multi-worker run logging once to the local
store that ``mlflow ui`` opens is tests/journeys/test_distributed.py's; a server that is down
or never answers is tests/test_tracking.py's (in-process, no training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from PIL import Image

from journeys import readme
from journeys.journey import SMALL, User, mlflow_server_in

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

TRAIN = readme.command(".venv/bin/imgtrain train --data photos/ --output runs/photos --mlflow")
REPORT_FILES = {"report.html", "report.json", "report.md", "curves.png", "confusion_matrix.png", "history.csv"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server_in(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


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
