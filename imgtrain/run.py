"""A training run, end to end: config -> data -> model -> train -> evaluate -> export.

This is the only module that knows the order of the stages; each stage lives
in its own module and knows nothing of the ones after it. ``build_training``
assembles the collaborators (the benchmark calls it too); ``train_run`` drives
them under the run directory's lock. The ``train`` command calls ``train_run``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from imgtrain import __version__, atomic, runlock
from imgtrain.config import Config
from imgtrain.data import fingerprint, pipeline
from imgtrain.data import source as data_source
from imgtrain.data.source import DataSource
from imgtrain.errors import UserError
from imgtrain.evaluate import plots
from imgtrain.evaluation import evaluate_prepared
from imgtrain.export import export_keras, export_saved_model, write_class_names
from imgtrain.models import BuiltModel, build_model
from imgtrain.stop import Stopped
from imgtrain.tracking import RunFacts, open_tracker
from imgtrain.train.checkpoint import CheckpointStore, LoopState
from imgtrain.train.cluster import configure_cluster
from imgtrain.train.distribution import Distribution, make_distribution
from imgtrain.train.early_stopping import EarlyStopping, resolve_mode
from imgtrain.train.loop import LoopData, LoopOptions, TrainLoop
from imgtrain.train.losses import class_weight_vector
from imgtrain.train.mixing import MixSettings
from imgtrain.train.optim import (
    Plateau,
    build_optimizer,
    build_schedule,
    scaled_learning_rate,
    warmup_epochs,
)
from imgtrain.train.precise_bn import batches_for
from imgtrain.train.precise_bn import needed as precise_bn_needed
from imgtrain.train.tensorboard import flat_hparams

# Keys that may change between a run and its resumption; anything else would
# make the checkpoint mean something different.
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
    "data.service",  # where the pipeline runs, not what it makes
    "data.service_timeout",
    "tracking",  # where the run is logged, not what it trains
)


def prepare_data(cfg: Config, run_dir: Path, progress: bool = True) -> DataSource:
    """Find, split and check the data; cheap on a resumed run thanks to the check cache."""
    return data_source.get(cfg, run_dir, progress)


def _train_factory(
    prep: DataSource, cfg: Config, dist: Distribution, batch: int
) -> Callable[[int, int], tf.data.Dataset]:
    k = dist.local_replicas

    def make(epoch: int, skip_steps: int) -> tf.data.Dataset:
        return prep.train_dataset(cfg.data, pipeline.EpochPlan(cfg.seed, epoch, batch, dist.shard, skip_steps * k, k))

    return make


def split_dataset(prep: DataSource, cfg: Config, dist: Distribution, split: str, batch: int) -> tf.data.Dataset:
    """This worker's shard of a split, padded so every worker takes the same number of steps."""
    return prep.eval_dataset(cfg.data, split, batch, dist.shard, dist.local_replicas)


# What a run writes in its directory; --overwrite removes these and nothing else, since an
# --output may be a folder that also holds the user's own files.
RUN_OUTPUTS = (
    "checkpoints",
    "logs",
    "history.csv",
    "run.json",
    "model.keras",
    "saved_model",
    "export",
    "report.json",
    "report.md",
    "report.html",
    "mlflow.json",  # a replaced run is logged as a new MLflow run
)
# Any of these without checkpoints: a finished run that can no longer be resumed, only replaced.
FINISHED = ("model.keras", "run.json", "report.json")
OVERWRITE_HINT = "pass another --output, or --overwrite to replace it"


def _clear_run(run_dir: Path, say: Callable[[str], None]) -> None:
    found = [name for name in RUN_OUTPUTS if (run_dir / name).exists() or (run_dir / name).is_symlink()]
    for name in found:
        atomic.remove_path(run_dir / name)
    if found:
        say(f"--overwrite: removed the earlier run's {', '.join(found)} from {run_dir}")


