"""The training's side of a stop: when the workers look at the flag that ``imgtrain.stop``
raises on SIGTERM or SIGINT, what they agree on, and how they leave.

Invariants:

- One process looks at its own flag at every step, for free. Several workers look together
  every ``every`` steps (one small all-reduce each), and the value they agree on decides, never
  a worker's own flag read afterwards: all of them stop at the same step, and none is left in
  a collective that another never joins.
- A stop leaves only after the checkpoint that holds the step reached is written, and, with
  several workers, after a barrier: no worker (and no launcher that sees one leave) goes before
  the chief's checkpoint is whole. The ``Stopped`` it raises says where, and that the same
  command resumes.
- The loop asks ``due`` at every step and ``told`` at the points that may end an epoch; it
  asks nothing else. What the looks cost is kept in ``checks`` for the run's summary.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from imgtrain.stop import StopFlag, Stopped, signal_name
from imgtrain.train.distribution import Distribution


class StopProtocol:
    def __init__(self, dist: Distribution, check_every: int, log: Callable[[str], None]) -> None:
        self.dist = dist
        self.every = 1 if dist.world_size == 1 else check_every
        self.flag = StopFlag()  # raised by SIGTERM/SIGINT (imgtrain.stop)
        self.checks = {"checks": 0, "seconds": 0.0}
        self.log = log

    def __enter__(self) -> "StopProtocol":
        self.flag.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.flag.__exit__(*exc)

    def due(self, step: int, count: int, steps: int) -> bool:
        """After a call that trained ``count`` steps up to ``step`` of ``steps``: whether a look
        fell within it and the workers agreed to stop (never at the epoch's last step, whose end
        the epoch's own checkpoint holds)."""
        return step < steps and step // self.every > (step - count) // self.every and self.told()

    def told(self) -> bool:
        """Whether any worker was told to stop; the same answer on every worker, which must all
        ask at the same steps. The signal number agreed is kept in ``flag.signum``."""
        if self.dist.world_size == 1:
            return bool(self.flag.signum)
        start = time.perf_counter()
        signums = self.dist.gather(float(self.flag.signum))
        self.checks["checks"] += 1
        self.checks["seconds"] += time.perf_counter() - start
        agreed = int(max(signums))
        # A signal that landed after this worker's value was sent is in no other worker's
        # answer (stopping on it alone would leave the others in a collective it never joins);
        # it is sent at the next look.
        if agreed and not self.flag.signum:
            self.flag.signum = agreed
        return bool(agreed)

    def leave(self, where: str) -> Stopped:
        """The ``Stopped`` to raise once the checkpoint is written, after the workers' barrier."""
        if self.dist.world_size > 1:
            self.dist.agree(True)
        return self.stopped(where)

    def stopped(self, where: str) -> Stopped:
        return Stopped(
            self.flag.signum,
            f"stopped by {signal_name(self.flag.signum)} {where}; checkpoint written; "
            "run the same command again to resume",
        )

    def between_epochs(self, epoch: int, start_epoch: int) -> None:
        """A signal during the last epoch's end (validation, checkpoint): its checkpoint stands."""
        if epoch > start_epoch and self.told():
            raise self.stopped(f"at the end of epoch {epoch}")

    def warn_if_launcher_kills(self, epoch_seconds: float, save_seconds: float, steps: int) -> None:
        """Once, from the first epoch's timing: a launcher that kills its workers soon after
        passing a stop on (horovodrun alone: 5 s) would kill them before the checkpoint."""
        budget: Optional[float] = self.dist.stop_budget_seconds
        step = epoch_seconds / max(1, steps)
        needs = self.every * step + save_seconds
        if budget is None or needs <= budget:
            return
        advice = "start with launch/horovod.sh, which waits for the checkpoint"
        fits = int((budget - save_seconds) / max(step, 1e-9))
        if fits >= 1:
            advice += f", or set train.checkpoint.stop_check_steps={fits}"
        self.log(
            f"warning: horovodrun kills its workers {budget:g} s after it passes a stop on, and a stop here "
            f"takes up to {needs:.1f} s ({self.every} steps of {step:.2f} s, then a "
            f"{save_seconds:.1f} s checkpoint): {advice}"
        )
