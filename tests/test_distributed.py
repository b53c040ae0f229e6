"""Real multi-process training on localhost: MultiWorkerMirroredStrategy and Horovod (gloo), CPU.
The two-process runs are the session's references (tests/reference_runs.py), which tests/test_preemption.py
stops and resumes; a worker killed outright, with BatchNorm, precise BN, EMA and dropout on
(replicas in sync), is tests/journeys/test_distributed.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import reference_runs as runs

pytestmark = pytest.mark.slow


def weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


def check_distributed_run(run: Path, strategy: str, single_run: Path) -> None:
    summary = json.loads((run / "run.json").read_text())
    assert summary["strategy"] == strategy
    assert summary["world_size"] == 2 and summary["num_replicas"] == 2 and summary["global_batch"] == 8
    assert summary["peak_learning_rate"] == pytest.approx(0.004)  # linear scaling rule
    assert set(summary["images_per_sec"]) == {"worker_0", "worker_1"}
    assert all(v > 0 for v in summary["images_per_sec"].values())
    assert summary["replicas_in_sync"] is True  # identical weights on both replicas, bit for bit
    assert len(set(summary["replica_weight_fingerprints"])) == 1
    # Same global batches, same per-example augmentation, same loss scaling: the weights match a
    # single process. Not bit for bit: the global gradient is summed in another order (two partial
    # sums added by the collective instead of one sum over the batch), float32 reassociation.
    # Measured on this test's setup: 9e-8 at most; training with a different global batch (4
    # instead of 8) moves weights by 8e-2. 1e-5 separates the two by orders of magnitude.
    for a, b in zip(weights(run), weights(single_run)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    report = json.loads((run / "report.json").read_text())
    single_report = json.loads((single_run / "report.json").read_text())
    assert report["num_examples"] == single_report["num_examples"]  # test metrics summed over both shards


def test_multiworker_two_processes(references):
    run = references.run_dir("multiworker")
    out = references.output("multiworker")
    assert "[worker 0] epoch 2/2" in out
    assert "[worker 1] epoch" not in out  # only the chief logs
    check_distributed_run(run, "multiworker", references.run_dir("single"))
    assert not list((run / "checkpoints").glob(".worker-*"))  # non-chief scratch copies are removed


def test_horovod_two_processes(references):
    check_distributed_run(references.run_dir("horovod"), "horovod", references.run_dir("single"))


def test_a_worker_whose_peer_vanished_exits_138_in_one_line(tmp_path: Path) -> None:
    """Two workers started as a Kubernetes Indexed Job starts them (TF_CONFIG each, no launcher
    to stop the rest): worker 1 SIGKILLed after the first checkpoint, as when its node crashes.
    Worker 0 leaves within a minute with exit 138, which the overlays retry without counting,
    and one line: no traceback. (That the same command resumes after a lost worker:
    tests/journeys/test_distributed.py.)"""
    import importlib.util
    import subprocess
    import sys
    import time

    from conftest import write_folder

    spec = importlib.util.spec_from_file_location("multiworker_launcher", runs.LAUNCHER)
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    write_folder(tmp_path / "photos", per_class=40, size=16)
    hosts = [f"127.0.0.1:{port}" for port in launcher.free_ports(2, "127.0.0.1")]
    cmd = [sys.executable, "-m", "imgtrain", *runs.train("runs/x", epochs=4)]
    workers = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**runs.env(), "TF_CONFIG": launcher.tf_config(hosts, i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    index = tmp_path / "runs/x/checkpoints/checkpoint"
    try:
        deadline = time.monotonic() + 300
        while not (index.exists() and '"ckpt-1"' in index.read_text()):
            assert workers[0].poll() is None and time.monotonic() < deadline, workers[0].communicate()
            time.sleep(0.05)
        workers[1].kill()
        killed = time.monotonic()
        out, err = workers[0].communicate(timeout=120)
    finally:
        for w in workers:
            w.kill()
    assert time.monotonic() - killed < 60
    assert workers[0].returncode == 138, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("imgtrain: worker 0 of 2 lost worker 1, which stopped answering"), err[-3000:]
