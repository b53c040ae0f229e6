"""User journeys: the README's commands run as a user runs them.

Every journey works in a fresh working directory of its own (``user``) holding what a user's
folder holds: ``.venv`` (a link to the installed environment), ``launch/`` (a link to the
repository's launchers) and a small generated ``photos/`` folder. Commands are subprocesses
with *relative* paths, started from that directory, and the journeys assert only what a user
looks at: the exit code, the last line, the files in the run directory and ``run.json``'s
weights fingerprint. Nothing here imports imgtrain.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import tiny

from journeys import readme

REPO = Path(__file__).resolve().parents[2]


def _image_writer() -> Callable[..., Path]:
    """tests/conftest.py's ``write_folder`` (one generator of test images for the whole suite)."""
    spec = importlib.util.spec_from_file_location("imgtrain_test_images", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_folder


write_folder = _image_writer()
VENV = Path(sys.prefix)

# Appended to a README command: small images and model, so a journey trains in seconds. The
# later flag wins in argparse, so the README's own --epochs 20 is what these replace.
SMALL = f"--batch-size 8 --seed 3 --deterministic --no-progress {tiny.flags()} --set train.early_stopping.patience=50"

TRAIN = readme.command(".venv/bin/imgtrain train --data photos/ --model cnn --epochs 20 --output runs/photos")
MID_EPOCH = "--set train.checkpoint.every_steps=2 --set data.augment.rotation=10"
TRAINED = f"{TRAIN} {SMALL} {MID_EPOCH} --epochs 3"  # the session's trained run (``trained``)


def as_in_a_terminal() -> None:
    """In the child, before it runs: Ctrl-C and SIGTERM as a terminal's shell leaves them. A
    suite started in the background (``make test &``, some CI runners) ignores SIGINT, and
    children inherit that; imgtrain keeps an ignored SIGINT ignored, as nohup users expect."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        """What a user reads last: stdout's last line after a success, stderr's after a failure
        (progress bars on stderr redraw themselves and are not read)."""
        first, second = (self.out, self.err) if self.code == 0 else (self.err, self.out)
        for stream in (first, second):
            lines = [line for line in stream.replace("\r", "\n").splitlines() if line.strip()]
            if lines:
                return lines[-1].strip()
        return ""

    @property
    def text(self) -> str:
        return self.out + self.err


class User:
    """A shell in a working directory of its own."""

    def __init__(self, home: Path) -> None:
        self.cwd = home
        self.env = {
            **os.environ,
            "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        }
        # A user's own shell: no TF_CONFIG, and nothing of the `make test` this suite may run
        # under (a make inside would print "Entering directory" lines as a sub-make).
        for name in ("TF_CONFIG", "MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"):
            self.env.pop(name, None)

    def argv(self, command: str) -> list[str]:
        return shlex.split(command, comments=True)

    def run(self, command: str, timeout: float = 600, cwd: Optional[Path] = None) -> Result:
        proc = subprocess.run(
            self.argv(command),
            cwd=cwd or self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=as_in_a_terminal,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, command: str, timeout: float = 600, cwd: Optional[Path] = None) -> Result:
        result = self.run(command, timeout, cwd)
        assert result.code == 0, f"{command}\nexit {result.code}\n{result.text[-3000:]}"
        return result

    def interrupt(
        self, command: str, when: Callable[[str], bool], sig: int = signal.SIGKILL, timeout: float = 600
    ) -> Result:
        """Start ``command`` in its own process group and send ``sig`` to the group once ``when``
        (given the output so far, or polled with '' every 20 ms) says so."""
        proc = subprocess.Popen(
            self.argv(command),
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=as_in_a_terminal,
        )
        lines: list[str] = []

        def read() -> None:
            for line in proc.stdout:  # a line at a time, so that ``when`` sees output as it comes
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if when("".join(lines)):
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.02)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=30)
        return Result(proc.returncode, "".join(lines), "")


def fingerprint(run_dir: Path) -> int:
    """The chief's weights fingerprint from run.json (what two runs compare to agree)."""
    return json.loads((run_dir / "run.json").read_text())["replica_weight_fingerprints"][0]


def make_home(path: Path, per_class: int = 16) -> Path:
    """A user's folder: ``.venv``, ``launch/`` and ``per_class`` generated photos of each class
    in ``photos/`` (none, and no folder, for 0)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / ".venv").symlink_to(VENV, target_is_directory=True)
    (path / "launch").symlink_to(REPO / "launch", target_is_directory=True)
    if per_class:
        write_folder(path / "photos", per_class=per_class, size=16, seed=1)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The harness's own opener, with no proxy: urllib.request.urlopen's global opener keeps the proxies
# of the environment it first met, and an in-process test that points every proxy at a closed
# port (the TFDS-offline case) left every later /health read in its xdist worker refused at once,
# while the server, never reached, logged "Uvicorn running" (three clean-clone runs failed so).
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve(argv: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start an MLflow server or ``mlflow ui`` (``argv`` without its port) on a free localhost
    port, in a process group of its own; wait until it answers /health (two minutes at most,
    then once more on another port). A failure names the last answer or error.

    MLflow 3's job execution (huey consumers and a scheduler) is off: imgtrain logs runs and
    models, never jobs, and the suite's 2 cores are better spent on the tests."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    last: object = "no reply"
    for _attempt in (1, 2):
        port = free_port()
        proc = subprocess.Popen(
            argv + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=cwd,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            try:
                with LOCAL.open(f"{uri}/health", timeout=30) as reply:
                    if reply.status == 200:
                        return proc, uri
                    last = f"HTTP {reply.status}"
            except OSError as e:
                last = e
            time.sleep(0.5)
        stop(proc)
    pytest.fail(f"{' '.join(argv)} did not answer /health, twice (last: {last}):\n" + log.read_text()[-3000:])


@contextlib.contextmanager
def mlflow_server_in(root: Path) -> Iterator[str]:
    """``mlflow server`` as a team runs one (a SQLite backend, a local artifact root) in
    ``root``, on a free localhost port; its URI while the ``with`` lasts."""
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        str(Path(sys.prefix) / "bin" / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
    ]
    proc, uri = serve(argv + ["--default-artifact-root", str(root / "artifacts")], root, root / "server.log")
    try:
        yield uri
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def user(tmp_path: Path) -> User:
    return User(make_home(tmp_path / "home"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> User:
    """A user whose runs/photos was trained once per session by the README's train command (3
    epochs, with a mid-epoch checkpoint every 2 steps and rotations: ``TRAINED``). Journeys that
    only read it use it as it is; those that move or resume it take ``trained_copy``;
    tests/journeys/test_resume.py compares its resumed runs with its weights."""
    u = User(make_home(tmp_path_factory.mktemp("trained") / "home"))
    u.ok(TRAINED)
    return u


def bench_quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict]:
    """The README's ``imgtrain bench`` with ``--quick`` (every figure at tiny sizes) and the XLA
    and mixed-precision figures from a user's folder: what it printed, and the figures its
    ``--json`` wrote. tests/conftest.py's ``bench_quick`` fixture runs it once per session for
    the journey and tests/test_bench.py."""
    u = User(make_home(tmp_path_factory.mktemp("bench") / "home", per_class=0))
    options = " --quick --jit-compile --mixed-precision --json bench.json"
    result = u.ok(readme.command(".venv/bin/imgtrain bench") + options, timeout=900)
    return result, json.loads((u.cwd / "bench.json").read_text())


@pytest.fixture
def trained_copy(trained: User, tmp_path: Path) -> User:
    """A folder of this test's own holding a copy of ``trained``'s photos/ and runs/photos."""
    home = make_home(tmp_path / "home", per_class=0)
    shutil.copytree(trained.cwd / "photos", home / "photos")
    shutil.copytree(trained.cwd / "runs" / "photos", home / "runs" / "photos")
    return User(home)
