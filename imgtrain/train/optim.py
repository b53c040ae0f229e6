"""Optimizers by name, learning-rate schedules, and the linear scaling rule.

The schedule is a function of the optimizer's step counter, which is saved
in every checkpoint, so a resumed run continues on exactly the same curve.
Transfer-learning phases multiply it by their factor from their first step.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
import tensorflow as tf

from imgtrain.config import OptimizerConfig, ScheduleConfig
from imgtrain.errors import UserError


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then constant / step / cosine decay, times the phase factor."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, kind: str, step_every: int = 1,
                 step_factor: float = 0.1, min_ratio: float = 0.0,
                 phases: Sequence[tuple[int, float]] = ()) -> None:
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.step_every = max(1, int(step_every))
        self.step_factor = float(step_factor)
        self.min_ratio = float(min_ratio)
        self.phases = [(int(s), float(f)) for s, f in phases]

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        if self.kind == "constant":
            lr = peak
        elif self.kind == "step":
            lr = peak * tf.pow(self.step_factor, tf.floor(tf.maximum(step - self.warmup_steps, 0.0) / self.step_every))
        else:  # cosine over the steps after warmup
            span = float(max(1, self.total_steps - self.warmup_steps))
            t = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            cos = 0.5 * (1.0 + tf.cos(math.pi * t))
            lr = peak * (self.min_ratio + (1.0 - self.min_ratio) * cos)
        if self.warmup_steps:
            lr = tf.where(step < self.warmup_steps, peak * (step + 1.0) / self.warmup_steps, lr)
        for start, factor in self.phases:
            lr = tf.where(step >= start, lr * factor, lr)
        return lr

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "step_every": self.step_every, "step_factor": self.step_factor,
                "min_ratio": self.min_ratio, "phases": self.phases}


def scaled_learning_rate(base: float, replicas: int, enabled: bool) -> float:
    """Linear scaling rule: the global batch grows with replicas, so does the step size."""
    return base * replicas if enabled and replicas > 1 else base


def build_schedule(cfg: ScheduleConfig, peak: float, steps_per_epoch: int, epochs: int,
                   phases: Sequence[tuple[int, float]] = ()) -> Schedule:
    return Schedule(
        peak=peak,
        total_steps=steps_per_epoch * epochs,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        kind=cfg.name,
        step_every=cfg.step_epochs * steps_per_epoch,
        step_factor=cfg.step_factor,
        min_ratio=cfg.min_lr_ratio,
        phases=[(start_epoch * steps_per_epoch, factor) for start_epoch, factor in phases if start_epoch > 0],
    )


def build_optimizer(cfg: OptimizerConfig, learning_rate, precision: str = "float32") -> keras.optimizers.Optimizer:
    common = {"learning_rate": learning_rate}
    if cfg.clipnorm:
        common["clipnorm"] = cfg.clipnorm
    wd: Optional[float] = cfg.weight_decay
    name = cfg.name
    if name == "adam":
        opt = keras.optimizers.Adam(weight_decay=wd, **common)
    elif name == "adamw":
        opt = keras.optimizers.AdamW(weight_decay=0.004 if wd is None else wd, **common)
    elif name == "sgd":
        opt = keras.optimizers.SGD(momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd, **common)
    elif name == "rmsprop":
        opt = keras.optimizers.RMSprop(momentum=cfg.momentum, weight_decay=wd, **common)
    elif name == "adagrad":
        opt = keras.optimizers.Adagrad(weight_decay=wd, **common)
    elif name == "ftrl":
        opt = keras.optimizers.Ftrl(weight_decay=wd, **common)
    else:
        raise UserError(f"unknown optimizer '{name}'; choose one of: adam, adamw, sgd, rmsprop, adagrad, ftrl")
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


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
        raise UserError(f"train.class_weights names class '{unknown[0]}', which is not in the data; classes are {list(class_names)}")
    return [float(spec.get(name, 1.0)) for name in class_names]
