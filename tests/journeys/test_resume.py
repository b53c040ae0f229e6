"""Journey: train, kill it after early stopping, run the same command again; raise --epochs on a
finished run. Every rerun ends where an uninterrupted run ends. (SIGKILL and Ctrl-C mid-epoch,
and at every other moment of a run: tests/test_preemption.py's crash-point sweep.)"""

from __future__ import annotations

import signal

import pytest

from journeys.journey import MID_EPOCH, SMALL, TRAIN, User, fingerprint, make_home

pytestmark = pytest.mark.slow

STOP_EARLY = (
    "--set train.early_stopping.patience=1 --set train.early_stopping.monitor=val_accuracy "
    "--set train.early_stopping.min_delta=0.5 --set train.early_stopping.noise_band=0"
)


@pytest.fixture(scope="module")
def whole(trained: User, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Fingerprints of uninterrupted runs: the session's ``TRAINED`` (3 epochs), and the
    early-stopping setup."""
    user = User(make_home(tmp_path_factory.mktemp("whole") / "home"))
    user.ok(f"{TRAIN} {SMALL} {STOP_EARLY} --epochs 10 --output runs/early")
    return {"3": fingerprint(trained.cwd / "runs/photos"), "early": fingerprint(user.cwd / "runs/early")}


def test_killed_after_early_stopping_then_the_same_command(user: User, whole: dict[str, int]) -> None:
    command = f"{TRAIN} {SMALL} {STOP_EARLY} --epochs 10 --output runs/early"
    killed = user.interrupt(command, lambda out: "\nearly stopping:" in out)
    assert killed.code == -signal.SIGKILL, killed.out[-2000:]
    again = user.ok(command)
    assert "epoch 2/10" not in again.out, "trained again after early stopping"
    assert fingerprint(user.cwd / "runs/early") == whole["early"]
    third = user.ok(command)
    assert "nothing to train" in third.out


def test_more_epochs_on_a_finished_run(user: User, whole: dict[str, int]) -> None:
    user.ok(f"{TRAIN} {SMALL} {MID_EPOCH} --epochs 2")
    again = user.ok(f"{TRAIN} {SMALL} {MID_EPOCH} --epochs 3")
    assert "2 epoch(s) done, continuing at epoch 3" in again.out, again.out[-2000:]
    assert fingerprint(user.cwd / "runs/photos") == whole["3"]
    same = user.ok(f"{TRAIN} {SMALL} {MID_EPOCH} --epochs 3")
    assert "nothing to train" in same.out
    assert "3 epoch(s) done" in same.out and "continuing at" not in same.out, same.out[-2000:]  # no epoch 4 promised
