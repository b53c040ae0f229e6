"""How a run is spread over devices and processes, behind one small interface.

The training loop never asks which strategy runs it. It asks this object for
a variable scope, for its shard of the data, to run a step on every replica,
to sum a value over replicas, whether it is the chief, and where checkpoints
are written and read. Four implementations:

- ``SingleDevice``: one process, TensorFlow's default strategy.
- ``Mirrored``: one process, several local GPUs (``MirroredStrategy``).
- ``MultiWorker``: ``MultiWorkerMirroredStrategy`` across processes or nodes,
  configured by ``TF_CONFIG``; every worker runs the same program and the
  chief (rank 0) alone writes logs, reports and exports.
- ``Horovod``: one process per device started by ``horovodrun``; gradients
  summed with ``hvd.grouped_allreduce``, state broadcast from rank 0.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from imgtrain import rundir
from imgtrain.data.pipeline import Shard
from imgtrain.errors import UserError

HOROVODRUN_GRACE_SECONDS = 5.0
# Set by launch/horovod_run.py for its workers: stop signals reach them from launch/horovod.sh,
# never horovodrun's kill 5 s after its own SIGTERM.
STOP_FORWARDED = "IMGTRAIN_STOP_FORWARDED"
HOROVOD_ENV = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


LEAVING_TIMEOUT_MS = 600_000  # the chief may still export and write reports


class Distribution:
    """One process, TensorFlow's default strategy (one device)."""

    name = "single"

    def __init__(self) -> None:
        self.strategy: tf.distribute.Strategy = tf.distribute.get_strategy()

    # -- topology -----------------------------------------------------------------
    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        """Number of processes (workers) taking part in the run."""
        return 1

    @property
    def num_replicas(self) -> int:
        """Number of model replicas over all workers: the global batch multiplier."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def local_replicas(self) -> int:
        return max(1, self.num_replicas // self.world_size)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.world_size, self.rank)

    # -- execution ----------------------------------------------------------------
    def scope(self) -> contextlib.AbstractContextManager:
        return self.strategy.scope()

    def distribute(self, dataset_fn: Callable[[], tf.data.Dataset]) -> Any:
        """An iterable of per-step inputs from a function building this worker's dataset."""
        return dataset_fn()

    def run(self, fn: Callable, args: Sequence[Any]) -> Any:
        return self.strategy.run(fn, args=tuple(args))

    def reduce_sum(self, value: Any) -> Any:
        """Sum per-replica results (a nest of tensors) over every replica of every worker."""
        return tf.nest.map_structure(lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), value)

    def all_sum(self, value: tf.Tensor) -> tf.Tensor:
        """Inside a replica step: the sum of ``value`` over every replica."""
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value) if ctx is not None else value

    def reduce_gradients(self, grads: list) -> list:
        """Inside a replica step: gradients as the optimizer should apply them.

        tf.distribute strategies sum gradients inside ``optimizer.apply``; the
        loss is already divided by the global example count, so the sum is the
        gradient of the global mean.
        """
        return grads

    def host_sum(self, values: Sequence[float]) -> np.ndarray:
        """Outside a step: element-wise sum of a small vector over all workers."""
        return np.asarray(values, dtype=np.float64)

    def broadcast_initial_state(self, variables: Sequence[Any]) -> None:
        """Make every worker start from the chief's values (only Horovod needs to)."""

    def average_state(self, variables: Sequence[Any]) -> None:
        """Replace each variable by its mean over workers.

        Gradients keep trainable weights identical everywhere, but statistics a
        layer updates from its own batch (BatchNorm moving mean and variance)
        drift apart per worker. Averaging them once per epoch, before
        validation, keeps the replicas identical and evaluation consistent.
        """
        if self.world_size <= 1 or not variables:
            return
        values = [np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in variables]
        flat = np.concatenate([x.ravel() for x in values])
        mean = self.host_sum(flat) / self.world_size
        offset = 0
        for v, x in zip(variables, values):
            v.assign(mean[offset : offset + x.size].reshape(x.shape).astype(v.dtype))
            offset += x.size

    def agree(self, flag: bool) -> bool:
        """A decision taken together: true if any worker says so, the same on all."""
        return bool(self.host_sum([1.0 if flag else 0.0])[0] > 0)

    def gather(self, value: float) -> list[float]:
        """Every worker's ``value``, in rank order, on every worker."""
        onehot = np.zeros(self.world_size)
        onehot[self.rank] = value
        return [float(v) for v in self.host_sum(onehot)]

    # -- checkpoints --------------------------------------------------------------
    def checkpoint_save_dir(self, run_dir: Path) -> Optional[Path]:
        """Where this worker writes checkpoints; None when it writes none."""
        return run_dir / rundir.CHECKPOINTS

    def checkpoint_restore_dir(self, run_dir: Path) -> Optional[Path]:
        """Where this worker reads the checkpoint to resume from; None: it gets a broadcast."""
        return run_dir / rundir.CHECKPOINTS

    def after_save(self, save_dir: Path) -> None:
        """Clean up after a save (non-chief MultiWorker copies are throw-away)."""

    @property
    def stop_budget_seconds(self) -> Optional[float]:
        """How long the launcher waits, after passing a stop on, before it kills the workers,
        when it waits less than a stop needs to be counted on; None: the grace is the user's."""
        return None

    def leaving(self) -> None:
        """Called by every worker whose command succeeded, before it exits: returns once no
        worker still needs anything from this one."""

    def lost_peer(self, exc: BaseException) -> Optional[str]:
        """Which worker ``exc`` says is gone ("worker 1", or "another worker"), or None: ``exc``
        is not a collective that failed for a missing peer. One process has no peers."""
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": self.name,
            "world_size": self.world_size,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
        }


