"""Early stopping on a validation metric, with state that survives a resume, and the one rule
(``BestRule``) that says which epoch is the best: for early stopping, the restored weights,
the ``*best*`` mark and the plateau schedule alike.

A small validation split saturates its accuracy (every image right) long before the model
stops improving; Keras, Lightning and timm then keep the first epoch that touched the
ceiling. Here a tie in the monitored metric (as good, or better by no more than
``min_delta``) is broken by a second metric that has not saturated (the validation loss for
an accuracy, the accuracy for a loss), then by the later epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from imgtrain.config import EarlyStoppingConfig
from imgtrain.errors import UserError

IMPROVED, BROKEN, TIED, WORSE = "improved", "tie broken", "tied", "worse"
# Why the best epoch is the best, as the checkpoint keeps it (an int) and the report says it.
BEST_BY = {0: "", 1: "its {monitor}", 2: "a tie broken by {tie}", 3: "a tie on both metrics: the later epoch"}


def resolve_mode(monitor: str, mode: str) -> str:
    if mode != "auto":
        return mode
    return "max" if any(k in monitor for k in ("acc", "f1", "precision", "recall")) else "min"


def tie_breaker(monitor: str, mode: str) -> str:
    """The second metric for ``monitor``: the loss of the same split for a metric to maximise
    (an accuracy), its accuracy for one to minimise (a loss)."""
    split = "val_" if monitor.startswith("val_") else ""
    return f"{split}loss" if mode == "max" else f"{split}accuracy"


def bound(monitor: str, mode: str) -> Optional[float]:
    """The best value ``monitor`` can take, where it saturates (None when it has none)."""
    if mode == "max" and "acc" in monitor:
        return 1.0
    if mode == "min" and ("loss" in monitor or "entropy" in monitor):
        return 0.0
    return None


@dataclass(frozen=True)
class BestRule:
    """Which of two epochs is the better. Invariant: ``judge`` never calls an epoch that is
    worse on ``monitor`` the best, and of epochs tied on both metrics keeps the later."""

    monitor: str
    mode: str
    min_delta: float = 0.0
    tie_monitor: Optional[str] = None

    def judge(self, logs: Mapping[str, float], best: float, best_tie: float) -> str:
        """IMPROVED (better on ``monitor`` by more than ``min_delta``), BROKEN (tied there:
        as good or better by no more than ``min_delta``, and better on ``tie_monitor``), TIED
        (tied on both, or no second metric: the later epoch is the best, and patience still
        counts) or WORSE, against the best so far."""
        value = float(logs[self.monitor])
        if math.isnan(value):
            return WORSE
        if math.isnan(best):
            return IMPROVED
        gain = value - best if self.mode == "max" else best - value
        if gain > self.min_delta:
            return IMPROVED
        if gain < 0:
            return WORSE
        tie = float(logs.get(self.tie_monitor, math.nan)) if self.tie_monitor else math.nan
        if math.isnan(tie):
            return TIED
        if math.isnan(best_tie):
            return IMPROVED
        tie_gain = best_tie - tie if resolve_mode(self.tie_monitor, "auto") == "min" else tie - best_tie
        return BROKEN if tie_gain > 0 else (TIED if tie_gain == 0 else WORSE)

    def tie_value(self, logs: Mapping[str, float]) -> float:
        return float(logs.get(self.tie_monitor, math.nan)) if self.tie_monitor else math.nan


@dataclass
class EarlyStopping:
    monitor: str
    mode: str
    patience: int
    min_delta: float
    enabled: bool = True
    best: float = math.nan
    best_epoch: int = -1
    wait: int = 0
    best_tie: float = math.nan  # the tie-breaker's value at the best epoch
    tie_monitor: Optional[str] = None
    at_bound: int = 0  # consecutive epochs the monitored metric sat at its bound
    best_by: int = 0  # why the best epoch is the best: a key of BEST_BY

    @classmethod
    def from_config(cls, cfg: EarlyStoppingConfig) -> "EarlyStopping":
        mode = resolve_mode(cfg.monitor, cfg.mode)
        return cls(
            cfg.monitor, mode, cfg.patience, abs(cfg.min_delta), cfg.enabled, tie_monitor=tie_breaker(cfg.monitor, mode)
        )

    # What a checkpoint keeps of it (LoopState's fields of the same names), so a resume decides as the run did.
    STATE = ("best", "best_epoch", "wait", "best_tie", "best_by", "at_bound")

    def state(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.STATE}

    def load(self, get: Callable[[str], float]) -> None:
        """Take the checkpointed record back (``get``: LoopState.get)."""
        for name in self.STATE:
            value = get(name)
            setattr(self, name, float(value) if name in ("best", "best_tie") else int(value))

    @property
    def rule(self) -> BestRule:
        return BestRule(self.monitor, self.mode, self.min_delta, self.tie_monitor)

    def update(self, epoch: int, logs: Mapping[str, float]) -> tuple[bool, bool]:
        """Record one epoch; return (is the new best, should training stop)."""
        if self.monitor not in logs:
            raise UserError(
                f"train.early_stopping.monitor '{self.monitor}' is not a logged metric; "
                f"choose one of: {', '.join(sorted(logs))}"
            )
        rule = self.rule
        verdict = rule.judge(logs, self.best, self.best_tie)
        edge = bound(self.monitor, self.mode)
        self.at_bound = self.at_bound + 1 if edge is not None and float(logs[self.monitor]) == edge else 0
        if verdict == WORSE:
            self.wait += 1
            return False, self.enabled and self.wait >= max(1, self.patience)
        self.best, self.best_tie, self.best_epoch = float(logs[self.monitor]), rule.tie_value(logs), epoch
        self.best_by = {IMPROVED: 1, BROKEN: 2, TIED: 3}[verdict]
        if verdict != TIED:
            self.wait = 0
            return True, False
        self.wait += 1  # the later of two equal epochs is kept, but nothing improved
        return True, self.enabled and self.wait >= max(1, self.patience)

    def saturation_note(self) -> Optional[str]:
        """One line the epoch the monitored metric has sat at its bound for two epochs."""
        if self.at_bound != 2:
            return None
        edge = bound(self.monitor, self.mode)
        second = f"{self.tie_monitor}, then by the later epoch" if self.tie_monitor else "the later epoch"
        return f"{self.monitor} has been {edge:g}, its best possible value, for 2 epochs: ties are broken by {second}"

    def described(self) -> str:
        """The best epoch's metrics, as the restore line and the report give them."""
        text = f"{self.monitor}={self.best:.4f}"
        if self.tie_monitor and not math.isnan(self.best_tie):
            text += f", {self.tie_monitor}={self.best_tie:.4f}"
        why = BEST_BY.get(self.best_by, "").format(monitor=self.monitor, tie=self.tie_monitor)
        return text + (f" (chosen by {why})" if why else "")
