"""Checkpoints that are written completely or not at all, and resume state.

TensorFlow's ``CheckpointManager`` writes the data files first and only then
atomically rewrites the ``checkpoint`` index that names the latest one, so a
crash mid-save leaves the previous checkpoint in force. Each checkpoint holds
the model's variables (including dropout RNG state), the optimizer's
variables (including its step counter) and the loop's own state: epoch, step
within the epoch, running sums and the early-stopping record. Keras 3 models
are not tracked by ``tf.train.Checkpoint`` themselves, so their backing
``tf.Variable``s are registered by position.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

import keras
import tensorflow as tf

from imgtrain.errors import UserError

STATE_FIELDS = {
    "epoch": tf.int64,  # epochs fully completed
    "step_in_epoch": tf.int64,  # batches of the current epoch already trained
    "loss_sum": tf.float64,
    "correct": tf.float64,
    "count": tf.float64,
    "best": tf.float64,
    "best_epoch": tf.int64,
    "wait": tf.int64,
    "ce_sum": tf.float64,  # the epoch's plain cross-entropy so far (a mid-epoch resume)
    "stopped_early": tf.int64,  # 1 once early stopping ended the run: a rerun must not train on
    "lr_scale": tf.float32,  # the plateau schedule's multiplier
    "plateau_best": tf.float64,
    "plateau_wait": tf.int64,
    "best_tie": tf.float64,  # the tie-breaking metric at the best epoch (early_stopping.BestRule)
    "best_by": tf.int64,  # why that epoch is the best (early_stopping.BEST_BY)
    "at_bound": tf.int64,  # epochs in a row the monitored metric sat at its bound
    "plateau_best_tie": tf.float64,
    "peak": tf.float64,  # the best monitored value seen (early_stopping: ties are judged against it)
    "peak_tie": tf.float64,
}
INITIAL = {
    "best": float("nan"),
    "best_epoch": -1,
    "lr_scale": 1.0,
    "plateau_best": float("nan"),
    "best_tie": float("nan"),
    "plateau_best_tie": float("nan"),
    "peak": float("nan"),
    "peak_tie": float("nan"),
}


def _by_position(variables: Iterable) -> dict[str, tf.Variable]:
    """Key variables by position: Keras makes names unique per process (``adam_2``,
    ``seed_generator_12``), so names differ between a run and its resumption while
    the order of a model's variables does not."""
    return {f"v{i:05d}": (v.value if isinstance(v, keras.Variable) else v) for i, v in enumerate(variables)}


class LoopState:
    """The training loop's counters as variables, so they live in the checkpoint."""

    def __init__(self) -> None:
        self.vars = {
            name: tf.Variable(INITIAL.get(name, 0), dtype=dtype, trainable=False, name=name)
            for name, dtype in STATE_FIELDS.items()
        }

    def get(self, name: str):
        return self.vars[name].numpy().item()

    def set(self, **values) -> None:
        for name, value in values.items():
            self.vars[name].assign(value)