def _check_resumable(cfg: Config, run_dir: Path) -> bool:
    """True when run_dir holds a run to resume; refuses one trained with another setup, and a
    finished run whose checkpoints are gone (training would silently replace its results)."""
    saved_path = run_dir / "config.yaml"
    has_ckpt = (run_dir / "checkpoints" / "checkpoint").exists()
    if not has_ckpt:
        finished = [name for name in FINISHED if (run_dir / name).exists()]
        if finished:
            raise UserError(
                f"{run_dir} holds a finished run ({', '.join(finished)}) with no checkpoints to resume from, "
                f"and training would replace it; {OVERWRITE_HINT}"
            )
        return False
    if not saved_path.exists():
        return True
    saved = Config.load(saved_path).to_dict()
    new = cfg.to_dict()

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and key not in ("train.class_weights",):
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(saved), flat(new)
    for key in sorted(set(a) | set(b)):
        if any(key == c or key.startswith(c + ".") for c in RESUMABLE_CHANGES):
            continue
        if a.get(key) != b.get(key):
            raise UserError(
                f"{run_dir} holds a run trained with {key}={a.get(key)!r}, not {b.get(key)!r}; "
                f"resume it with the same settings, or {OVERWRITE_HINT}"
            )
    return True


def _configure_runtime(cfg: Config) -> None:
    keras.backend.clear_session()  # fresh layer names and graphs for every run in this process
    keras.utils.set_random_seed(cfg.seed)
    # Op determinism is process-wide; set it both ways so runs in one process don't leak it.
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        from tensorflow.python.framework import config as tf_framework_config

        tf_framework_config.disable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.train.precision)


def _warm_start(model: keras.Model, source: str, log: Callable[[str], None]) -> None:
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "model.keras"
    if not path.exists():
        raise UserError(f"--warm-start {source} does not exist; pass a run directory, a .keras or a .weights.h5 file")
    if not (path.name.endswith(".keras") or path.name.endswith(".weights.h5")):
        raise UserError(f"--warm-start {source} must be a run directory, a .keras or a .weights.h5 file")
    try:
        model.load_weights(str(path), skip_mismatch=True)
    except Exception as exc:
        raise UserError(f"cannot warm-start from {path}: {str(exc).splitlines()[0][:160]}") from None
    log(f"warm-started from {path}")


def _atomic_json(path: Path, data: dict) -> None:
    atomic.write_json(path, data)


def train_run(
    cfg: Config,
    progress: bool = True,
    log: Callable[[str], None] = print,
    dist: Optional[Distribution] = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or resume), restore the best weights, export, evaluate; return the run summary.
    ``overwrite`` first removes an earlier run's outputs from the run directory (RUN_OUTPUTS)."""
    t_start = time.time()
    run_dir = Path(cfg.output)
    if dist is None:
        configure_cluster(cfg.train.cluster)
        dist = make_distribution(cfg.train.strategy)
    chief = dist.is_chief
    say = log if chief else (lambda _m: None)
    _make_run_dir(run_dir)
    with runlock.hold(run_dir, enabled=chief):
        if chief:
            left = atomic.remove_orphans(run_dir, before=t_start)
            if left:
                say(f"removed {len(left)} temporary file(s) an interrupted run left in {run_dir}: {', '.join(left)}")
        if overwrite:
            if chief:
                _clear_run(run_dir, say)
            dist.agree(True)  # a barrier: no worker looks for checkpoints while the chief removes them
        return _train_locked(cfg, run_dir, dist, progress, say, t_start)


def _make_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--output {run_dir} is a file; pass a directory (it is created if missing)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the run directory {run_dir}: {exc.strerror}; pass a writable --output"
        ) from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"the run directory {run_dir} is not writable; pass a writable --output")


