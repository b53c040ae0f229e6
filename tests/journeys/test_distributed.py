"""Journey: the README's multi-process commands on this host, with a relative --output: each
finishes; a worker killed mid-run, then the same command again, resumes and finishes, with
every recipe that keeps state per replica on and the replicas in sync. The
multi-worker one also tracks with ``--mlflow`` into MLflow's default local store: one MLflow
run across the kill and the resume, logged by the chief alone, which the README's ``mlflow ui``
command then serves. (``launch/horovod.sh``, which runs horovodrun, trains, stops and resumes
in tests/test_preemption.py; a killed Horovod worker is horovodrun's case here.)"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from typing import Callable

import psutil
import pytest
import tiny
import yaml
from workers import rank_of

from journeys import readme
from journeys.journey import User, fingerprint, serve, stop

pytestmark = pytest.mark.slow

MULTIWORKER = readme.command(
    "python launch/multiworker.py --workers 2 -- imgtrain train --config cfg.yaml --output runs/x"
)  # noqa: E501
# The README's horovodrun line asks for 4 processes (one per GPU); this host runs 2.
HOROVODRUN = readme.command("horovodrun -np 4 -H localhost:4 imgtrain train --config cfg.yaml").replace("4", "2")

LAUNCHERS = {"horovodrun": HOROVODRUN, "multiworker.py": f"{MULTIWORKER} --mlflow"}
UI = readme.command(".venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db")
REPORT_FILES = {"report.html", "report.json", "curves.png", "history.csv"}
# Every recipe that keeps state per replica: BatchNorm (with its statistics re-estimated,
# precise BN), EMA weights, and dropout's masks. The two replicas cannot match a single process
# (each normalises its own batch), but they must match each other, bit for bit, across the kill
# and the resume. (What is drawn per example, MixUp/CutMix and RandAugment, is summed away by
# the gradients' all-reduce; their resume is tests/test_resume.py's, in-process.)
CONFIG = tiny.merged(
    tiny.config(),
    {
        "seed": 5,
        "output": "runs/x",
        "data": {
            "path": "photos/",
            "augment": {"rotation": 10},
        },
        "model": {"name": "cnn", "cnn": {"batch_norm": True, "dropout": 0.1}},
        "train": {
            "epochs": 3,
            "batch_size": 8,
            "checkpoint": {"every_steps": 2},
            "precise_bn": {"enabled": True},
            "ema": {"decay": 0.9},
        },
    },
)


def kill_worker_one(user: User, run: str) -> Callable[[str], bool]:
    """``when`` for User.interrupt: once checkpoint 1 is on disk, SIGKILL worker 1 only (the
    launcher is left to notice) and return False, so the group itself is not signalled. The
    moment of the kill is kept in ``when.killed``."""
    index = user.cwd / run / "checkpoints" / "checkpoint"
    done = []

    def when(_out: str) -> bool:
        if done or not index.exists() or '"ckpt-1"' not in index.read_text():
            return False
        for process in psutil.Process().children(recursive=True):
            if rank_of(process) == 1:
                process.send_signal(signal.SIGKILL)
                done.append(time.monotonic())
                break
        return False

    when.killed = done
    return when


@pytest.fixture
def cluster_user(user: User) -> User:
    if shutil.which("horovodrun", path=user.env["PATH"]) is None:
        pytest.skip("Horovod is not installed (make install builds it)")
    (user.cwd / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    return user


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_worker_killed_then_the_same_command(cluster_user: User, launcher: str) -> None:
    user, command = cluster_user, LAUNCHERS[launcher] + " --no-progress"
    when = kill_worker_one(user, "runs/x")
    killed = user.interrupt(command, when, timeout=400)
    assert when.killed, f"the run ended before a worker could be killed:\n{killed.out[-3000:]}"
    assert killed.code != 0 and not (user.cwd / "runs/x/run.json").exists(), killed.out[-3000:]
    # The surviving worker was stopped, not left hanging in a collective until a timeout.
    assert time.monotonic() - when.killed[0] < 60, killed.out[-3000:]

    again = user.ok(command)
    assert "continuing at epoch" in again.text, again.text[-3000:]
    summary = json.loads((user.cwd / "runs/x/run.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_completed"] == 3
    assert summary["replicas_in_sync"] is True  # weights and BatchNorm statistics, bit for bit
    assert math.isfinite(json.loads((user.cwd / "runs/x/report.json").read_text())["loss"])
    # horovodrun is not given --strategy: the workers find Horovod themselves.
    assert summary["strategy"] == ("multiworker" if launcher == "multiworker.py" else "horovod")
    assert fingerprint(user.cwd / "runs/x") is not None

    if launcher == "multiworker.py":  # (a finished run's command again: tests/journeys/test_mlflow.py)
        assert again.text.count("tracking: logged to MLflow run") == 1, again.text[-3000:]  # the chief alone
        served_by_mlflow_ui(user)


def served_by_mlflow_ui(user: User) -> None:
    """The README's ``mlflow ui``, started in the user's folder, serves one run of two workers:
    epochs 1-3 once each (across the kill), the report, one model."""
    mlflow = pytest.importorskip("mlflow")
    assert (user.cwd / "mlflow.db").is_file(), "not MLflow's default store in the working directory"
    argv = user.argv(UI)
    proc, uri = serve([str(user.cwd / argv[0]), *argv[1:]], user.cwd, user.cwd / "ui.log")
    try:
        client = mlflow.MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("imgtrain").experiment_id])
        assert run.info.status == "FINISHED" and run.info.run_name == "x"
        assert (run.data.tags["imgtrain.world_size"], run.data.tags["imgtrain.strategy"]) == ("2", "multiworker")
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3]
        assert REPORT_FILES <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert len(client.search_logged_models(experiment_ids=[run.info.experiment_id])) == 1
    finally:
        stop(proc)
