"""A training assembled from a config, its data and a distribution: the model, the optimizer
on its schedule, checkpoints, early stopping and the loop with its data, each built once
here (``build_training``); ``run.py`` drives what this builds, and the benchmark times it.
Also the checks that refuse a training before any work (``check_fits_in_memory``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from imgtrain import rundir
from imgtrain.config import Config
from imgtrain.data import pipeline
from imgtrain.data.source import DataSource
from imgtrain.errors import UserError
from imgtrain.models import BuiltModel, build_model
from imgtrain.train import batching
from imgtrain.train.batching import BatchPlan
from imgtrain.train.checkpoint import CheckpointStore, LoopState
from imgtrain.train.distribution import Distribution
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


def _train_factory(
    prep: DataSource, cfg: Config, dist: Distribution, batch: BatchPlan
) -> Callable[[int, int], tf.data.Dataset]:
    """Epoch ``epoch`` of this worker's micro-batches, from optimizer step ``skip_steps`` on: the
    examples of the epoch's order trained so far are ``skip_steps`` global batches, whatever
    the number of workers that trained them."""
    per_step = dist.local_replicas * batch.accumulate  # micro-batches this worker feeds per step

    def make(epoch: int, skip_steps: int) -> tf.data.Dataset:
        plan = pipeline.EpochPlan(
            cfg.seed, epoch, batch.per_replica, dist.shard, skip_steps * batch.global_batch, per_step
        )
        return prep.train_dataset(cfg.data, plan)

    return make


def split_dataset(prep: DataSource, cfg: Config, dist: Distribution, split: str, batch: int) -> tf.data.Dataset:
    """This worker's shard of a split, padded so every worker takes the same number of steps."""
    return prep.eval_dataset(cfg.data, split, batch, dist.shard, dist.local_replicas)


def warm_start(model: keras.Model, path: Path, source: str, log: Callable[[str], None]) -> None:
    """Load ``source``'s weights (on this machine at ``path``: a bucket's fetched by the caller)."""
    if path.is_dir():
        path = path / rundir.MODEL
    if not path.exists():
        raise UserError(f"--warm-start {source} does not exist; pass a run directory, a .keras or a .weights.h5 file")
    if not (path.name.endswith(".keras") or path.name.endswith(".weights.h5")):
        raise UserError(f"--warm-start {source} must be a run directory, a .keras or a .weights.h5 file")
    try:
        model.load_weights(str(path), skip_mismatch=True)
    except Exception as exc:
        raise UserError(f"cannot warm-start from {path}: {str(exc).splitlines()[0][:160]}") from None
    log(f"warm-started from {path}")


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
    batch: BatchPlan


def _plateau(cfg: Config, early: EarlyStopping, state: LoopState) -> Optional[Plateau]:
    """The plateau schedule's watcher (on early stopping's metric unless named), or None."""
    if cfg.train.schedule.name != "plateau":
        return None
    monitor = cfg.train.schedule.plateau_monitor or early.monitor
    return Plateau(cfg.train.schedule, monitor, resolve_mode(monitor, "auto"), state)


def build_training(
    cfg: Config,
    dist: Distribution,
    prep: DataSource,
    run_dir: Path,
    resuming: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
    listeners: Optional[list[Any]] = None,
    on_save: Optional[Callable[[], None]] = None,
    warm_from: Optional[Path] = None,  # train.warm_start on this machine (a bucket's fetched by run.py)
    batch: Optional[BatchPlan] = None,  # the run's batch (run.py's, which knows the run it resumes)
) -> Training:
    """Model, optimizer, checkpoints, early stopping and the loop for ``prep`` under ``dist``; ``listeners``
    hear of every epoch on the chief (tracking), ``on_save`` of every checkpoint (a bucket run's uploads)."""
    batch = batch or batching.plan(cfg.train, dist.num_replicas, None, str(cfg.output))
    train_counts, steps = _steps_per_epoch(cfg, prep, dist, batch, say)
    with dist.scope():
        built = build_model(cfg.model, len(prep.class_names), cfg.data.image_size)
        state = LoopState()
        optimizer, peak, warmup = _create_optimizer(cfg, batch, built, steps, state)
        store = CheckpointStore(
            dist.checkpoint_save_dir(run_dir),
            dist.checkpoint_restore_dir(run_dir),
            built.model,
            optimizer,
            state,
            cfg.train.checkpoint.keep,
            after_save=_then(dist.after_save, on_save),
        )
    if warm_from is not None and cfg.train.warm_start and not resuming:
        warm_start(built.model, warm_from, cfg.train.warm_start, say)
    early = _early_stopping(cfg, prep, say)
    plateau = _plateau(cfg, early, state)
    global_batch = batch.global_batch
    _warn_slow_ema(cfg, steps, say)
    say(_model_line(cfg, built, dist, batch, steps, peak, warmup))
    options = LoopOptions(
        cfg.train.epochs,
        label_smoothing=cfg.train.label_smoothing,
        jit_compile=cfg.train.jit_compile,
        steps_per_execution=cfg.train.steps_per_execution,
        checkpoint_every_steps=cfg.train.checkpoint.every_steps,
        stop_check_every=cfg.train.checkpoint.stop_check_steps,
        # precise BN reads micro-batches: one per replica per call
        precise_bn_batches=precise_bn_batches(cfg, built, batch.per_replica * batch.replicas, steps * batch.accumulate),
        accumulate=batch.accumulate,
        ema=cfg.train.ema.decay is not None,
        progress=progress,
        log=say,
        hparams=flat_hparams(cfg.to_dict()),
        listeners=listeners or [],
    )
    loop = TrainLoop(
        built, optimizer, dist, _loop_data(cfg, prep, dist, steps, batch), store, early, run_dir, options, plateau
    )
    return Training(built, loop, early, train_counts, global_batch, steps, peak, batch)


