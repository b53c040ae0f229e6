"""Stopping when told to: SIGTERM (a preemption, ``docker stop``, a node drain) or SIGINT (Ctrl-C).

While the loop trains, a signal only raises a flag (``StopFlag``). The loop looks at it between
steps: a single process at every step, several workers together every ``check_every`` steps
(one small all-reduce, so that every worker stops at the same step and none waits in a
collective for one that left). At that step the workers write the usual mid-epoch checkpoint
and leave with ``Stopped``, which the command line turns into one line and exit code
128 + the signal number (143 for SIGTERM, 130 for SIGINT). The step in flight is finished,
nothing more is lost.

A signal sent to a process group reaches a process more than once: a terminal's Ctrl-C goes
to a launcher and its workers, and the launcher passes it on. So the same signal again
within ``SAME_REQUEST_SECONDS`` is the same request. Another one after that, before the
checkpoint is written, stops at once: a checkpoint only becomes the latest once it is whole,
so the previous one still stands. Outside training (checking images, evaluation, export,
predict) a signal stops the command at once (``stop_at_once``), wherever it lands, even
inside TensorFlow's code, where Python may report it as another error: ``received()`` tells
the command line a stop was asked for. Once the command's last line is printed
(``exiting``), any further signal ends the process at once, quietly, with the same code.
Handlers are installed explicitly because a process that is PID 1 (in a container) ignores a
SIGTERM it does not handle; a signal already ignored (``nohup``, a background job) stays so.

Python runs a handler wherever the main thread is, a finalizer (``__del__``, a weakref
callback, run by the garbage collector at any moment) included, and an exception raised there
is printed as "Exception ignored in ..." with a traceback, then dropped. So a ``Stopped`` that
lands in a finalizer is not printed: moments later it is delivered again
(``_thread.interrupt_main``, from a thread, as the finalizer may still run), and raised in
the ordinary code that runs then.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SAME_REQUEST_SECONDS = 1.0  # the same signal again within this is the same request
AGAIN_SECONDS = 0.02  # a stop dropped in a finalizer is delivered again after this

# The first stop signal this process got, and when (the whole process's, not one handler's);
# and a stop dropped in a finalizer, delivered again (never taken for a repeat).
_first: dict[str, float] = {"signum": 0, "at": 0.0}
_again: dict[str, int] = {"signum": 0}


class Stopped(BaseException):
    """Raised to leave the run on a signal. A BaseException, as KeyboardInterrupt is, so that
    no ``except Exception`` on the way out swallows it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Abandoned(Exception):
    """Work given up because a stop was agreed (validation, precise BN at an epoch's end): what
    it changed is put back, and the resumed run does it again."""


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _is_repeat(signum: int) -> bool:
    """Note a stop signal; whether it repeats the first one (the same signal, moments later:
    a process group's copy and a launcher's forward of one Ctrl-C)."""
    if _again["signum"] == signum:
        _again["signum"] = 0
        return False
    now = time.monotonic()
    if not _first["signum"]:
        _first.update(signum=signum, at=now)
        return False
    return signum == _first["signum"] and now - _first["at"] < SAME_REQUEST_SECONDS


def received() -> int:
    """The first stop signal this process got (0: none)."""
    return int(_first["signum"])


def forget() -> None:
    """A new command in this process (a test, a notebook): no signal received yet."""
    _first.update(signum=0, at=0.0)
    _again["signum"] = 0


def interrupted_line(command: str, signum: int) -> str:
    """What a command stopped outside the training loop says (its checkpoint, or its outputs)."""
    if command == "train":
        return f"stopped by {signal_name(signum)}; run the same command again to resume from the last checkpoint"
    return (
        f"stopped by {signal_name(signum)}; what '{command}' writes is whole or not written at all: "
        "run the same command again"
    )


def stop_at_once(signum: int, _frame: Optional[FrameType] = None) -> None:
    """The handler outside the training loop: ``Stopped`` with no words (the command line
    words it for its command); a repeat of the same request is nothing new."""
    if _is_repeat(signum):
        return
    raise Stopped(signum, "")


def _unraisable(report: Any) -> None:
    """``sys.unraisablehook``: a ``Stopped`` dropped in a finalizer is delivered again, to the
    code that runs next; anything else is reported as Python reports it."""
    if isinstance(report.exc_value, Stopped):
        signum = report.exc_value.signum
        _again["signum"] = signum
        again = threading.Timer(AGAIN_SECONDS, _thread.interrupt_main, (signum,))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(report)


def handlers() -> dict[Any, Any]:
    """The current handlers of SIGTERM and SIGINT, and the unraisable hook, for ``restore``."""
    saved: dict[Any, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}
    saved["unraisablehook"] = sys.unraisablehook
    return saved


def restore(saved: dict[Any, Any]) -> None:
    saved = dict(saved)
    sys.unraisablehook = saved.pop("unraisablehook", sys.unraisablehook)
    if _main_thread():
        for sig, handler in saved.items():
            if handler is not None:  # None: set outside Python; nothing to put back
                signal.signal(sig, handler)


def _handle(handler: Any) -> None:
    """``handler`` for SIGTERM and SIGINT, except where a signal is ignored (nohup)."""
    sys.unraisablehook = _unraisable
    if _main_thread():  # Python only lets the main thread set handlers
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, handler)


def install_default() -> None:
    """SIGTERM and SIGINT stop the command with ``Stopped``, wherever they land."""
    forget()
    _handle(stop_at_once)


def leave_now(code: int) -> None:
    """End the process at once with ``code``, what it printed flushed: no interpreter teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def leaving() -> None:
    """The command is on its way out (its outcome being worded): a further signal is nothing
    new, until ``exiting`` says how to end."""
    _handle(lambda _signum, _frame: None)


def exiting(code: int) -> None:
    """The command has said its last line: a further signal ends the process at once, quietly,
    with ``code`` (never a traceback from whatever runs during shutdown)."""
    _handle(lambda _signum, _frame: leave_now(code))


class StopFlag:
    """Within ``with``: SIGTERM and SIGINT set ``signum`` instead of stopping; another one (not a
    repeat) stops at once. On leaving, the previous handlers are back."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[Any, Any] = {}

    def __enter__(self) -> "StopFlag":
        self._previous = handlers()
        _handle(self._note)
        return self

    def __exit__(self, *_exc: object) -> None:
        restore(self._previous)
        self._previous = {}

    def _note(self, signum: int, _frame: Optional[FrameType]) -> None:
        if _is_repeat(signum):
            if not self.signum:  # the first one, in an earlier handler's time (the data checks)
                self.signum = signum
            return
        if self.signum:
            raise Stopped(
                signum,
                f"stopped by a second {signal_name(signum)} before the checkpoint was written; the previous "
                "checkpoint stands: run the same command again to resume from it",
            )
        self.signum = signum
