"""launch/multiworker.py's own parts and launch/horovod.sh's refusals, without starting TensorFlow."""

from __future__ import annotations

import ast
import importlib.util
import os
import random
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def launcher():
    spec = importlib.util.spec_from_file_location("multiworker_launcher", ROOT / "launch" / "multiworker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ports_are_free_distinct_and_outside_the_ephemeral_range(launcher):
    low, high = launcher.ephemeral_range()
    ports = launcher.free_ports(8, "127.0.0.1")
    assert len(set(ports)) == 8
    assert not any(low <= p <= high for p in ports)  # no outgoing connection can be handed one of them
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_passed_over(launcher):
    rng_seed = 7
    first = launcher.free_ports(1, "127.0.0.1", random.Random(rng_seed))[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first))
        busy.listen()
        again = launcher.free_ports(1, "127.0.0.1", random.Random(rng_seed))[0]
    assert again != first  # same random order, but the taken port is skipped


def test_tf_config_names_every_worker_and_this_index(launcher):
    import json

    cfg = json.loads(launcher.tf_config(["localhost:1", "localhost:2"], 1))
    assert cfg == {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}


def test_no_command_is_a_one_line_error(launcher, capsys):
    assert launcher.main(["--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "put the command after --" in err[0]


def test_horovod_sh_without_a_process_count_is_one_line():
    usage = subprocess.run(
        ["bash", str(ROOT / "launch" / "horovod.sh"), "--", "imgtrain"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "give -np N" in usage.stderr
    assert len(usage.stderr.strip().splitlines()) == 1, usage.stderr


# A stand-in worker (no TensorFlow): notes the stop signals it gets for a few seconds, says
# them, writes them to a file named for its rank (Horovod's, or TF_CONFIG's index), and exits
# as imgtrain would.
FAKE_WORKER = """
import json, os, signal, sys, time
got = []
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, f: got.append(signal.Signals(s).name))
index = os.environ.get("HOROVOD_RANK") or json.loads(os.environ["TF_CONFIG"])["task"]["index"]
print("ready", flush=True)
deadline = time.time() + 4
while time.time() < deadline and not got:
    time.sleep(0.05)
time.sleep(1.5)  # a second copy of the signal, if any, lands meanwhile
with open(os.path.join(sys.argv[1], f"worker{index}.json"), "w") as f:
    json.dump(got, f)
print(f"got {got}", flush=True)
sys.exit(128 + getattr(signal, got[0]) if got else 0)
"""


def start_launcher(tmp_path: Path, sigint_ignored: bool = False, launcher: str = "multiworker") -> subprocess.Popen:
    """The launcher leading its own process group, as a terminal's foreground job; once both
    workers are up."""
    import signal
    import sys

    def as_a_shell_leaves_it() -> None:
        os.setpgrp()
        signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if launcher == "multiworker":
        cmd = [sys.executable, str(ROOT / "launch" / "multiworker.py"), "--workers", "2", "--grace", "10", "--"]
    else:
        from reference_runs import horovodrun

        horovodrun()  # skips without Horovod
        cmd = [str(ROOT / "launch" / "horovod.sh"), "-np", "2", "--"]
    bin_dir = str(Path(sys.executable).parent)
    proc = subprocess.Popen(
        [*cmd, sys.executable, "-c", FAKE_WORKER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_a_shell_leaves_it,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    ready = 0
    while ready < 2:
        line = proc.stdout.readline()
        assert line, "the launcher ended before its workers were up"
        ready += line.endswith("ready\n")
    return proc


@pytest.mark.parametrize("launcher", ["multiworker", "horovod.sh"])
@pytest.mark.parametrize("sent", ["SIGINT to the group", "SIGTERM to the launcher"])
def test_a_stop_reaches_each_worker_once_from_the_launcher(tmp_path: Path, launcher, sent) -> None:
    """A terminal sends SIGINT to the whole group; Kubernetes and ``docker stop`` send SIGTERM
    to the launcher alone. Either way each worker gets the signal once (a second meant 'stop at
    once' and lost the checkpoint; under horovodrun, SIGTERM and a kill 5 s later), every
    worker's last line is printed, exit 128 + the signal, no traceback."""
    import signal

    proc = start_launcher(tmp_path, launcher=launcher)
    name = sent.split()[0]
    if sent.endswith("group"):
        os.killpg(proc.pid, getattr(signal, name))
    else:
        proc.send_signal(getattr(signal, name))
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + getattr(signal, name), rest
    assert "Traceback" not in rest, rest
    found = list(re.finditer(r"got (\[[^\]]*\])", rest))
    got = [ast.literal_eval(m.group(1)) for m in found]
    assert len(got) == 2 and all(g[:1] == [name] for g in got), rest
    # After that one stop, only horovodrun's own cleanup: once a worker has exited, it sends
    # SIGTERM to those still finishing theirs (imgtrain ends quietly on it, tests/test_preemption.py).
    # So a worker with more than one signal said so after that cleanup began (a launcher that
    # passed a stop on twice shows it in the first worker to end, before any cleanup).
    cleanup = rest.find("Terminating remaining workers after failure")
    for m, g in zip(found, got):
        if len(g) > 1:
            assert launcher == "horovod.sh" and set(g[1:]) == {"SIGTERM"}, rest
            assert 0 <= cleanup < m.start(), rest


def test_under_nohup_a_groups_sigint_stops_nothing(tmp_path: Path) -> None:
    """SIGINT ignored (nohup, a background job): the launcher leaves it ignored, the workers
    never get it and finish, and a finished run exits 0, not 130."""
    import signal

    proc = start_launcher(tmp_path, sigint_ignored=True)
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest
    assert "[worker 0] got []" in rest and "[worker 1] got []" in rest, rest


def test_a_killed_launchers_workers_are_told_to_stop(tmp_path: Path) -> None:
    """SIGKILL to the launcher alone: its workers get SIGTERM (they stop at a step, with a
    checkpoint) instead of training on unsupervised."""
    import json

    proc = start_launcher(tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.time() + 15
    while time.time() < deadline and len(list(tmp_path.glob("worker*.json"))) < 2:
        time.sleep(0.1)
    got = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in (0, 1)]
    # (Here the orphans' new parent, this machine's PID 1, may send a SIGTERM of its own.)
    assert [signals[:1] for signals in got] == [["SIGTERM"], ["SIGTERM"]], got
