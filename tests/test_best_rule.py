"""The best epoch is never the first that tied: a tie in the monitored metric is broken by a
second metric that has not saturated, then by the later epoch, the same for early stopping,
the restored weights and the plateau schedule, and across a resume."""

from __future__ import annotations

import math

import pytest

from imgtrain.config import EarlyStoppingConfig, ScheduleConfig
from imgtrain.train.checkpoint import LoopState
from imgtrain.train.early_stopping import BROKEN, IMPROVED, TIED, WORSE, BestRule, EarlyStopping
from imgtrain.train.optim import Plateau


def epochs(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"val_accuracy": acc, "val_loss": loss} for acc, loss in pairs]


# val_accuracy saturates at epoch 2 (index 1) while val_loss goes on falling, as on a small
# validation split; epoch 5 ties on both with epoch 4.
SATURATED = epochs((0.9, 0.5), (1.0, 0.30), (1.0, 0.20), (1.0, 0.10), (1.0, 0.10), (1.0, 0.15), (0.95, 0.05))


def test_a_tie_in_accuracy_goes_to_the_lower_loss_then_to_the_later_epoch_and_the_line_says_so():
    es = EarlyStopping.from_config(EarlyStoppingConfig(monitor="val_accuracy", patience=3))
    assert (es.mode, es.tie_monitor) == ("max", "val_loss")
    decisions, notes = [], []
    for epoch, logs in enumerate(SATURATED):
        decisions.append(es.update(epoch, logs))
        notes.append(es.saturation_note())
    # epochs 2-4 improve by the tie-breaker (patience restarts); 5 ties on both: it is kept as
    # the later epoch and patience holds; 6 and 7 are worse (7 on accuracy despite its loss)
    assert [best for best, _ in decisions] == [True, True, True, True, True, False, False]
    assert es.best_epoch == 4 and es.wait == 2 and decisions[-1] == (False, False)
    assert es.described() == "val_accuracy=1.0000, val_loss=0.1000 (chosen by a tie on both metrics: the later epoch)"
    assert notes.count(None) == len(notes) - 1 and "val_accuracy has been 1, its best possible value" in notes[2]
    assert "ties are broken by val_loss, then by the later epoch" in notes[2]
    # The old rule (Keras, Lightning, timm: strictly better only) would restore epoch 2.
    first_tie = max(range(len(SATURATED)), key=lambda i: (SATURATED[i]["val_accuracy"], -i))
    assert first_tie == 1


@pytest.mark.parametrize(
    "mode, best, value, best_tie, tie, verdict",
    [
        ("min", 0.50, 0.40, 0.9, 0.1, IMPROVED),  # better by more than min_delta: the tie-breaker is not asked
        ("min", 0.50, 0.495, 0.9, 0.95, BROKEN),  # within min_delta: a tie, won by the higher accuracy
        ("min", 0.50, 0.495, 0.9, 0.85, WORSE),  # within min_delta, lost on accuracy
        ("min", 0.50, 0.50, 0.9, 0.9, TIED),  # equal on both: the later epoch
        ("min", 0.50, 0.501, 0.9, 1.0, WORSE),  # worse on the metric: never the best, whatever follows
        ("max", 0.80, 0.805, 0.3, 0.2, BROKEN),  # accuracy: within min_delta, the lower loss wins
        ("max", 0.80, 0.85, 0.3, 0.9, IMPROVED),
        ("max", 0.80, 0.80, 0.3, math.nan, TIED),  # no second metric logged: the later epoch
        ("max", math.nan, 0.1, math.nan, 0.2, IMPROVED),  # the first epoch
        ("max", 0.80, math.nan, 0.3, 0.2, WORSE),  # a NaN metric is never the best
    ],
)
def test_the_rule_with_min_delta_in_both_modes(mode, best, value, best_tie, tie, verdict):
    monitor, second = ("val_loss", "val_accuracy") if mode == "min" else ("val_accuracy", "val_loss")
    rule = BestRule(monitor, mode, 0.01, second)
    logs = {monitor: value} if math.isnan(tie) else {monitor: value, second: tie}
    assert rule.judge(logs, best, best_tie) == verdict