class CheckpointStore:
    """The run's checkpoints: where this worker saves them and where it resumes from.

    The best weights so far are kept as a second set of variables inside every
    checkpoint (not as a separate file), so the best weights and the record of
    which epoch they came from can never disagree after a crash, and every
    worker can restore them without reading another worker's files.
    """

    def __init__(
        self,
        save_dir: Optional[Path],
        restore_dir: Optional[Path],
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        state: LoopState,
        keep: int,
        after_save: Optional[Callable[[Path], None]] = None,
    ) -> None:
        self.save_dir = Path(save_dir) if save_dir else None
        self.restore_dir = Path(restore_dir) if restore_dir else None
        self.model = model
        self.state = state
        self.after_save = after_save
        self.model_vars = [v.value if isinstance(v, keras.Variable) else v for v in model.variables]
        self.optimizer_vars = [v.value if isinstance(v, keras.Variable) else v for v in optimizer.variables]
        self.best_vars = [
            tf.Variable(v.read_value(), trainable=False, name=f"best_{i}") for i, v in enumerate(self.model_vars)
        ]
        self.parts = {
            "model": _by_position(self.model_vars),
            "optimizer": _by_position(self.optimizer_vars),
            "best": _by_position(self.best_vars),
        }
        self.checkpoint = tf.train.Checkpoint(**self.parts, loop=dict(state.vars))
        self.manager = (
            tf.train.CheckpointManager(self.checkpoint, str(self.save_dir), max_to_keep=keep) if self.save_dir else None
        )
        self.latest: Optional[str] = None

    def all_variables(self) -> list:
        """Everything a checkpoint holds: what a broadcast from the chief must cover."""
        return self.model_vars + self.optimizer_vars + self.best_vars + list(self.state.vars.values())

    def restore_latest(self, log: Callable[[str], None] = print) -> bool:
        """Restore the newest checkpoint that reads back whole; a truncated or corrupt newer one
        (a full disk, a copy cut short) is skipped with a line saying which one is used instead.

        Checkpoints are looked up by name inside ``restore_dir`` whatever the index file holds
        (``get_checkpoint_state`` returns paths already joined onto the directory it was given,
        and an index written elsewhere may hold absolute paths of a folder that has since moved).
        """
        if self.restore_dir is None:
            return False
        state = tf.train.get_checkpoint_state(str(self.restore_dir))
        if state is None or not state.model_checkpoint_path:
            return False
        names = [state.model_checkpoint_path, *reversed(state.all_model_checkpoint_paths)]
        candidates = [self.restore_dir / n for n in dict.fromkeys(os.path.basename(p) for p in names)]
        for i, path in enumerate(candidates):
            problem = _unreadable(self._reader(path), path)
            if problem:
                log(f"warning: checkpoint {path} {problem}; trying an older one")
                continue
            if i:
                log(f"resuming from the newest complete checkpoint, {path}")
            self.latest = str(path)
            return True
        raise UserError(
            f"no checkpoint in {self.restore_dir} can be read (all {len(candidates)} listed in its 'checkpoint' "
            "index are missing or damaged); start again with a new --output, or --overwrite to train anew here"
        )

    def _reader(self, path: Path) -> tf.train.Checkpoint:
        """What to restore ``path`` into: a checkpoint written before some of the loop's
        counters existed (an older imgtrain) restores those it has; the rest keep their
        initial values (``INITIAL``), as at a run's start."""
        try:
            names = {name for name, _ in tf.train.list_variables(str(path))}
        except Exception:  # noqa: BLE001 - a damaged file: the restore says so
            return self.checkpoint
        held = {k: v for k, v in self.state.vars.items() if f"loop/{k}/.ATTRIBUTES/VARIABLE_VALUE" in names}
        if len(held) == len(self.state.vars) or not held:
            return self.checkpoint
        return tf.train.Checkpoint(**self.parts, loop=held)

    def save(self) -> Optional[str]:
        if self.manager is None:
            return None
        try:
            path = self.manager.save()
        except BaseException:
            # TensorFlow writes a checkpoint's shards to "<ckpt>_temp" first; a failed save (a
            # full disk) leaves that behind. The index still names the previous checkpoint.
            for temp in self.save_dir.glob("*_temp*"):
                shutil.rmtree(temp, ignore_errors=True) if temp.is_dir() else temp.unlink(missing_ok=True)
            raise
        self.latest = path
        if self.after_save and self.save_dir:
            self.after_save(self.save_dir)
        return path

    def remember_best(self) -> None:
        for best, var in zip(self.best_vars, self.model_vars):
            best.assign(var.read_value())

    def restore_best(self) -> None:
        for best, var in zip(self.best_vars, self.model_vars):
            var.assign(best.read_value())


def _unreadable(checkpoint: tf.train.Checkpoint, path: Path) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot be restored ('is missing', 'is damaged (...)'), or None
    once it has been restored. Only a failure to read the files counts: a checkpoint whose variables
    do not match this model is a different run, and that is said as such, not skipped."""
    if not Path(f"{path}.index").is_file():
        return "is listed in the index but its files are missing"
    try:
        status = checkpoint.restore(str(path))
    except Exception as exc:  # noqa: BLE001 - TF's reader fails on bad bytes with many types (IndexError, DataLoss, ...)
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        return f"cannot be read, it is damaged ({reason})"
    try:
        status.assert_existing_objects_matched()
    except AssertionError as exc:
        raise UserError(
            f"checkpoint {path} holds a different model than this configuration builds "
            f"({str(exc).splitlines()[0][:100]}); resume with the run's own config.yaml or pass a new --output"
        ) from None
    return None


def read_model_weights(model: keras.Model, path: Path) -> None:
    """The model's weights as the checkpoint at ``path`` (``.../ckpt-N``) holds them, into
    ``model`` (built as the run built it); the rest of the checkpoint is left unread."""
    model_vars = [v.value if isinstance(v, keras.Variable) else v for v in model.variables]
    tf.train.Checkpoint(model=_by_position(model_vars)).read(str(path)).expect_partial()
