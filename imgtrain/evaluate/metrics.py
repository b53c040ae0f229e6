"""Classification metrics derived from one confusion matrix.

The confusion matrix is the quantity summed across workers (it is exact under
any sharding), so every figure in the report is computed from it here rather
than from per-example predictions that only one worker holds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class (rows true, columns predicted).

    A class never predicted has precision 0, and one never present has recall 0,
    the convention scikit-learn uses with ``zero_division=0``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support


def classification_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    p, r, f, s = per_class(confusion)
    total = float(s.sum())
    weights = s / total if total else np.zeros_like(s)
    return {
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        "macro_avg": {
            "precision": float(p.mean()),
            "recall": float(r.mean()),
            "f1": float(f.mean()),
            "support": int(total),
        },
        "weighted_avg": {
            "precision": float((p * weights).sum()),
            "recall": float((r * weights).sum()),
            "f1": float((f * weights).sum()),
            "support": int(total),
        },
        "accuracy": float(np.trace(confusion) / total) if total else 0.0,
    }
