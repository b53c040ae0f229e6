"""Told to stop (SIGTERM: a preemption, `docker stop`, a node drain; SIGINT: Ctrl-C), training
writes a checkpoint at the step it reached and exits 128 + the signal; the same command again
ends with the weights of an uninterrupted run. One process, and one worker of two under
MultiWorkerMirroredStrategy and Horovod, each run as a user runs it (relative paths)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from journeys.journey import as_in_a_terminal
from reference_runs import COMMANDS, env, failure, run
from workers import LAUNCHER_ITSELF, worker

from imgtrain import stop

STOPPED = re.compile(r"stopped by (SIG[A-Z]+) at epoch (\d+), step (\d+) of (\d+); checkpoint written")


def kill_tree(pid: int) -> None:
    """SIGKILL to ``pid`` and every process under it (launchers put workers in groups of their own)."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def signal_mid_epoch(cmd: list[str], home: Path, run_dir: str, rank: int, sig: int) -> tuple[int, str, float]:
    """Start ``cmd``; once its first mid-epoch checkpoint is on disk, send ``sig`` to ``rank``'s
    process; return (exit code, output, seconds from the signal to the exit)."""
    log = home / f"{run_dir}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=home, env=env(), stdout=out, stderr=subprocess.STDOUT, preexec_fn=as_in_a_terminal
        )
    index, deadline, sent = home / run_dir / "checkpoints" / "checkpoint", time.time() + 400, None
    try:
        while time.time() < deadline and proc.poll() is None:
            if index.exists() and '"ckpt-1"' in index.read_text():
                worker(proc.pid, rank).send_signal(sig)
                sent = time.time()
                break
            time.sleep(0.02)
        assert sent is not None, "the run ended before it could be signalled:\n" + failure(log.read_text())
        code = proc.wait(timeout=120)
    except BaseException:  # a hung run is this test's failure, not the next tests' load
        kill_tree(proc.pid)
        raise
    return code, log.read_text(errors="replace"), time.time() - sent


def weights(run_dir: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(run_dir / "model.keras", compile=False).get_weights()


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, rank, sig",
    [
        ("single", LAUNCHER_ITSELF, signal.SIGTERM),
        ("multiworker", 1, signal.SIGTERM),
        ("multiworker", 0, signal.SIGINT),
        ("horovod", 1, signal.SIGTERM),
        ("multiworker", LAUNCHER_ITSELF, signal.SIGTERM),
        ("horovod.sh", LAUNCHER_ITSELF, signal.SIGTERM),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else ("launcher" if v == LAUNCHER_ITSELF else str(v)),
)
def test_told_to_stop_mid_epoch_then_the_same_command(references, launcher: str, rank: int, sig: int) -> None:
    """(Ctrl-C to a single process's group is tests/journeys/test_resume.py's.)"""
    home, make = references.home, COMMANDS[launcher]
    whole = references.run_dir(launcher.removesuffix(".sh"))  # horovod.sh runs horovodrun: the same weights

    name = f"runs/{launcher}-{rank}-{signal.Signals(sig).name}"
    code, out, seconds = signal_mid_epoch(make(name), home, name, rank, sig)
    assert seconds < 60, "a worker hung after the stop"
    if launcher in ("single", "multiworker"):
        assert code == 128 + sig, out[-2000:]
    else:
        assert code != 0, out[-2000:]  # horovodrun reports a failed rank its own way
    stops = STOPPED.findall(out)
    assert stops, failure(out)
    signame, epoch, step, _steps = stops[0]
    assert signame == signal.Signals(sig).name
    assert len({s[1:3] for s in stops}) == 1, f"the workers stopped at different steps: {stops}"
    assert not (home / name / "run.json").exists()

    again = run(make(name), home)
    assert again.returncode == 0, failure(again.stdout + again.stderr)
    # The checkpoint holds the very step it stopped at: nothing but the step in flight is lost.
    assert f"continuing at epoch {epoch}, step {int(step) + 1}" in again.stdout, again.stdout[-2000:]
    for a, b in zip(weights(whole), weights(home / name)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    summary = json.loads((home / name / "run.json").read_text())
    assert summary["replicas_in_sync"] and summary["stop_checks"]["every_steps"] == (1 if launcher == "single" else 2)
    if launcher == "horovod.sh":  # given no --strategy, as the README runs it: the script adds it
        assert summary["strategy"] == "horovod" and summary["world_size"] == 2


@pytest.fixture
def handlers():
    """Python's own handlers for the test (a suite started in the background ignores SIGINT),
    and whatever was there before put back after it."""
    before = {sig: signal.getsignal(sig) for sig in stop.SIGNALS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_second_signal_stops_at_once_and_a_first_only_raises_the_flag(handlers) -> None:
    with stop.StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert flag.signum == signal.SIGTERM
        with pytest.raises(stop.Stopped, match="second SIGINT .* the previous checkpoint stands") as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert second.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_ignored_sigint_stays_ignored(handlers) -> None:
    """Under nohup or in a background job SIGINT is ignored: training keeps it so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with stop.StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert flag.signum == 0 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_sigterm_outside_training_is_one_line_and_exit_143(handlers, monkeypatch, capsys) -> None:
    from imgtrain import cli

    def busy(_args):  # a command at work (checking images, evaluating, exporting)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setattr(cli, "_dispatch", busy)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["evaluate", "--run", "runs/x"]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err.strip()
    assert err == "imgtrain: stopped by SIGTERM; run the same command again to resume"


def test_workers_stop_on_the_agreed_value_only() -> None:
    """A signal that lands while the workers' values are being summed is in no other worker's
    answer: this worker trains on with the rest, and all stop together at the next check.
    (Stopping on its own flag alone left Horovod's workers in mismatched collectives, hung.)"""
    from types import SimpleNamespace

    from imgtrain.train.loop import TrainLoop

    def gather_while_signalled(value: float) -> list[float]:
        flag.signum = signal.SIGTERM  # the handler runs while the sum is in flight
        return [value, 0.0]  # what every worker agreed on: nobody had been told yet

    flag = stop.StopFlag()
    dist = SimpleNamespace(world_size=2, gather=gather_while_signalled)
    loop = SimpleNamespace(dist=dist, signal=flag, signal_checks={"checks": 0, "seconds": 0.0})
    assert TrainLoop._told_to_stop(loop) is False and flag.signum == signal.SIGTERM
    dist.gather = lambda value: [value, 0.0]
    assert TrainLoop._told_to_stop(loop) is True and loop.signal_checks["checks"] == 2
    dist.gather = lambda value: [0.0, float(signal.SIGINT)]  # another worker was told
    other = SimpleNamespace(dist=dist, signal=stop.StopFlag(), signal_checks={"checks": 0, "seconds": 0.0})
    assert TrainLoop._told_to_stop(other) is True and other.signal.signum == signal.SIGINT
