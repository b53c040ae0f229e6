"""Batch-level MixUp and CutMix, inside the training step, seeded per step.

MixUp (Zhang et al. 2018) blends every image with a partner,
``lam * x + (1 - lam) * x_partner``; CutMix (Yun et al. 2019) pastes a box of
the partner whose area is ``1 - lam`` of the image. The partner of example
``i`` is example ``B - 1 - i`` of the same replica's batch (the batch
reversed, as timm does), ``lam`` is drawn from ``Beta(alpha, alpha)`` once
per batch, and CutMix's ``lam`` is corrected to the box's real area after
clipping at the border.

The loss of a mixed example is ``lam`` times the loss of its own target plus
``1 - lam`` times its partner's, each with that example's weight, class
weight and ``real`` flag; label smoothing is linear in the target, so this
equals the cross-entropy against the mixed soft target (a test checks it).

Keras 3 has ``MixUp`` and ``CutMix`` layers, but they draw from a stateful
``SeedGenerator``: their choices depend on how many batches came before in
this process, not on (seed, epoch, step), so a resumed run would mix
differently. The ops here take an explicit stateless seed instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from imgtrain.config import AugmentConfig


@dataclass(frozen=True)
class MixSettings:
    mixup: float = 0.0  # Beta alpha; 0: off
    cutmix: float = 0.0
    switch_prob: float = 0.5  # with both on: chance of CutMix
    prob: float = 1.0  # chance a batch is mixed at all

    @classmethod
    def from_config(cls, cfg: AugmentConfig) -> "MixSettings":
        return cls(cfg.mixup, cfg.cutmix, cfg.mix_switch_prob, cfg.mix_prob)

    @property
    def active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


def sample_beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """One draw of Beta(alpha, alpha) from two stateless gamma draws."""
    g = tf.random.stateless_gamma([2], seed=seed, alpha=alpha, dtype=tf.float32)
    return g[0] / tf.maximum(g[0] + g[1], 1e-12)


def cutmix_mask(height: tf.Tensor, width: tf.Tensor, lam: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A [H, W, 1] mask, 1 inside a box of area ~(1 - lam) at a random centre, and the
    corrected lam (the share of the image left outside the box)."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    cut = tf.sqrt(1.0 - lam)
    centre = tf.random.stateless_uniform([2], seed=seed)
    cy, cx = centre[0] * h, centre[1] * w
    y0 = tf.clip_by_value(tf.round(cy - cut * h / 2), 0.0, h)
    y1 = tf.clip_by_value(tf.round(cy + cut * h / 2), 0.0, h)
    x0 = tf.clip_by_value(tf.round(cx - cut * w / 2), 0.0, w)
    x1 = tf.clip_by_value(tf.round(cx + cut * w / 2), 0.0, w)
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    corrected = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return tf.cast(inside, tf.float32)[..., None], corrected


def mix_batch(images: tf.Tensor, settings: MixSettings, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mix one replica's batch; returns (images, lam), partners being the reversed batch.

    ``lam`` is a scalar: 1 when this batch is left unmixed.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    partner = tf.reverse(images, axis=[0])
    do_mix = tf.random.stateless_uniform([], seed=seeds[0]) < settings.prob
    if settings.mixup > 0 and settings.cutmix > 0:
        use_cutmix = tf.random.stateless_uniform([], seed=seeds[1]) < settings.switch_prob
    else:
        use_cutmix = tf.constant(settings.cutmix > 0)
    alpha_mix, alpha_cut = max(settings.mixup, 1e-3), max(settings.cutmix, 1e-3)

    def mixup():
        lam = sample_beta(seeds[2], alpha_mix)
        out = lam * tf.cast(images, tf.float32) + (1.0 - lam) * tf.cast(partner, tf.float32)
        return tf.cast(out, images.dtype), lam

    def cutmix():
        lam = sample_beta(seeds[3], alpha_cut)
        mask, lam = cutmix_mask(tf.shape(images)[1], tf.shape(images)[2], lam, seeds[4])
        out = tf.cast(images, tf.float32) * (1.0 - mask) + tf.cast(partner, tf.float32) * mask
        return tf.cast(out, images.dtype), lam

    def mixed():
        return tf.cond(use_cutmix, cutmix, mixup)

    return tf.cond(do_mix, mixed, lambda: (images, tf.constant(1.0)))


def partner(values: tf.Tensor) -> tf.Tensor:
    """What each example's partner holds (the reversed batch)."""
    return tf.reverse(values, axis=[0])


def mixed_loss(
    per_target: Callable[[tf.Tensor], tf.Tensor], y: tf.Tensor, weight: tf.Tensor, lam: tf.Tensor, mixing: bool
) -> tf.Tensor:
    """Per-example loss of a possibly mixed batch: ``lam`` x the loss against each example's own
    label, with its own weight, plus ``1 - lam`` x the loss against its partner's label, with the
    partner's weight. ``per_target(labels)`` is the per-example (smoothed) cross-entropy."""
    loss = lam * per_target(y) * weight
    if mixing:
        loss += (1.0 - lam) * per_target(partner(y)) * partner(weight)
    return loss
