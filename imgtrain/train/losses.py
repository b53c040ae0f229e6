"""The training objective's parts: per-example cross-entropy and per-class loss weights.

Losses here are per example and unreduced: the loop multiplies by example and class
weights and sums, and the sums (not means) are what replicas and workers reduce, so the
loss of a global batch is the same however it is split.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf

from imgtrain.errors import UserError


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float = 0.0) -> tf.Tensor:
    """Per-example softmax cross-entropy on integer labels, with optional label smoothing."""
    onehot = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    return keras.losses.categorical_crossentropy(onehot, logits, from_logits=True, label_smoothing=smoothing)


def class_weight_vector(spec, class_names: Sequence[str], train_labels: Sequence[int]) -> list[float]:
    """Per-class loss weights: none (all 1), 'balanced' (n / (k * count)), or a mapping."""
    k = len(class_names)
    if spec is None:
        return [1.0] * k
    if spec == "balanced":
        counts = [0] * k
        for y in train_labels:
            counts[y] += 1
        n = sum(counts)
        return [n / (k * c) if c else 0.0 for c in counts]
    unknown = [name for name in spec if name not in class_names]
    if unknown:
        raise UserError(
            f"train.class_weights names class '{unknown[0]}', which is not in the data; classes are {list(class_names)}"
        )
    weights = [float(spec.get(name, 1.0)) for name in class_names]
    bad = [(n, w) for n, w in zip(class_names, weights) if not math.isfinite(w) or w < 0]
    if bad:
        raise UserError(
            f"train.class_weights for class '{bad[0][0]}' is {bad[0][1]}; class weights must be finite and >= 0"
        )
    if not any(weights):
        raise UserError(
            "every train.class_weights value is 0, so nothing would be learned; give some class a weight > 0"
        )
    return weights
