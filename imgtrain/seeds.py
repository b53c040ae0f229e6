"""The run's random streams: each named, and folded from the run seed here and nowhere else.

Every random choice of a run is a stateless function of (run seed, stream, position), never
of a global generator, so the same seed gives the same batches in any execution order, with
any number of parallel calls, on any number of workers, and after a resume. A stream's salt
is its name: changing one changes every run's draws (and a checkpoint written before would
resume on other draws), so salts are the constants below, never literals at a call site
(tests/test_structure.py holds the package to it).

    run seed --EPOCH,epoch--> epoch key --index--> example seed --DRAWS--> draws seed
                                                        |                   |--RANDAUGMENT
                                                        '-- crop window     '--RANDOM_ERASING
    run seed --STEP,position--> step seed (batch-level MixUp and CutMix)
    run seed, epoch --> shuffle seed (the epoch's order of examples)
    run seed --SHARDS,epoch--> a worker's order of its prepared shards in the epoch
    split seed --PREPARED,split--> the order ``prepare`` writes a split's records in

The split of the files into train/val/test is not a stream: it hashes each file's own key
(data/split.py), so adding files moves no other file.
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf

EPOCH = 0x1A6E  # an epoch's key, from which every training example's seed in it is made
STEP = 0x313A  # the training step's seed, from (run seed, epoch, step)
DRAWS = 1  # an example's eight uniforms: flips, affine, brightness, contrast
RANDAUGMENT = 101  # folded from the example's draws seed
RANDOM_ERASING = 102  # likewise
SHARDS = 0x5A4D  # a worker's order of its prepared shards, per epoch
PREPARED = 0x9E7A  # the order in which ``prepare`` writes a split's records


def fold(seed: tf.Tensor, stream: int) -> tf.Tensor:
    """The seed of ``stream`` (one of the constants above) under ``seed``."""
    return tf.random.experimental.stateless_fold_in(seed, stream)


def example(seed: int, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """A stateless seed (shape [2]) unique to one example in one epoch of one run: the epoch's
    key (a stateless draw from the run seed and the epoch) beside the example's index. A
    Python ``epoch`` (the pipeline's) has its key drawn once, outside the per-image graph."""
    if isinstance(epoch, int):
        with tf.init_scope():
            key = _epoch_key(seed, epoch)
    else:
        key = _epoch_key(seed, epoch)
    return tf.stack([key, tf.cast(index, tf.int64)])


def _epoch_key(seed: int, epoch) -> tf.Tensor:
    s = fold(tf.constant([seed, EPOCH], dtype=tf.int64), tf.cast(epoch, tf.int64))
    return tf.random.stateless_uniform([], s, dtype=tf.int64, minval=None, maxval=None)


def draws(example_seed: tf.Tensor) -> tf.Tensor:
    """The seed of an example's draws (and of its photometric ops, folded further)."""
    return fold(example_seed, DRAWS)


POSITION_STRIDE = 1_000_003  # a training step's position: epoch * POSITION_STRIDE + step


def step_position(epoch: int, step: int) -> int:
    """The step's position in the run, from which its seed is folded (``step_base``)."""
    return epoch * POSITION_STRIDE + step


def step_base(seed: int) -> tf.Tensor:
    """The base of the training steps' seeds; a step's is ``fold(step_base, position)``."""
    return tf.constant([seed, STEP], tf.int64)


def shuffle(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch; distinct per epoch, identical on every worker."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**31 - 1)


def shard_order(seed: int, epoch: int, count: int) -> list[int]:
    """The order, in ``epoch``, in which a worker reads its ``count`` prepared shards: a
    permutation drawn from (run seed, epoch), the same on every worker and every resume."""
    return np.random.default_rng([SHARDS, seed, epoch]).permutation(count).tolist()


def prepared_order(split_seed: int, split: str, count: int) -> list[int]:
    """The order in which ``prepare`` writes a split's ``count`` examples (a permutation of their
    order in the folder), so that every shard, and every window of the records, mixes classes."""
    return np.random.default_rng([PREPARED, split_seed, zlib.crc32(split.encode())]).permutation(count).tolist()
