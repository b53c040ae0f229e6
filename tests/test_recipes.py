"""Training recipes: RandAugment, random erasing, MixUp/CutMix, EMA, the eval centre crop."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgtrain.config import AugmentConfig, OptimizerConfig, RandAugmentConfig, RandomErasingConfig
from imgtrain.data import randaugment as ra
from imgtrain.data.augment import augment
from imgtrain.data.images import central_crop, eval_image
from imgtrain.train.losses import cross_entropy
from imgtrain.train.mixing import MixSettings, cutmix_mask, mix_batch, mixed_loss
from imgtrain.train.optim import build_optimizer

SEED = tf.constant([3, 4], tf.int64)


def image(seed: int = 0, size: int = 24) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).uniform(0, 255, (size, size, 3)), tf.float32)


@pytest.mark.parametrize("index", range(len(ra.OP_NAMES)))
def test_each_randaugment_op_is_seeded_and_stays_in_range(index: int):
    x = image()
    ops = ra._ops(1.0, tf.shape(x))
    a, b = ops[index](x, SEED), ops[index](x, SEED)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    assert float(tf.reduce_min(a)) >= 0.0 and float(tf.reduce_max(a)) <= 255.0
    if ra.OP_NAMES[index] != "identity":
        assert not np.array_equal(a, x), ra.OP_NAMES[index]


def test_equalize_matches_pil():
    from PIL import Image, ImageOps

    pixels = np.random.default_rng(5).integers(40, 120, (16, 16, 3)).astype(np.uint8)
    want = np.asarray(ImageOps.equalize(Image.fromarray(pixels)), np.float32)
    np.testing.assert_array_equal(ra._equalize(tf.constant(pixels, tf.float32)).numpy(), want)


def test_randaugment_depends_on_the_seed_alone():
    cfg = RandAugmentConfig(num_ops=2, magnitude=9)
    x = image(1)
    first = ra.randaugment(x, SEED, cfg)
    np.testing.assert_array_equal(first, ra.randaugment(x, SEED, cfg))
    others = [ra.randaugment(x, tf.constant([3, k], tf.int64), cfg).numpy() for k in range(5, 12)]
    assert any(not np.array_equal(first, o) for o in others)


def test_random_erasing_box_and_probability():
    x = tf.fill([32, 32, 3], 10.0)
    on = RandomErasingConfig(probability=1.0, area=[0.1, 0.2], fill="mean")
    out = ra.random_erasing(x, SEED, on).numpy()
    changed = np.any(out != 10.0, axis=-1)
    assert 0.05 * 1024 <= changed.sum() <= 0.25 * 1024  # one box of about the asked area
    rows, cols = np.nonzero(changed)
    assert changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a rectangle
    np.testing.assert_array_equal(out, ra.random_erasing(x, SEED, on))
    off = RandomErasingConfig(probability=0.0)
    np.testing.assert_array_equal(ra.random_erasing(x, SEED, off), x)


def test_augment_with_every_recipe_is_deterministic():
    cfg = AugmentConfig(
        horizontal_flip=True,
        rotation=15,
        zoom=0.1,
        brightness=0.1,
        contrast=0.1,
        randaugment=RandAugmentConfig(num_ops=2, magnitude=9),
        random_erasing=RandomErasingConfig(probability=0.5),
    )
    x = image(2)
    a = augment(x, SEED, cfg)
    np.testing.assert_array_equal(a, augment(x, SEED, cfg))
    assert float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 255


def test_mixup_blends_with_the_reversed_batch():
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)), tf.float32)
    out, lam = mix_batch(x, MixSettings(mixup=0.4), SEED)
    lam = float(lam)
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-3)
    again, lam2 = mix_batch(x, MixSettings(mixup=0.4), SEED)
    np.testing.assert_array_equal(out, again)


def test_cutmix_box_area_is_the_corrected_lambda():
    x = tf.zeros((2, 20, 20, 3))
    partner_marked = tf.concat([tf.ones((1, 20, 20, 3)), tf.zeros((1, 20, 20, 3))], axis=0)
    out, lam = mix_batch(x + partner_marked, MixSettings(cutmix=1.0), SEED)
    pasted = np.asarray(out[1, ..., 0])  # example 1's partner is example 0, all ones
    np.testing.assert_allclose(pasted.mean(), 1.0 - float(lam), atol=1e-6)
    mask, corrected = cutmix_mask(tf.constant(10), tf.constant(10), tf.constant(0.75), SEED)
    np.testing.assert_allclose(1.0 - float(tf.reduce_mean(mask)), float(corrected), atol=1e-6)


def test_mixed_loss_equals_the_soft_target_loss():
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    y = tf.constant([0, 2, 1, 1])
    lam, smoothing = 0.7, 0.1

    def ce(labels):
        return cross_entropy(labels, logits, 3, smoothing)

    # Equal weights: exactly the cross-entropy against the mixed, smoothed soft target.
    onehot = np.eye(3)[y.numpy()]
    smooth = onehot * (1 - smoothing) + smoothing / 3
    soft = lam * smooth + (1 - lam) * smooth[::-1]
    logp = tf.nn.log_softmax(logits).numpy()
    want = -(soft * logp).sum(axis=1)
    got = mixed_loss(ce, y, tf.ones(4), tf.constant(lam), True).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Example and class weights: each share carries its own example's weight.
    w = np.array([1.0, 2.0, 0.5, 0.0], np.float32)
    got = mixed_loss(ce, y, tf.constant(w), tf.constant(lam), True).numpy()
    by_target = lambda t: -(t * logp).sum(axis=1)  # noqa: E731
    want = lam * by_target(smooth) * w + (1 - lam) * by_target(smooth[::-1]) * w[::-1]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ema_weights_are_the_running_average():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = build_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1, momentum=0.0), 0.1, ema_decay=0.8)
    opt.build(model.trainable_variables)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    expected = None
    for _ in range(4):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x) ** 2)
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        current = [v.numpy().copy() for v in model.trainable_variables]
        expected = current if expected is None else [0.8 * e + 0.2 * c for e, c in zip(expected, current)]
    raw = [v.numpy().copy() for v in model.trainable_variables]
    opt.finalize_variable_values(model.trainable_variables)
    for e, v, r in zip(expected, model.trainable_variables, raw):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)
        assert not np.allclose(e, r)


def test_central_crop_is_timms_crop_pct():
    x = tf.reshape(tf.range(100 * 80 * 3, dtype=tf.float32), (100, 80, 3))
    crop = central_crop(x, [32, 32], 0.875)
    assert crop.shape == (70, 70, 3)  # 0.875 of the shorter side, square like the output
    np.testing.assert_array_equal(crop, x[15:85, 5:75])
    np.testing.assert_array_equal(central_crop(x, [32, 32], None), x)
    assert eval_image(x, [32, 32], 0.875).shape == (32, 32, 3)
