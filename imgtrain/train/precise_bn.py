"""Precise BatchNorm: re-estimate the moving statistics before the model is evaluated.

A BatchNorm layer normalises training batches with their own statistics but
evaluates with a moving average that moves by ``1 - momentum`` per step. At
Keras' default momentum (0.99) the average needs a few hundred steps to
forget its initial values, so on a small folder (a handful of steps per
epoch) every evaluation runs with statistics that match no real activations:
training accuracy climbs while validation accuracy stays at chance. The fix
does not depend on momentum or data size: before each evaluation, run the
model in training mode over some training batches and set each layer's
statistics to the average of the batch statistics it saw (Wu & Johnson,
"Rethinking 'Batch' in BatchNorm", 2021; pycls' precise BN).

Invariants:
- The statistics are sums over every replica of every worker, reduced like
  every other metric, so all workers assign identical values.
- The pass leaves nothing else changed: every other non-trainable variable
  (dropout seed generators among them) is restored afterwards, so a run with
  it differs from one without only in the BatchNorm statistics, and a resumed
  run, which repeats the same pass, stays bit-identical.
- Only layers that actually normalise with batch statistics change; a frozen
  layer or a base called in inference mode keeps its values exactly.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Optional

import keras
import numpy as np
import tensorflow as tf

from imgtrain.config import AugmentConfig
from imgtrain.models.phases import batchnorm_layers
from imgtrain.stop import Abandoned
from imgtrain.train.distribution import Distribution
from imgtrain.train.inputs import model_input


def batches_for(samples: int, global_batch: int, steps_per_epoch: int) -> int:
    """How many training steps feed the estimate: enough for ``samples`` images, at most the
    steps of an epoch but one (those batches are full on every worker), at least one."""
    wanted = math.ceil(samples / max(1, global_batch))
    return max(1, min(wanted, steps_per_epoch - 1))


def needed(setting: Optional[bool], layers: list, steps_per_epoch: int) -> bool:
    """Whether to re-estimate: as set, or (``None``, auto) when a moving average still carries
    more than 5% of what it held an epoch ago, i.e. ``momentum ** steps_per_epoch > 0.05``
    (at momentum 0.99: epochs under 300 steps). Longer epochs leave averages that track the
    weights, and the extra forward passes would buy nothing."""
    if setting is not None:
        return bool(setting) and bool(layers)
    return any(float(layer.momentum) ** max(1, steps_per_epoch) > 0.05 for layer in layers)


@contextlib.contextmanager
def _zero_momentum(layers: list) -> Iterator[None]:
    """With momentum 0 a training-mode call writes the batch's own statistics into the moving
    variables, where the step reads them; momentum is a Python float read when the step is traced."""
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, m in zip(layers, saved):
            layer.momentum = m


class PreciseBatchNorm:
    """Re-estimates the statistics of a model's BatchNorm layers from training batches."""

    def __init__(
        self,
        model: keras.Model,
        dist: Distribution,
        layers: Optional[list[keras.layers.Layer]] = None,
        on_device: Optional[AugmentConfig] = None,
    ) -> None:
        self.model = model
        self.dist = dist
        self.on_device = on_device  # data.augment.on_device: what the step applies to each batch
        self.layers = batchnorm_layers(model) if layers is None else list(layers)
        self._step: Callable | None = None

    @property
    def active(self) -> bool:
        return bool(self.layers)

    def _make_step(self) -> Callable:
        model, layers, dist = self.model, self.layers, self.dist

        def replica(x, y, w, real, *_key):
            x = model_input(x, self.on_device)  # as the training step feeds it
            model(x, training=True)
            n = tf.cast(tf.shape(x)[0], tf.float64)
            stats = [
                (tf.cast(layer.moving_mean, tf.float64) * n, tf.cast(layer.moving_variance, tf.float64) * n)
                for layer in layers
            ]
            return stats, n

        def step(iterator):
            return dist.reduce_sum(dist.run(replica, next(iterator)))

        return tf.function(step)

    def __call__(
        self,
        dataset_fn: Callable[[], tf.data.Dataset],
        batches: int,
        abandon: Callable[[int], bool] = lambda _i: False,
    ) -> int:
        """Estimate from the first ``batches`` steps of ``dataset_fn``; returns the images used.
        ``abandon(i)`` before step i: True puts every statistic back and raises ``Abandoned``."""
        if not self.layers or batches < 1:
            return 0
        keep = [(v, keras.ops.convert_to_numpy(v)) for v in self.model.non_trainable_variables]
        if self._step is None:
            self._step = self._make_step()
        sums = [(np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)) for layer in self.layers]
        total = 0.0
        iterator = iter(self.dist.distribute(dataset_fn))
        with _zero_momentum(self.layers):
            for i in range(batches):
                if abandon(i):
                    for var, value in keep:
                        var.assign(value)
                    raise Abandoned("precise BN")
                stats, n = self._step(iterator)
                total += float(n)
                for acc, (m, v) in zip(sums, stats):
                    acc[0][...] += m.numpy()
                    acc[1][...] += v.numpy()
        for var, value in keep:
            var.assign(value)
        if total > 0:
            for layer, (m, v) in zip(self.layers, sums):
                layer.moving_mean.assign((m / total).astype(layer.moving_mean.dtype))
                layer.moving_variance.assign((v / total).astype(layer.moving_variance.dtype))
        return int(total)
