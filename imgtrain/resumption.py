"""Whether a run directory holds a run to resume with a given config: the settings that may
change on a resume (``RESUMABLE_CHANGES``), and the one line for any other that differs, or
for a finished run whose checkpoints are gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from imgtrain import rundir
from imgtrain.config import Config
from imgtrain.errors import UserError

# Keys that may change between a run and its resumption; anything else would make the
# checkpoint mean something different.
RESUMABLE_CHANGES = (
    "output",
    "deterministic",
    "data.path",
    "data.tfds.data_dir",
    "train.epochs",
    "train.early_stopping",
    "train.checkpoint",
    "train.strategy",
    "train.cluster",
    "train.warm_start",
    "train.steps_per_execution",  # how many steps per call, not which steps
    "train.accumulate",  # follows from the global batch and this start's replicas (train.batching)
    "train.global_batch",  # kept unless given: a change is said and recorded (train.batching)
    "data.service",  # where the pipeline runs, not what it makes
    "data.service_timeout",
    "data.stage",  # where the images are read from, not which
    "tracking",  # where the run is logged, not what it trains
    "export",  # what the end of the run writes, not what it trains
)
AUTO_RESAMPLER = ("data.augment.resampler", "auto")


def resumable_config(run_dir: Path) -> Optional[Config]:
    """The config of the run to resume in run_dir (None when there is none to resume)."""
    if not rundir.has_checkpoint(run_dir) or not (run_dir / rundir.CONFIG).exists():
        return None
    return Config.load(run_dir / rundir.CONFIG)


def check_resumable(cfg: Config, run_dir: Path) -> bool:
    """True when run_dir holds a run to resume; refuses one trained with another setup, and a
    finished run whose checkpoints are gone (training would silently replace its results)."""
    if not rundir.has_checkpoint(run_dir):
        finished = [name for name in rundir.FINISHED if (run_dir / name).exists()]
        if finished:
            raise UserError(
                f"{cfg.output} holds a finished run ({', '.join(finished)}) with no checkpoints to resume from, "
                f"and training would replace it; {rundir.OVERWRITE_HINT}"
            )
        return False
    saved = resumable_config(run_dir)
    if saved is None:
        return True
    a, b = _flat(saved.to_dict()), _flat(cfg.to_dict())
    if a.get(AUTO_RESAMPLER[0]) == AUTO_RESAMPLER[1]:  # recorded before runs decided it: either kernel
        a[AUTO_RESAMPLER[0]] = b.get(AUTO_RESAMPLER[0])
    for key in sorted(set(a) | set(b)):
        if any(key == c or key.startswith(c + ".") for c in RESUMABLE_CHANGES):
            continue
        if a.get(key) != b.get(key):
            raise UserError(
                f"{cfg.output} holds a run trained with {key}={a.get(key)!r}, not {b.get(key)!r}; "
                f"resume it with the same settings, or {rundir.OVERWRITE_HINT}"
            )
    return True


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A config's settings by dotted key; a mapping of class names to weights stays one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and key not in ("train.class_weights",):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
