"""The run's own test images, as the exports' check reads them: float pixels at the training
size with the evaluation crop, the very input ``serve_pixels`` and the file formats take."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from imgtrain.config import Config
from imgtrain.data import source as data_source
from imgtrain.data.pipeline import Shard
from imgtrain.errors import UserError


def test_batches(
    cfg: Config, run_dir: Path, max_images: int, log: Callable[[str], None], batch: int = 64
) -> Optional[list[tuple[np.ndarray, np.ndarray]]]:
    """Up to ``max_images`` test images as ``(pixels, real)`` batches, or None (said why) when the
    run's data is gone or has no test split: the export stands, unchecked."""
    try:
        prep = data_source.get(cfg, run_dir, False)
    except UserError as exc:
        log(f"export: not checked against test images ({exc})")
        return None
    if not prep.has("test"):
        log("export: not checked: the run's data has no test split")
        return None
    out, seen = [], 0
    for x, _y, _w, real in prep.eval_dataset(cfg.data, "test", batch, Shard(), 1):
        out.append((x.numpy(), real.numpy()))
        seen += int(real.numpy().sum())
        if seen >= max_images:
            break
    return out
