"""Journey: a run resized between workers as a spot fleet shrinks and grows. Started on 2
workers, SIGTERMed mid-epoch 2; refused on 3 (its global batch of 16 cannot be made of 3
batches of 8) in one line naming the counts that can; resumed on 1 worker, which accumulates 2
micro-batches per step, SIGTERMed mid-epoch 3; finished on 2. Each resize is said, recorded in
run.json and in the run's MLflow run, and the run ends as the uninterrupted 2-worker run does:
each epoch's train loss within 0.1% (measured: equal to the 6 decimals history.csv keeps, so
each example was trained once per epoch, in the same micro-batches), the same test accuracy.
BatchNorm on; dropout off: its masks are drawn per process, so a worker accumulating for two
draws other masks than two workers do (measured with dropout 0.1: epoch losses 3-20% apart)."""

from __future__ import annotations

import csv
import json
import re
import signal
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from imgtrain.data import trained_keys
from journeys.journey import SMALL, User, make_home

pytestmark = pytest.mark.slow

LAUNCH = "python launch/multiworker.py --workers {n} -- "
TRAIN = (
    "imgtrain train --data photos/ --output runs/{run} --epochs 4 "
    f"{SMALL} --set train.checkpoint.every_steps=2 --set train.checkpoint.stop_check_steps=1"
    " --set model.cnn.dropout=0 --set model.cnn.head_dropout=0"
)


def _losses(run: Path) -> list[float]:
    with open(run / "history.csv", newline="") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def mid_epoch_after(marker: str, index: Path):
    """``when`` for ``interrupt``: at the first checkpoint written after ``marker`` was printed
    (``index`` is the run's checkpoint index): with a checkpoint every 2 of 10 steps, inside
    the epoch that follows the marker's."""
    seen: list[str] = []

    def when(out: str) -> bool:
        if marker not in out:
            return False
        now = index.read_text() if index.exists() else ""
        if not seen:
            seen.append(now)
        return now != seen[0]

    return when


def test_a_run_resized_2_then_1_then_2_workers_trains_each_example_once_as_the_2_worker_run(tmp_path: Path):
    user = User(make_home(tmp_path / "home", per_class=64))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = f" --mlflow --set tracking.uri={store} --set tracking.experiment=resize"
    whole = user.ok(LAUNCH.format(n=2) + TRAIN.format(run="whole"))
    assert "global batch 16; 10 steps/epoch" in whole.out, whole.out[-2000:]

    resized = LAUNCH.format(n=2) + TRAIN.format(run="resized") + tracked
    keys = tmp_path / "trained-keys"  # the ledger: each process appends the keys its steps trained
    user.env[trained_keys.ENV] = str(keys)
    index = user.cwd / "runs/resized/checkpoints/checkpoint"
    first = user.interrupt(resized, mid_epoch_after("epoch 1/4", index), sig=signal.SIGTERM)
    assert "stopped by SIGTERM" in first.out, first.out[-3000:]
    stopped = re.search(r"at epoch 2, step (\d+) of 10", first.out)
    assert stopped, first.out[-3000:]

    refused = user.run(LAUNCH.format(n=3) + TRAIN.format(run="resized") + tracked)
    assert refused.code != 0 and "runs/resized trains with a global batch of 16" in refused.text, refused.text[-3000:]
    assert "run it on 1, 2 replica(s)" in refused.text and "Traceback" not in refused.text, refused.text[-3000:]

    one = TRAIN.format(run="resized") + tracked
    second = user.interrupt(one, mid_epoch_after("epoch 2/4", index), sig=signal.SIGTERM)
    assert "resized: 2 -> 1 replica(s); batch 8 per replica, 2 micro-batch(es) accumulated" in second.out, second.out
    assert f"continuing at epoch 2, step {int(stopped.group(1)) + 1}" in second.out, second.out[-3000:]
    assert re.search(r"at epoch 3, step \d+ of 10", second.out), second.out[-3000:]

    last = user.ok(resized)
    assert "resized: 1 -> 2 replica(s)" in last.out and "continuing at epoch 3, step" in last.out, last.out[-3000:]

    ledger = Counter(line for f in keys.glob("*.csv") for line in f.read_text().splitlines())
    assert len(list(keys.glob("*.csv"))) == 2 + 1 + 2  # every process of the three starts trained
    trained = {
        epoch: sorted(int(k) for e, k in map(lambda x: x.split(","), ledger) if e == str(epoch))
        for epoch in range(1, 5)
    }
    assert max(ledger.values()) == 1 and all(trained[e] == list(range(156)) for e in trained), ledger.most_common(3)

    runs = user.cwd / "runs"
    summary = json.loads((runs / "resized/run.json").read_text())
    moves = [(r["from_replicas"], r["to_replicas"], r["accumulate"]) for r in summary["resizes"]]
    assert moves == [(2, 1, 2), (1, 2, 1)], summary["resizes"]
    assert (
        summary["global_batch"] == 16
        and summary["peak_learning_rate"] == json.loads((runs / "whole/run.json").read_text())["peak_learning_rate"]
    )
    assert _losses(runs / "resized") == pytest.approx(_losses(runs / "whole"), rel=1e-3)
    test = [json.loads((runs / r / "report.json").read_text())["accuracy"] for r in ("resized", "whole")]
    assert abs(test[0] - test[1]) <= 0.002, test

    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("resize").experiment_id])
    assert run.data.tags["imgtrain.resized"].startswith("resized: 1 -> 2 replica(s)"), run.data.tags
