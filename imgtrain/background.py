"""The one kind of background worker: a daemon thread that serves requests off the training's
thread (a bucket run's uploads, MLflow tracking), so that a slow or silent server costs the
steps nothing.

Invariants:

- Requests are served one at a time, in the order asked; a request already waiting is not
  queued twice (each one sends the newest state, so the later ask is folded into it).
- ``serve`` never raises into the worker: what a request's failure means is the caller's, and
  it is said once by the caller's ``serve``. ``pause`` waits between retries and ends early
  when a request arrives or the worker closes.
- ``wait`` is a true deadline for the asking thread: it returns when the requests are done,
  or after ``seconds`` (longer only while ``longer()`` holds: a server that answers), even if
  a request is still in flight; the daemon thread is left to finish or fail alone.
- After ``close`` no request is taken and what was waiting is dropped.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

POLL_SECONDS = 0.1  # a waiting thread looks up this often, so that a signal handler runs


class Background:
    def __init__(self, name: str, serve: Callable[[str, str], None]) -> None:
        self.name, self.serve = name, serve
        self.queue: list[tuple[str, str]] = []
        self.busy = False
        self.closed = False
        self._cv = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def ask(self, what: str, arg: str = "") -> None:
        """Queue ``what`` (unless it waits already); the thread starts at the first ask."""
        with self._cv:
            if self.closed:
                return
            if (what, arg) not in self.queue:
                self.queue.append((what, arg))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def idle(self) -> bool:
        with self._cv:
            return not self.queue and not self.busy

    def wait(self, seconds: float, longer: Callable[[], bool] = lambda: False) -> bool:
        """Until every request is served (True), or ``seconds`` have passed and ``longer()`` is
        false (False)."""
        give_up = time.monotonic() + seconds
        with self._cv:
            while self.queue or self.busy:
                if time.monotonic() >= give_up and not longer():
                    return False
                self._cv.wait(POLL_SECONDS)
        return True

    def pause(self, seconds: float) -> None:
        """Inside ``serve``: wait ``seconds`` before a retry, less if a request arrives (it is
        served at once) or the worker closes."""
        end = time.monotonic() + seconds
        with self._cv:
            while not self.closed and not self.queue and time.monotonic() < end:
                self._cv.wait(min(POLL_SECONDS * 5, max(end - time.monotonic(), 0.0)))

    def close(self) -> None:
        """No more requests; what waits is dropped (a request in flight finishes or fails alone)."""
        with self._cv:
            self.closed = True
            self.queue.clear()
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self.queue and not self.closed:
                    self._cv.wait()
                if self.closed:
                    return
                what, arg = self.queue.pop(0)
                self.busy = True
            try:
                self.serve(what, arg)
            except Exception:  # noqa: BLE001 - serve says its own failures; the worker stays up
                pass
            finally:
                with self._cv:
                    self.busy = False
                    self._cv.notify_all()
