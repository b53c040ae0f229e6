"""TensorBoard logs that line up with Keras runs in one dashboard.

Tags and layout follow Keras' ``TensorBoard`` callback: under ``logs/train`` and
``logs/validation``, scalars named ``epoch_<metric>`` at step = the 0-based epoch
(``epoch_loss``, ``epoch_accuracy``, and ``epoch_learning_rate`` under train). imgtrain
adds, in the same layout: ``epoch_cross_entropy`` and ``epoch_images_per_sec``; the run's
hyperparameters (the HParams plugin) and a grid of augmented training images at the start;
and under ``logs/test`` the test metrics at the last epoch's step (so they sit on the same
charts as a third run) with the confusion matrix as an image. Only the chief writes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import tensorflow as tf


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys with the scalar types the HParams plugin takes (bool, int,
    float, str); lists and nulls become their text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def image_grid(images: np.ndarray, columns: int = 4) -> np.ndarray:
    """Up to ``columns``**2 images (float 0-255 or uint8, HWC) tiled into one uint8 picture with
    a 2-pixel border, as ``[1, H, W, 3]`` for ``tf.summary.image``."""
    images = np.clip(np.asarray(images, np.float32), 0, 255).astype(np.uint8)[: columns * columns]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = image
    return grid[None]


class TensorBoardLog:
    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = Path(logs_dir)
        self.writers: dict[str, Any] = {}

    def writer(self, run: str):
        if run not in self.writers:
            self.writers[run] = tf.summary.create_file_writer(str(self.logs_dir / run))
        return self.writers[run]

    def start(self, hparams: dict[str, Any], sample: Optional[np.ndarray]) -> None:
        """The run's hyperparameters and what augmentation makes of the first training batch."""
        from tensorboard.plugins.hparams import api as hp

        with self.writer("train").as_default():
            if hparams:
                hp.hparams(hparams)
            if sample is not None and len(sample):
                tf.summary.image("augmented_training_images", image_grid(sample), step=0)
        self.flush()

    def epoch(self, epoch: int, logs: dict[str, float], lr: float, img_s: float) -> None:
        """One epoch's scalars, Keras' names and steps."""
        with self.writer("train").as_default():
            for k, v in logs.items():
                if not k.startswith("val_"):
                    tf.summary.scalar(f"epoch_{k}", v, step=epoch)
            tf.summary.scalar("epoch_learning_rate", lr, step=epoch)
            tf.summary.scalar("epoch_images_per_sec", img_s, step=epoch)
        with self.writer("validation").as_default():
            for k, v in logs.items():
                if k.startswith("val_"):
                    tf.summary.scalar(f"epoch_{k[4:]}", v, step=epoch)
        self.flush()

    def test(self, step: int, metrics: dict[str, float], confusion_png: Optional[Path]) -> None:
        with self.writer("test").as_default():
            for k, v in metrics.items():
                tf.summary.scalar(f"epoch_{k}", v, step=step)
            if confusion_png is not None and confusion_png.exists():
                image = tf.io.decode_png(confusion_png.read_bytes(), channels=3)[None]
                tf.summary.image("confusion_matrix", image, step=step)
        self.flush()

    def flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
