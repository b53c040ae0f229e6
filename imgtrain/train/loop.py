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

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from imgtrain import atomic
from imgtrain.models.registry import BuiltModel, Phase
from imgtrain.train.checkpoint import CheckpointStore, LoopState
from imgtrain.train.distribution import Distribution
from imgtrain.train.early_stopping import EarlyStopping

HISTORY_FIELDS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "val_top5_accuracy",
                  "learning_rate", "images_per_sec", "seconds"]


@dataclass
class LoopData:
    """What the loop needs from the data stage, as factories so each epoch is fresh."""

    train: Callable[[int, int], tf.data.Dataset]  # (epoch, batches to skip) -> dataset
    val: Optional[Callable[[], tf.data.Dataset]]
    steps_per_epoch: int
    num_classes: int
    class_weights: list[float]


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_value: float = math.nan
    stopped_early: bool = False
    resumed_from_epoch: Optional[int] = None
    images_per_sec: float = 0.0


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float = 0.0) -> tf.Tensor:
    """Per-example softmax cross-entropy on integer labels, with optional label smoothing."""
    onehot = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    return keras.losses.categorical_crossentropy(onehot, logits, from_logits=True, label_smoothing=smoothing)


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


def evaluate_sums(model: keras.Model, dist: Distribution, dataset_fn: Callable[[], tf.data.Dataset], num_classes: int,
                  top_k: int = 5, progress: bool = False, desc: str = "evaluating") -> dict[str, np.ndarray]:
    """Sum the evaluation quantities over a whole dataset (across all workers): exact under any sharding."""
    step = make_eval_step(model, dist, num_classes, top_k)
    totals: dict[str, np.ndarray] = {
        "loss_sum": np.float64(0), "correct": np.float64(0), "topk_correct": np.float64(0),
        "count": np.float64(0), "confusion": np.zeros((num_classes, num_classes), np.float64),
    }
    for batch in tqdm(dist.distribute(dataset_fn), desc=desc, unit="batch", leave=False, disable=not progress):
        out = step(batch)
        for key in totals:
            totals[key] = totals[key] + out[key].numpy()
    return totals


def summarize(totals: dict[str, np.ndarray], prefix: str = "val_", top_k: int = 5) -> dict[str, float]:
    n = max(float(totals["count"]), 1.0)
    logs = {f"{prefix}loss": float(totals["loss_sum"]) / n, f"{prefix}accuracy": float(totals["correct"]) / n}
    if totals["confusion"].shape[0] > top_k:
        logs[f"{prefix}top{top_k}_accuracy"] = float(totals["topk_correct"]) / n
    return logs