def _train_locked(
    cfg: Config, run_dir: Path, dist: Distribution, progress: bool, say: Callable[[str], None], t_start: float
) -> dict[str, Any]:
    resuming = _check_resumable(cfg, run_dir)
    check_fits_in_memory(cfg)
    tracker = open_tracker(cfg.tracking, run_dir, dist.is_chief, say)
    _configure_runtime(cfg)
    prep = _run_data(cfg, run_dir, dist, resuming, progress, say)
    if tracker:
        tracker.start(_run_facts(cfg, run_dir, dist))
    training = build_training(cfg, dist, prep, run_dir, resuming, progress, say, [tracker] if tracker else [])
    try:
        summary = _train_and_finish(cfg, training, prep, dist, run_dir, progress, say, t_start)
    except Stopped:
        if tracker:
            tracker.end("KILLED")
        raise
    except Exception:
        if tracker:
            tracker.end("FAILED")
        raise
    if tracker:
        tracker.finish()
    return summary


def _run_facts(cfg: Config, run_dir: Path, dist: Distribution) -> RunFacts:
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
    return RunFacts(flat_hparams(cfg.to_dict()), tags, list(cfg.data.image_size))


def _train_and_finish(
    cfg: Config,
    training: "Training",
    prep: DataSource,
    dist: Distribution,
    run_dir: Path,
    progress: bool,
    say: Callable[[str], None],
    t_start: float,
) -> dict[str, Any]:
    """Train, then evaluate and export; for a finished run, only say so and return its summary."""
    t_train = time.time()
    fit = training.loop.fit()
    train_seconds = time.time() - t_train
    if not fit.trained and dist.agree((run_dir / "run.json").exists()):
        say(
            f"{run_dir} is a finished run ({len(fit.history)} epoch(s)"
            + (", stopped early" if fit.stopped_early else "")
            + "): nothing to train. "
            f"'imgtrain evaluate --run {run_dir}' re-evaluates it; a new --output with --warm-start {run_dir} trains on"
        )
        return _read_summary(run_dir)
    return _finish(
        cfg,
        training,
        fit,
        prep,
        dist,
        run_dir,
        progress,
        {
            "train_seconds": round(train_seconds, 2),
            "total_seconds": round(time.time() - t_start, 2),
            "stop_checks": _stop_checks(training.loop, train_seconds),
        },
    )


def _stop_checks(loop: Any, train_seconds: float) -> dict[str, Any]:
    """What the workers' shared look at the stop flag cost this run (nothing for one process)."""
    checks = loop.stop_checks
    return {
        "every_steps": loop.stop_every,
        "checks": checks["checks"],
        "seconds": round(checks["seconds"], 4),
        "share_of_training": round(checks["seconds"] / max(train_seconds, 1e-9), 5),
    }


def check_fits_in_memory(cfg: Config, memory_bytes: Optional[int] = None) -> None:
    """Refuse, before any work, an image size whose first training step cannot fit in memory.

    A lower bound: one float32 batch, the first convolution block's activations kept for the
    backward pass (3 tensors per conv: output, normalised, activated), and for the dense model
    its first weight matrix with Adam's two slots. Real use is higher, so a refusal is certain.
    """
    if memory_bytes is None:
        try:
            memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    h, w = cfg.data.image_size
    pixels = cfg.train.batch_size * h * w
    m = cfg.model
    if m.name == "cnn":
        need = pixels * (3 + 3 * m.cnn.filters[0] * m.cnn.convs_per_block) * 4
    elif m.name == "dnn":
        need = pixels * 3 * 4 + (h * w * 3 * (m.dnn.hidden_units[0] if m.dnn.hidden_units else 1)) * 4 * 3
    else:  # every backbone starts with a stride-2 convolution of at least 16 channels
        need = pixels * (3 + 3 * 16 / 4) * 4
    if need > memory_bytes:
        raise UserError(
            f"data.image_size {cfg.data.image_size} with batch size {cfg.train.batch_size} needs at least "
            f"{need / 2**30:.1f} GiB for one training step, more than this machine's "
            f"{memory_bytes / 2**30:.1f} GiB; use a smaller --image-size or --batch-size"
        )


