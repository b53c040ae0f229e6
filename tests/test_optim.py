import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from imgtrain.config import EarlyStoppingConfig, OptimizerConfig, ScheduleConfig
from imgtrain.errors import UserError
from imgtrain.train.early_stopping import EarlyStopping
from imgtrain.train.losses import class_weight_vector
from imgtrain.train.optim import build_optimizer, build_schedule, scaled_learning_rate


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "adagrad", "ftrl"])
def test_every_optimizer_takes_a_step(name):
    v = keras.Variable(np.ones(3, np.float32))
    opt = build_optimizer(OptimizerConfig(name=name, learning_rate=0.1, nesterov=True), 0.1)
    opt.apply([tf.constant([1.0, -1.0, 0.5])], [v])
    assert not np.allclose(v.numpy(), 1.0)


def test_sgd_options_reach_keras():
    opt = build_optimizer(OptimizerConfig(name="sgd", momentum=0.8, nesterov=True, weight_decay=1e-4), 0.1)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.8 and opt.nesterov and opt.weight_decay == 1e-4


def test_mixed_float16_wraps_in_loss_scaling():
    opt = build_optimizer(OptimizerConfig(), 0.1, precision="mixed_float16")
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)


def lr(schedule, step):
    return float(schedule(tf.constant(step)))


def test_cosine_with_warmup():
    s = build_schedule(
        ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1), 1.0, steps_per_epoch=10, epochs=11
    )
    assert lr(s, 0) == pytest.approx(0.1)
    assert lr(s, 9) == pytest.approx(1.0)
    assert lr(s, 10) == pytest.approx(1.0)
    assert lr(s, 60) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
    assert lr(s, 110) == pytest.approx(0.1)


def test_step_schedule_and_phase_factor():
    s = build_schedule(
        ScheduleConfig(name="step", step_epochs=2, step_factor=0.5), 1.0, 10, 10, phases=[(0, 1.0), (3, 0.1)]
    )
    assert lr(s, 19) == pytest.approx(1.0)
    assert lr(s, 20) == pytest.approx(0.5)
    assert lr(s, 30) == pytest.approx(0.05)  # fine-tuning phase from epoch 3 at a tenth


def test_linear_scaling_rule():
    assert scaled_learning_rate(0.1, 4, True) == pytest.approx(0.4)
    assert scaled_learning_rate(0.1, 4, False) == pytest.approx(0.1)


def test_class_weights():
    assert class_weight_vector(None, ["a", "b"], []) == [1.0, 1.0]
    assert class_weight_vector("balanced", ["a", "b"], [0, 0, 0, 1]) == pytest.approx([4 / 6, 2.0])
    assert class_weight_vector({"b": 3}, ["a", "b"], []) == [1.0, 3.0]
    with pytest.raises(UserError, match="names class 'c'"):
        class_weight_vector({"c": 1}, ["a", "b"], [])


def test_early_stopping_patience_and_modes():
    es = EarlyStopping("val_loss", "min", patience=2, min_delta=0.01)
    assert es.update(0, {"val_loss": 1.0}) == (True, False)
    assert es.update(1, {"val_loss": 0.995}) == (True, False)  # within min_delta: a tie, the later epoch kept
    assert es.update(2, {"val_loss": 0.5}) == (True, False)
    assert es.update(3, {"val_loss": 0.6}) == (False, False)
    assert es.update(4, {"val_loss": 0.6}) == (False, True)
    assert es.best_epoch == 2 and math.isclose(es.best, 0.5)
    acc = EarlyStopping.from_config(
        EarlyStoppingConfig(monitor="val_accuracy", mode="auto", patience=1, min_delta=0.0, enabled=True)
    )
    assert acc.mode == "max"
    with pytest.raises(UserError, match="not a logged metric"):
        acc.update(0, {"val_loss": 1.0})


def test_default_warmup_only_when_the_rate_is_scaled():
    from imgtrain.train.optim import warmup_epochs

    unset = ScheduleConfig()
    assert warmup_epochs(unset, 90, 8, True) == 5.0  # Goyal et al.: 5 epochs
    assert warmup_epochs(unset, 10, 8, True) == 2.0  # at most a fifth of the run
    assert warmup_epochs(unset, 90, 1, True) == 0.0 and warmup_epochs(unset, 90, 8, False) == 0.0
    assert warmup_epochs(ScheduleConfig(warmup_epochs=0), 90, 8, True) == 0.0  # as set


def test_plateau_drops_the_rate_and_keeps_its_state_in_the_loop_state():

    from imgtrain.train.checkpoint import LoopState
    from imgtrain.train.optim import Plateau

    state = LoopState()
    cfg = ScheduleConfig(name="plateau", plateau_patience=1, plateau_factor=0.5, min_lr_ratio=0.2)
    plateau = Plateau(cfg, "val_loss", "min", state)
    schedule = build_schedule(cfg, 1.0, steps_per_epoch=10, epochs=10, scale=state.vars["lr_scale"])
    drops = [plateau.update({"val_loss": v}) for v in (1.0, 0.9, 0.95, 0.97, 0.99, 1.2, 1.3, 1.4, 1.5)]
    assert drops == [None, None, None, 0.5, None, 0.25, None, 0.2, None]
    assert lr(schedule, 50) == pytest.approx(0.2)  # the floor, min_lr_ratio
    assert state.get("plateau_best") == pytest.approx(0.9) and state.get("lr_scale") == pytest.approx(0.2)
    with pytest.raises(Exception, match="not a logged metric"):
        plateau.update({"loss": 1.0})


def test_optimizer_table_matches_config():
    from imgtrain.config import OPTIMIZERS
    from imgtrain.train.optim import OPTIMIZER_BUILDERS

    assert set(OPTIMIZER_BUILDERS) == set(OPTIMIZERS)
    for name in OPTIMIZERS:
        assert build_optimizer(OptimizerConfig(name=name), 0.01) is not None
