"""Precise BN: evaluation statistics re-estimated from training batches, on a small folder."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgtrain.datasets import write_shapes
from imgtrain.train.distribution import make_distribution
from imgtrain.train.precise_bn import PreciseBatchNorm, batches_for, needed


def _model(momentum: float = 0.99) -> keras.Model:
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 1, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=momentum)(x)
    x = keras.layers.Dropout(0.5, seed=1)(x)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))


def test_statistics_are_the_average_of_the_batch_statistics():
    model = _model()
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (8, 4, 4, 2)).astype(np.float32) for _ in range(3)]
    dataset = lambda: tf.data.Dataset.from_tensor_slices(  # noqa: E731
        (np.concatenate(batches), np.zeros(24, np.int32), np.ones(24, np.float32), np.ones(24, np.float32))
    ).batch(8)
    conv, bn = model.layers[1], model.layers[2]
    others = [v.numpy().copy() for v in model.non_trainable_variables if "moving" not in v.path]
    used = PreciseBatchNorm(model, make_distribution("single"))(dataset, 3)
    assert used == 24
    acts = [conv(b).numpy().reshape(-1, 3) for b in batches]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([a.mean(0) for a in acts], axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([a.var(0) for a in acts], axis=0), rtol=1e-4)
    assert bn.momentum == 0.99  # put back
    after = [v.numpy() for v in model.non_trainable_variables if "moving" not in v.path]
    for a, b in zip(others, after):  # dropout seed state and the rest: untouched
        np.testing.assert_array_equal(a, b)


def test_auto_only_when_epochs_are_short():
    layers = [keras.layers.BatchNormalization(momentum=0.99)]
    assert needed(None, layers, 6) and not needed(None, layers, 1000)
    assert not needed(None, [keras.layers.BatchNormalization(momentum=0.9)], 39)
    assert needed(True, layers, 1000) and not needed(False, layers, 6) and not needed(True, [], 6)
    assert batches_for(2048, 16, 6) == 5 and batches_for(16, 16, 100) == 1


@pytest.mark.slow
def test_small_folder_evaluates_with_the_statistics_it_trained_with(tmp_path: Path):
    """The issue's reproduction: 3 classes x 40 shapes, 8 epochs of 6 steps at Keras' momentum 0.99.
    Without precise BN the moving averages barely leave their initial values and the model, run
    in inference mode, does much worse on its own training images than in training mode."""
    from imgtrain.config import Config
    from imgtrain.run import train_run

    data = write_shapes(tmp_path / "shapes")

    def run(name: str, *extra: str) -> tuple[float, float]:
        cfg = Config.load(
            None,
            [
                f"data.path={data}",
                f"output={tmp_path / name}",
                "model.name=cnn",
                "train.epochs=8",
                "data.image_size=[32,32]",
                "train.batch_size=16",
                "seed=1",
                *extra,
            ],
        )
        summary = train_run(cfg, progress=False, log=lambda _m: None)
        model = keras.saving.load_model(tmp_path / name / "model.keras")
        from PIL import Image

        names = sorted(p.name for p in data.iterdir() if p.is_dir())
        x = np.stack(
            [np.asarray(Image.open(f).convert("RGB"), np.float32) for n in names for f in sorted((data / n).iterdir())]
        )
        y = np.array([i for i, n in enumerate(names) for _ in (data / n).iterdir()])
        inference = float((model(x, training=False).numpy().argmax(-1) == y).mean())
        batch_stats = float((model(x, training=True).numpy().argmax(-1) == y).mean())
        return inference - batch_stats, summary["test_accuracy"]

    gap_default, test_default = run("default")
    gap_off, test_off = run("off", "train.precise_bn.enabled=false")
    assert gap_default > -0.05, "inference-mode accuracy should match batch-statistics accuracy"
    assert gap_off < -0.15, "without precise BN the stale moving averages should cost accuracy (the bug)"
    assert test_default >= test_off  # 14 test images: measured 0.79 against 0.57
