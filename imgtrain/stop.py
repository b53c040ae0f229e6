"""Stopping when told to: SIGTERM (a preemption, ``docker stop``, a node drain) or SIGINT (Ctrl-C).

While the loop trains, a signal only raises a flag (``StopFlag``). The loop looks at it between
steps: a single process at every step, several workers together every ``check_every`` steps
(one small all-reduce, so that every worker stops at the same step and none waits in a
collective for one that left). At that step the workers write the usual mid-epoch checkpoint
and leave with ``Stopped``, which the command line turns into one line and exit code
128 + the signal number (143 for SIGTERM, 130 for SIGINT). The step in flight is finished,
nothing more is lost.

A second signal stops at once: a checkpoint only becomes the latest once it is whole, so the
previous one still stands. Outside training (checking images, evaluation, export) a SIGTERM
stops at once too (``stop_at_once``); the rerun completes that work. Handlers are installed
explicitly because a process that is PID 1 (in a container) ignores a SIGTERM it does not
handle.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """Raised to leave the run on a signal. A BaseException, as KeyboardInterrupt is, so that
    no ``except Exception`` on the way out swallows it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def stop_at_once(signum: int, _frame: Optional[FrameType] = None) -> None:
    raise Stopped(signum, f"stopped by {signal_name(signum)}; run the same command again to resume")


def install_default() -> None:
    """SIGTERM stops the command with ``Stopped`` (SIGINT keeps Python's KeyboardInterrupt)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, stop_at_once)


class StopFlag:
    """Within ``with``: SIGTERM and SIGINT set ``signum`` instead of stopping; a second one stops
    at once. On leaving, the previous handlers are back."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if _main_thread():  # Python only lets the main thread set handlers
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup, a background job: stays ignored
                    self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, _frame: Optional[FrameType]) -> None:
        if self.signum:
            raise Stopped(
                signum,
                f"stopped by a second {signal_name(signum)} before the checkpoint was written; the previous "
                "checkpoint stands: run the same command again to resume from it",
            )
        self.signum = signum
