"""The headline test metrics: the numbers runs are compared by, under one set of names.

``headline(report)`` is the one definition. The report shows these numbers, TensorBoard logs
them in its ``test`` run (as ``epoch_<name>``, beside Keras' train and validation curves)
and MLflow as ``test_<name>``; the names after those prefixes are the same everywhere, so a
dashboard comparing the three sees one name for one number.
"""

from __future__ import annotations

import math
import re
from typing import Any

TOP_K = re.compile(r"top\d+_accuracy")
AVERAGES = ("macro", "weighted")  # the report's macro_avg and weighted_avg
PER_AVERAGE = ("precision", "recall", "f1")
LABELS = {"ece": "expected calibration error"}  # a name's words where underscores are not enough


def headline(report: dict[str, Any]) -> dict[str, float]:
    """accuracy, top<k>_accuracy (when the report has it), loss, macro_/weighted_ precision,
    recall and f1, and ece (expected calibration error, when calibrated): finite numbers only,
    in that order."""
    values: dict[str, Any] = {"accuracy": report.get("accuracy")}
    values.update({k: report[k] for k in sorted(report) if TOP_K.fullmatch(k)})
    values["loss"] = report.get("loss")
    for avg in AVERAGES:
        for key in PER_AVERAGE:
            values[f"{avg}_{key}"] = (report.get(f"{avg}_avg") or {}).get(key)
    values["ece"] = (report.get("calibration") or {}).get("ece")
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def label(name: str) -> str:
    """A headline name as the report's table shows it."""
    return LABELS.get(name, name.replace("_", " "))
