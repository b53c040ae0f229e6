"""The run's batch: examples per optimizer step over all replicas (the global batch), fixed at
the run's first start and kept on every resume, whatever the number of workers.

Invariants: ``global_batch == per_replica * replicas * accumulate`` on every start; the
per-replica batch (what BatchNorm sees) never changes; the learning rate and the schedule
follow the global batch alone, so a run resized between workers trains on with the same
steps and rates. A resize is said in one line and recorded in the run directory
(``rundir.RESIZES``, read by run.json and MLflow)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from imgtrain import atomic, rundir
from imgtrain.config import MAX_ACCUMULATE, TrainConfig
from imgtrain.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    per_replica: int
    replicas: int
    accumulate: int  # micro-batches each replica adds up per optimizer step
    previous_replicas: Optional[int] = None  # the last start's, when this start resumes a run
    previous_global: Optional[int] = None

    @property
    def global_batch(self) -> int:
        return self.per_replica * self.replicas * self.accumulate

    @property
    def scale(self) -> int:
        """The global batch in per-replica batches: the linear scaling rule's factor."""
        return self.replicas * self.accumulate

    @property
    def resized(self) -> bool:
        """A resume on another number of replicas, or with another global batch."""
        return self.previous_replicas is not None and (
            self.previous_replicas != self.replicas or self.previous_global != self.global_batch
        )

    @property
    def keeps_global_batch(self) -> bool:
        return self.previous_global in (None, self.global_batch)


def plan(train: TrainConfig, replicas: int, saved: Optional[TrainConfig], output: str) -> BatchPlan:
    """This start's batch: the user's at a first start (``global_batch`` if given, else
    ``batch_size x replicas x accumulate``), the recorded one on a resume unless
    ``train.global_batch`` names another. Refuses, in one line, a global batch these replicas
    cannot make up."""
    per = train.batch_size
    recorded = saved.global_batch if saved is not None else None
    if recorded is None:  # a first start (or a run recorded before global batches were)
        wanted = train.global_batch if train.global_batch is not None else per * replicas * train.accumulate
        if train.global_batch is not None and train.accumulate != 1 and wanted != per * replicas * train.accumulate:
            raise UserError(
                f"train.global_batch {wanted} and train.accumulate {train.accumulate} disagree: with batch_size "
                f"{per} on {replicas} replica(s) the global batch is {per * replicas * train.accumulate}; "
                "set one of the two"
            )
    else:
        wanted = train.global_batch if train.global_batch is not None else recorded
    accumulate, rest = divmod(int(wanted), per * replicas)
    if rest or not 1 <= accumulate <= MAX_ACCUMULATE:
        raise UserError(_refusal(int(wanted), per, replicas, recorded is not None, output))
    previous = None
    if saved is not None and saved.global_batch is not None:
        previous = saved.global_batch // (saved.batch_size * saved.accumulate)
    return BatchPlan(per, replicas, accumulate, previous, recorded)


def _replica_counts(wanted: int, per: int) -> list[int]:
    """The replica counts that make up ``wanted`` from batches of ``per`` with at most
    MAX_ACCUMULATE micro-batches: the divisors r of wanted / per with (wanted / per) / r at
    most MAX_ACCUMULATE, found up to the square root (a huge global batch answers at once)."""
    if wanted % per:
        return []
    m = wanted // per
    small = [d for d in range(1, math.isqrt(m) + 1) if m % d == 0]
    return sorted(r for r in {*small, *(m // d for d in small)} if m // r <= MAX_ACCUMULATE)


def _refusal(wanted: int, per: int, replicas: int, resuming: bool, output: str) -> str:
    counts = _replica_counts(wanted, per)
    can = ", ".join(map(str, counts[:12])) + (", ..." if len(counts) > 12 else "")
    whose = f"{output} trains with a global batch of {wanted}" if resuming else f"train.global_batch {wanted}"
    where = f"run it on {can} replica(s)" if counts else "no count of replicas can"
    if resuming:
        how = (
            f"pass --set train.global_batch=N (a multiple of {per * replicas}) to train on with another global "
            "batch: its learning rate and schedule follow it"
        )
    else:
        how = f"pick a global batch that is a multiple of {per * replicas}"
    return (
        f"{whose} (batch_size {per} per replica), which {replicas} replica(s) cannot make up with at most "
        f"{MAX_ACCUMULATE} accumulated micro-batches; {where}, or {how}"
    )


def resized(train: TrainConfig, batch: BatchPlan) -> TrainConfig:
    """``train`` with this start's accumulation and the run's global batch (what config.yaml records)."""
    return dataclasses.replace(train, accumulate=batch.accumulate, global_batch=batch.global_batch)


def line(batch: BatchPlan, peak_lr: float) -> str:
    """The one line a resize prints (and records)."""
    kept = "kept" if batch.keeps_global_batch else f"was {batch.previous_global}: changed by train.global_batch"
    return (
        f"resized: {batch.previous_replicas} -> {batch.replicas} replica(s); batch {batch.per_replica} per replica, "
        f"{batch.accumulate} micro-batch(es) accumulated per step; global batch {batch.global_batch} ({kept}); "
        f"peak lr {peak_lr:g}"
    )


def record(run_dir: Path, batch: BatchPlan, peak_lr: float, epochs_done: int) -> dict[str, Any]:
    """Add this start's resize to the run's list of them (the chief's: it owns the run directory)."""
    entry = {
        "after_epochs": epochs_done,
        "from_replicas": batch.previous_replicas,
        "to_replicas": batch.replicas,
        "per_replica_batch": batch.per_replica,
        "accumulate": batch.accumulate,
        "global_batch": batch.global_batch,
        "previous_global_batch": batch.previous_global,
        "peak_lr": peak_lr,
        "line": line(batch, peak_lr),
    }
    entries = read(run_dir) + [entry]
    with atomic.replacing(run_dir / rundir.RESIZES) as tmp:
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
    return entry


def read(run_dir: Path) -> list[dict[str, Any]]:
    """The run's resizes so far, oldest first ([] when it never was resized)."""
    try:
        entries = json.loads((run_dir / rundir.RESIZES).read_text())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []
