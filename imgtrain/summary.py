"""What a run says about itself: run.json's content (``summarize``), the report's run section,
the tags experiment tracking compares runs by, and the notes its curves carry. Pure
descriptions of what the run did; ``rundir`` writes run.json, the report writes itself."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from imgtrain import __version__, rundir
from imgtrain.config import Config
from imgtrain.data import fingerprint, resampler
from imgtrain.data.source import DataSource
from imgtrain.storage import urls
from imgtrain.tracking import RunFacts
from imgtrain.train import batching
from imgtrain.train.assembly import Training
from imgtrain.train.distribution import Distribution
from imgtrain.train.mixing import MixSettings
from imgtrain.train.tensorboard import flat_hparams


def summarize(
    cfg: Config,
    training: Training,
    fit: Any,
    prep: DataSource,
    dist: Distribution,
    measured: dict[str, Any],
    report: Optional[dict[str, Any]],
    run_dir: Path,
) -> dict[str, Any]:
    """run.json's content: versions, the distribution, what was trained and how fast, the
    replicas' weight fingerprints, and the test accuracy (``measured`` holds the workers'
    images per second, their fingerprints and the run's seconds)."""
    counts = {s: prep.count(s) for s in ("train", "val", "test")}
    per_worker, fingerprints = measured["images_per_sec"], measured["fingerprints"]
    summary = {
        "imgtrain_version": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        **dist.describe(),
        "per_replica_batch": cfg.train.batch_size,
        "global_batch": training.global_batch,
        "accumulate": training.batch.accumulate,  # micro-batches per replica per step, on the last start
        "resizes": batching.read(run_dir),  # each resume on another number of replicas
        "peak_learning_rate": training.peak,
        "steps_per_epoch": training.steps,
        "epochs_completed": fit.epochs_completed,
        "best_epoch": fit.best_epoch + 1,
        "best_" + training.early.monitor: fit.best_value,
        "best_chosen": training.early.described(),  # its metrics, and what chose it (a tie's breaker)
        "stopped_early": fit.stopped_early,
        "resumed_from_epoch": fit.resumed_from_epoch,
        "counts": counts,
        "skipped_files": len(prep.skipped),
        "resampler": resampler_used(cfg),
        "augment_on_device": on_device(cfg),
        "images_per_sec": {f"worker_{i}": round(v, 1) for i, v in enumerate(per_worker)},
        "images_per_sec_total": round(sum(per_worker), 1),
        "streamed_bytes": {f"worker_{i}": int(v) for i, v in enumerate(measured.get("fetched_bytes", []))},
        "replica_weight_fingerprints": [int(f) for f in fingerprints],
        "replicas_in_sync": len(set(fingerprints)) == 1,
        **measured["seconds"],
        "test_accuracy": report["accuracy"] if report else None,
        "report": _named(cfg, run_dir, rundir.REPORT_JSON) if report else None,
    }
    return summary


def run_facts(cfg: Config, run_dir: Path, dist: Distribution) -> RunFacts:
    """What experiment tracking records of a run beside its config: the tags to compare runs by."""
    tags = {
        "imgtrain.model": cfg.model.name,
        "imgtrain.strategy": dist.name,
        "imgtrain.world_size": str(dist.world_size),
        "imgtrain.data_fingerprint": fingerprint.digest(run_dir),
        "imgtrain.data": cfg.data.path or f"tfds:{cfg.data.tfds.name}",
        "imgtrain.run_dir": str(run_dir.resolve()),
        "imgtrain.version": __version__,
    }
    resizes = batching.read(run_dir)
    if resizes:  # the last; each is also in run.json, and train.accumulate's changes in RESUMED_WITH
        tags["imgtrain.resized"] = resizes[-1]["line"]
    return RunFacts(flat_hparams(cfg.to_dict()), tags, list(cfg.data.image_size))


def stop_checks(loop: Any, train_seconds: float) -> dict[str, Any]:
    """What the workers' shared look at the stop flag cost this run (nothing for one process)."""
    checks = loop.stops.checks
    return {
        "every_steps": loop.stops.every,
        "checks": checks["checks"],
        "seconds": round(checks["seconds"], 4),
        "share_of_training": round(checks["seconds"] / max(train_seconds, 1e-9), 5),
    }


def report_context(
    cfg: Config, training: Training, fit: Any, counts: dict[str, int], dist: Distribution, seconds: dict[str, float]
) -> dict[str, Any]:
    """The run around the test numbers, for the report's first section."""
    if fit.stopped_early:
        stopped = (
            f"early stopping: {training.early.monitor} did not improve for "
            f"{cfg.train.early_stopping.patience} epoch(s), after epoch {len(fit.history)}"
        )
    else:
        stopped = f"reached train.epochs ({cfg.train.epochs})"
    return {
        "data": cfg.data.path or f"tfds:{cfg.data.tfds.name}",
        "splits": counts,
        "model": cfg.model.name,
        "best_epoch": fit.best_epoch + 1,
        "best_chosen": training.early.described(),
        "stopped": stopped,
        "strategy": dist.name,
        "world_size": dist.world_size,
        "wall_seconds": seconds.get("total_seconds"),
    }


def objective_note(cfg: Config) -> str:
    """What makes the training objective another quantity than plain cross-entropy ('' if nothing)."""
    parts = []
    if cfg.train.label_smoothing:
        parts.append(f"label smoothing {cfg.train.label_smoothing:g}")
    if MixSettings.from_config(cfg.data.augment).active:
        parts.append("mixup/cutmix")
    if cfg.train.class_weights:
        parts.append("class weights")
    return ", ".join(parts)


def validation_note(cfg: Config) -> str:
    parts = ["after each epoch"]
    if cfg.train.ema.decay is not None:
        parts.append(f"EMA weights (decay {cfg.train.ema.decay:g})")
    if cfg.data.eval_crop():
        parts.append(f"centre crop {cfg.data.eval_crop():g}")
    return ", ".join(parts)


def weights_fingerprint(model: keras.Model) -> int:
    """A 48-bit digest of every weight: equal on all workers exactly when the replicas agree."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return int(digest.hexdigest()[:12], 16)


def resampler_used(cfg: Config) -> Optional[str]:
    """Who resamples the training images in tf.data (None when no augmentation there moves pixels)."""
    return resampler.used(cfg.data) or None


def on_device(cfg: Config) -> Optional[str]:
    """The device data.augment.on_device runs on: GPU or CPU (None when it is off)."""
    if not cfg.data.augment.on_device:
        return None
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def _named(cfg: Config, run_dir: Path, name: str) -> str:
    """A file of the run as the user names the run: in its bucket, or in its folder."""
    return urls.join(cfg.output, name) if urls.is_url(cfg.output) else str(run_dir / name)