def _model_line(
    cfg: Config, built: BuiltModel, dist: Distribution, batch: BatchPlan, steps: int, peak: float, warmup: float
) -> str:
    accumulated = f" ({batch.per_replica} x {batch.accumulate} accumulated per replica)" if batch.accumulate > 1 else ""
    return (
        f"model: {cfg.model.name}, {built.model.count_params():,} parameters; "
        f"strategy {dist.name} x{dist.num_replicas}; "
        f"global batch {batch.global_batch}{accumulated}; {steps} steps/epoch; peak lr {peak:g}"
        + (f" after {warmup:g} warmup epoch(s)" if warmup else "")
    )


def _steps_per_epoch(
    cfg: Config, prep: DataSource, dist: Distribution, batch: BatchPlan, say: Callable[[str], None]
) -> tuple[list[int], int]:
    """Training examples per worker, and the optimizer steps every worker takes per epoch (the
    longest worker's, padded: collective ops need all workers to step together). Data ordered
    by example take ceil(examples / global batch) steps on any number of workers."""
    per_step = dist.local_replicas * batch.accumulate
    train_counts = prep.worker_counts("train", dist.world_size)
    steps = (
        pipeline.padded_batches(train_counts[dist.rank], max(train_counts), batch.per_replica, per_step)[1] // per_step
    )
    if min(train_counts) == 0:
        say(
            f"warning: {train_counts.count(0)} worker(s) have no training data (fewer TFRecord shards than workers); "
            "prepare with a smaller --shard-size-mb"
        )
    return train_counts, steps


def _create_optimizer(
    cfg: Config, batch: BatchPlan, built: BuiltModel, steps: int, state: LoopState
) -> tuple[keras.optimizers.Optimizer, float, float]:
    """The optimizer on its schedule (peak rate scaled with the global batch, warmup, phase
    factors, plateau scale), built for every variable any phase trains; returns it with the
    peak rate and warmup epochs."""
    peak = scaled_learning_rate(cfg.train.optimizer.learning_rate, batch.scale, cfg.train.scale_lr)
    warmup = warmup_epochs(cfg.train.schedule, cfg.train.epochs, batch.scale, cfg.train.scale_lr)
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


def _loop_data(cfg: Config, prep: DataSource, dist: Distribution, steps: int, batch: BatchPlan) -> LoopData:
    class_w = class_weight_vector(
        cfg.train.class_weights, prep.class_names, prep.train_labels() if cfg.train.class_weights == "balanced" else []
    )
    return LoopData(
        train=_train_factory(prep, cfg, dist, batch),
        val=(lambda: split_dataset(prep, cfg, dist, "val", batch.per_replica)) if prep.has("val") else None,
        steps_per_epoch=steps,
        num_classes=len(prep.class_names),
        class_weights=class_w,
        seed=cfg.seed,
        top_k=cfg.evaluate.top_k,
        mix=MixSettings.from_config(cfg.data.augment),
        on_device=cfg.data.augment if cfg.data.augment.on_device else None,
        position_lost=_position_lost(prep, batch),
    )


def _position_lost(prep: DataSource, batch: BatchPlan) -> Optional[str]:
    """Why a mid-epoch stop's position does not hold for this start (None when it does): it
    counts global batches of the run's size, and for another number of workers it is a prefix
    of the epoch's order only when the epoch is one order of examples (folders, manifests),
    not one per worker (prepared shards, TFDS)."""
    if not batch.keeps_global_batch:
        return f"the global batch changed from {batch.previous_global} to {batch.global_batch} mid-epoch"
    if batch.previous_replicas not in (None, batch.replicas) and not prep.ordered_by_example:
        return (
            f"{batch.previous_replicas} -> {batch.replicas} replicas mid-epoch on data split among workers by file "
            "(prepared shards, TFDS), whose order depends on the number of workers"
        )
    return None


def precise_bn_batches(cfg: Config, built: BuiltModel, global_batch: int, steps: int) -> int:
    """Training steps whose BatchNorm statistics are averaged before each evaluation (0: off)."""
    if not precise_bn_needed(cfg.train.precise_bn.enabled, built.batch_statistics_layers(), steps):
        return 0
    return batches_for(cfg.train.precise_bn.samples, global_batch, steps)


def _then(after_save: Callable[[Path], None], on_save: Optional[Callable[[], None]]) -> Callable[[Path], None]:
    if on_save is None:
        return after_save

    def both(save_dir: Path) -> None:
        after_save(save_dir)
        on_save()

    return both
