"""What tracking logs of a run, read from what the run has already written to its own
directory: pure functions, no MLflow.

Params come from the resolved config, each epoch's metrics from ``history.csv`` (the epoch
as the step), the test metrics from ``report.json``'s headline (``test_<name>``), the
records as artifacts; the model is ``export.mlflow_model``'s package of ``model.keras``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtrain import history, rundir
from imgtrain.evaluate.headline import headline

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param's value
RESUMED_WITH = "imgtrain.resumed_with"  # the tag that holds the keys a resume changed


@dataclass
class RunFacts:
    """What the tracker is told about the run: its config as params, and its tags."""

    params: dict[str, Any]
    tags: dict[str, str]
    image_size: list[int]


def param_changes(params: dict[str, Any], logged: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The params the MLflow run lacks, and the tags to set. MLflow keeps a param's first value,
    so keys a resume changed (``train.epochs``, ...) go in one tag, ``RESUMED_WITH``."""
    texts = {k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()}
    missing = {k: v for k, v in texts.items() if k not in logged}
    changed = [f"{k}={v}" for k, v in texts.items() if k in logged and logged[k] != v]
    return missing, ({RESUMED_WITH: "; ".join(changed)[:MAX_PARAM_CHARS]} if changed else {})


def epoch_metrics(run_dir: Path, after: int) -> tuple[list[tuple[str, float, int]], int]:
    """``history.csv``'s rows past epoch ``after`` as ``(key, value, epoch)``, and the last epoch
    among them (``after`` when none). Each epoch's ``loss`` comes last: it is what marks the
    epoch as logged, so a cut-off send is sent again whole."""
    rows = [r for r in history.read(run_dir) if int(r["epoch"]) > after]
    metrics = [
        (key, value, int(row["epoch"])) for row in rows for key, value in numbers(row, skip=("epoch", "phase")).items()
    ]
    metrics.sort(key=lambda m: (m[2], m[0] == "loss"))
    return metrics, (int(rows[-1]["epoch"]) if rows else after)


def test_metrics(run_dir: Path) -> dict[str, float]:
    """The report's headline as ``test_<name>``; nothing without a test split."""
    try:
        report = json.loads((Path(run_dir) / rundir.REPORT_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return {f"test_{k}": v for k, v in headline(report).items()}


def artifacts(run_dir: Path) -> list[Path]:
    """The run's records that go up as artifacts, once it is finished."""
    return [Path(run_dir) / name for name in rundir.RECORDS if (Path(run_dir) / name).is_file()]


def pending(params_logged: bool, epochs_logged: int, run_dir: Path, final: list[str]) -> list[str]:
    """What is not in MLflow yet, as the user is told it: ``params, epochs 3-10, report``."""
    last = history.epochs(run_dir)
    out = [] if params_logged else ["params"]
    if last > epochs_logged:
        out.append(f"epochs {epochs_logged + 1}-{last}")
    return out + final


def where(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person looks at the run: the server's page, or the command (pasteable as it is)
    that opens a local store."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"see it with: mlflow ui --backend-store-uri {shlex.quote(uri)}"


def numbers(row: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The entries of ``row`` that are finite numbers (or their text), as floats."""
    out = {}
    for key, text in row.items():
        if key in skip or key is None:
            continue
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key] = value
    return out


def reason(exc: BaseException) -> str:
    """The useful end of a failure's text: 'Connection refused', a status, not a page of URL."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    return text[:200]
