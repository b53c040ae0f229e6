"""Per-example predictions on the test split, for what summed metrics cannot tell: which
images are wrong, how confident the model was, and whether that confidence means anything.

The summed quantities (``train.loop.evaluate_sums``) are what every worker computes and
reduces; this pass runs on the chief alone over the whole split (one shard), in the order
``DataSource.example_keys`` names, so it needs no collective op and no other worker waits.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import tensorflow as tf


@dataclass
class Predictions:
    keys: list[str]
    labels: np.ndarray  # true class per example
    predicted: np.ndarray  # top-1 class per example
    confidence: np.ndarray  # the top-1 probability
    # the most confident errors: (confidence, position, image as uint8), most confident first
    worst: list[tuple[float, int, np.ndarray]] = field(default_factory=list)

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predicted


def collect(model: Any, batches: tf.data.Dataset, keys: Sequence[str], keep_images: int = 16) -> Predictions:
    """Run ``model`` (logits) over ``(pixels, label, weight, real)`` batches; padding rows
    (``real == 0``) are left out."""
    labels, predicted, confidence = [], [], []
    heap: list[tuple[float, int, np.ndarray]] = []  # min-heap of the most confident errors so far
    seen = 0
    for x, y, _w, real in batches:
        keep = real.numpy() > 0
        probs = tf.nn.softmax(tf.cast(model(x, training=False), tf.float32), axis=-1).numpy()[keep]
        y, images = y.numpy()[keep], x.numpy()[keep]
        top, conf = probs.argmax(-1), probs.max(-1)
        for i in np.flatnonzero(top != y):
            item = (float(conf[i]), seen + int(i), np.clip(images[i], 0, 255).astype(np.uint8))
            if len(heap) < keep_images:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)
        labels.append(y)
        predicted.append(top)
        confidence.append(conf)
        seen += len(y)
    return Predictions(
        list(keys)[:seen] + [f"test[{i}]" for i in range(len(keys), seen)],
        _concat(labels, np.int64),
        _concat(predicted, np.int64),
        _concat(confidence, np.float64),
        sorted(heap, key=lambda t: (-t[0], t[1])),
    )


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def misclassified(p: Predictions, class_names: Sequence[str], cap: int = 200) -> list[dict[str, Any]]:
    """The wrong predictions, most confident first (the ones to look at), at most ``cap``."""
    wrong = np.flatnonzero(~p.correct)
    order = wrong[np.lexsort((wrong, -p.confidence[wrong]))][:cap]
    return [
        {
            "path": p.keys[i],
            "true": class_names[int(p.labels[i])],
            "predicted": class_names[int(p.predicted[i])],
            "confidence": round(float(p.confidence[i]), 4),
        }
        for i in order
    ]
