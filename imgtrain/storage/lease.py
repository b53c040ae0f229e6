"""One writer per bucket run: a lease object (``.lease.json``: host, pid, a token) in the run's
folder, taken by the storage service's own precondition and renewed by a heartbeat of its own.

Invariants:

- Taken by a create-if-absent (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``; both
  SeaweedFS and fake-gcs-server honour it, as AWS and GCS do): of two processes that start at
  the same instant, exactly one creates it. A lease found is refused while it is fresh and its
  process alive; a stale one (not renewed for ``STALE_SECONDS``, or its process on this host
  gone) is taken over by a write conditional on the version read (S3 ``If-Match``, GCS
  ``ifGenerationMatch``), so of two takers one wins. A read-back after the take stands in for
  a service that would ignore preconditions.
- Renewed every ``RENEW_SECONDS`` by a thread of its own, from the moment it is taken until it
  is released, by a write conditional on the version this holder wrote last: a slow push or
  pull never lets it go stale.
- Lost (another holder's token found at a renewal: this process stalled past
  ``STALE_SECONDS``, or the bucket was out of reach that long, and another took over): ``lost``
  says so in one line, and the run stops before it writes to the bucket again (``check``).

Ages are measured on the storage service's clock (object modification times), never across
machines' clocks.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime
from typing import Optional

from imgtrain import atomic
from imgtrain.background import Background
from imgtrain.errors import LeaseLost, UserError
from imgtrain.storage import urls

NAME = ".lease.json"
RENEW_SECONDS = 15.0
STALE_SECONDS = 60.0
RELEASE_SECONDS = 5.0  # the run's end waits no longer to remove it (left, it goes stale)


class Lease:
    def __init__(self, fs, root: str, url: str, renew_seconds: float = RENEW_SECONDS) -> None:
        self.fs, self.url = fs, url
        self.path = f"{root}/{NAME}"
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.renew_seconds = renew_seconds
        self.version: Optional[str] = None  # what this holder wrote last
        self.lost: Optional[str] = None
        self._beats = Background("imgtrain-lease", self._beat)

    def take(self, now: Optional[datetime]) -> None:
        """Take the lease or say who holds it; ``now`` is the service's clock (an object just
        written), None when unknown (a lease found then counts as stale). The heartbeat starts."""
        body = json.dumps(self.mine).encode()
        try:
            self.version = urls.write_if(self.fs, self.path, body, None)
        except urls.Conflict:
            held = self._read()
            if held is None:  # released between the two requests: one more try
                self.version = self._create_or_refuse(body)
            else:
                self._refuse_if_held(*held[:2], now)
                try:
                    self.version = urls.write_if(self.fs, self.path, body, held[2])
                except urls.Conflict:
                    raise self._taken_just_now() from None
        again = self._read()
        if again is None or again[0].get("token") != self.mine["token"]:
            raise self._taken_just_now()
        self._beats.ask("renew")

    def _create_or_refuse(self, body: bytes) -> str:
        try:
            return urls.write_if(self.fs, self.path, body, None)
        except urls.Conflict:
            raise self._taken_just_now() from None

    def _refuse_if_held(self, holder: dict, renewed: Optional[datetime], now: Optional[datetime]) -> None:
        age = (now - renewed).total_seconds() if now and renewed else STALE_SECONDS
        gone = holder.get("host") == self.mine["host"] and not atomic.alive(int(holder.get("pid", 0) or 0))
        if age < STALE_SECONDS and not gone:
            raise UserError(
                f"{self.url} is in use by process {holder.get('pid')} on {holder.get('host')} (its lease was "
                f"renewed {max(age, 0):.0f} s ago); wait for it to finish, or {STALE_SECONDS:.0f} s after it "
                "stopped, or pass another --output"
            )

    def _taken_just_now(self) -> UserError:
        return UserError(f"{self.url} was taken by another process just now; wait for it, or pass another --output")

    def _beat(self, _what: str, _arg: str) -> None:
        """The heartbeat: renew every ``renew_seconds`` until released or lost."""
        self._beats.pause(self.renew_seconds)
        if self._beats.closed:
            return
        try:
            self.renew()
        except LeaseLost:
            return
        except Exception:  # noqa: BLE001 - out of reach: tried again at the next beat
            pass
        self._beats.ask("renew")

    def renew(self) -> None:
        """Write the lease again, conditional on this holder's last version; ``LeaseLost`` when
        another holder's token is found there."""
        if self.lost:
            raise LeaseLost(self.lost)
        try:
            self.version = urls.write_if(self.fs, self.path, json.dumps(self.mine).encode(), self.version)
            return
        except urls.Conflict:
            held = self._read()
        if held is not None and held[0].get("token") == self.mine["token"]:
            self.version = held[2]  # the last write landed and its answer did not
            return
        holder = held[0] if held else {}
        self.lost = (
            f"{self.url} was taken over by "
            + (f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process")
            + f" while this run's lease went unrenewed for over {STALE_SECONDS:.0f} s (a stalled process or "
            "the bucket out of reach); this run stopped writing to it: its last uploaded checkpoint stands there"
        )
        raise LeaseLost(self.lost)

    def check(self) -> None:
        """Before a write to the bucket: ``LeaseLost`` once another process holds the run."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this holder's, waiting for
        the bucket ``RELEASE_SECONDS`` at most."""
        self._beats.close()
        if self.lost:
            return
        remover = Background("imgtrain-lease-release", lambda _what, _arg: self._remove_if_mine())
        remover.ask("release")
        remover.wait(RELEASE_SECONDS)

    def _remove_if_mine(self) -> None:
        held = self._read()
        if held is not None and held[0].get("token") == self.mine["token"]:
            self.fs.rm_file(self.path)

    def _read(self) -> Optional[tuple[dict, Optional[datetime], str]]:
        """The lease found: its holder, when it was last written, its version; None if absent."""
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            try:
                holder = json.loads(self.fs.cat_file(self.path))
            except ValueError:
                holder = None
            if not isinstance(holder, dict):  # not a lease imgtrain wrote: stale
                return {}, None, urls.version_in(info)
            return holder, urls.modified(info), urls.version_in(info)
        except FileNotFoundError:
            return None
