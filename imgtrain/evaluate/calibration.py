"""Calibration: does a confidence of 0.9 mean right nine times in ten?

Equal-width confidence bins over [0, 1] (the last one closed); the expected calibration
error (Naeini et al. 2015; Guo et al. 2017) is the example-weighted mean gap between each
bin's accuracy and its mean confidence. The bins are what the reliability diagram draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict[str, Any]:
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    n = len(confidence)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        row = {"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count}
        if count:
            acc, conf = float(correct[members].mean()), float(confidence[members].mean())
            row.update(accuracy=acc, confidence=conf)
            ece += count / n * abs(acc - conf)
        table.append(row)
    return {"ece": float(ece) if n else float("nan"), "bins": table, "num_bins": bins}
