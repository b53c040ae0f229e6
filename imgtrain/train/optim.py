"""Optimizers by name, learning-rate schedules, and the linear scaling rule.

The schedule is a function of the optimizer's step counter, which is saved
in every checkpoint, so a resumed run continues on exactly the same curve.
Transfer-learning phases multiply it by their factor from their first step.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from imgtrain.config import OptimizerConfig, ScheduleConfig
from imgtrain.errors import UserError
from imgtrain.train.early_stopping import TIED, WORSE, BestRule, tie_breaker


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then constant / step / cosine decay or a plateau scale, times the phase factor.

    ``plateau`` multiplies the peak by ``scale``, a variable the training loop lowers when
    the monitored metric stops improving (``Plateau``); it lives in the checkpoint.
    """

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int,
        kind: str,
        step_every: int = 1,
        step_factor: float = 0.1,
        min_ratio: float = 0.0,
        phases: Sequence[tuple[int, float]] = (),
        scale: Optional[tf.Variable] = None,
    ) -> None:
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.step_every = max(1, int(step_every))
        self.step_factor = float(step_factor)
        self.min_ratio = float(min_ratio)
        self.phases = [(int(s), float(f)) for s, f in phases]
        self.scale = scale
        if kind == "plateau" and scale is None:
            raise ValueError("a plateau schedule needs its scale variable")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        if self.kind == "constant":
            lr = peak
        elif self.kind == "plateau":
            lr = peak * tf.cast(self.scale, tf.float32)
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
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "step_every": self.step_every,
            "step_factor": self.step_factor,
            "min_ratio": self.min_ratio,
            "phases": self.phases,
        }


def scaled_learning_rate(base: float, replicas: int, enabled: bool) -> float:
    """Linear scaling rule: the global batch grows with replicas, so does the step size."""
    return base * replicas if enabled and replicas > 1 else base


def warmup_epochs(cfg: ScheduleConfig, epochs: int, replicas: int, scaled: bool) -> float:
    """The warmup: as set; when unset, 5 epochs if the rate was scaled up for several replicas
    (Goyal et al. 2017, where the linear scaling rule comes from), at most a fifth of the run."""
    if cfg.warmup_epochs is not None:
        return float(cfg.warmup_epochs)
    return min(5.0, epochs / 5.0) if scaled and replicas > 1 else 0.0


def build_schedule(
    cfg: ScheduleConfig,
    peak: float,
    steps_per_epoch: int,
    epochs: int,
    phases: Sequence[tuple[int, float]] = (),
    warmup: Optional[float] = None,
    scale: Optional[tf.Variable] = None,
) -> Schedule:
    """The run's schedule; ``warmup`` (epochs) is ``warmup_epochs``'s result, else the config's own."""
    if warmup is None:
        warmup = cfg.warmup_epochs or 0.0
    return Schedule(
        peak=peak,
        total_steps=steps_per_epoch * epochs,
        warmup_steps=round(warmup * steps_per_epoch),
        kind=cfg.name,
        step_every=cfg.step_epochs * steps_per_epoch,
        step_factor=cfg.step_factor,
        min_ratio=cfg.min_lr_ratio,
        phases=[(start_epoch * steps_per_epoch, factor) for start_epoch, factor in phases if start_epoch > 0],
        scale=scale,
    )


class Plateau:
    """Reduce-on-plateau for the ``plateau`` schedule; its state is LoopState's, so it resumes.

    Every worker sees the same (reduced) metrics, so every worker takes the same decision.
    """

    def __init__(self, cfg: ScheduleConfig, monitor: str, mode: str, state) -> None:
        self.monitor, self.mode, self.state = monitor, mode, state
        self.patience, self.factor, self.floor = cfg.plateau_patience, cfg.plateau_factor, cfg.min_lr_ratio

    def update(self, logs: dict[str, float]) -> Optional[float]:
        """Record one epoch; return the new scale when the rate drops, else None."""
        if self.monitor not in logs:
            raise UserError(
                f"train.schedule.plateau_monitor '{self.monitor}' is not a logged metric; "
                f"choose one of: {', '.join(sorted(logs))}"
            )
        rule = BestRule(self.monitor, self.mode, 0.0, tie_breaker(self.monitor, self.mode))
        best, best_tie = float(self.state.get("plateau_best")), float(self.state.get("plateau_best_tie"))
        verdict = rule.judge(logs, best, best_tie)
        best, best_tie = rule.peaks(logs, verdict, best, best_tie)
        self.state.set(plateau_best=best, plateau_best_tie=best_tie)
        if verdict != WORSE:  # early stopping's rule: a tie broken by the second metric improves
            if verdict != TIED:
                self.state.set(plateau_wait=0)
                return None
        wait = int(self.state.get("plateau_wait")) + 1
        if wait <= self.patience:
            self.state.set(plateau_wait=wait)
            return None
        scale = max(self.floor, float(self.state.get("lr_scale")) * self.factor)
        self.state.set(plateau_wait=0, lr_scale=scale)
        return scale


# The one table of optimizers: name -> (config, weight decay, common keyword arguments) -> optimizer.
# config.OPTIMIZERS names the same keys for validation without importing Keras (a test checks).
OPTIMIZER_BUILDERS: dict[str, Callable[[OptimizerConfig, Optional[float], dict], keras.optimizers.Optimizer]] = {
    "adam": lambda c, wd, kw: keras.optimizers.Adam(weight_decay=wd, **kw),
    # AdamW without a decay given takes Keras' own default, 0.004: "adamw" should mean decoupled decay.
    "adamw": lambda c, wd, kw: keras.optimizers.AdamW(weight_decay=0.004 if wd is None else wd, **kw),
    "sgd": lambda c, wd, kw: keras.optimizers.SGD(momentum=c.momentum, nesterov=c.nesterov, weight_decay=wd, **kw),
    "rmsprop": lambda c, wd, kw: keras.optimizers.RMSprop(momentum=c.momentum, weight_decay=wd, **kw),
    "adagrad": lambda c, wd, kw: keras.optimizers.Adagrad(weight_decay=wd, **kw),
    "ftrl": lambda c, wd, kw: keras.optimizers.Ftrl(weight_decay=wd, **kw),
}


def build_optimizer(
    cfg: OptimizerConfig, learning_rate, precision: str = "float32", ema_decay: Optional[float] = None
) -> keras.optimizers.Optimizer:
    common = {"learning_rate": learning_rate}
    if ema_decay is not None:
        # Keras keeps the average in the optimizer's own variables (so it is checkpointed with
        # them) and updates it after every step, in the step's graph, under any strategy.
        common.update(use_ema=True, ema_momentum=float(ema_decay))
    if cfg.clipnorm:
        common["clipnorm"] = cfg.clipnorm
    opt = OPTIMIZER_BUILDERS[cfg.name](cfg, cfg.weight_decay, common)  # config validation knows the names
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
