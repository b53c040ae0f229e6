"""A training run, end to end: config -> data -> model -> train -> evaluate -> export.

This is the only module that knows the order of the stages, and little else: each stage
lives in its own module and knows nothing of the ones after it. ``train.assembly`` builds
what a run trains with (the benchmark calls it too), ``rundir`` keeps the run directory,
``summary`` words what the run did; ``train_run`` drives them under the run directory's
lock. The ``train`` command calls ``train_run``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from imgtrain import history, resumption, rundir, summary
from imgtrain.config import Config
from imgtrain.data import fingerprint, resampler
from imgtrain.data import source as data_source
from imgtrain.data.source import DataSource
from imgtrain.errors import PeerLost, UserError
from imgtrain.evaluate import plots
from imgtrain.evaluation import evaluate_prepared
from imgtrain.export import export_keras, export_saved_model, write_class_names
from imgtrain.stop import Stopped
from imgtrain.storage import urls as storage_urls
from imgtrain.storage.runplace import local_model, run_place
from imgtrain.tracking import open_tracker
from imgtrain.train import batching
from imgtrain.train.assembly import Training, build_training, check_fits_in_memory
from imgtrain.train.cluster import configure_cluster
from imgtrain.train.distribution import Distribution, make_distribution
from imgtrain.train.optim import scaled_learning_rate


def prepare_data(cfg: Config, run_dir: Path, progress: bool = True) -> DataSource:
    """Find, split and check the data; cheap on a resumed run thanks to the check cache."""
    return data_source.get(cfg, run_dir, progress)


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


def train_run(
    cfg: Config,
    progress: bool = True,
    log: Callable[[str], None] = print,
    dist: Optional[Distribution] = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or resume), restore the best weights, export, evaluate; return the run summary.
    ``overwrite`` first removes an earlier run's outputs from the run directory (rundir.OUTPUTS)."""
    t_start = time.time()
    if dist is None:
        configure_cluster(cfg.train.cluster)
        dist = make_distribution(cfg.train.strategy)
    chief = dist.is_chief
    say = log if chief else (lambda _m: None)
    place = run_place(cfg.output, dist.rank)  # a bucket run trains in its local copy
    try:
        with place.training(chief, overwrite, dist.agree, say, t_start) as run_dir:
            result = _train_locked(cfg, run_dir, dist, progress, say, t_start, place.saved)
            dist.leaving()
            return result
    except Exception as exc:
        gone = dist.lost_peer(exc)
        if gone is None:
            raise
        raise PeerLost(
            f"worker {dist.rank} of {dist.world_size} lost {gone}, which stopped answering (a crashed node or "
            f"a killed process); the last complete checkpoint in {place.shown} stands: start every worker "
            "again with the same command to resume"
        ) from None


def _train_locked(
    cfg: Config,
    run_dir: Path,
    dist: Distribution,
    progress: bool,
    say: Callable[[str], None],
    t_start: float,
    on_save: Callable[[], None],
) -> dict[str, Any]:
    saved = resumption.resumable_config(run_dir)
    data, warnings = resampler.decide(cfg.data, saved.data.augment.resampler if saved else None, dist.gather)
    cfg = dataclasses.replace(cfg, data=data)  # the chief's resampler, recorded in config.yaml
    resuming = resumption.check_resumable(cfg, run_dir)
    batch = batching.plan(cfg.train, dist.num_replicas, saved.train if saved else None, str(cfg.output))
    cfg = dataclasses.replace(cfg, train=batching.resized(cfg.train, batch))  # config.yaml records it
    check_fits_in_memory(cfg)
    tracker = open_tracker(cfg.tracking, run_dir, dist.is_chief, say)
    _configure_runtime(cfg)
    prep = _run_data(cfg, run_dir, dist, resuming, progress, say, warnings)
    if batch.resized:  # said and recorded once the data are the run's, before MLflow hears of the run
        peak = scaled_learning_rate(cfg.train.optimizer.learning_rate, batch.scale, cfg.train.scale_lr)
        say(batching.line(batch, peak))
        if dist.is_chief:
            batching.record(run_dir, batch, peak, len(history.read(run_dir)))
    # --warm-start fetched here, at the door of the training (a bucket run's model in a reader's copy)
    warm = local_model(cfg.train.warm_start, say) if cfg.train.warm_start and not resuming else None
    if tracker is None:
        training = build_training(cfg, dist, prep, run_dir, resuming, progress, say, [], on_save, warm, batch)
        return _train_and_finish(cfg, training, prep, dist, run_dir, progress, say, t_start)
    try:
        tracker.start(summary.run_facts(cfg, run_dir, dist))
        training = build_training(cfg, dist, prep, run_dir, resuming, progress, say, [tracker], on_save, warm, batch)
        result = _train_and_finish(cfg, training, prep, dist, run_dir, progress, say, t_start)
    except BaseException as exc:
        # Stopped by a signal (SIGTERM, Ctrl-C) or failed, however late: MLflow says so.
        tracker.end("KILLED" if isinstance(exc, (Stopped, KeyboardInterrupt)) else "FAILED")
        raise
    else:
        tracker.finish()
    finally:
        tracker.restore()
    return result