class SingleDevice(Distribution):
    name = "single"


class _Distributed(Distribution):
    """tf.distribute strategies that own several replicas: datasets go through the strategy."""

    def distribute(self, dataset_fn: Callable[[], tf.data.Dataset]) -> Any:
        return self.strategy.distribute_datasets_from_function(lambda _ctx: dataset_fn())

    @functools.cached_property
    def _all_reduce_fn(self) -> Callable:
        strategy = self.strategy

        @tf.function(reduce_retracing=True)
        def all_reduce(x: tf.Tensor):
            def replica() -> tf.Tensor:
                # identity places the value on this replica's device; collectives need one
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(x))

            return strategy.run(replica)

        return all_reduce

    def host_sum(self, values: Sequence[float]) -> np.ndarray:
        tensor = tf.constant(np.asarray(values, dtype=np.float64) / float(self.local_replicas))
        local_values = self.strategy.experimental_local_results(self._all_reduce_fn(tensor))
        return np.asarray(local_values[0].numpy(), dtype=np.float64)


class Mirrored(_Distributed):
    name = "mirrored"

    def __init__(self) -> None:
        self.strategy = tf.distribute.MirroredStrategy()


class MultiWorker(_Distributed):
    """``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``; chief = rank 0."""

    name = "multiworker"

    def __init__(self) -> None:
        config = tf_config()
        if not config:
            raise UserError(
                "train.strategy multiworker needs TF_CONFIG (or --cluster k8s-indexed-job / jobset); "
                "start workers with launch/multiworker.py"
            )
        self.resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=self.resolver)
        cluster = config.get("cluster", {})
        tasks = [("chief", i) for i in range(len(cluster.get("chief", [])))] + [
            ("worker", i) for i in range(len(cluster.get("worker", [])))
        ]
        task = config.get("task", {})
        me = (task.get("type", "worker"), int(task.get("index", 0)))
        self._rank = tasks.index(me) if me in tasks else 0
        self._world = max(1, len(tasks))

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    def checkpoint_save_dir(self, run_dir: Path) -> Optional[Path]:
        # Every worker takes part in a save (it may run collectives); only the
        # chief's copy is kept. The others write to a scratch dir removed after.
        if self.is_chief:
            return run_dir / rundir.CHECKPOINTS
        return run_dir / rundir.CHECKPOINTS / f".worker-{self.rank}-scratch"

    def after_save(self, save_dir: Path) -> None:
        if not self.is_chief:
            shutil.rmtree(save_dir, ignore_errors=True)

    def leaving(self) -> None:
        """A ring all-reduce can end on one worker while the other still pulls its last part
        from it: a worker that exits then fails its peer's collective ("Socket closed", exit
        138 after a finished run). So every worker waits at a barrier of TensorFlow's
        coordination service, whose leader (the chief) releases all once all have arrived,
        every collective behind them, and needs nothing from them after that."""
        from tensorflow.python.eager import context

        try:
            context.context().wait_at_barrier("imgtrain-leaving", LEAVING_TIMEOUT_MS)
        except Exception:  # noqa: BLE001 - this worker's work is done and written whatever the barrier says
            pass  # a worker gone after its work: its own exit code says what happened

    def lost_peer(self, exc: BaseException) -> Optional[str]:
        # The coordination service marks a task that stopped sending heartbeats as unhealthy and
        # aborts every collective with UNAVAILABLE ("Collective ops is aborted by: ...").
        if not isinstance(exc, tf.errors.UnavailableError) and "Collective ops is aborted" not in str(exc):
            return None
        task = re.search(r"/job:(?:worker|chief)/(?:replica:\d+/)?task:(\d+)", str(exc))
        return f"worker {task.group(1)}" if task else "another worker"


