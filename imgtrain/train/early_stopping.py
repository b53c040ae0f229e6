"""Early stopping on a validation metric, with state that survives a resume, and the one rule
(``BestRule``) that says which epoch is the best: for early stopping, the restored weights,
the ``*best*`` mark and the plateau schedule alike.

A small validation split saturates its accuracy (every image right) long before the model
stops improving; Keras, Lightning and timm then keep the first epoch that touched the
ceiling. Here a tie in the monitored metric is broken by a second metric that has not
saturated (the validation loss for an accuracy, the accuracy for a loss), then by the later
epoch.

A tie is what the validation split cannot tell apart: an epoch is tied with the best value
seen (the peak) when it is better by no more than ``min_delta``, or worse by no more than
``NOISE_BAND`` of its own standard errors (``eval_sums.summarize``; 38 images at 80% give an
accuracy a standard error of 6.5 points), in the spirit of the one-standard-error rule of
model selection (Breiman et al., CART). The second metric breaks a tie only by more than as
many of its standard errors; otherwise the later epoch wins. Ties are judged against the
peaks (the best monitored value, and the best second metric among the epochs tied with it),
never against the epoch last kept, so a chain of ties cannot drift away from the best.

Patience counts the epochs clearly worse than the peak since the last improvement; a tie
neither improves nor counts: a split too small to tell the epochs apart never stops a run
(``python -m imgtrain.tie_study``: on 10 seeds x 3 small data sets, stopping on ties ended
runs at 8-19 of 20 epochs and lost up to 34 points of test accuracy). On a large split the
standard errors are small and the rule is the usual one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from imgtrain.config import EarlyStoppingConfig
from imgtrain.errors import UserError

IMPROVED, BROKEN, TIED, WORSE = "improved", "tie broken", "tied", "worse"
# Why the best epoch is the best, as the checkpoint keeps it (an int) and the report says it.
BEST_BY = {0: "", 1: "its {monitor}", 2: "a tie broken by {tie}", 3: "a tie on both metrics: the later epoch"}


SE_SUFFIX = "_se"
# How many standard errors apart two epochs must be to differ: the config's default.
NOISE_BAND = EarlyStoppingConfig().noise_band


def standard_error(metric: str) -> str:
    """The name of ``metric``'s standard error in an epoch's logs and history.csv."""
    return metric + SE_SUFFIX


def is_standard_error(name: str) -> bool:
    return name.endswith(SE_SUFFIX)


def _noise(logs: Mapping[str, float], metric: str, band: float) -> float:
    """How far ``metric`` may move in ``logs`` by chance: ``band`` standard errors; 0 when none
    is logged (an exact comparison)."""
    value = float(logs.get(standard_error(metric), 0.0))
    return band * value if math.isfinite(value) and value > 0 else 0.0


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
    """Which of two epochs is the better. Invariants: ``judge`` never keeps an epoch worse on
    ``monitor`` than the peak by more than its noise (``_noise``), and of epochs tied on both
    metrics keeps the later. Without standard errors in the logs every comparison is exact."""

    monitor: str
    mode: str
    min_delta: float = 0.0
    tie_monitor: Optional[str] = None
    band: float = NOISE_BAND  # standard errors that make a difference (0: exact)

    def judge(self, logs: Mapping[str, float], peak: float, peak_tie: float) -> str:
        """IMPROVED (better than ``peak`` on ``monitor`` by more than ``min_delta``), BROKEN
        (tied there, and better than ``peak_tie`` on ``tie_monitor`` by more than its noise),
        TIED (tied on both, or no second metric: the later epoch is kept) or WORSE."""
        value = float(logs[self.monitor])
        if math.isnan(value):
            return WORSE
        if math.isnan(peak):
            return IMPROVED
        if self._gain(self.mode, value, peak) > self.min_delta:
            return IMPROVED
        if self._gain(self.mode, value, peak) < -_noise(logs, self.monitor, self.band):
            return WORSE
        tie = self.tie_value(logs)
        if math.isnan(tie):
            return TIED
        if math.isnan(peak_tie):
            return IMPROVED
        tie_gain, noise = self._gain(self.tie_mode, tie, peak_tie), _noise(logs, self.tie_monitor or "", self.band)
        return BROKEN if tie_gain > noise else (TIED if tie_gain >= -noise else WORSE)

    def peaks(self, logs: Mapping[str, float], verdict: str, peak: float, peak_tie: float) -> tuple[float, float]:
        """The peaks after an epoch judged ``verdict``: an improvement sets both; a tie keeps
        the better of each."""
        value, tie = float(logs[self.monitor]), self.tie_value(logs)
        if verdict == IMPROVED or math.isnan(peak):
            return value, tie
        if verdict == WORSE:
            return peak, peak_tie
        better_tie = tie if math.isnan(peak_tie) or self._gain(self.tie_mode, tie, peak_tie) > 0 else peak_tie
        return (value if self._gain(self.mode, value, peak) > 0 else peak), better_tie

    @property
    def tie_mode(self) -> str:
        return resolve_mode(self.tie_monitor or "", "auto")

    @staticmethod
    def _gain(mode: str, value: float, than: float) -> float:
        return value - than if mode == "max" else than - value

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
    peak: float = math.nan  # the best monitored value seen: ties are judged against it
    peak_tie: float = math.nan  # the best tie-breaker value among the epochs tied with the peak
    band: float = NOISE_BAND  # BestRule.band

    @classmethod
    def from_config(cls, cfg: EarlyStoppingConfig) -> "EarlyStopping":
        mode = resolve_mode(cfg.monitor, cfg.mode)
        return cls(
            cfg.monitor,
            mode,
            cfg.patience,
            abs(cfg.min_delta),
            cfg.enabled,
            tie_monitor=tie_breaker(cfg.monitor, mode),
            band=cfg.noise_band,
        )

    # What a checkpoint keeps of it (LoopState's fields of the same names), so a resume decides as the run did.
    STATE = ("best", "best_epoch", "wait", "best_tie", "best_by", "at_bound", "peak", "peak_tie")
    REAL = ("best", "best_tie", "peak", "peak_tie")

    def state(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.STATE}

    def load(self, get: Callable[[str], float]) -> None:
        """Take the checkpointed record back (``get``: LoopState.get)."""
        for name in self.STATE:
            value = get(name)
            setattr(self, name, float(value) if name in self.REAL else int(value))
        if math.isnan(self.peak):  # a checkpoint from before the peaks were kept: the best was the peak
            self.peak, self.peak_tie = self.best, self.best_tie

    @property
    def rule(self) -> BestRule:
        return BestRule(self.monitor, self.mode, self.min_delta, self.tie_monitor, self.band)

    def update(self, epoch: int, logs: Mapping[str, float]) -> tuple[bool, bool]:
        """Record one epoch; return (is the new best, should training stop)."""
        if self.monitor not in logs:
            raise UserError(
                f"train.early_stopping.monitor '{self.monitor}' is not a logged metric; "
                f"choose one of: {', '.join(sorted(logs))}"
            )
        rule = self.rule
        verdict = rule.judge(logs, self.peak, self.peak_tie)
        edge = bound(self.monitor, self.mode)
        self.at_bound = self.at_bound + 1 if edge is not None and float(logs[self.monitor]) == edge else 0
        self.peak, self.peak_tie = rule.peaks(logs, verdict, self.peak, self.peak_tie)
        if verdict == WORSE:
            self.wait += 1
            return False, self.enabled and self.wait >= max(1, self.patience)
        self.best, self.best_tie, self.best_epoch = float(logs[self.monitor]), rule.tie_value(logs), epoch
        self.best_by = {IMPROVED: 1, BROKEN: 2, TIED: 3}[verdict]
        if verdict != TIED:
            self.wait = 0
        # A tie: the later epoch is kept; nothing improved, nothing got worse: patience holds.
        return True, False

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
        if self.best_by > 1 and self.peak != self.best and not math.isnan(self.peak):
            why += f"; the run's best {self.monitor} was {self.peak:.4f}, within {self.band:g} standard errors"
        return text + (f" (chosen by {why})" if why else "")
