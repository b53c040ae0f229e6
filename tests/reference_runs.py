"""The suite's shared multi-process runs: one command line per strategy, and each uninterrupted
reference run trained once per session (``references`` in conftest.py).

tests/test_distributed.py compares the two-process references with the single-process one;
tests/test_preemption.py stops runs of the same commands and compares the resumed weights
with the reference of their strategy. Commands run from the references' folder with relative
paths (``photos``, ``runs/<name>``), as a user's shell runs them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import tiny
from journeys import readme

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "launch" / "multiworker.py"
BIN = Path(sys.executable).parent

# No BatchNorm and no dropout: with those, a replica normalises over its own
# per-replica batch and draws its own masks, so no multi-worker run could match
# a single process bit for bit, by design. What remains must match. No warmup either: the
# default warms up only when the rate is scaled for several replicas, which the single run is not.
MODEL = [
    "--set", "train.schedule.warmup_epochs=0",
    "--set", "model.cnn.batch_norm=false",
    "--set", "model.cnn.dropout=0",
    "--set", "model.cnn.head_dropout=0",
    "--set", "train.early_stopping.patience=50",
    "--set", "data.augment.rotation=10",
    "--set", "data.augment.horizontal_flip=true",
    "--seed", "1",
]  # fmt: skip


def horovodrun() -> str:
    exe = shutil.which("horovodrun", path=str(BIN)) or shutil.which("horovodrun")
    if exe is None:
        if os.environ.get("IMGTRAIN_REQUIRE_HOROVOD"):
            pytest.fail(
                "horovodrun is missing, but IMGTRAIN_REQUIRE_HOROVOD is set: launch/install_horovod.sh did not run"
            )
        pytest.skip("Horovod is not installed (launch/install_horovod.sh builds it; make install runs it)")
    return exe


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2"}


def train(run: str, batch: int = 4, lr: float = 0.002, epochs: int = 2) -> list[str]:
    """``imgtrain train``'s arguments: a checkpoint every 3 steps, the stop flag agreed every 2."""
    return [
        "train", "--data", "photos", "--output", run, "--epochs", str(epochs), *tiny.flags().split(),
        "--batch-size", str(batch), "--no-progress", "--deterministic",
        "--set", f"train.optimizer.learning_rate={lr}",
        "--set", "train.checkpoint.every_steps=3", "--set", "train.checkpoint.stop_check_steps=2", *MODEL,
    ]  # fmt: skip


# The README's horovod.sh line, as written (tests/journeys/test_readme.py finds it here), from the
# references' folder, which holds launch/ and a cfg.yaml naming the photos; the flags after it
# set the rest, as a user's would.
HOROVOD_SH = shlex.split(readme.command("launch/horovod.sh -np 2 -- imgtrain train --config cfg.yaml"))
CONFIG_FILE = "data: {path: photos}\n"

# Each command trains the same global batches: the single process takes the two workers'
# batch of 8 at once, with the rate the linear scaling rule gives them (2 x 0.002).
COMMANDS: dict[str, Callable[[str], list[str]]] = {
    "single": lambda run: [sys.executable, "-m", "imgtrain", *train(run, batch=8, lr=0.004)],
    "multiworker": lambda run: [sys.executable, str(LAUNCHER), "--workers", "2", "--", "imgtrain", *train(run)],
    "horovod": lambda run: [horovodrun(), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m",
                            "imgtrain", *train(run), "--strategy", "horovod"],
    "horovod.sh": lambda run: [*HOROVOD_SH, *train(run)[1:]],
}  # fmt: skip


def failure(output: str) -> str:
    """What a failed run printed: the first traceback (the cause; later ones are usually the
    other workers reacting to it) and the last lines."""
    first = output.find("Traceback")
    head = output[first : first + 4000] + "\n...\n" if first >= 0 else ""
    return head + output[-2000:]


def run(cmd: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    from journeys.journey import as_in_a_terminal

    return subprocess.run(
        cmd, cwd=home, env=env(), capture_output=True, text=True, timeout=timeout, preexec_fn=as_in_a_terminal
    )


class References:
    """Uninterrupted runs of ``COMMANDS``, each trained the first time a test asks for it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._done: dict[str, subprocess.CompletedProcess] = {}

    def output(self, strategy: str) -> str:
        """What the reference run of ``strategy`` printed (stdout then stderr)."""
        self.run_dir(strategy)
        done = self._done[strategy]
        return done.stdout + done.stderr

    def run_dir(self, strategy: str) -> Path:
        if strategy not in self._done:
            name = f"runs/{strategy}-whole"
            done = run(COMMANDS[strategy](name), self.home)
            assert done.returncode == 0, failure(done.stdout + done.stderr)
            self._done[strategy] = done
        return self.home / f"runs/{strategy}-whole"
