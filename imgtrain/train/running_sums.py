"""An epoch's training statistics as running sums, kept on the device until asked for, and the
step that runs several training steps per call (their statistics summed)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from imgtrain.errors import UserError
from imgtrain.train.checkpoint import LoopState


def several_steps(step: Callable) -> Callable:
    """``step(iterator, position)`` run ``count`` times in one call (train.steps_per_execution):
    fewer trips from Python to the runtime. Each step applies its own update and draws its own
    seed from its position, so the weights are those of ``count`` single steps; the
    statistics come back summed."""

    def steps(iterator, position, count):
        total = tuple(tf.zeros([], tf.float64) for _ in RunningSums.FIELDS)
        for i in tf.range(count):
            out = step(iterator, position + tf.cast(i, tf.int64))
            total = tuple(a + b for a, b in zip(total, out))
        return total

    return steps


class RunningSums:
    """An epoch's summed training statistics, kept on the device until asked for."""

    FIELDS = ("loss_sum", "correct", "count", "ce_sum")

    def __init__(self, values: Optional[np.ndarray] = None, epoch: int = 0, first_step: int = 0) -> None:
        self.values = np.zeros(4) if values is None else np.asarray(values, np.float64)
        self.pending: list = []
        self.images = 0.0  # trained in this call (a resumed epoch counts from where it resumed)
        self.epoch, self.next_step = epoch, first_step  # where the first pending step sits

    @classmethod
    def from_state(cls, state: LoopState, epoch: int, first_step: int) -> "RunningSums":
        return cls(np.array([state.get(f) for f in cls.FIELDS]), epoch, first_step)

    def add(self, step_out, steps: int = 1) -> None:
        """One call's summed statistics, covering ``steps`` training steps."""
        self.pending.append((step_out, steps))
        if len(self.pending) >= 64:  # bound what waits on the device
            self.flush()

    def flush(self) -> None:
        """Bring pending steps to the host; a non-finite loss stops the run here, before any
        checkpoint holds its weights (what Keras' TerminateOnNaN does for fit)."""
        if self.pending:
            rows = [[float(t) for t in out] for out, _ in self.pending]
            first = self.next_step
            for row, (_, steps) in zip(rows, self.pending):
                if not math.isfinite(row[0]):
                    where = f"step {first + 1}" if steps == 1 else f"steps {first + 1}-{first + steps}"
                    raise UserError(
                        f"the training loss became {row[0]} at epoch {self.epoch + 1}, {where}; "
                        "the last good checkpoint is kept. Lower train.optimizer.learning_rate, set "
                        "train.optimizer.clipnorm, or check the data and weights"
                    )
                first += steps
            self.next_step = first
            vals = np.sum(rows, axis=0)
            self.values = self.values + vals
            self.images += vals[2]
            self.pending = []

    def images_this_call(self) -> float:
        self.flush()
        return self.images

    def mean(self, name: str) -> float:
        self.flush()
        index = {"loss": 0, "accuracy": 1, "cross_entropy": 3}[name]
        return float(self.values[index] / max(self.values[2], 1.0))

    def to_state(self, state: LoopState, step_in_epoch: int) -> None:
        self.flush()
        state.set(step_in_epoch=step_in_epoch, **dict(zip(self.FIELDS, self.values.tolist())))
