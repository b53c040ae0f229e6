"""Validation and test as sums: one step's summed loss, hits, counts and confusion matrix, and
their totals over a whole dataset across every worker (exact under any sharding), then the
metrics they make."""

from __future__ import annotations

import math
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from imgtrain.config import reports_top_k
from imgtrain.stop import Abandoned
from imgtrain.train.distribution import Distribution
from imgtrain.train.early_stopping import standard_error
from imgtrain.train.losses import cross_entropy


def make_eval_step(model: keras.Model, dist: Distribution, num_classes: int, top_k: int = 5) -> Callable:
    """A step returning summed loss, hits, counts and the confusion matrix of one batch."""

    def replica(x, y, w, real):
        logits = tf.cast(model(x, training=False), tf.float32)
        per_ex = cross_entropy(y, logits, num_classes)
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        k = min(top_k, num_classes)
        real64 = tf.cast(real, tf.float64)
        topk = tf.cast(tf.math.in_top_k(y, logits, k), tf.float64) * real64
        cm = tf.math.confusion_matrix(y, pred, num_classes=num_classes, weights=real64, dtype=tf.float64)
        weighted = tf.cast(per_ex * w, tf.float64) * real64
        return {
            "loss_sum": tf.reduce_sum(weighted),
            "loss_sq_sum": tf.reduce_sum(weighted * tf.cast(per_ex * w, tf.float64)),
            "correct": tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float64) * real64),
            "topk_correct": tf.reduce_sum(topk),
            "count": tf.reduce_sum(real64),
            "confusion": cm,
        }

    @tf.function
    def step(batch):
        return dist.reduce_sum(dist.run(replica, batch))

    return step


def evaluate_sums(
    model: keras.Model,
    dist: Distribution,
    dataset_fn: Callable[[], tf.data.Dataset],
    num_classes: int,
    top_k: int = 5,
    progress: bool = False,
    desc: str = "evaluating",
    step: Optional[Callable] = None,
    abandon: Callable[[int], bool] = lambda _i: False,
) -> dict[str, np.ndarray]:
    """Sum the evaluation quantities over a whole dataset (across all workers): exact under any sharding.
    ``step``: a step from ``make_eval_step`` to reuse (it is traced once per model). ``abandon(i)``
    before batch i: True raises ``Abandoned`` (every worker must ask at the same batches)."""
    step = step or make_eval_step(model, dist, num_classes, top_k)
    totals: dict[str, np.ndarray] = {
        "loss_sum": np.float64(0),
        "loss_sq_sum": np.float64(0),
        "correct": np.float64(0),
        "topk_correct": np.float64(0),
        "count": np.float64(0),
        "confusion": np.zeros((num_classes, num_classes), np.float64),
    }
    batches = dist.distribute(dataset_fn)
    for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress)):
        if abandon(i):
            raise Abandoned("validation")
        out = step(batch)
        for key in totals:
            totals[key] = totals[key] + out[key].numpy()
    return totals


def summarize(totals: dict[str, np.ndarray], prefix: str = "val_", top_k: int = 5) -> dict[str, float]:
    """The mean loss and accuracy, their standard errors over the examples (how far another
    draw of as many images could move them: early stopping's noise margin), and top-k."""
    n = max(float(totals["count"]), 1.0)
    loss, accuracy = float(totals["loss_sum"]) / n, float(totals["correct"]) / n
    spread = max(float(totals["loss_sq_sum"]) / n - loss * loss, 0.0)
    logs = {
        f"{prefix}loss": loss,
        f"{prefix}accuracy": accuracy,
        standard_error(f"{prefix}loss"): math.sqrt(spread / n),
        standard_error(f"{prefix}accuracy"): math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n),
    }
    if reports_top_k(totals["confusion"].shape[0], top_k):
        logs[f"{prefix}top{top_k}_accuracy"] = float(totals["topk_correct"]) / n
    return logs
