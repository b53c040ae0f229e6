"""Resume and determinism: a stopped or killed run continues and ends where an uninterrupted one does."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_folder

from imgtrain.run import train_run

pytestmark = pytest.mark.slow


def weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


FAST = (
    "model.cnn.dropout=0.2",
    "data.augment.rotation=10",
    "data.augment.horizontal_flip=true",
    "train.early_stopping.patience=50",
    "deterministic=true",
)


def test_same_seed_same_weights_and_stop_then_resume(image_folder, small_config, tmp_path, capsys):
    a = small_config(image_folder, tmp_path / "a", FAST)
    train_run(a, progress=False)
    b = small_config(image_folder, tmp_path / "b", FAST)
    train_run(b, progress=False)
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"))  # same seed, same weights

    c1 = small_config(image_folder, tmp_path / "c", FAST + ("train.epochs=1",))
    train_run(c1, progress=False)
    capsys.readouterr()
    c = small_config(image_folder, tmp_path / "c", FAST)
    summary = train_run(c, progress=False)
    out = capsys.readouterr().out
    assert "1 epoch(s) done, continuing at epoch 2" in out
    assert summary["resumed_from_epoch"] == 1 and summary["epochs_completed"] == 3
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "c"))

    other = small_config(image_folder, tmp_path / "d", FAST + ("seed=99",))
    train_run(other, progress=False)
    assert any(not np.array_equal(x, y) for x, y in zip(weights(tmp_path / "a"), weights(tmp_path / "d")))


def back_to_ckpt5(index: Path) -> None:
    """Point the checkpoint index back at the mid-epoch save ckpt-5, as it stood right after it:
    a crash at that moment, without killing a process."""
    index.write_text(
        'model_checkpoint_path: "ckpt-5"\nall_model_checkpoint_paths: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-5"\n'
    )


# Every training recipe at once: each draws from (seed, epoch, example or step) or keeps its
# state in the checkpoint, so a resumed run must still end bit for bit where a whole one does.
RECIPES = (
    "data.augment.random_resized_crop=true",
    "data.augment.randaugment={num_ops: 2, magnitude: 9}",
    "data.augment.random_erasing.probability=0.5",
    "data.augment.mixup=0.4",
    "data.augment.cutmix=1.0",
    "train.ema.decay=0.9",
    "train.schedule.name=plateau",
    "train.schedule.plateau_patience=0",
    "train.schedule.warmup_epochs=1",
    "train.label_smoothing=0.1",
    "train.class_weights=balanced",
    "train.precise_bn.enabled=true",
)


@pytest.mark.parametrize("recipes", [(), RECIPES], ids=["plain", "every-recipe"])
def test_mid_epoch_checkpoint_resume(image_folder, small_config, tmp_path, capsys, recipes):
    extra = FAST + ("train.checkpoint.every_steps=2",) + recipes
    train_run(small_config(image_folder, tmp_path / "a", extra), progress=False)
    # Run b: a first run that stops after epoch 1, then a resumed one from a *mid-epoch* checkpoint.
    run_b = tmp_path / "b"
    train_run(small_config(image_folder, run_b, extra + ("train.epochs=2",)), progress=False)
    # Simulate a crash right after the mid-epoch save at step 4 of epoch 2 (5 steps per epoch, a save
    # every 2 steps): point the checkpoint index back at that save, as it stood at that moment.
    index = run_b / "checkpoints" / "checkpoint"
    assert 'model_checkpoint_path: "ckpt-6"' in index.read_text()
    back_to_ckpt5(index)
    summary = train_run(small_config(image_folder, run_b, extra), progress=False)
    assert summary["resumed_from_epoch"] == 1
    assert "continuing at epoch 2, step 5" in capsys.readouterr().out
    assert_same(weights(tmp_path / "a"), weights(run_b))


def test_steps_per_execution_same_weights_and_exact_resume(image_folder, small_config, tmp_path, capsys):
    """Three steps per call (cut at the mid-epoch checkpoints and the epoch's end) train the
    same weights as one per call, and resume from a mid-epoch checkpoint as exactly."""
    extra = FAST + ("train.checkpoint.every_steps=2",) + RECIPES[:5]
    train_run(small_config(image_folder, tmp_path / "one", extra), progress=False)
    multi = extra + ("train.steps_per_execution=3",)
    train_run(small_config(image_folder, tmp_path / "three", multi), progress=False)
    assert_same(weights(tmp_path / "one"), weights(tmp_path / "three"))
    run_b = tmp_path / "resumed"
    train_run(small_config(image_folder, run_b, multi + ("train.epochs=2",)), progress=False)
    index = run_b / "checkpoints" / "checkpoint"
    back_to_ckpt5(index)
    capsys.readouterr()
    train_run(small_config(image_folder, run_b, multi), progress=False)
    assert "continuing at epoch 2, step" in capsys.readouterr().out
    assert_same(weights(tmp_path / "one"), weights(run_b))


def test_resume_refuses_a_different_setup(image_folder, small_config, tmp_path):
    from imgtrain.errors import UserError

    train_run(small_config(image_folder, tmp_path / "r", ("train.epochs=1",)), progress=False)
    with pytest.raises(UserError, match="holds a run trained with model.cnn.filters"):
        train_run(small_config(image_folder, tmp_path / "r", ("model.cnn.filters=[4]",)), progress=False)


def _cli(data: Path, run: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imgtrain",
        "train",
        "--data",
        str(data),
        "--output",
        str(run),
        "--epochs",
        str(epochs),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--seed",
        "5",
        "--deterministic",
        "--no-progress",
        "--set",
        "model.cnn.filters=[8,16]",
        "--set",
        "model.cnn.convs_per_block=1",
        "--set",
        "train.early_stopping.patience=50",
        "--set",
        "data.augment.rotation=10",
    ]


@pytest.mark.parametrize("on_device", [False, True])
def test_sigkill_after_epoch_one_then_resume(tmp_path, on_device: bool):
    """Run as the README writes it: relative --data and --output from the user's folder; with
    the augmentation in tf.data (OpenCV) and in the training step (data.augment.on_device)."""
    write_folder(tmp_path / "img", per_class=60, size=16)
    data, env = Path("img"), {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    extra = ["--set", "data.augment.on_device=true", "--set", "data.augment.brightness=0.1"] if on_device else []
    subprocess.run(_cli(data, Path("runs/whole"), 3) + extra, check=True, env=env, capture_output=True, cwd=tmp_path)

    run = Path("runs/killed")
    cmd = _cli(data, run, 3) + extra
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    index = tmp_path / run / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if index.exists() and "ckpt-1" in index.read_text():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / run / "model.keras").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 epoch(s) done, continuing at epoch 2" in again.stdout
    assert "cannot be read" not in again.stdout + again.stderr
    assert_same(weights(tmp_path / "runs/whole"), weights(tmp_path / run))  # augmented alike, resumed exactly
    record = json.loads((tmp_path / run / "run.json").read_text())
    if on_device:  # nothing left for tf.data to resample: the rotation is the step's
        assert record["resampler"] is None and record["augment_on_device"] == "CPU"
        assert "flips, affine and colour in the training step on the CPU" in again.stdout
    else:
        assert record["resampler"] == "opencv" and record["augment_on_device"] is None
        assert "augmentation resampled by opencv" in again.stdout


def test_sigkill_after_early_stopping_does_not_train_again(tmp_path):
    data = write_folder(tmp_path / "img", per_class=30, size=16)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    stop_early = [
        "--set",
        "train.early_stopping.patience=1",
        "--set",
        "train.early_stopping.monitor=val_accuracy",
        "--set",
        "train.early_stopping.min_delta=0.5",
    ]
    whole = tmp_path / "whole"
    done = subprocess.run(_cli(data, whole, 10) + stop_early, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "early stopping:" in done.stdout, done.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(data, run, 10) + stop_early, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        if line.startswith("early stopping:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    again = subprocess.run(_cli(data, run, 10) + stop_early, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already stopped early" in again.stdout
    assert not re.search(r"^epoch \d+/10", again.stdout, re.M)  # not one epoch trained
    assert_same(weights(whole), weights(run))
    rerun = subprocess.run(_cli(data, run, 10) + stop_early, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0 and "nothing to train" in rerun.stdout
