"""tracking.mlflow's edges: where the store is, and the refusals. The runs against a real
MLflow server are in journeys/test_mlflow.py."""

from __future__ import annotations

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
    cfg = Config.load(None, ["tracking.mlflow=true", "tracking.uri=mlruns"]).with_absolute_paths(tmp_path)
    assert cfg.tracking.uri == str(tmp_path / "mlruns")


def test_mlflow_missing_is_one_line_before_training(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "img", per_class=3, size=8)
    blocked = "import sys; sys.modules['mlflow'] = None; from imgtrain.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", blocked, "train", "--data", str(data), "--output", "run", "--mlflow", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "pip install 'imgtrain[mlflow]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
