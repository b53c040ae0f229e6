from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imgtrain.train.checkpoint import CheckpointStore, LoopState


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dropout(0.5)])


def test_round_trip_of_model_optimizer_and_loop_state(tmp_path: Path):
    m = _model()
    opt = keras.optimizers.Adam(0.1)
    opt.build(m.trainable_variables)
    opt.apply([tf.ones_like(v) for v in m.trainable_variables], m.trainable_variables)
    st = LoopState()
    st.set(epoch=3, step_in_epoch=2, best=0.25, best_epoch=1, wait=2)
    store = CheckpointStore(tmp_path, tmp_path, m, opt, st, keep=2)
    store.save()
    saved = [v.numpy().copy() for v in m.variables] + [v.numpy().copy() for v in opt.variables]

    m2 = _model()
    opt2 = keras.optimizers.Adam(0.1)
    opt2.build(m2.trainable_variables)
    st2 = LoopState()
    store2 = CheckpointStore(tmp_path, tmp_path, m2, opt2, st2, keep=2)
    assert store2.restore_latest()
    for a, b in zip(saved, [v.numpy() for v in m2.variables] + [v.numpy() for v in opt2.variables]):
        np.testing.assert_array_equal(a, b)
    assert (st2.get("epoch"), st2.get("step_in_epoch"), st2.get("best"), st2.get("best_epoch"), st2.get("wait")) == (
        3,
        2,
        0.25,
        1,
        2,
    )
    assert int(opt2.iterations.numpy()) == 1


def test_half_written_checkpoint_is_ignored(tmp_path: Path):
    m = _model()
    opt = keras.optimizers.SGD(0.1)
    opt.build(m.trainable_variables)
    st = LoopState()
    store = CheckpointStore(tmp_path, tmp_path, m, opt, st, keep=3)
    st.set(epoch=1)
    store.save()
    # A crash while writing the next one: data files exist, the index was never updated.
    (tmp_path / "ckpt-2.data-00000-of-00001").write_bytes(b"partial")
    st2 = LoopState()
    store2 = CheckpointStore(tmp_path, tmp_path, _model(), opt, st2, keep=3)
    assert store2.restore_latest()
    assert st2.get("epoch") == 1 and store2.latest.endswith("ckpt-1")


def test_keep_last_k_and_best_weights_inside(tmp_path: Path):
    m = _model()
    opt = keras.optimizers.SGD(0.1)
    opt.build(m.trainable_variables)
    store = CheckpointStore(tmp_path, tmp_path, m, opt, LoopState(), keep=2)
    kernel = m.layers[0].kernel
    kernel.assign(np.full((3, 2), 7.0, np.float32))
    store.remember_best()
    kernel.assign(np.zeros((3, 2), np.float32))
    for _ in range(4):
        store.save()
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-3.index", "ckpt-4.index"]
    # A fresh store (a resumed process) restores both the current and the best weights.
    m2 = _model()
    opt2 = keras.optimizers.SGD(0.1)
    opt2.build(m2.trainable_variables)
    store2 = CheckpointStore(tmp_path, tmp_path, m2, opt2, LoopState(), keep=2)
    assert store2.restore_latest()
    np.testing.assert_array_equal(m2.layers[0].kernel.numpy(), 0.0)
    store2.restore_best()
    np.testing.assert_array_equal(m2.layers[0].kernel.numpy(), 7.0)


def test_a_worker_without_a_save_dir_writes_nothing(tmp_path: Path):
    m = _model()
    opt = keras.optimizers.SGD(0.1)
    opt.build(m.trainable_variables)
    store = CheckpointStore(None, None, m, opt, LoopState(), keep=2)
    assert store.save() is None and not store.restore_latest()
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_written_before_a_loop_counter_existed_resumes(tmp_path: Path):
    """A run checkpointed by an older imgtrain (its loop state lacks the counters added since,
    here early stopping's peaks) resumes: what it holds is restored, the rest starts as at a
    run's start, and early stopping takes its best as its peak."""
    from imgtrain.config import EarlyStoppingConfig
    from imgtrain.train.early_stopping import EarlyStopping

    m, opt, st = _model(), keras.optimizers.SGD(0.1), LoopState()
    opt.build(m.trainable_variables)
    st.set(epoch=4, best=0.9, best_epoch=3)
    older = CheckpointStore(tmp_path, tmp_path, m, opt, st, keep=2)
    held = {k: v for k, v in st.vars.items() if k not in ("peak", "peak_tie")}
    older.checkpoint = tf.train.Checkpoint(**older.parts, loop=held)
    older.manager = tf.train.CheckpointManager(older.checkpoint, str(tmp_path), max_to_keep=2)
    older.save()

    st2 = LoopState()
    assert CheckpointStore(tmp_path, tmp_path, _model(), opt, st2, keep=2).restore_latest()
    assert (st2.get("epoch"), st2.get("best"), st2.get("best_epoch")) == (4, 0.9, 3) and np.isnan(st2.get("peak"))
    es = EarlyStopping.from_config(EarlyStoppingConfig(monitor="val_accuracy"))
    es.load(st2.get)
    assert es.peak == 0.9 and es.update(4, {"val_accuracy": 0.85}) == (False, False)
