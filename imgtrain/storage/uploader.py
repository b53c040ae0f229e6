"""The chief's uploads, off the training thread (``background``): a bucket that is slow or
gone costs the steps nothing.

``soon()`` asks for a push (after every checkpoint); pushes send the newest state, and an ask
that arrives while one waits folds into it. A failure is said once, retried with backoff
(a new ask cuts the pause short), and said again when uploads resume. ``close()`` asks once
more and waits for it, retries included, no longer than its deadline, even while a request
hangs; then it says what is still not in the bucket. Once the run's lease is lost (another
process holds the run), nothing more is pushed.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from imgtrain.background import Background
from imgtrain.storage import urls
from imgtrain.storage.lease import Lease
from imgtrain.storage.mirror import RunMirror

RETRY_SECONDS = (2.0, 5.0, 15.0, 30.0, 60.0)


class Uploader:
    def __init__(self, mirror: RunMirror, say: Callable[[str], None], lease: Optional[Lease] = None) -> None:
        self.mirror = mirror
        self.lease = lease
        self.say = say
        self._failures = 0  # in a row, for the one warning and "resumed"
        self._retries = 0  # since the last success or the close, for the backoff
        self._sent = True  # the last push succeeded
        self.seconds = 0.0  # spent pushing, beside the training
        self._worker = Background("imgtrain-upload", self._serve)

    def soon(self) -> None:
        self._worker.ask("push")

    def _serve(self, _what: str, _arg: str) -> None:
        if self.lease is not None and self.lease.lost:
            return  # another process holds the run: RunPlace says so
        self._sent = self._push_once()
        if self._sent:
            self._retries = 0
            return
        self._worker.pause(RETRY_SECONDS[min(self._retries, len(RETRY_SECONDS) - 1)])
        self._retries += 1
        self._worker.ask("push")  # again after the pause

    def _push_once(self) -> bool:
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
        self._retries = 0
        self.soon()
        done = self._worker.wait(deadline_seconds)
        self._worker.close()
        lost = self.lease is not None and self.lease.lost
        self._release()
        return [] if done and self._sent and not lost else self.mirror.pending()

    def abandon(self) -> None:
        """No more pushes (what waits is dropped; one in flight finishes alone); the lease given back."""
        self._worker.close()
        self._release()

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
