"""Resume and determinism: a stopped or crashed run continues and ends where an uninterrupted one
does. Crashes are simulated in-process (the checkpoint index put back as it stood); real signals
are tests/journeys/test_resume.py's and tests/test_preemption.py's."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import small, write_folder

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
MID_EPOCH = ("train.checkpoint.every_steps=2",)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """An uninterrupted run of FAST with a checkpoint every 2 steps (which changes no weight)."""
    root = tmp_path_factory.mktemp("plain")
    train_run(small(write_folder(root / "images"), root / "run", FAST + MID_EPOCH), progress=False)
    return root / "run"


def test_same_seed_same_weights(image_folder, small_config, tmp_path, plain):
    """(A resume at an epoch's end is tests/journeys/test_resume.py's more --epochs.)"""
    train_run(small_config(image_folder, tmp_path / "b", FAST), progress=False)
    assert_same(weights(plain), weights(tmp_path / "b"))  # same seed, same weights
    train_run(small_config(image_folder, tmp_path / "d", FAST + ("seed=99",)), progress=False)
    assert any(not np.array_equal(x, y) for x, y in zip(weights(plain), weights(tmp_path / "d")))


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


# The augmentation in the training step (flips, affine and colour a batch at a time) draws from
# the same seeds and must resume as exactly as the tf.data path.
ON_DEVICE = ("data.augment.on_device=true", "data.augment.brightness=0.1")


@pytest.fixture(scope="module")
def every_recipe(tmp_path_factory) -> Path:
    """An uninterrupted run of FAST with every recipe and a checkpoint every 2 steps."""
    root = tmp_path_factory.mktemp("every_recipe")
    train_run(small(write_folder(root / "images"), root / "run", FAST + MID_EPOCH + RECIPES), progress=False)
    return root / "run"


@pytest.mark.parametrize("recipes", [(), RECIPES, ON_DEVICE], ids=["plain", "every-recipe", "on-device"])
def test_mid_epoch_checkpoint_resume(image_folder, small_config, tmp_path, capsys, recipes, plain, every_recipe):
    extra = FAST + MID_EPOCH + recipes
    if recipes == ON_DEVICE:
        whole = train_run(small_config(image_folder, tmp_path / "a", extra), progress=False)
    else:  # the module's shared uninterrupted run of the same settings
        shared = every_recipe if recipes else plain
        whole = json.loads((shared / "run.json").read_text())
        (tmp_path / "a").symlink_to(shared)
    if recipes == ON_DEVICE:  # nothing left for tf.data to resample: the rotation is the step's
        assert whole["resampler"] is None and whole["augment_on_device"] == "CPU"
        assert "flips, affine and colour in the training step on the CPU" in capsys.readouterr().out
    else:
        assert whole["resampler"] == "opencv" and whole["augment_on_device"] is None
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


def test_steps_per_execution_same_weights_and_exact_resume(image_folder, small_config, tmp_path, capsys, every_recipe):
    """Three steps per call (cut at the mid-epoch checkpoints and the epoch's end) train the
    same weights as one per call, with every recipe, and resume from a mid-epoch checkpoint as
    exactly."""
    (tmp_path / "one").symlink_to(every_recipe)
    multi = FAST + MID_EPOCH + RECIPES + ("train.steps_per_execution=3",)
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


@pytest.mark.parametrize("phase", ["validation", "precise BN"])
def test_a_stop_at_an_epochs_end_abandons_it_and_the_resume_runs_only_the_end(
    image_folder, small_config, tmp_path, capsys, every_recipe, monkeypatch, phase
):
    """SIGTERM as epoch 1's validation (or its precise BN) begins: the run stops at its first
    look at the flag, before a single batch, with the epoch's training kept (EMA and BatchNorm
    statistics put back); the resume trains no step of epoch 1 again, runs its end, and ends
    with the uninterrupted run's weights."""
    import os
    import signal
    import time

    from imgtrain.stop import Stopped
    from imgtrain.train import loop, precise_bn

    looked: list[int] = []  # the batches of the phase at which the flag was looked at
    real_evaluate, real_estimate = loop.evaluate_sums, precise_bn.PreciseBatchNorm.__call__

    def watched(name: str, abandon):
        if name == phase and not looked:
            os.kill(os.getpid(), signal.SIGTERM)  # as the phase begins
            time.sleep(0.05)  # the handler runs
        return (lambda i: looked.append(i) or abandon(i)) if name == phase else abandon

    def evaluate(*args, **kwargs):
        return real_evaluate(*args, **{**kwargs, "abandon": watched("validation", kwargs["abandon"])})

    def estimate(self, dataset_fn, n, abandon=lambda _i: False):
        return real_estimate(self, dataset_fn, n, watched("precise BN", abandon))

    monkeypatch.setattr(loop, "evaluate_sums", evaluate)
    monkeypatch.setattr(precise_bn.PreciseBatchNorm, "__call__", estimate)
    run = tmp_path / "run"
    with pytest.raises(Stopped, match=f"at the end of epoch 1, its {phase}.* abandoned; checkpoint written"):
        train_run(small_config(image_folder, run, FAST + MID_EPOCH + RECIPES), progress=False)
    assert looked == [0], looked  # gone at the first look: nothing of the phase was run
    monkeypatch.undo()
    train_run(small_config(image_folder, run, FAST + MID_EPOCH + RECIPES), progress=False)
    assert "continuing at the end of epoch 1 (its steps are trained)" in capsys.readouterr().out
    assert_same(weights(every_recipe), weights(run))
    done = json.loads((run / "run.json").read_text())["epochs_completed"]
    assert [int(r["epoch"]) for r in _rows(run)] == list(range(1, done + 1))  # each epoch once


def _rows(run: Path) -> list[dict]:
    import csv

    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))