def _run_data(
    cfg: Config, run_dir: Path, dist: Distribution, resuming: bool, progress: bool, say: Callable[[str], None]
) -> DataSource:
    """The run's data, checked against the run's fingerprint; config.yaml written only then."""
    prep = prepare_data(cfg, run_dir, progress=progress and dist.is_chief)
    if not prep.has("train"):
        raise UserError(f"no training images in {cfg.data.path} after the split; add images or raise data.split.train")
    if cfg.data.service and not prep.serviceable:
        raise UserError(
            f"data.service takes an image folder or CSV manifest, not {cfg.data.path}; "
            "train from the folder, or drop data.service"
        )
    if cfg.data.service and cfg.data.cache:
        raise UserError("data.service and data.cache cannot be combined: the service decodes; drop one")
    for warning in prep.warnings + pipeline.resampler_warnings(cfg.data):
        say(f"warning: {warning}")
    # Only once the data are known to be the run's own does anything in the run directory change.
    fingerprint.check_or_record(run_dir, fingerprint.compute(prep), resuming, write=dist.is_chief)
    if dist.is_chief:
        cfg.save(run_dir / "config.yaml")
    counts = {s: prep.count(s) for s in ("train", "val", "test")}
    resampler = _resampler(cfg)
    say(
        f"data: {len(prep.class_names)} classes; "
        f"train {counts['train']}, val {counts['val']}, test {counts['test']} images"
        + (f"; skipped {len(prep.skipped)} bad file(s)" if prep.skipped else "")
        + (f"; augmentation resampled by {resampler}" if resampler else "")
        + (f"; flips, affine and colour in the training step on the {_on_device(cfg)}" if _on_device(cfg) else "")
    )
    return prep


def _resampler(cfg: Config) -> Optional[str]:
    """Who resamples the training images in tf.data (None when no augmentation there moves pixels)."""
    return pipeline.resampler_of(cfg.data) or None


def _on_device(cfg: Config) -> Optional[str]:
    """The device data.augment.on_device runs on: GPU or CPU (None when it is off)."""
    if not cfg.data.augment.on_device:
        return None
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


@dataclass
class Training:
    """Everything a run trains with, built in one place (``build_training``)."""

    built: BuiltModel
    loop: TrainLoop
    early: EarlyStopping
    train_counts: list[int]  # training examples per worker
    global_batch: int
    steps: int
    peak: float


def build_training(
    cfg: Config,
    dist: Distribution,
    prep: DataSource,
    run_dir: Path,
    resuming: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
    listeners: Optional[list[Any]] = None,
) -> Training:
    """Model, optimizer, checkpoints, early stopping and the loop for ``prep`` under ``dist``;
    ``listeners`` hear of every epoch on the chief (experiment tracking)."""
    train_counts, steps = _steps_per_epoch(cfg, prep, dist, say)
    with dist.scope():
        built = build_model(cfg.model, len(prep.class_names), cfg.data.image_size)
        state = LoopState()
        optimizer, peak, warmup = _create_optimizer(cfg, dist, built, steps, state)
        store = CheckpointStore(
            dist.checkpoint_save_dir(run_dir),
            dist.checkpoint_restore_dir(run_dir),
            built.model,
            optimizer,
            state,
            cfg.train.checkpoint.keep,
            after_save=dist.after_save,
        )
    if cfg.train.warm_start and not resuming:
        _warm_start(built.model, cfg.train.warm_start, say)
    early = _early_stopping(cfg, prep, say)
    plateau = None
    if cfg.train.schedule.name == "plateau":
        monitor = cfg.train.schedule.plateau_monitor or early.monitor
        plateau = Plateau(cfg.train.schedule, monitor, resolve_mode(monitor, "auto"), state)
    global_batch = cfg.train.batch_size * dist.num_replicas
    _warn_slow_ema(cfg, steps, say)
    say(
        f"model: {cfg.model.name}, {built.model.count_params():,} parameters; "
        f"strategy {dist.name} x{dist.num_replicas}; "
        f"global batch {global_batch}; {steps} steps/epoch; peak lr {peak:g}"
        + (f" after {warmup:g} warmup epoch(s)" if warmup else "")
    )
    options = LoopOptions(
        cfg.train.epochs,
        label_smoothing=cfg.train.label_smoothing,
        jit_compile=cfg.train.jit_compile,
        steps_per_execution=cfg.train.steps_per_execution,
        checkpoint_every_steps=cfg.train.checkpoint.every_steps,
        stop_check_every=cfg.train.checkpoint.stop_check_steps,
        precise_bn_batches=precise_bn_batches(cfg, built, global_batch, steps),
        ema=cfg.train.ema.decay is not None,
        progress=progress,
        log=say,
        hparams=flat_hparams(cfg.to_dict()),
        listeners=listeners or [],
    )
    loop = TrainLoop(
        built, optimizer, dist, _loop_data(cfg, prep, dist, steps), store, early, run_dir, options, plateau
    )
    return Training(built, loop, early, train_counts, global_batch, steps, peak)