@pytest.mark.parametrize(
    "value, se, tie, tie_se, verdict",
    [
        (0.78, 0.015, 0.35, 0.05, BROKEN),  # 2 pt below the peak, within 2 errors; loss lower by > 2 errors
        (0.78, 0.015, 0.45, 0.05, TIED),  # loss lower but within 2 errors: the later epoch
        (0.78, 0.015, 0.65, 0.05, WORSE),  # loss higher by more than 2 errors
        (0.78, 0.005, 0.10, 0.05, WORSE),  # 2 pt below with a 0.5 pt error: worse, whatever its loss
        (0.78, math.nan, 0.10, 0.05, WORSE),  # no standard error logged: exact, as without it
    ],
)
def test_a_tie_is_what_the_validation_split_cannot_tell_apart(value, se, tie, tie_se, verdict):
    """Within two standard errors below the peak (``val_accuracy_se``) the monitored metric is
    a tie; the loss breaks it only by more than two of its own standard errors."""
    logs = {"val_accuracy": value, "val_accuracy_se": se, "val_loss": tie, "val_loss_se": tie_se}
    assert BestRule("val_accuracy", "max", 0.0, "val_loss").judge(logs, 0.80, 0.50) == verdict


def test_ties_are_judged_against_the_peak_so_a_chain_of_them_cannot_drift_down():
    """Each epoch 1.5 pt below the one before, with a 1.75 pt error (a 3.5 pt band): the second
    and third tie with the peak; the fourth is 4.5 pt below the peak, worse, though within the
    band of the epoch kept before it. The kept epoch is the latest tie; ties do not spend
    patience, the worse epoch does; the line names the peak."""
    es = EarlyStopping.from_config(EarlyStoppingConfig(monitor="val_accuracy", patience=5))
    run = [(0.80, 0.50), (0.785, 0.50), (0.77, 0.50), (0.755, 0.50)]
    kept = [es.update(e, {"val_accuracy": a, "val_accuracy_se": 0.0175, "val_loss": loss, "val_loss_se": 0.05})[0]
            for e, (a, loss) in enumerate(run)]  # fmt: skip
    assert kept == [True, True, True, False] and es.best_epoch == 2 and es.peak == 0.80 and es.wait == 1
    assert es.described().endswith("the run's best val_accuracy was 0.8000, within 2 standard errors)")


def test_a_small_split_that_cannot_tell_epochs_apart_never_stops_the_run():
    """Patience 2; accuracy wanders within its band for 10 epochs: no stop. Two epochs clearly
    below the peak then stop it."""
    es = EarlyStopping.from_config(EarlyStoppingConfig(monitor="val_accuracy", patience=2))
    wander = [0.80, 0.76, 0.78, 0.75, 0.79, 0.77, 0.76, 0.78, 0.75, 0.77] + [0.60, 0.62]
    stops = [es.update(e, {"val_accuracy": a, "val_accuracy_se": 0.03})[1] for e, a in enumerate(wander)]
    assert stops == [False] * 11 + [True] and es.best_epoch == 9


def test_a_resume_in_the_middle_of_a_patience_count_decides_as_the_run_it_resumes():
    """The state the loop checkpoints (best, its tie value, the epoch, why, the wait and the
    bound count) restored into a new EarlyStopping: the rest of the epochs decide the same."""
    cfg = EarlyStoppingConfig(monitor="val_accuracy", patience=3)
    whole = EarlyStopping.from_config(cfg)
    expected = [whole.update(e, logs) for e, logs in enumerate(SATURATED)]
    first = EarlyStopping.from_config(cfg)
    got = [first.update(e, logs) for e, logs in enumerate(SATURATED[:5])]
    state = LoopState()  # the checkpoint's variables, as the loop sets and reads them
    state.set(**first.state())
    resumed = EarlyStopping.from_config(cfg)
    resumed.load(state.get)
    got += [resumed.update(e, logs) for e, logs in enumerate(SATURATED[5:], start=5)]
    assert got == expected and resumed.best_epoch == whole.best_epoch and resumed.described() == whole.described()


def test_the_plateau_schedule_waits_by_the_same_rule():
    """Saturated accuracy with a falling loss is not a plateau: the rate drops only once both
    stop improving."""
    state = LoopState()
    cfg = ScheduleConfig(name="plateau", plateau_patience=1, plateau_factor=0.5, min_lr_ratio=0.1)
    plateau = Plateau(cfg, "val_accuracy", "max", state)
    drops = [plateau.update(logs) for logs in SATURATED]
    assert drops == [None, None, None, None, None, 0.5, None], drops


def test_the_tie_study_replays_a_history_with_the_rule_a_run_uses_and_the_old_one():
    """``python -m imgtrain.tie_study`` decides from a run's history: imgtrain's rule trains on
    through the ties and restores the later epoch; the first-tie rule stops at patience after
    the first 1.0 and restores it."""
    from imgtrain.tie_study import decide

    assert decide(SATURATED, "val_accuracy", 3, old=False) == (4, 6)
    assert decide(SATURATED, "val_accuracy", 3, old=True) == (1, 4)
    assert decide(SATURATED, "val_loss", 3, old=False) == decide(SATURATED, "val_loss", 3, old=True) == (6, 6)
