"""A worker's training epoch decoded and augmented by a tf.data service (``data.service``).

The worker's examples are chosen here as without the service (the epoch's permutation,
this worker's shard, minus the batches a resume skips) and sent as a list the service
splits among its workers (``distributed_epoch``). Each element carries its example's index,
so the trainer knows what it has received.

Invariant: every example of this worker's share is trained on exactly once per epoch, with
the pixels the local pipeline would make (augmentation is seeded per example), whatever the
service does. TensorFlow's client does not get past a service worker that dies mid-epoch:
it waits for the dead worker's elements forever (reproduced with TF 2.21). So the trainer
reads the service through a watchdog: when the service's epoch ends, or nothing arrives for
``data.service_timeout`` seconds, the examples not yet received are decoded and augmented
here, on this host's CPUs, and the epoch completes. Indices already received are dropped if
the service sends them again.

What the service does not keep is order: examples arrive as its workers finish them, so
batches differ from run to run and a run is not bit-reproducible; a mid-epoch resume skips
as many examples as it trained, not the same ones. Weightless filler batches keep the step
count every training worker shares.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from imgtrain.data.sources import Example

AUTOTUNE = tf.data.AUTOTUNE
_END = object()  # the service's epoch ended


class _Watchdog:
    """Reads a dataset on a thread of its own, so the reader can give up on it.

    An abandoned read stays blocked inside TensorFlow (its client cannot be cancelled); the
    thread is a daemon and everything it still receives is thrown away.
    """

    def __init__(self, dataset: tf.data.Dataset) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._abandoned = threading.Event()
        threading.Thread(target=self._read, args=(dataset,), daemon=True).start()

    def _read(self, dataset: tf.data.Dataset) -> None:
        try:
            for element in dataset.as_numpy_iterator():
                if self._abandoned.is_set():
                    return
                self._put(element)
            self._put(_END)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, who falls back
            self._put(exc)

    def _put(self, item) -> None:
        while not self._abandoned.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def get(self, timeout: float):
        """The next element, ``_END``, an exception the read raised, or None after ``timeout`` s."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def abandon(self) -> None:
        self._abandoned.set()


def _say(message: str) -> None:
    print(f"imgtrain: warning: {message}", file=sys.stderr, flush=True)


def received_batches(
    served: tf.data.Dataset, wanted: np.ndarray, local: Callable[[np.ndarray], tf.data.Dataset], timeout: float
) -> Iterator[tuple]:
    """Batches ``(index, image, label, weight, real)`` from ``served``, then, for the indices
    of ``wanted`` it never sent, from ``local(missing)``: each wanted index exactly once."""
    pending = set(int(i) for i in wanted)
    if not pending:  # a worker whose share is empty (or already trained): nothing to ask for
        return
    watchdog = _Watchdog(served)
    started = time.monotonic()
    try:
        while pending:
            item = watchdog.get(timeout)
            if item is _END:
                break
            if item is None or isinstance(item, Exception):
                why = (
                    f"sent nothing for {timeout:g} s" if item is None else f"failed ({str(item).splitlines()[0][:200]})"
                )
                _say(
                    f"the tf.data service {why} after {time.monotonic() - started:.0f} s of this epoch; "
                    f"the {len(pending)} example(s) it still owes are made on this host"
                )
                break
            keep = np.array([int(i) in pending for i in item[0]], dtype=bool)
            pending.difference_update(int(i) for i in item[0][keep])
            if keep.any():
                yield tuple(part[keep] for part in item)
    finally:
        watchdog.abandon()  # whatever it still reads is dropped; its thread ends when the read does
    if pending:
        missing = np.array([i for i in wanted if int(i) in pending], dtype=np.int64)
        yield from local(missing).as_numpy_iterator()


def service_train(
    examples: Sequence[Example],
    order: np.ndarray,
    prepare: Callable,
    address: str,
    batch_size: int,
    timeout: float,
) -> tf.data.Dataset:
    """Unbatched training elements ``(image, label, weight, real)`` for the examples ``order``
    names, augmented by ``prepare`` on the service at ``address`` (or here, for what it owes)."""

    def listed(indices: np.ndarray) -> tf.data.Dataset:
        picked = [examples[int(i)] for i in indices]
        return tf.data.Dataset.from_tensor_slices(
            (
                tf.constant(indices, tf.int64, shape=[len(picked)]),
                tf.constant([e.path for e in picked], tf.string, shape=[len(picked)]),
                tf.constant([e.label for e in picked], tf.int32, shape=[len(picked)]),
                tf.constant([e.weight for e in picked], tf.float32, shape=[len(picked)]),
            )
        )

    def augmented(indices: np.ndarray) -> tf.data.Dataset:
        return listed(indices).map(lambda i, p, y, w: (i, *prepare(i, p, y, w)), num_parallel_calls=AUTOTUNE)

    def served() -> tf.data.Dataset:
        # Built when the epoch is read, in the generator's own (eager) context.
        return (
            augmented(order)
            .batch(batch_size)
            .apply(tf.data.experimental.service.distribute(processing_mode="distributed_epoch", service=address))
        )

    def local(missing: np.ndarray) -> tf.data.Dataset:
        return augmented(missing).batch(batch_size).prefetch(AUTOTUNE)

    spec = augmented(order[:1]).batch(batch_size).element_spec
    ds = tf.data.Dataset.from_generator(
        lambda: received_batches(served(), order, local, timeout),
        output_signature=tuple(tf.TensorSpec(s.shape, s.dtype) for s in spec),
    )
    return ds.unbatch().map(lambda i, x, y, w, r: (x, y, w, r))