def _steps_per_epoch(
    cfg: Config, prep: DataSource, dist: Distribution, say: Callable[[str], None]
) -> tuple[list[int], int]:
    """Training examples per worker, and the steps every worker takes per epoch (the longest
    worker's, padded: collective ops need all workers to step together)."""
    batch = cfg.train.batch_size
    train_counts = prep.worker_counts("train", dist.world_size)
    steps = (
        pipeline.padded_batches(train_counts[dist.rank], max(train_counts), batch, dist.local_replicas)[1]
        // dist.local_replicas
    )
    if min(train_counts) == 0:
        say(
            f"warning: {train_counts.count(0)} worker(s) have no training data (fewer TFRecord shards than workers); "
            "prepare with a smaller --shard-size-mb"
        )
    return train_counts, steps


def _create_optimizer(
    cfg: Config, dist: Distribution, built: BuiltModel, steps: int, state: LoopState
) -> tuple[keras.optimizers.Optimizer, float, float]:
    """The optimizer on its schedule (scaled peak rate, warmup, phase factors, plateau scale),
    built for every variable any phase trains; returns it with the peak rate and warmup epochs."""
    peak = scaled_learning_rate(cfg.train.optimizer.learning_rate, dist.num_replicas, cfg.train.scale_lr)
    warmup = warmup_epochs(cfg.train.schedule, cfg.train.epochs, dist.num_replicas, cfg.train.scale_lr)
    schedule = build_schedule(
        cfg.train.schedule,
        peak,
        steps,
        cfg.train.epochs,
        [(p.start_epoch, p.lr_factor) for p in built.phases],
        warmup,
        scale=state.vars["lr_scale"],
    )
    optimizer = build_optimizer(cfg.train.optimizer, schedule, cfg.train.precision, cfg.train.ema.decay)
    optimizer.build(built.all_trainable_variables())
    return optimizer, peak, warmup


def _warn_slow_ema(cfg: Config, steps: int, say: Callable[[str], None]) -> None:
    """An EMA whose horizon is over a third of the run mostly remembers the random initialisation."""
    decay, total = cfg.train.ema.decay, steps * cfg.train.epochs
    if decay is not None and 1.0 / (1.0 - decay) > total / 3:
        say(
            f"warning: train.ema.decay {decay:g} averages over about {1.0 / (1.0 - decay):.0f} steps, "
            f"more than a third of this run's {total}; the average will lag the weights. Try "
            f"{max(0.5, 1.0 - 3.0 / max(1, total)):.3g} or less"
        )


def _early_stopping(cfg: Config, prep: DataSource, say: Callable[[str], None]) -> EarlyStopping:
    es_cfg = cfg.train.early_stopping
    early = EarlyStopping.from_config(es_cfg)
    if not prep.has("val") and early.monitor.startswith("val_"):
        early.monitor = early.monitor[4:]
        early.mode = EarlyStopping.from_config(type(es_cfg)(monitor=early.monitor, mode=es_cfg.mode)).mode
        say(f"no validation split: early stopping and best weights follow the training {early.monitor} instead")
    return early


