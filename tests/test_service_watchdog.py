"""data/service.received_batches on its own: what a stalled or repeating service leaves to
the trainer. The stall is a real blocked read (a generator that sleeps), not a mock."""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from imgtrain.data.service import received_batches

SPEC = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32))


def batches_of(*index_lists: list[int], then_sleep: float = 0.0) -> tf.data.Dataset:
    def gen():
        for indices in index_lists:
            yield np.array(indices, np.int64), np.array(indices, np.float32) * 10
        time.sleep(then_sleep)

    return tf.data.Dataset.from_generator(gen, output_signature=SPEC)


def local(missing: np.ndarray) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((missing, missing.astype(np.float32) * -1)).batch(2)


def received(served: tf.data.Dataset, wanted: list[int], timeout: float) -> dict[int, list[float]]:
    seen: dict[int, list[float]] = {}
    for index, value in received_batches(served, np.array(wanted, np.int64), local, timeout):
        for i, v in zip(index, value):
            seen.setdefault(int(i), []).append(float(v))
    return seen


def test_a_service_that_stops_sending_is_completed_locally(capsys):
    start = time.monotonic()
    seen = received(batches_of([4, 1], [0], then_sleep=6), [0, 1, 2, 3, 4, 5], timeout=1.0)
    assert time.monotonic() - start < 5  # it gave up on the stalled read, it did not wait it out
    assert sorted(seen) == [0, 1, 2, 3, 4, 5] and all(len(v) == 1 for v in seen.values())
    assert {i: v[0] for i, v in seen.items() if v[0] >= 0} == {4: 40.0, 1: 10.0, 0: 0.0}  # from the service
    assert {i for i, v in seen.items() if v[0] < 0} == {2, 3, 5}  # made here
    assert "sent nothing for 1 s" in capsys.readouterr().err


def test_repeats_are_dropped_and_a_short_epoch_is_completed():
    seen = received(batches_of([2, 0], [0, 2, 1]), [0, 1, 2, 3], timeout=10.0)
    assert {i: v for i, v in seen.items()} == {0: [0.0], 1: [10.0], 2: [20.0], 3: [-3.0]}


def test_a_complete_service_epoch_makes_nothing_locally():
    seen = received(batches_of([1, 0], [2]), [0, 1, 2], timeout=10.0)
    assert seen == {0: [0.0], 1: [10.0], 2: [20.0]}


def test_the_epoch_ends_when_everything_is_in_without_waiting_for_the_end(capsys):
    """A service that has sent every example but never says it is done (a dead worker's task
    never ends): nothing is made here and there is no wait for the watchdog."""
    start = time.monotonic()
    seen = received(batches_of([1, 0], [2], then_sleep=6), [0, 1, 2], timeout=4.0)
    assert time.monotonic() - start < 3
    assert seen == {0: [0.0], 1: [10.0], 2: [20.0]}
    assert "warning" not in capsys.readouterr().err


def test_an_empty_share_asks_the_service_for_nothing():
    asked = []

    def gen():
        asked.append(True)
        yield np.array([0], np.int64), np.array([0.0], np.float32)

    served = tf.data.Dataset.from_generator(gen, output_signature=SPEC)
    assert list(received_batches(served, np.array([], np.int64), local, timeout=10.0)) == []
    time.sleep(0.5)  # a reader thread, had one started, would have asked by now
    assert asked == []
