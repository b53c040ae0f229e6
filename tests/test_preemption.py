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
from typing import Callable

import numpy as np
import psutil
import pytest
from conftest import write_folder
from journeys.journey import as_in_a_terminal, mlflow_server_in
from reference_runs import COMMANDS, env, failure, run
from workers import ITS_GROUP, worker

from imgtrain import stop

# A stop at a step, or (the signal came after the epoch's last step) at the epoch's end: its
# end abandoned (validation, precise BN), or the epoch whole (the signal came at its checkpoint).
STOPPED = re.compile(
    r"stopped by (SIG[A-Z]+) (at epoch (\d+), step (\d+) of \d+|at the end of epoch (\d+)(, its [\w ]+ abandoned)?); "
    "checkpoint written"
)


def resumes_at(stop: tuple) -> str:
    """What the rerun of a run stopped so says: the step after, the epoch's end, or the next epoch."""
    _sig, _where, epoch, step, end, abandoned = stop
    if epoch:
        return f"continuing at epoch {epoch}, step {int(step) + 1}"
    return f"continuing at the end of epoch {end}" if abandoned else f"continuing at epoch {int(end) + 1}"


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
    """Start ``cmd``; once it has written a checkpoint (a new run: its first, mid-epoch; a resumed
    one: its first after the one it resumed from), send ``sig`` to ``rank``'s process; return
    (exit code, output, seconds from the signal to the exit)."""
    log = home / f"{run_dir}.log"

    def foreground_job() -> None:
        os.setpgrp()  # its own process group, as a terminal's shell starts a command
        as_in_a_terminal()

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=home, env=env(), stdout=out, stderr=subprocess.STDOUT, preexec_fn=foreground_job
        )
    index, deadline, sent = home / run_dir / "checkpoints" / "checkpoint", time.time() + 400, None
    before = index.read_text() if index.exists() else ""
    try:
        while time.time() < deadline and proc.poll() is None:
            if index.exists() and index.read_text() not in ("", before):
                if rank == ITS_GROUP:
                    os.killpg(proc.pid, sig)
                else:
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
        ("multiworker", 1, signal.SIGTERM),
        ("multiworker", ITS_GROUP, signal.SIGINT),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else {ITS_GROUP: "group"}.get(v, str(v)),
)
def test_told_to_stop_mid_epoch_then_the_same_command(references, launcher: str, rank: int, sig: int) -> None:
    """A signal to one worker (the other learns it from the agreement), or to the launcher's
    process group (a terminal's Ctrl-C; the launcher passes it on, as it passes on the SIGTERM
    Kubernetes sends the launcher alone, under either launcher: tests/test_launcher.py). (A
    single process, stopped at every moment of its run: the crash-point sweep below; Horovod's
    Ctrl-C, with a resize between: the next test.)"""
    home, make = references.home, COMMANDS[launcher]
    whole = references.run_dir(launcher)

    name = f"runs/{launcher}-{rank}-{signal.Signals(sig).name}"
    code, out, seconds = signal_mid_epoch(make(name), home, name, rank, sig)
    assert seconds < 60, "a worker hung after the stop"
    assert code == 128 + sig, out[-2000:]
    stops = STOPPED.findall(out)
    assert stops and "Traceback" not in out, failure(out)
    if rank == ITS_GROUP:  # Ctrl-C in a terminal: every worker says it, once
        assert len(stops) == 2, out[-3000:]
    signame = stops[0][0]
    assert signame == signal.Signals(sig).name
    assert len({s[1] for s in stops}) == 1, f"the workers stopped at different steps: {stops}"
    assert not (home / name / "run.json").exists()

    again = run(make(name), home)
    assert again.returncode == 0, failure(again.stdout + again.stderr)
    # The checkpoint holds the very step it stopped at: nothing but the step in flight is lost.
    assert resumes_at(stops[0]) in again.stdout, again.stdout[-2000:]
    for a, b in zip(weights(whole), weights(home / name)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    summary = json.loads((home / name / "run.json").read_text())
    assert summary["replicas_in_sync"] and summary["stop_checks"]["every_steps"] == (1 if launcher == "single" else 2)


def _stopped_by_the_group(code: int, out: str, seconds: float, sig: int, workers: int) -> tuple:
    """A stop by a Ctrl-C to the launcher's group: each worker said it once, at the same step,
    without a traceback, within a minute; the stop (STOPPED's groups)."""
    stops = STOPPED.findall(out)
    assert code == 128 + sig and seconds < 60, out[-3000:]
    assert len(stops) == workers and "Traceback" not in out, failure(out)
    assert stops[0][0] == signal.Signals(sig).name and len({s[1] for s in stops}) == 1, stops
    return stops[0]


@pytest.mark.slow
def test_a_horovod_run_stopped_on_2_processes_then_on_1_ends_with_the_2_process_weights(references) -> None:
    """The README's ``launch/horovod.sh -np 2``: Ctrl-C mid-epoch; the same command with ``-np 1``
    (one process keeps the global batch of 8 with 2 accumulated micro-batches of 4 per step,
    train.batching) resumes at the step after the stop, and is stopped by Ctrl-C at its next
    checkpoint (mid-epoch or at the epoch's end, as the first stop fell); the first command
    again resumes there on 2 and ends with the uninterrupted 2-process run's weights. These
    runs have no BatchNorm or dropout, so what could differ is float rounding (measured: none)."""
    home, make = references.home, COMMANDS["horovod.sh"]
    whole = references.run_dir("horovod")  # horovod.sh runs horovodrun: the same weights
    name = "runs/horovod-2-1-2"
    first = _stopped_by_the_group(*signal_mid_epoch(make(name), home, name, ITS_GROUP, signal.SIGINT), signal.SIGINT, 2)
    assert not (home / name / "run.json").exists()

    one = make(name)
    one[one.index("-np") + 1] = "1"
    code, said, seconds = signal_mid_epoch(one, home, name, ITS_GROUP, signal.SIGINT)
    assert "resized: 2 -> 1 replica(s); batch 4 per replica, 2 micro-batch(es) accumulated" in said, said[-2000:]
    assert "global batch 8 (kept)" in said and resumes_at(first) in said, said[-2000:]
    second = _stopped_by_the_group(code, said, seconds, signal.SIGINT, 1)

    again = run(make(name), home)
    assert again.returncode == 0, failure(again.stdout + again.stderr)
    assert "resized: 1 -> 2 replica(s)" in again.stdout and resumes_at(second) in again.stdout, again.stdout[-2000:]
    for a, b in zip(weights(whole), weights(home / name)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    summary = json.loads((home / name / "run.json").read_text())
    # given no --strategy, as the README runs it: the script adds it
    assert summary["strategy"] == "horovod" and summary["world_size"] == 2 and summary["accumulate"] == 1
    assert [(r["from_replicas"], r["to_replicas"]) for r in summary["resizes"]] == [(2, 1), (1, 2)]


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


@pytest.mark.parametrize("surfaces_as", ["Stopped", "SystemError"])
def test_sigterm_outside_training_is_one_line_and_exit_143(handlers, monkeypatch, capsys, surfaces_as) -> None:
    """Wherever it lands: a handler that runs inside TensorFlow's C++ code comes out of it as
    another error (SystemError), and is still a stop, said in one line."""
    from imgtrain import cli

    def busy(_args):  # a command at work (checking images, evaluating, exporting)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except stop.Stopped:
            if surfaces_as == "SystemError":
                raise SystemError("<built-in method> returned a result with an exception set") from None
            raise
        return 0

    monkeypatch.setattr(cli, "_dispatch", busy)
    assert cli.main(["evaluate", "--run", "runs/x"]) == 143
    err = capsys.readouterr().err.strip()
    said = "stopped by SIGTERM; what 'evaluate' writes is whole or not written at all: run the same command again"
    assert err == f"imgtrain: {said}"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # called from Python: the caller's handlers back


def test_a_stop_that_cannot_fit_horovodruns_five_seconds_is_said_once(monkeypatch) -> None:
    """Under horovodrun alone (not launch/horovod.sh) a stop has 5 s before the kill: the first
    epoch's timing says when the step checks and the checkpoint need more, and what fits."""
    from types import SimpleNamespace

    from imgtrain.train.distribution import STOP_FORWARDED, Horovod
    from imgtrain.train.stopping import StopProtocol

    budget = Horovod.stop_budget_seconds.fget
    monkeypatch.delenv("HOROVOD_HOSTNAME", raising=False)
    monkeypatch.delenv(STOP_FORWARDED, raising=False)
    monkeypatch.setenv("HOROVOD_GLOO_RENDEZVOUS_ADDR", "127.0.0.1")
    assert budget(None) == 5.0  # horovodrun's own
    monkeypatch.setenv(STOP_FORWARDED, "1")
    assert budget(None) is None  # launch/horovod.sh waits for the workers
    said: list[str] = []
    stops = StopProtocol(SimpleNamespace(stop_budget_seconds=5.0, world_size=2), 10, said.append)
    stops.warn_if_launcher_kills(epoch_seconds=6.0, save_seconds=1.0, steps=10)  # 10 x 0.6 + 1
    (line,) = said
    assert "takes up to 7.0 s (10 steps of 0.60 s, then a 1.0 s checkpoint)" in line, line
    assert line.endswith(
        "launch/horovod.sh, which waits for the checkpoint, or set train.checkpoint.stop_check_steps=6"
    )
    stops.warn_if_launcher_kills(epoch_seconds=3.0, save_seconds=1.0, steps=10)  # 10 x 0.3 + 1: fits
    stops.dist.stop_budget_seconds = None
    stops.warn_if_launcher_kills(epoch_seconds=60.0, save_seconds=9.0, steps=10)  # no such launcher
    assert len(said) == 1


# A command whose work leaves behind an object that is signalled while it is finalized (the
# garbage collector runs finalizers wherever the main thread is: TensorFlow's objects have many).
FINALIZED_MID_SIGNAL = """
import os, signal, sys, time
from imgtrain import cli, stop

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        until = time.monotonic() + 0.2
        while time.monotonic() < until:  # Python runs the handler here, inside the finalizer
            pass

WHEN = sys.argv[1]
sys.argv = ["imgtrain", "evaluate", "--run", "runs/x"]

def work(_args):
    leftover = Finalized()
    if WHEN == "working":
        del leftover  # the signal lands while the command works on
        time.sleep(5)
        print("finished", flush=True)
        return 0
    raise stop.Stopped(signal.SIGINT, "stopped by SIGINT at epoch 1, step 3 of 9; checkpoint written")

cli._import_tensorflow_quietly = lambda: None
cli._dispatch = work
cli.entry()
"""


@pytest.mark.parametrize(
    "when, code, line",
    [
        ("working", 143, "stopped by SIGTERM; what 'evaluate' writes is whole or not written at all"),
        ("after its last line", 130, "stopped by SIGINT at epoch 1, step 3 of 9; checkpoint written"),
    ],
)
def test_a_signal_in_a_finalizer_stops_at_the_next_line_or_ends_quietly(when: str, code: int, line: str) -> None:
    """A stop that lands in a finalizer is not printed as "Exception ignored" and dropped: it
    stops the command at the next line of its own code, or, once the command's outcome is said
    (a Horovod worker stopped by Ctrl-C, then sent SIGTERM by horovodrun when another worker
    left first), ends the process quietly with the code it said."""
    done = subprocess.run(["python", "-c", FINALIZED_MID_SIGNAL, when], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    assert done.stderr.startswith(f"imgtrain: {line}") and done.stderr.count("\n") == 1, done.stderr


def test_workers_stop_on_the_agreed_value_only() -> None:
    """A signal that lands while the workers' values are being summed is in no other worker's
    answer: this worker trains on with the rest, and all stop together at the next check.
    (Stopping on its own flag alone left Horovod's workers in mismatched collectives, hung.)"""
    from types import SimpleNamespace

    from imgtrain.train.stopping import StopProtocol

    def gather_while_signalled(value: float) -> list[float]:
        stops.flag.signum = signal.SIGTERM  # the handler runs while the sum is in flight
        return [value, 0.0]  # what every worker agreed on: nobody had been told yet

    dist = SimpleNamespace(world_size=2, gather=gather_while_signalled)
    stops = StopProtocol(dist, 10, print)
    assert stops.told() is False and stops.flag.signum == signal.SIGTERM
    dist.gather = lambda value: [value, 0.0]
    assert stops.told() is True and stops.checks["checks"] == 2
    dist.gather = lambda value: [0.0, float(signal.SIGINT)]  # another worker was told
    other = StopProtocol(dist, 10, print)
    assert other.told() is True and other.flag.signum == signal.SIGINT


# The crash-point sweep's stops: what is sent, and the seconds between two sends.
SWEEP_KINDS = [
    ("SIGKILL", ()),
    ("SIGTERM", ()),
    ("SIGTERM", (0.2,)),  # a group's copy and a launcher's forward: one request
    ("SIGINT", ()),  # Ctrl-C, to the process group
    ("SIGTERM", (1.0,)),  # a second request: at once, or quietly after the stop line
    ("SIGKILL", ()),
    ("SIGTERM", (3.0,)),
]


def _stop_at(proc: subprocess.Popen, at: float, started: float, kind: tuple, trigger) -> bool:
    """Wait until ``at`` seconds after ``started`` or until ``trigger()``, then send ``kind``;
    whether anything was sent (False: the run finished first)."""
    name, gaps = kind
    while proc.poll() is None and time.monotonic() - started < at and not trigger():
        time.sleep(0.02)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, getattr(signal, name))
    for gap in gaps:
        time.sleep(gap)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, getattr(signal, name))
    return True


def _changed(path: Path) -> Callable[[], bool]:
    """A trigger: ``path`` was written since now."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    return lambda: path.exists() and path.stat().st_mtime_ns != before


@pytest.mark.slow
def test_a_crash_point_sweep_ends_with_the_uninterrupted_weights_each_epoch_once(tmp_path: Path) -> None:
    """The same command, stopped again and again at seeded moments of its life (start-up, the
    data check, steps, the epoch's end: validation, the history row, the checkpoint, MLflow's
    calls; the test report and the exports; a finished run's command), by SIGKILL, SIGTERM,
    SIGINT to the group and two SIGTERMs 0.2, 1 and 3 s apart; right after a history row and
    right after a checkpoint too.
    Every stop says one line and no traceback, a SIGTERM at a step resumes at the next step (the
    checkpoint holds the step it stopped at), and a stopped run shows as KILLED in MLflow; the
    last run ends with the uninterrupted run's weights, each epoch once in history.csv and in
    the MLflow run (a real server), with history.csv's values."""
    pytest.importorskip("mlflow")
    # Its own folder and uninterrupted run (not the session's references, whose tests share
    # one xdist worker: this one runs beside them), as the references make theirs.
    home, name = tmp_path, "runs/sweep"
    write_folder(home / "photos", per_class=40, size=16)
    whole = home / "runs/whole"
    done = run(COMMANDS["single"]("runs/whole"), home)
    assert done.returncode == 0, failure(done.stdout + done.stderr)
    with mlflow_server_in(home / "mlflow") as store:
        _sweep(home, name, whole, store)


def _sweep(home: Path, name: str, whole: Path, store: str) -> None:
    import random

    from mlflow import MlflowClient

    cmd = [
        *COMMANDS["single"](name),
        "--mlflow",
        "--set",
        f"tracking.uri={store}",
        "--set",
        "tracking.experiment=sweep",
    ]
    client = MlflowClient(store)
    rng = random.Random(29)
    run_dir = home / name
    # Within the first 9 s: a finished run's command (nothing to train) lasts about that long.
    plan = [(rng.uniform(1.0, 9.0), kind, lambda: False) for kind in SWEEP_KINDS]
    # First, while there is training left: between an epoch's row and its checkpoint, and just
    # after a checkpoint (the resumed run's first).
    plan[:0] = [(60.0, ("SIGKILL", ()), "history"), (60.0, ("SIGTERM", ()), "checkpoint")]
    tried, resume_at = [], None
    for at, kind, trigger in plan:
        label = trigger if isinstance(trigger, str) else f"{at:.1f} s"
        if trigger == "history":
            trigger = _changed(run_dir / "history.csv")
        elif trigger == "checkpoint":
            trigger = _changed(run_dir / "checkpoints" / "checkpoint")

        def shell() -> None:
            os.setpgrp()  # its own group, as a terminal's foreground job
            as_in_a_terminal()

        log = home / "sweep.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=home, env=env(), stdout=out, stderr=subprocess.STDOUT, preexec_fn=shell)
        try:
            sent = _stop_at(proc, at, time.monotonic(), kind, trigger)
            code = proc.wait(timeout=120)
        except BaseException:
            kill_tree(proc.pid)
            raise
        out = log.read_text(errors="replace")
        if resume_at and "resuming from checkpoint" in out:  # the checkpoint holds the very step it stopped at
            assert resume_at in out, out[-2000:]
        resume_at = None
        if not sent:  # it finished first: the next ones stop a finished run's command
            continue
        tried.append((label, kind, code))
        assert "Traceback" not in out and "Exception ignored" not in out, failure(out)
        if kind[0] == "SIGKILL":
            assert code in (-signal.SIGKILL, 0), out[-2000:]
        elif code != 0:
            assert code == 128 + getattr(signal, kind[0]), out[-2000:]
            assert out.strip().splitlines()[-1].startswith("imgtrain: stopped by"), out[-2000:]
            stops = STOPPED.findall(out)
            if stops:
                resume_at = resumes_at(stops[0])
            if label == "checkpoint":  # mid-training, tracked since the start
                (stopped,) = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
                assert stopped.info.status == "KILLED"
    final = run(cmd, home)
    assert final.returncode == 0, failure(final.stdout + final.stderr)
    print(f"sweep: {len(tried)} stops (when, signal and gaps, exit code): {tried}")

    for a, b in zip(weights(whole), weights(run_dir)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    rows = history_rows(run_dir)
    assert [int(row["epoch"]) for row in rows] == [1, 2], rows
    (logged,) = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert logged.info.status == "FINISHED"
    for key in ("loss", "val_accuracy", "learning_rate"):
        history = sorted(client.get_metric_history(logged.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows], rel=1e-6), key


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))
