"""The chief's uploads, off the training thread: a bucket that is slow or gone costs the
steps nothing.

``soon()`` asks for a push (after every checkpoint); one thread pushes, newest state only
(asks that arrive during a push fold into the next). A failure is said once, retried with
backoff, and said again when uploads resume. ``close()`` pushes once more from the caller's
thread, retrying until its deadline, and returns what is still not in the bucket. Once the
run's lease is lost (another process holds the run), nothing more is pushed.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from imgtrain.storage import urls
from imgtrain.storage.lease import Lease
from imgtrain.storage.mirror import RunMirror

RETRY_SECONDS = (2.0, 5.0, 15.0, 30.0, 60.0)


class Uploader:
    def __init__(self, mirror: RunMirror, say: Callable[[str], None], lease: Optional[Lease] = None) -> None:
        self.mirror = mirror
        self.lease = lease
        self.say = say
        self._asked = threading.Event()
        self._closing = threading.Event()
        self._failures = 0
        self.seconds = 0.0  # spent pushing, beside the training
        self._thread = threading.Thread(target=self._run, name="imgtrain-upload", daemon=True)
        self._thread.start()

    def soon(self) -> None:
        self._asked.set()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._asked.wait()
            if self._closing.is_set():
                return
            self._asked.clear()
            if not self._push_once():
                self._asked.set()  # try again after the pause
                self._closing.wait(RETRY_SECONDS[min(self._failures - 1, len(RETRY_SECONDS) - 1)])

    def _push_once(self) -> bool:
        if self.lease is not None and self.lease.lost:
            return False  # another process holds the run: RunPlace says so
        began = time.perf_counter()
        try:
            self.mirror.push()
        except Exception as exc:  # noqa: BLE001 - any failure of the bucket: training goes on
            self.seconds += time.perf_counter() - began
            self._failures += 1
            if self._failures == 1:
                self.say(
                    f"warning: cannot upload to {self.mirror.url} ({_reason(exc, self.mirror.url)}); training goes "
                    "on, and the upload is retried"
                )
            return False
        self.seconds += time.perf_counter() - began
        if self._failures:
            self.say(f"uploads to {self.mirror.url} resumed")
        self._failures = 0
        return True

    def close(self, deadline_seconds: float) -> list[str]:
        """The last push, retried for up to ``deadline_seconds``; what is still not uploaded."""
        self._closing.set()
        self._asked.set()
        self._thread.join(timeout=deadline_seconds)
        end = time.monotonic() + deadline_seconds
        attempt = 0
        while True:
            if self.lease is not None and self.lease.lost:
                self._release()
                return self.mirror.pending()
            if self._push_once():
                self._release()
                return []
            if time.monotonic() + RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)] > end:
                self._release()
                return self.mirror.pending()
            time.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1

    def _release(self) -> None:
        if self.lease is None:
            return
        try:
            self.lease.release()
        except Exception:  # noqa: BLE001 - left behind, it goes stale
            pass


def _reason(exc: BaseException, url: str) -> str:
    explained = urls.explain(exc, url, "write to")
    text = str(explained) if explained else f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:200] if text else type(exc).__name__
