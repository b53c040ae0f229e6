"""The loop's own epoch listener: one console line per epoch, and TensorBoard's scalars."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from imgtrain.train.early_stopping import is_standard_error
from imgtrain.train.tensorboard import TensorBoardLog


class ConsoleAndTensorBoard:
    """The loop's own EpochListener: the console line and TensorBoard (``train.tensorboard``)."""

    def __init__(self, logs_dir: Path, epochs: int, log: Callable[[str], None]) -> None:
        self.epochs, self.log = epochs, log
        self.board = TensorBoardLog(logs_dir)

    def on_train_begin(self, hparams: dict[str, Any], sample: Optional[np.ndarray]) -> None:
        self.board.start(hparams, sample)

    def on_epoch_end(self, epoch: int, logs: dict[str, float], lr: float, img_s: float, improved: bool) -> None:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "cross_entropy" and not is_standard_error(k))
        self.log(
            f"epoch {epoch + 1}/{self.epochs}  {shown}  lr={lr:.3g}  {img_s:.0f} img/s{'  *best*' if improved else ''}"
        )
        self.board.epoch(epoch, logs, lr, img_s)

    def close(self) -> None:
        self.board.close()
