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
from imgtrain.config import AugmentConfig
from imgtrain.data import trained_keys
from imgtrain.models.phases import BuiltModel, Phase
from imgtrain.stop import Abandoned
from imgtrain.train.checkpoint import CheckpointStore
from imgtrain.train.console import ConsoleAndTensorBoard
from imgtrain.train.distribution import Distribution
from imgtrain.train.early_stopping import EarlyStopping
from imgtrain.train.eval_sums import evaluate_sums, make_eval_step, summarize
from imgtrain.train.inputs import model_input
from imgtrain.train.losses import cross_entropy
from imgtrain.train.mixing import MixSettings, mix_batch, mixed_loss, partner
from imgtrain.train.optim import Plateau
from imgtrain.train.precise_bn import PreciseBatchNorm
from imgtrain.train.running_sums import RunningSums, several_steps
from imgtrain.train.stopping import StopProtocol


@dataclass
class LoopData:
    """What the loop needs from the data stage, as factories so each epoch is fresh."""

    train: Callable[[int, int], tf.data.Dataset]  # (epoch, optimizer steps to skip) -> micro-batches
    val: Optional[Callable[[], tf.data.Dataset]]
    steps_per_epoch: int
    num_classes: int
    class_weights: list[float]
    seed: int = 0  # the run's seed: batch-level mixing draws from (seed, epoch, step)
    top_k: int = 5  # evaluate.top_k: validation reports top-k accuracy when there are more classes than k
    mix: MixSettings = field(default_factory=MixSettings)
    on_device: Optional[AugmentConfig] = None  # data.augment.on_device: the augmentations the step applies
    # Why a stop's mid-epoch position cannot carry over to this start (None: it does): the
    # resumed epoch then starts again from its first step.
    position_lost: Optional[str] = None


def micro_batches(batches: tuple, accumulate: int, on_device: Optional[AugmentConfig]) -> tuple[list, ...]:
    """A replica's ``accumulate`` consecutive batches of its share of the epoch as the
    micro-batches it trains on, (x, y, w, real) lists: interleaved by example (micro-batch m
    takes every ``accumulate``-th example from the m-th on), so one replica accumulating over
    k micro-batches trains on the batches k replicas of a k-times larger run would have had."""
    parts = [(model_input(x, on_device), y, w, real) for x, y, w, real, *_key in batches]
    if accumulate == 1:
        return tuple([p] for p in parts[0])
    joined = [tf.concat([p[i] for p in parts], 0) for i in range(4)]
    return tuple([t[m::accumulate] for m in range(accumulate)] for t in joined)


def summed_over_micro_batches(compute: Callable, micro: tuple[list, ...], n: tf.Tensor, seed: tf.Tensor) -> tuple:
    """``compute``'s gradients and statistics summed over the micro-batches ``micro`` (x, y, w,
    real lists), one after another: each waits for the last one's gradients, so one
    micro-batch's activations are alive at a time."""
    x, y, w, real = micro
    grads, stats = compute(x[0], y[0], w[0], real[0], n, seed)
    for m in range(1, len(x)):
        with tf.control_dependencies([g for g in grads if g is not None][:1]):
            xm = tf.identity(x[m])
        more, extra = compute(xm, y[m], w[m], real[m], n, seed)
        grads = [a if b is None else (b if a is None else a + b) for a, b in zip(grads, more)]
        stats = tuple(a + b for a, b in zip(stats, extra))
    return grads, stats


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
    accumulate: int = 1  # micro-batches each replica adds up per optimizer step (train.batching)
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
        self.accumulate = options.accumulate
        self.every_steps = options.checkpoint_every_steps
        self.log = options.log if dist.is_chief else (lambda _msg: None)
        self.stops = StopProtocol(dist, options.stop_check_every, self.log)  # when to look, how to leave
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
                if model.losses:  # once per step over all replicas and micro-batches
                    loss += tf.add_n(model.losses) / (dist.num_replicas * self.accumulate)
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

        # Accumulating, the forward and backward pass is traced once and called per micro-batch.
        traced = self.jit_compile or self.accumulate > 1
        compute_fn = tf.function(compute, jit_compile=self.jit_compile) if traced else compute
        accumulate = self.accumulate

        def replica(batches, seed, position):
            # The loss is divided by the global number of real examples, so summing the
            # replicas' (and micro-batches') gradients gives the gradient of the global mean.
            x, y, w, real = micro_batches(batches, accumulate, on_device)
            n = dist.all_sum(sum(tf.reduce_sum(r) for r in real))
            grads, stats = summed_over_micro_batches(compute_fn, (x, y, w, real), n, seed)
            opt.apply(dist.reduce_gradients(grads), variables)
            if len(batches[0]) == 5:  # the batches carry their keys: trained_keys' test hook
                trained_keys.record(position, *(tf.concat([b[i] for b in batches], 0) for i in (4, 3)))
            return stats

        return self._step_of(replica)

    def _step_of(self, replica: Callable) -> Callable:
        """The traced training step that runs ``replica`` on every replica's micro-batches."""
        base_seed, dist, accumulate = seeds.step_base(self.data.seed), self.dist, self.accumulate

        def step(iterator, position):
            # The stateless seed of this step (batch-level mixing), made inside the graph from
            # (run seed, epoch, step) alone, so a resumed run mixes exactly as before. Every
            # micro-batch mixes with it, as every replica does.
            seed = seeds.fold(base_seed, position)
            batches = tuple(next(iterator) for _ in range(accumulate))
            return dist.reduce_sum(dist.run(replica, (batches, seed, position)))

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
        return tf.constant(seeds.step_position(epoch, step), tf.int64)

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
        the workers' shared look at the stop flag, every ``stops.every`` batches."""
        return (i + 1) % self.stops.every == 0 and self.stops.told()

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
        early.load(st.get)
        if restored and 0 < skip < self.data.steps_per_epoch and self.data.position_lost:
            self.log(f"{self.data.position_lost}: epoch {start_epoch + 1} starts again from its first step")
            skip = 0
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
            if self.stops.due(step, count, steps):
                if not saved:
                    sums.to_state(st, step_in_epoch=step)
                    self.store.save()
                bar.close()
                raise self.stops.leave(f"at epoch {epoch + 1}, step {step} of {steps}")
        sums.flush()
        bar.close()
        return sums, time.perf_counter() - start

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
            raise self.stops.leave(f"at the end of epoch {epoch + 1}, its {what} abandoned") from None

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
        note = early.saturation_note()
        if note:
            self.log(note)
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
            **early.state(),
        )
        return logs, improved, early_stop

    def fit(self) -> FitResult:
        """Train from the latest checkpoint to the last epoch (or early stopping). A SIGTERM or
        SIGINT meanwhile ends it with ``Stopped`` once a checkpoint holds the step reached."""
        with self.stops:
            result = self._fit()
            if result.trained and self.stops.told():  # a signal during the last epoch's end
                raise self.stops.stopped("after the last epoch")
        return result

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
            self.stops.between_epochs(epoch, start_epoch)
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
                self.stops.warn_if_launcher_kills(seconds, time.perf_counter() - saved_at, self.data.steps_per_epoch)
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
            self.log(f"restored the best weights: epoch {early.best_epoch + 1}, {early.described()}")
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
