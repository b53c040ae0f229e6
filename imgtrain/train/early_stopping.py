"""Early stopping on a validation metric, with state that survives a resume."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from imgtrain.config import EarlyStoppingConfig
from imgtrain.errors import UserError


def resolve_mode(monitor: str, mode: str) -> str:
    if mode != "auto":
        return mode
    return "max" if any(k in monitor for k in ("acc", "f1", "precision", "recall")) else "min"


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

    @classmethod
    def from_config(cls, cfg: EarlyStoppingConfig) -> "EarlyStopping":
        return cls(cfg.monitor, resolve_mode(cfg.monitor, cfg.mode), cfg.patience, abs(cfg.min_delta), cfg.enabled)

    def improved(self, value: float) -> bool:
        if math.isnan(self.best):
            return not math.isnan(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, logs: Mapping[str, float]) -> tuple[bool, bool]:
        """Record one epoch; return (is the new best, should training stop)."""
        if self.monitor not in logs:
            raise UserError(
                f"train.early_stopping.monitor '{self.monitor}' is not a logged metric; "
                f"choose one of: {', '.join(sorted(logs))}"
            )
        value = float(logs[self.monitor])
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True, False
        self.wait += 1
        return False, self.enabled and self.wait >= max(1, self.patience)