def _loop_data(cfg: Config, prep: DataSource, dist: Distribution, steps: int) -> LoopData:
    batch = cfg.train.batch_size
    class_w = class_weight_vector(
        cfg.train.class_weights, prep.class_names, prep.train_labels() if cfg.train.class_weights == "balanced" else []
    )
    return LoopData(
        train=_train_factory(prep, cfg, dist, batch),
        val=(lambda: split_dataset(prep, cfg, dist, "val", batch)) if prep.has("val") else None,
        steps_per_epoch=steps,
        num_classes=len(prep.class_names),
        class_weights=class_w,
        seed=cfg.seed,
        top_k=cfg.evaluate.top_k,
        mix=MixSettings.from_config(cfg.data.augment),
        on_device=cfg.data.augment if cfg.data.augment.on_device else None,
    )


def _finish(
    cfg: Config,
    training: Training,
    fit: Any,
    prep: DataSource,
    dist: Distribution,
    run_dir: Path,
    progress: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """Plots, exports, the test report and run.json (the chief writes; every worker evaluates)."""
    model, counts = training.built.model, {s: prep.count(s) for s in ("train", "val", "test")}
    share = training.train_counts[dist.rank] / max(1, counts["train"])
    per_worker = dist.gather(fit.images_per_sec * share)  # this worker's own images per second
    fingerprints = dist.gather(weights_fingerprint(model))
    if dist.is_chief:
        plots.curves_png(
            run_dir / "history.csv",
            run_dir / "curves.png",
            fit.best_epoch + 1,
            objective_note(cfg),
            validation_note(cfg),
        )
        write_class_names(prep.class_names, run_dir)
        export_keras(model, run_dir)
        export_saved_model(model, prep.class_names, cfg.data.image_size, run_dir / "saved_model", cfg.data.eval_crop())
    context = _report_context(cfg, training, fit, counts, dist, seconds)
    report = evaluate_prepared(model, prep, cfg, dist, run_dir, progress, context) if prep.has("test") else None
    if not dist.is_chief:
        return {}
    summary = {
        "imgtrain_version": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        **dist.describe(),
        "per_replica_batch": cfg.train.batch_size,
        "global_batch": training.global_batch,
        "peak_learning_rate": training.peak,
        "steps_per_epoch": training.steps,
        "epochs_completed": len(fit.history),
        "best_epoch": fit.best_epoch + 1,
        "best_" + training.early.monitor: fit.best_value,
        "stopped_early": fit.stopped_early,
        "resumed_from_epoch": fit.resumed_from_epoch,
        "counts": counts,
        "skipped_files": len(prep.skipped),
        "resampler": _resampler(cfg),
        "augment_on_device": _on_device(cfg),
        "images_per_sec": {f"worker_{i}": round(v, 1) for i, v in enumerate(per_worker)},
        "images_per_sec_total": round(sum(per_worker), 1),
        "replica_weight_fingerprints": [int(f) for f in fingerprints],
        "replicas_in_sync": len(set(fingerprints)) == 1,
        **seconds,
        "test_accuracy": report["accuracy"] if report else None,
        "report": str(run_dir / "report.json") if report else None,
    }
    _atomic_json(run_dir / "run.json", summary)
    return summary


def _report_context(
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
        "stopped": stopped,
        "strategy": dist.name,
        "world_size": dist.world_size,
        "wall_seconds": seconds.get("total_seconds"),
    }


def precise_bn_batches(cfg: Config, built: BuiltModel, global_batch: int, steps: int) -> int:
    """Training steps whose BatchNorm statistics are averaged before each evaluation (0: off)."""
    if not precise_bn_needed(cfg.train.precise_bn.enabled, built.batch_statistics_layers(), steps):
        return 0
    return batches_for(cfg.train.precise_bn.samples, global_batch, steps)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


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