class TrainLoop:
    """Runs epochs, evaluates, checkpoints, stops early and restores the best weights."""

    def __init__(self, built: BuiltModel, optimizer: keras.optimizers.Optimizer, dist: Distribution,
                 data: LoopData, store: CheckpointStore, state: LoopState, early: EarlyStopping,
                 run_dir: Path, epochs: int, label_smoothing: float = 0.0, jit_compile: bool = False,
                 checkpoint_every_steps: int = 0, log: Callable[[str], None] = print,
                 progress: bool = True) -> None:
        self.built = built
        self.model = built.model
        self.optimizer = optimizer
        self.dist = dist
        self.data = data
        self.store = store
        self.state = state
        self.early = early
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.label_smoothing = label_smoothing
        self.jit_compile = jit_compile
        self.every_steps = checkpoint_every_steps
        self.log = log if dist.is_chief else (lambda _msg: None)
        self.chief = dist.is_chief
        self.progress = progress and dist.is_chief

    # -- steps ------------------------------------------------------------------------
    def _make_train_step(self, variables: list) -> Callable:
        model, opt, dist = self.model, self.optimizer, self.dist
        class_w = tf.constant(self.data.class_weights, tf.float32)
        num_classes, smoothing = self.data.num_classes, self.label_smoothing
        scale = getattr(opt, "scale_loss", None)

        def compute(x, y, w, real, n):
            """Forward and backward pass: the part XLA compiles when jit_compile is on."""
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                per_ex = cross_entropy(y, logits, num_classes, smoothing) * w * tf.gather(class_w, y) * real
                loss = tf.reduce_sum(per_ex) / tf.maximum(n, 1.0)
                if model.losses:
                    loss += tf.add_n(model.losses) / dist.num_replicas
                scaled = scale(loss) if scale is not None else loss
            grads = tape.gradient(scaled, variables)
            pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
            stats = (tf.reduce_sum(tf.cast(per_ex, tf.float64)),
                     tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float64) * tf.cast(real, tf.float64)),
                     tf.reduce_sum(tf.cast(real, tf.float64)))
            return grads, stats

        compute_fn = tf.function(compute, jit_compile=True) if self.jit_compile else compute

        def replica(x, y, w, real):
            # The loss is divided by the global number of real examples, so summing the
            # replicas' gradients gives the gradient of the global mean.
            n = dist.all_sum(tf.reduce_sum(real))
            grads, stats = compute_fn(x, y, w, real, n)
            opt.apply(dist.reduce_gradients(grads), variables)
            return stats

        def step(iterator):
            return dist.reduce_sum(dist.run(replica, next(iterator)))

        return tf.function(step)

    # -- history ----------------------------------------------------------------------
    def _history_path(self) -> Path:
        return self.run_dir / "history.csv"

    def _load_history(self, upto_epoch: int) -> list[dict]:
        """Rows of epochs already completed; rows past the checkpoint (a crash) are dropped."""
        path = self._history_path()
        if not path.exists():
            return []
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("epoch") and int(r["epoch"]) <= upto_epoch]
        return rows

    def _write_history(self, rows: list[dict]) -> None:
        if not self.chief:
            return
        with atomic.replacing(self._history_path()) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: r.get(k, "") for k in HISTORY_FIELDS})

    # -- the loop -----------------------------------------------------------------------
    def fit(self) -> FitResult:
        st, early = self.state, self.early
        restored = self.dist.agree(self.store.restore_latest())
        self.dist.broadcast_initial_state(self.store.all_variables())
        start_epoch = int(st.get("epoch"))
        skip = int(st.get("step_in_epoch"))
        early.best, early.best_epoch, early.wait = float(st.get("best")), int(st.get("best_epoch")), int(st.get("wait"))
        result = FitResult(resumed_from_epoch=start_epoch if restored else None)
        history = self._load_history(start_epoch) if restored else []
        if restored:
            where = f"epoch {start_epoch + 1}" + (f", step {skip + 1}" if skip else "")
            self.log(f"resuming from checkpoint {self.store.latest or 'of rank 0'}: {start_epoch} epoch(s) done, "
                     f"continuing at {where}")

        writers = None
        if self.chief:
            logs_dir = self.run_dir / "logs"
            writers = {"train": tf.summary.create_file_writer(str(logs_dir / "train")),
                       "validation": tf.summary.create_file_writer(str(logs_dir / "validation"))}

        phase: Optional[Phase] = None
        step_fn = None
        stop = False
        images_total, seconds_total = 0.0, 0.0
        steps = self.data.steps_per_epoch
        for epoch in range(start_epoch, self.epochs):
            wanted = self.built.phase_at(epoch)
            if wanted is not phase:
                phase = wanted
                phase.apply(self.model)
                step_fn = self._make_train_step(list(self.model.trainable_variables))
                if len(self.built.phases) > 1:
                    self.log(f"phase '{phase.name}' from epoch {epoch + 1}: "
                             f"{len(self.model.trainable_variables)} trainable tensors, lr x{phase.lr_factor:g}")
            sums = np.array([st.get("loss_sum"), st.get("correct"), st.get("count")]) if skip else np.zeros(3)
            bar = tqdm(total=steps, initial=skip, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                       disable=not self.progress, leave=True, dynamic_ncols=True, mininterval=0.5)
            step_in_epoch = skip
            start = time.perf_counter()
            seen = 0.0
            # The step pulls its batch from the iterator inside the graph, and results stay on the
            # device until the progress bar or a checkpoint needs them: the host is not a sync
            # point on every step (what Keras's fit does too).
            iterator = iter(self.dist.distribute(lambda: self.data.train(epoch, skip)))
            pending: list = []
            last_flush = start

            def flush() -> None:
                nonlocal sums, seen, pending
                if pending:
                    vals = np.sum([[float(t) for t in out] for out in pending], axis=0)
                    sums = sums + vals
                    seen += vals[2]
                    pending = []

            for _ in range(steps - skip):
                pending.append(step_fn(iterator))
                step_in_epoch += 1
                now = time.perf_counter()
                if self.progress:
                    bar.update(1)
                    if now - last_flush > 0.5:
                        flush()
                        last_flush = now
                        bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.4f}",
                                        acc=f"{sums[1] / max(sums[2], 1):.4f}",
                                        img_s=f"{seen / max(now - start, 1e-9):.0f}", refresh=False)
                if self.every_steps and step_in_epoch % self.every_steps == 0 and step_in_epoch < steps:
                    flush()
                    st.set(step_in_epoch=step_in_epoch, loss_sum=sums[0], correct=sums[1], count=sums[2])
                    self.store.save()
            flush()
            bar.close()
            self.dist.average_state([v for v in self.model.non_trainable_variables if v.dtype.startswith("float")])
            seconds = time.perf_counter() - start
            images_total += seen
            seconds_total += seconds
            n = max(sums[2], 1.0)
            logs = {"loss": sums[0] / n, "accuracy": sums[1] / n}
            if self.data.val is not None:
                logs.update(summarize(evaluate_sums(self.model, self.dist, self.data.val, self.data.num_classes)))
            lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            improved, should_stop = early.update(epoch, logs)
            stop = self.dist.agree(should_stop)
            if improved:
                self.store.remember_best()
            st.set(epoch=epoch + 1, step_in_epoch=0, loss_sum=0.0, correct=0.0, count=0.0,
                   best=early.best, best_epoch=early.best_epoch, wait=early.wait)
            self.store.save()
            row = {"epoch": epoch + 1, "phase": phase.name, **{k: f"{v:.6f}" for k, v in logs.items()},
                   "learning_rate": f"{lr:.6g}", "images_per_sec": f"{seen / max(seconds, 1e-9):.1f}",
                   "seconds": f"{seconds:.2f}"}
            history.append(row)
            self._write_history(history)
            if writers:
                self._summaries(writers, epoch + 1, logs, lr, seen / max(seconds, 1e-9))
            shown = "  ".join(f"{k}={v:.4f}" for k, v in logs.items())
            self.log(f"epoch {epoch + 1}/{self.epochs}  {shown}  lr={lr:.3g}  "
                     f"{seen / max(seconds, 1e-9):.0f} img/s{'  *best*' if improved else ''}")
            skip = 0
            if stop:
                self.log(f"early stopping: {early.monitor} has not improved for {early.wait} epoch(s); "
                         f"best {early.monitor}={early.best:.4f} at epoch {early.best_epoch + 1}")
                break
        if writers:
            for w in writers.values():
                w.close()
        if early.best_epoch >= 0:
            self.store.restore_best()
            self.log(f"restored the best weights: epoch {early.best_epoch + 1}, {early.monitor}={early.best:.4f}")
        result.history = history
        result.best_epoch = early.best_epoch
        result.best_value = early.best
        result.stopped_early = stop
        result.images_per_sec = images_total / seconds_total if seconds_total else 0.0
        return result

    @staticmethod
    def _summaries(writers: dict, epoch: int, logs: dict[str, float], lr: float, img_s: float) -> None:
        with writers["train"].as_default():
            for k, v in logs.items():
                if not k.startswith("val_"):
                    tf.summary.scalar(k, v, step=epoch)
            tf.summary.scalar("learning_rate", lr, step=epoch)
            tf.summary.scalar("images_per_sec", img_s, step=epoch)
        with writers["validation"].as_default():
            for k, v in logs.items():
                if k.startswith("val_"):
                    tf.summary.scalar(k[4:], v, step=epoch)
        for w in writers.values():
            w.flush()