def _train_and_finish(
    cfg: Config,
    training: Training,
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
    if not fit.trained and dist.agree(rundir.is_finished(run_dir)):
        say(
            f"{cfg.output} is a finished run ({len(fit.history)} epoch(s)"
            + (", stopped early" if fit.stopped_early else "")
            + "): nothing to train. "
            f"'imgtrain evaluate --run {cfg.output}' re-evaluates it; a new --output with --warm-start {cfg.output} "
            "trains on"
        )
        return rundir.read_summary(run_dir)
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
            "stop_checks": summary.stop_checks(training.loop, train_seconds),
        },
    )


def _run_data(
    cfg: Config,
    run_dir: Path,
    dist: Distribution,
    resuming: bool,
    progress: bool,
    say: Callable[[str], None],
    warnings: list[str],
) -> DataSource:
    """The run's data, checked against the run's fingerprint; config.yaml written only then."""
    if cfg.data.service and storage_urls.is_url(cfg.data.path):
        raise UserError(
            f"data.service workers read the files themselves, and {cfg.data.path} is staged on this machine only; "
            "stage the data where the service workers can read it and pass that path, or drop data.service"
        )
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
    for warning in prep.warnings + warnings:
        say(f"warning: {warning}")
    # Only once the data are known to be the run's own does anything in the run directory change.
    fingerprint.check_or_record(run_dir, fingerprint.compute(prep), resuming, dist.is_chief, str(cfg.output))
    if dist.is_chief:
        cfg.save(run_dir / rundir.CONFIG)
    counts = {s: prep.count(s) for s in ("train", "val", "test")}
    resampler, on_device = summary.resampler_used(cfg), summary.on_device(cfg)
    say(
        f"data: {len(prep.class_names)} classes; "
        f"train {counts['train']}, val {counts['val']}, test {counts['test']} images"
        + (f"; skipped {len(prep.skipped)} bad file(s)" if prep.skipped else "")
        + (f"; augmentation resampled by {resampler}" if resampler else "")
        + (f"; flips, affine and colour in the training step on the {on_device}" if on_device else "")
    )
    return prep


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
    measured = {
        "images_per_sec": dist.gather(fit.images_per_sec * share),  # each worker's own
        "fingerprints": dist.gather(summary.weights_fingerprint(model)),
        "fetched_bytes": dist.gather(prep.fetched_bytes()),  # streamed shards, each worker's own
        "seconds": seconds,
    }
    if dist.is_chief:
        plots.curves_png(
            history.read(run_dir),
            run_dir / rundir.CURVES,
            fit.best_epoch + 1,
            summary.objective_note(cfg),
            summary.validation_note(cfg),
        )
        write_class_names(prep.class_names, run_dir)
        export_keras(model, run_dir)
        if cfg.export.saved_model:
            export_saved_model(
                model, prep.class_names, cfg.data.image_size, run_dir / rundir.SAVED_MODEL, cfg.data.eval_crop()
            )
    context = summary.report_context(cfg, training, fit, counts, dist, seconds)
    report = evaluate_prepared(model, prep, cfg, dist, run_dir, progress, context) if prep.has("test") else None
    if not dist.is_chief:
        return {}
    written = summary.summarize(cfg, training, fit, prep, dist, measured, report, run_dir)
    rundir.write_summary(run_dir, written)
    return written
