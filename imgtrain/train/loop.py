"""The one training loop, for every strategy.

Keras 3's ``Model.fit`` cannot run under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so imgtrain owns its loop: a ``tf.function`` step
run on every replica through the ``Distribution`` object, gradients applied
with ``optimizer.apply``, and sums (never means) reduced across replicas so
that metrics are exact whatever the sharding. The loop knows nothing about
which strategy runs it or which model it trains; phases (frozen base, then
fine-tuning) come from the model as data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from imgtrain import history, rundir, seeds
from imgtrain.config import AugmentConfig, reports_top_k
from imgtrain.errors import UserError
from imgtrain.models.phases import BuiltModel, Phase
from imgtrain.stop import Abandoned, StopFlag, Stopped, signal_name
from imgtrain.train.checkpoint import CheckpointStore, LoopState
from imgtrain.train.distribution import Distribution
from imgtrain.train.early_stopping import EarlyStopping
from imgtrain.train.inputs import model_input
from imgtrain.train.losses import cross_entropy
from imgtrain.train.mixing import MixSettings, mix_batch, mixed_loss, partner
from imgtrain.train.optim import Plateau
from imgtrain.train.precise_bn import PreciseBatchNorm
from imgtrain.train.tensorboard import TensorBoardLog


@dataclass
class LoopData:
    """What the loop needs from the data stage, as factories so each epoch is fresh."""

    train: Callable[[int, int], tf.data.Dataset]  # (epoch, batches to skip) -> dataset
    val: Optional[Callable[[], tf.data.Dataset]]
    steps_per_epoch: int
    num_classes: int
    class_weights: list[float]
    seed: int = 0  # the run's seed: batch-level mixing draws from (seed, epoch, step)
    top_k: int = 5  # evaluate.top_k: validation reports top-k accuracy when there are more classes than k
    mix: MixSettings = field(default_factory=MixSettings)
    on_device: Optional[AugmentConfig] = None  # data.augment.on_device: the augmentations the step applies


class EpochListener(Protocol):
    """What hears of a run's epochs on the chief: the console and TensorBoard (the loop's own),
    experiment tracking. Called in the loop's thread, in this order, once each epoch is
    checkpointed and its history row written."""

    def on_train_begin(self, hparams: dict[str, Any], sample: Optional[np.ndarray]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float], lr: float, img_s: float, improved: bool) -> None: ...

    def close(self) -> None: ...


@dataclass
class LoopOptions:
    """How the loop runs, as opposed to what it trains (the model, data, optimizer, checkpoints)."""

    epochs: int
    label_smoothing: float = 0.0
    jit_compile: bool = False
    steps_per_execution: int = 1  # training steps per call into the runtime
    checkpoint_every_steps: int = 0  # 0: a checkpoint per epoch only
    stop_check_every: int = 10  # steps between the workers' shared look at the signal flag
    precise_bn_batches: int = 0  # training steps re-estimating BatchNorm statistics per evaluation
    ema: bool = False  # evaluate and keep the optimizer's moving average of the weights
    progress: bool = True
    log: Callable[[str], None] = print
    hparams: dict[str, Any] = field(default_factory=dict)  # the run's config, flat, for TensorBoard's HParams
    # More EpochListeners (the chief's only): experiment tracking, say. The loop calls them
    # after its own and knows nothing else of them.
    listeners: list["EpochListener"] = field(default_factory=list)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_value: float = math.nan
    stopped_early: bool = False
    resumed_from_epoch: Optional[int] = None
    images_per_sec: float = 0.0
    trained: bool = False  # False when the run was already complete (finished or stopped early)
    epochs_completed: int = 0  # as the latest checkpoint counts them


def make_eval_step(model: keras.Model, dist: Distribution, num_classes: int, top_k: int = 5) -> Callable:
    """A step returning summed loss, hits, counts and the confusion matrix of one batch."""

    def replica(x, y, w, real):
        logits = tf.cast(model(x, training=False), tf.float32)
        per_ex = cross_entropy(y, logits, num_classes)
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        k = min(top_k, num_classes)
        real64 = tf.cast(real, tf.float64)
        topk = tf.cast(tf.math.in_top_k(y, logits, k), tf.float64) * real64
        cm = tf.math.confusion_matrix(y, pred, num_classes=num_classes, weights=real64, dtype=tf.float64)
        return {
            "loss_sum": tf.reduce_sum(tf.cast(per_ex * w * real, tf.float64)),
            "correct": tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float64) * real64),
            "topk_correct": tf.reduce_sum(topk),
            "count": tf.reduce_sum(real64),
            "confusion": cm,
        }

    @tf.function
    def step(batch):
        return dist.reduce_sum(dist.run(replica, batch))

    return step


def evaluate_sums(
    model: keras.Model,
    dist: Distribution,
    dataset_fn: Callable[[], tf.data.Dataset],
    num_classes: int,
    top_k: int = 5,
    progress: bool = False,
    desc: str = "evaluating",
    step: Optional[Callable] = None,
    abandon: Callable[[int], bool] = lambda _i: False,
) -> dict[str, np.ndarray]:
    """Sum the evaluation quantities over a whole dataset (across all workers): exact under any sharding.
    ``step``: a step from ``make_eval_step`` to reuse (it is traced once per model). ``abandon(i)``
    before batch i: True raises ``Abandoned`` (every worker must ask at the same batches)."""
    step = step or make_eval_step(model, dist, num_classes, top_k)
    totals: dict[str, np.ndarray] = {
        "loss_sum": np.float64(0),
        "correct": np.float64(0),
        "topk_correct": np.float64(0),
        "count": np.float64(0),
        "confusion": np.zeros((num_classes, num_classes), np.float64),
    }
    batches = dist.distribute(dataset_fn)
    for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress)):
        if abandon(i):
            raise Abandoned("validation")
        out = step(batch)
        for key in totals:
            totals[key] = totals[key] + out[key].numpy()
    return totals


def summarize(totals: dict[str, np.ndarray], prefix: str = "val_", top_k: int = 5) -> dict[str, float]:
    n = max(float(totals["count"]), 1.0)
    logs = {f"{prefix}loss": float(totals["loss_sum"]) / n, f"{prefix}accuracy": float(totals["correct"]) / n}
    if reports_top_k(totals["confusion"].shape[0], top_k):
        logs[f"{prefix}top{top_k}_accuracy"] = float(totals["topk_correct"]) / n
    return logs


class TrainLoop:
    """Runs epochs, evaluates, checkpoints, stops early and restores the best weights."""

    def __init__(
        self,
        built: BuiltModel,
        optimizer: keras.optimizers.Optimizer,
        dist: Distribution,
        data: LoopData,
        store: CheckpointStore,
        early: EarlyStopping,
        run_dir: Path,
        options: LoopOptions,
        plateau: Optional[Plateau] = None,
    ) -> None:
        self.built = built
        self.model = built.model
        self.optimizer = optimizer
        self.dist = dist
        self.data = data
        self.store = store
        self.state = store.state
        self.early = early
        self.run_dir = Path(run_dir)
        self.epochs = options.epochs
        self.label_smoothing = options.label_smoothing
        self.jit_compile = options.jit_compile
        self.steps_per_execution = options.steps_per_execution
        self.every_steps = options.checkpoint_every_steps
        # One process looks at its own flag every step, for free; several agree on it every
        # stop_check_every steps, since each look is a collective.
        self.signal_check_every = 1 if dist.world_size == 1 else options.stop_check_every
        self.signal = StopFlag()  # raised by SIGTERM/SIGINT (imgtrain.stop)
        self.signal_checks = {"checks": 0, "seconds": 0.0}
        self.log = options.log if dist.is_chief else (lambda _msg: None)
        self.chief = dist.is_chief
        self.progress = options.progress and dist.is_chief
        precise_bn_batches, ema = options.precise_bn_batches, options.ema
        self.precise_bn = PreciseBatchNorm(self.model, dist, built.batch_statistics_layers(), data.on_device)
        self.precise_bn_batches = precise_bn_batches if self.precise_bn.active else 0
        self.ema = ema
        self.plateau = plateau
        self.hparams = options.hparams
        self.listeners = list(options.listeners) if dist.is_chief else []
        # The optimizer's EMA slots follow the variables it was built with: every phase's.
        self.optimized_variables = built.all_trainable_variables() if ema else []
        self._phase: Optional[Phase] = None
        self._step_fn: Optional[Callable] = None
        self._cached_eval_step: Optional[Callable] = None
        self._epoch_data: tuple[tuple[int, int], Optional[tf.data.Dataset]] = ((-1, -1), None)

    # -- steps ------------------------------------------------------------------------
    def _make_train_step(self, variables: list) -> Callable:
        model, opt, dist, on_device = self.model, self.optimizer, self.dist, self.data.on_device
        class_w = tf.constant(self.data.class_weights, tf.float32)
        num_classes, smoothing, mix = self.data.num_classes, self.label_smoothing, self.data.mix
        scale = getattr(opt, "scale_loss", None)

        def compute(x, y, w, real, n, seed):
            """Forward and backward pass: the part XLA compiles when jit_compile is on."""
            lam = tf.constant(1.0)
            if mix.active:
                x, lam = mix_batch(x, mix, seed)
            weight = w * tf.gather(class_w, y) * real  # what one example's loss counts for
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                per_ex = mixed_loss(
                    lambda labels: cross_entropy(labels, logits, num_classes, smoothing), y, weight, lam, mix.active
                )
                loss = tf.reduce_sum(per_ex) / tf.maximum(n, 1.0)
                if model.losses:
                    loss += tf.add_n(model.losses) / dist.num_replicas
                scaled = scale(loss) if scale is not None else loss
            grads = tape.gradient(scaled, variables)
            # Accuracy and plain cross-entropy (no smoothing, hard labels: what validation
            # reports) against the label with the larger share of each image.
            main = lam >= 0.5
            y_main = tf.where(main, y, partner(y)) if mix.active else y
            w_main = tf.where(main, w * real, partner(w * real)) if mix.active else w * real
            pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
            real64 = tf.cast(real, tf.float64)
            stats = (
                tf.reduce_sum(tf.cast(per_ex, tf.float64)),
                tf.reduce_sum(tf.cast(tf.equal(pred, y_main), tf.float64) * real64),
                tf.reduce_sum(real64),
                tf.reduce_sum(tf.cast(cross_entropy(y_main, logits, num_classes) * w_main, tf.float64)),
            )
            return grads, stats

        compute_fn = tf.function(compute, jit_compile=True) if self.jit_compile else compute

        def replica(batch, seed):
            x, y, w, real = batch
            x = model_input(x, on_device)  # uint8, or with the draws of on-device augmentation
            # The loss is divided by the global number of real examples, so summing the
            # replicas' gradients gives the gradient of the global mean.
            n = dist.all_sum(tf.reduce_sum(real))
            grads, stats = compute_fn(x, y, w, real, n, seed)
            opt.apply(dist.reduce_gradients(grads), variables)
            return stats

        base_seed = seeds.step_base(self.data.seed)

        def step(iterator, position):
            # The stateless seed of this step (batch-level mixing), made inside the graph from
            # (run seed, epoch, step) alone, so a resumed run mixes exactly as before.
            seed = seeds.fold(base_seed, position)
            return dist.reduce_sum(dist.run(replica, (next(iterator), seed)))

        if self.steps_per_execution == 1:
            return tf.function(step)
        return tf.function(several_steps(step))

    def _steps_this_call(self, step: int, steps: int) -> int:
        """Up to steps_per_execution steps, never past the epoch's end or a mid-epoch checkpoint."""
        count = min(self.steps_per_execution, steps - step)
        if self.every_steps:
            count = min(count, self.every_steps - step % self.every_steps)
        return count

    def _step_seed(self, epoch: int, step: int) -> tf.Tensor:
        """The step's position in the run, as the int64 the step turns into its seed."""
        return tf.constant(epoch * 1_000_003 + step, tf.int64)

    def _train_data(self, epoch: int, skip: int) -> tf.data.Dataset:
        """The epoch's training dataset, built (and its functions traced) once for all who read
        it: the TensorBoard sample, the epoch and precise BN. Each reads its own iterator, and a
        dataset gives every iterator the same seeded sequence, as a rebuilt one would."""
        if self._epoch_data[0] != (epoch, skip):
            self._epoch_data = ((epoch, skip), self.data.train(epoch, skip))
        return self._epoch_data[1]

    # -- the weights evaluation sees -------------------------------------------------------
    def _evaluation_weights(self, epoch: int) -> Callable[[], None]:
        """Put into the model the weights validation, the best checkpoint and the exports use: the
        EMA of the weights when it is on, with BatchNorm statistics re-estimated for them (precise
        BN). Returns what puts the training weights back; without EMA the re-estimated statistics
        stay, and training continues its moving averages from them."""

        def restore() -> None:
            pass

        if self.ema:
            saved = [(v, keras.ops.convert_to_numpy(v)) for v in self.model.variables]
            self.optimizer.finalize_variable_values(self.optimized_variables)

            def restore() -> None:
                for v, value in saved:
                    v.assign(value)

        if self.precise_bn_batches:
            try:
                self.precise_bn(lambda: self._train_data(epoch, 0), self.precise_bn_batches, self._abandon_end)
            except Abandoned:
                restore()
                raise
        return restore

    def _abandon_end(self, i: int) -> bool:
        """Whether to give up the epoch's end (precise BN, validation) before its batch ``i``: at
        the workers' shared look at the stop flag, every ``signal_check_every`` batches."""
        return (i + 1) % self.signal_check_every == 0 and self._told_to_stop()

    # -- history ----------------------------------------------------------------------
    def _history_row(self, epoch: int, logs: dict[str, float], lr: float, images: float, seconds: float) -> dict:
        return {
            "epoch": epoch + 1,
            "phase": self._phase.name,
            **{k: f"{v:.6f}" for k, v in logs.items()},
            "learning_rate": f"{lr:.6g}",
            "images_per_sec": f"{images / max(seconds, 1e-9):.1f}",
            "seconds": f"{seconds:.2f}",
        }

    def _write_history(self, rows: list[dict]) -> None:
        if self.chief:
            history.write(self.run_dir, rows, self.data.top_k)

    # -- the loop -----------------------------------------------------------------------
    def _resume(self) -> tuple[int, int, Optional[int], list[dict]]:
        """Restore the latest checkpoint (if any) on every worker: (epoch, step, resumed_from, history)."""
        st, early = self.state, self.early
        restored = self.dist.agree(self.store.restore_latest(self.log))
        self.dist.broadcast_initial_state(self.store.all_variables())
        start_epoch = int(st.get("epoch"))
        skip = int(st.get("step_in_epoch"))
        early.best, early.best_epoch, early.wait = float(st.get("best")), int(st.get("best_epoch")), int(st.get("wait"))
        if restored:
            where = f"epoch {start_epoch + 1}" + (f", step {skip + 1}" if skip else "")
            if skip >= self.data.steps_per_epoch:
                where = f"the end of epoch {start_epoch + 1} (its steps are trained)"
            # A finished run (every epoch done, or stopped early) continues nowhere: run.py says so.
            done = start_epoch >= self.epochs or bool(st.get("stopped_early"))
            self.log(
                f"resuming from checkpoint {self.store.latest or 'of rank 0'}: {start_epoch} epoch(s) done"
                + ("" if done else f", continuing at {where}")
            )
        return (
            start_epoch,
            skip,
            (start_epoch if restored else None),
            (history.read(self.run_dir, upto_epoch=start_epoch) if restored else []),
        )

    def _enter_phase(self, epoch: int) -> None:
        wanted = self.built.phase_at(epoch)
        if wanted is self._phase:
            return
        self._phase = wanted
        wanted.apply(self.model)
        self._step_fn = self._make_train_step(list(self.model.trainable_variables))
        if len(self.built.phases) > 1:
            self.log(
                f"phase '{wanted.name}' from epoch {epoch + 1}: "
                f"{len(self.model.trainable_variables)} trainable tensors, lr x{wanted.lr_factor:g}"
            )

    def _run_epoch(self, epoch: int, skip: int) -> tuple[RunningSums, float]:
        """Train the steps of one epoch from ``skip`` on; returns the epoch's sums and seconds."""
        st, steps = self.state, self.data.steps_per_epoch
        sums = RunningSums.from_state(st, epoch, skip) if skip else RunningSums(epoch=epoch)
        if skip >= steps:  # stopped at the epoch's end: trained, its end pending
            return sums, 0.0
        bar = tqdm(
            total=steps,
            initial=skip,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            unit="step",
            disable=not self.progress,
            leave=True,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        start = last_flush = time.perf_counter()
        # The step pulls its batch from the iterator inside the graph, and results stay on the
        # device until the progress bar or a checkpoint needs them: the host is not a sync
        # point on every step (what Keras's fit does too).
        iterator = iter(self.dist.distribute(lambda: self._train_data(epoch, skip)))
        step = skip
        while step < steps:
            count = self._steps_this_call(step, steps)
            if self.steps_per_execution == 1:
                sums.add(self._step_fn(iterator, self._step_seed(epoch, step)))
            else:
                sums.add(self._step_fn(iterator, self._step_seed(epoch, step), tf.constant(count)), count)
            step += count
            now = time.perf_counter()
            if self.progress:
                bar.update(count)
                if now - last_flush > 0.5:
                    last_flush = now
                    bar.set_postfix(
                        loss=f"{sums.mean('loss'):.4f}",
                        acc=f"{sums.mean('accuracy'):.4f}",
                        img_s=f"{sums.images_this_call() / max(now - start, 1e-9):.0f}",
                        refresh=False,
                    )
            saved = bool(self.every_steps) and step % self.every_steps == 0 and step < steps
            if saved:
                sums.to_state(st, step_in_epoch=step)
                self.store.save()
            every = self.signal_check_every
            if step < steps and step // every > (step - count) // every and self._told_to_stop():
                if not saved:
                    sums.to_state(st, step_in_epoch=step)
                    self.store.save()
                bar.close()
                if self.dist.world_size > 1:
                    # A barrier: no worker leaves (and no launcher, seeing it leave, signals the
                    # rest) before the chief's checkpoint is whole.
                    self.dist.agree(True)
                raise self._stopped_by_signal(f"at epoch {epoch + 1}, step {step} of {steps}")
        sums.flush()
        bar.close()
        return sums, time.perf_counter() - start

    def _warn_if_a_stop_outlasts_the_launcher(self, epoch_seconds: float, save_seconds: float) -> None:
        """Once, from the first epoch's timing: a launcher that kills its workers soon after
        passing a stop on (horovodrun alone: 5 s) would kill them before the checkpoint."""
        budget = self.dist.stop_budget_seconds
        step = epoch_seconds / max(1, self.data.steps_per_epoch)
        needs = self.signal_check_every * step + save_seconds
        if budget is None or needs <= budget:
            return
        advice = "start with launch/horovod.sh, which waits for the checkpoint"
        fits = int((budget - save_seconds) / max(step, 1e-9))
        if fits >= 1:
            advice += f", or set train.checkpoint.stop_check_steps={fits}"
        self.log(
            f"warning: horovodrun kills its workers {budget:g} s after it passes a stop on, and a stop here "
            f"takes up to {needs:.1f} s ({self.signal_check_every} steps of {step:.2f} s, then a "
            f"{save_seconds:.1f} s checkpoint): {advice}"
        )

    def _end_epoch_or_stop(self, epoch: int, sums: RunningSums) -> tuple[dict[str, float], bool, bool]:
        """``_end_epoch``; a stop agreed meanwhile abandons it (its BatchNorm statistics put back)
        and saves the epoch as trained, its end pending: the resume runs the end, not the steps."""
        keep = [(v, keras.ops.convert_to_numpy(v)) for v in self.model.non_trainable_variables]
        try:
            return self._end_epoch(epoch, sums)
        except Abandoned as what:
            for v, value in keep:
                v.assign(value)
            sums.to_state(self.state, step_in_epoch=self.data.steps_per_epoch)
            self.store.save()
            if self.dist.world_size > 1:
                self.dist.agree(True)  # a barrier: the chief's checkpoint is whole before anyone leaves
            raise self._stopped_by_signal(f"at the end of epoch {epoch + 1}, its {what} abandoned") from None

    def _end_epoch(self, epoch: int, sums: RunningSums) -> tuple[dict[str, float], bool, bool]:
        """Evaluate, stop early or not, drop the plateau rate, and set the state the epoch's
        checkpoint will hold: (logs, improved, early_stop). The caller writes the history row,
        then the checkpoint."""
        early = self.early
        self.dist.average_state([v for v in self.model.non_trainable_variables if v.dtype.startswith("float")])
        logs = {
            "loss": sums.mean("loss"),
            "cross_entropy": sums.mean("cross_entropy"),
            "accuracy": sums.mean("accuracy"),
        }
        training_weights = self._evaluation_weights(epoch)
        if self.data.val is not None:
            try:
                val = evaluate_sums(
                    self.model,
                    self.dist,
                    self.data.val,
                    self.data.num_classes,
                    self.data.top_k,
                    step=self._eval_step(),
                    abandon=self._abandon_end,
                )
            except Abandoned:
                training_weights()
                raise
            logs.update(summarize(val, top_k=self.data.top_k))
        improved, wants_early_stop = early.update(epoch, logs)
        early_stop = self.dist.agree(wants_early_stop)
        if early_stop:  # checkpointed with the epoch: a crash from here on must not train again
            self.state.set(stopped_early=1)
        if improved:
            self.store.remember_best()
        training_weights()
        if self.plateau is not None:
            dropped = self.plateau.update(logs)
            if dropped is not None:
                self.log(
                    f"{self.plateau.monitor} has not improved for {self.plateau.patience + 1} epoch(s): "
                    f"learning rate x{dropped:g} of its schedule from epoch {epoch + 2}"
                )
        self.state.set(
            epoch=epoch + 1,
            step_in_epoch=0,
            loss_sum=0.0,
            correct=0.0,
            count=0.0,
            ce_sum=0.0,
            best=early.best,
            best_epoch=early.best_epoch,
            wait=early.wait,
        )
        return logs, improved, early_stop

    def fit(self) -> FitResult:
        """Train from the latest checkpoint to the last epoch (or early stopping). A SIGTERM or
        SIGINT meanwhile ends it with ``Stopped`` once a checkpoint holds the step reached."""
        with self.signal:
            result = self._fit()
            if result.trained and self._told_to_stop():  # a signal during the last epoch's end
                raise self._stopped_by_signal("after the last epoch")
        return result

    def _told_to_stop(self) -> bool:
        """Whether any worker was told to stop; the same answer on every worker, which must all
        ask at the same steps. The signal number agreed is kept in ``self.signal.signum``."""
        if self.dist.world_size == 1:
            return bool(self.signal.signum)
        start = time.perf_counter()
        signums = self.dist.gather(float(self.signal.signum))
        self.signal_checks["checks"] += 1
        self.signal_checks["seconds"] += time.perf_counter() - start
        agreed = int(max(signums))
        # The agreed value decides, never this worker's own flag read now: a signal that landed
        # after its value was sent is in no other worker's answer (stopping on it alone would
        # leave the others in a collective it never joins); it is sent at the next check.
        if agreed and not self.signal.signum:
            self.signal.signum = agreed
        return bool(agreed)

    def _stop_if_told_between_epochs(self, epoch: int, start_epoch: int) -> None:
        """A signal during the last epoch's end (validation, checkpoint): its checkpoint stands."""
        if epoch > start_epoch and self._told_to_stop():
            raise self._stopped_by_signal(f"at the end of epoch {epoch}")

    def _stopped_by_signal(self, where: str) -> Stopped:
        return Stopped(
            self.signal.signum,
            f"stopped by {signal_name(self.signal.signum)} {where}; checkpoint written; "
            "run the same command again to resume",
        )

    def _fit(self) -> FitResult:
        early = self.early
        start_epoch, skip, resumed_from, rows = self._resume()
        result = FitResult(resumed_from_epoch=resumed_from)
        finished_early = bool(self.state.get("stopped_early"))
        if finished_early:
            self.log(
                f"this run already stopped early after epoch {start_epoch}; not training again "
                f"(best {early.monitor}={early.best:.4f} at epoch {early.best_epoch + 1})"
            )
            start_epoch = self.epochs
        listeners = [one for one in (self._console_listener(), *self.listeners) if one is not None]
        if listeners and start_epoch == 0 and skip == 0:
            sample = self._first_batch_images()
            for listener in listeners:
                listener.on_train_begin(self.hparams, sample)
        self._phase = None
        early_stop = False
        images_total, seconds_total = 0.0, 0.0
        for epoch in range(start_epoch, self.epochs):
            self._stop_if_told_between_epochs(epoch, start_epoch)
            self._enter_phase(epoch)
            lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            sums, seconds = self._run_epoch(epoch, skip)
            images_total += sums.images
            seconds_total += seconds
            logs, improved, early_stop = self._end_epoch_or_stop(epoch, sums)
            rows.append(self._history_row(epoch, logs, lr, sums.images, seconds))
            # The row before the checkpoint that counts the epoch: a kill between the two leaves a
            # row past the checkpoint, which the resume drops and writes again, never a lost one.
            self._write_history(rows)
            saved_at = time.perf_counter()
            self.store.save()
            if epoch == start_epoch:
                self._warn_if_a_stop_outlasts_the_launcher(seconds, time.perf_counter() - saved_at)
            for listener in listeners:
                listener.on_epoch_end(epoch, logs, lr, sums.images / max(seconds, 1e-9), improved)
            skip = 0
            if early_stop:
                self.log(
                    f"early stopping: {early.monitor} has not improved for {early.wait} epoch(s); "
                    f"best {early.monitor}={early.best:.4f} at epoch {early.best_epoch + 1}"
                )
                break
        for listener in listeners:
            listener.close()
        if early.best_epoch >= 0:
            self.store.restore_best()
            self.log(f"restored the best weights: epoch {early.best_epoch + 1}, {early.monitor}={early.best:.4f}")
        elif start_epoch < self.epochs:
            self._evaluation_weights(self.epochs - 1)  # no best epoch (a NaN monitor): the final weights
        result.history = rows
        result.best_epoch = early.best_epoch
        result.best_value = early.best
        result.stopped_early = early_stop or finished_early
        result.trained = start_epoch < self.epochs
        result.epochs_completed = int(self.state.get("epoch"))
        result.images_per_sec = images_total / seconds_total if seconds_total else 0.0
        return result

    def _first_batch_images(self) -> Optional[np.ndarray]:
        """Epoch 0's first training batch as the model sees it (augmented), for TensorBoard."""
        for x, *_ in self._train_data(0, 0).take(1):
            return model_input(x, self.data.on_device).numpy()[:16]
        return None

    def _console_listener(self) -> Optional["ConsoleAndTensorBoard"]:
        """The chief's console line and TensorBoard scalars after every epoch; None elsewhere."""
        return ConsoleAndTensorBoard(self.run_dir / rundir.LOGS, self.epochs, self.log) if self.chief else None

    def _eval_step(self) -> Callable:
        """The validation step, traced once per run (not once per epoch)."""
        if self._cached_eval_step is None:
            self._cached_eval_step = make_eval_step(self.model, self.dist, self.data.num_classes, self.data.top_k)
        return self._cached_eval_step


def several_steps(step: Callable) -> Callable:
    """``step(iterator, position)`` run ``count`` times in one call (train.steps_per_execution):
    fewer trips from Python to the runtime. Each step applies its own update and draws its own
    seed from its position, so the weights are those of ``count`` single steps; the
    statistics come back summed."""

    def steps(iterator, position, count):
        total = tuple(tf.zeros([], tf.float64) for _ in RunningSums.FIELDS)
        for i in tf.range(count):
            out = step(iterator, position + tf.cast(i, tf.int64))
            total = tuple(a + b for a, b in zip(total, out))
        return total

    return steps


class RunningSums:
    """An epoch's summed training statistics, kept on the device until asked for."""

    FIELDS = ("loss_sum", "correct", "count", "ce_sum")

    def __init__(self, values: Optional[np.ndarray] = None, epoch: int = 0, first_step: int = 0) -> None:
        self.values = np.zeros(4) if values is None else np.asarray(values, np.float64)
        self.pending: list = []
        self.images = 0.0  # trained in this call (a resumed epoch counts from where it resumed)
        self.epoch, self.next_step = epoch, first_step  # where the first pending step sits

    @classmethod
    def from_state(cls, state: LoopState, epoch: int, first_step: int) -> "RunningSums":
        return cls(np.array([state.get(f) for f in cls.FIELDS]), epoch, first_step)

    def add(self, step_out, steps: int = 1) -> None:
        """One call's summed statistics, covering ``steps`` training steps."""
        self.pending.append((step_out, steps))
        if len(self.pending) >= 64:  # bound what waits on the device
            self.flush()

    def flush(self) -> None:
        """Bring pending steps to the host; a non-finite loss stops the run here, before any
        checkpoint holds its weights (what Keras' TerminateOnNaN does for fit)."""
        if self.pending:
            rows = [[float(t) for t in out] for out, _ in self.pending]
            first = self.next_step
            for row, (_, steps) in zip(rows, self.pending):
                if not math.isfinite(row[0]):
                    where = f"step {first + 1}" if steps == 1 else f"steps {first + 1}-{first + steps}"
                    raise UserError(
                        f"the training loss became {row[0]} at epoch {self.epoch + 1}, {where}; "
                        "the last good checkpoint is kept. Lower train.optimizer.learning_rate, set "
                        "train.optimizer.clipnorm, or check the data and weights"
                    )
                first += steps
            self.next_step = first
            vals = np.sum(rows, axis=0)
            self.values = self.values + vals
            self.images += vals[2]
            self.pending = []

    def images_this_call(self) -> float:
        self.flush()
        return self.images

    def mean(self, name: str) -> float:
        self.flush()
        index = {"loss": 0, "accuracy": 1, "cross_entropy": 3}[name]
        return float(self.values[index] / max(self.values[2], 1.0))

    def to_state(self, state: LoopState, step_in_epoch: int) -> None:
        self.flush()
        state.set(step_in_epoch=step_in_epoch, **dict(zip(self.FIELDS, self.values.tolist())))


class ConsoleAndTensorBoard:
    """The loop's own EpochListener: the console line and TensorBoard (``train.tensorboard``)."""

    def __init__(self, logs_dir: Path, epochs: int, log: Callable[[str], None]) -> None:
        self.epochs, self.log = epochs, log
        self.board = TensorBoardLog(logs_dir)

    def on_train_begin(self, hparams: dict[str, Any], sample: Optional[np.ndarray]) -> None:
        self.board.start(hparams, sample)

    def on_epoch_end(self, epoch: int, logs: dict[str, float], lr: float, img_s: float, improved: bool) -> None:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "cross_entropy")
        self.log(
            f"epoch {epoch + 1}/{self.epochs}  {shown}  lr={lr:.3g}  {img_s:.0f} img/s{'  *best*' if improved else ''}"
        )
        self.board.epoch(epoch, logs, lr, img_s)

    def close(self) -> None:
        self.board.close()
