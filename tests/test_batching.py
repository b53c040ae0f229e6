"""The run's global batch: kept across another number of replicas by gradient accumulation,
refused in one line when it cannot be, and accumulation itself the same training as the
larger batch it adds up to."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import tiny
import yaml
from conftest import write_folder

from imgtrain.config import TrainConfig
from imgtrain.errors import UserError
from imgtrain.train import batching


def test_the_global_batch_is_kept_on_other_replica_counts_or_refused_naming_those_that_keep_it():
    first = batching.plan(TrainConfig(batch_size=8, accumulate=2), 2, None, "runs/x")
    assert (first.global_batch, first.accumulate, first.scale, first.resized) == (32, 2, 4, False)
    saved = batching.resized(TrainConfig(batch_size=8, accumulate=2), first)  # what config.yaml records
    assert (saved.global_batch, saved.accumulate) == (32, 2)
    # Resumed on 1 and on 4 replicas, whatever the user's accumulate says: the batch is the run's.
    one = batching.plan(TrainConfig(batch_size=8, accumulate=2), 1, saved, "runs/x")
    four = batching.plan(TrainConfig(batch_size=8), 4, saved, "runs/x")
    assert (one.accumulate, one.global_batch, one.previous_replicas, one.resized) == (4, 32, 2, True)
    assert (four.accumulate, four.global_batch, four.keeps_global_batch) == (1, 32, True)
    assert "resized: 2 -> 1 replica(s)" in batching.line(one, 0.004) and "global batch 32 (kept)" in batching.line(
        one, 0.004
    )
    with pytest.raises(UserError) as refused:
        batching.plan(TrainConfig(batch_size=8), 3, saved, "runs/x")
    said = str(refused.value)
    assert "runs/x trains with a global batch of 32" in said and "run it on 1, 2, 4 replica(s)" in said, said
    assert "--set train.global_batch=N (a multiple of 24)" in said, said
    # Changed knowingly: trained on with the new batch, and said so.
    bigger = batching.plan(TrainConfig(batch_size=8, global_batch=48), 3, saved, "runs/x")
    assert (bigger.accumulate, bigger.keeps_global_batch) == (2, False)
    assert "was 32: changed by train.global_batch" in batching.line(bigger, 0.006)
    with pytest.raises(UserError, match="disagree"):
        batching.plan(TrainConfig(batch_size=8, accumulate=2, global_batch=64), 2, None, "runs/y")
    with pytest.raises(UserError, match="train.global_batch 20 .*multiple of 16"):
        batching.plan(TrainConfig(batch_size=8, global_batch=20), 2, None, "runs/y")
    # A huge global batch: refused at once, by the config's bound or the counts that fit.
    with pytest.raises(UserError, match="train.global_batch must be 1 to 1,000,000,000"):
        TrainConfig(batch_size=8, global_batch=10**12).validate()
    with pytest.raises(UserError, match="run it on 500000, 625000, 781250, .* replica"):
        batching.plan(TrainConfig(batch_size=8, global_batch=10**9), 2, None, "runs/z")


def _losses(run) -> list[float]:
    with open(run / "history.csv", newline="") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def test_accumulating_two_batches_of_8_trains_as_one_batch_of_16(tmp_path):
    """Without BatchNorm or dropout (whose statistics and masks are per batch), the same
    examples per step give the same gradients: the loss curves agree to float32 rounding
    (measured: equal to the 6 decimals history.csv keeps)."""
    write_folder(tmp_path / "photos", per_class=24)
    plain = "--set model.cnn.batch_norm=false --set model.cnn.dropout=0 --set model.cnn.head_dropout=0"
    base = f"-m imgtrain train --data photos --epochs 3 --no-progress --deterministic {tiny.flags()} {plain}"
    # the learning rate as given: the linear scaling rule would scale the accumulating run's
    base += " --set train.scale_lr=false --set data.augment.rotation=0"
    for run, extra in (("b16", "--batch-size 16"), ("a2", "--batch-size 8 --set train.accumulate=2")):
        cmd = [sys.executable, *f"{base} --output runs/{run} {extra}".split()]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "global batch 16 (8 x 2 accumulated per replica)" in done.stdout, done.stdout
    assert _losses(tmp_path / "runs/a2") == pytest.approx(_losses(tmp_path / "runs/b16"), rel=1e-5)
    recorded = yaml.safe_load((tmp_path / "runs/a2/config.yaml").read_text())["train"]
    assert (recorded["accumulate"], recorded["global_batch"]) == (2, 16)
    # With the recipes that work per step or per example on: it trains, and says its batch.
    recipes = "--set train.ema.decay=0.9 --set train.precise_bn.enabled=true --set data.augment.mixup=0.2"
    recipes += " --set train.class_weights=balanced --set train.checkpoint.every_steps=3"
    cmd = [sys.executable, *f"{base} --output runs/all --batch-size 8 --set train.accumulate=2 {recipes}".split()]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "global batch 16 (8 x 2 accumulated" in done.stdout, done.stderr[-2000:]
