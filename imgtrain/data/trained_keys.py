"""A test hook: the keys of the examples each training step trained, one line per example
(``epoch,key``), appended by every training process to ``<folder>/<pid>.csv`` when the
environment names a folder (``IMGTRAIN_TRAINED_KEYS``). Off, nothing of it runs.

Invariants: a key is an example's index in its split's catalog, the same on every start and
every worker; a line is written by the step that trained the example (after its update, in
the step's own graph), so a stop between steps leaves exactly the trained keys; pads are not
written. Batches from a tf.data service carry none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from imgtrain import seeds

ENV = "IMGTRAIN_TRAINED_KEYS"
PAD = -1  # the key of a pad (an image that counts for nothing)


def folder() -> Optional[Path]:
    where = os.environ.get(ENV)
    return Path(where) if where else None


def keyed(element: tuple, key: tf.Tensor) -> tuple:
    """A training batch ``(image, label, weight, real)`` with its keys as a fifth part."""
    return (*element, tf.cast(key, tf.int64))


def record(position: tf.Tensor, keys: tf.Tensor, real: tf.Tensor) -> None:
    """In the step's graph: append the real examples' keys of this step (a host callback)."""

    def write(position, keys, real) -> None:
        epoch = int(position.numpy()) // seeds.POSITION_STRIDE + 1
        trained = keys.numpy()[np.asarray(real.numpy()) > 0]
        where = folder()
        if where is None or trained.size == 0:
            return
        where.mkdir(parents=True, exist_ok=True)
        with open(where / f"{os.getpid()}.csv", "a") as fh:
            fh.write("".join(f"{epoch},{int(k)}\n" for k in trained))

    tf.py_function(write, [position, keys, real], [])