class Horovod(Distribution):
    """One process per device under ``horovodrun``; rank 0 checkpoints and broadcasts."""

    name = "horovod"

    def __init__(self) -> None:
        try:
            import horovod.tensorflow as hvd
        except ImportError:
            raise UserError(
                "train.strategy horovod needs Horovod; install it with launch/install_horovod.sh "
                "(make install does) and start with horovodrun"
            ) from None
        hvd.init()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
        self.hvd = hvd
        self.strategy = tf.distribute.get_strategy()

    @property
    def rank(self) -> int:
        return int(self.hvd.rank())

    @property
    def world_size(self) -> int:
        return int(self.hvd.size())

    @property
    def num_replicas(self) -> int:
        return int(self.hvd.size())

    def reduce_sum(self, value: Any) -> Any:
        return tf.nest.map_structure(lambda t: self.hvd.allreduce(t, op=self.hvd.Sum), value)

    def all_sum(self, value: tf.Tensor) -> tf.Tensor:
        return self.hvd.allreduce(value, op=self.hvd.Sum)

    def reduce_gradients(self, grads: list) -> list:
        present = [i for i, g in enumerate(grads) if g is not None]
        reduced = self.hvd.grouped_allreduce([grads[i] for i in present], op=self.hvd.Sum)
        out = list(grads)
        for i, g in zip(present, reduced):
            out[i] = g
        return out

    def host_sum(self, values: Sequence[float]) -> np.ndarray:
        return self.hvd.allreduce(tf.constant(np.asarray(values, np.float64)), op=self.hvd.Sum).numpy()

    def broadcast_initial_state(self, variables: Sequence[Any]) -> None:
        backing = [v.value if isinstance(v, keras.Variable) else v for v in variables]
        self.hvd.broadcast_variables(backing, root_rank=0)

    def checkpoint_save_dir(self, run_dir: Path) -> Optional[Path]:
        return run_dir / rundir.CHECKPOINTS if self.is_chief else None

    def checkpoint_restore_dir(self, run_dir: Path) -> Optional[Path]:
        return run_dir / rundir.CHECKPOINTS if self.is_chief else None

    @property
    def stop_budget_seconds(self) -> Optional[float]:
        # horovodrun alone answers a signal by passing SIGTERM on and killing every worker 5 s
        # later (its GRACEFUL_TERMINATION_TIME_S); launch/horovod.sh passes signals on itself.
        started_by_horovodrun = "HOROVOD_GLOO_RENDEZVOUS_ADDR" in os.environ or "HOROVOD_HOSTNAME" in os.environ
        forwarded = os.environ.get(STOP_FORWARDED) == "1"
        return HOROVODRUN_GRACE_SECONDS if started_by_horovodrun and not forwarded else None

    def lost_peer(self, exc: BaseException) -> Optional[str]:
        # A rank gone shuts Horovod's background loop down; every later op fails with this.
        gone = type(exc).__name__ == "HorovodInternalError" or "Horovod has been shut down" in str(exc)
        return "another worker" if gone else None


def tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise UserError(
            "TF_CONFIG is not valid JSON; it must look like "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None


def detect_strategy() -> str:
    """``auto``: Horovod's launcher -> horovod; TF_CONFIG with several tasks -> multiworker;
    several local GPUs -> mirrored; otherwise single."""
    if any(k in os.environ for k in HOROVOD_ENV):
        return "horovod"
    cluster = tf_config().get("cluster", {})
    if sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")) > 1:
        return "multiworker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "single"


# The one table of strategies; config.STRATEGIES is "auto" plus these keys (a test checks).
STRATEGY_CLASSES: dict[str, type[Distribution]] = {
    "single": SingleDevice,
    "mirrored": Mirrored,
    "multiworker": MultiWorker,
    "horovod": Horovod,
}


def make_distribution(name: str) -> Distribution:
    """The distribution for ``train.strategy`` (created before any other TensorFlow work);
    config validation has already refused names outside the table."""
    return STRATEGY_CLASSES[detect_strategy() if name == "auto" else name]()
