"""One writer per bucket run: a lease object (``.lease.json``: host, pid, a token) in the run's
folder, renewed by the chief's uploader, released at the end.

A second process on the same run is refused in one line, as ``runlock`` refuses one on a local
run. A lease left by a killed process is taken over once stale (not renewed for
``STALE_SECONDS``), or at once by a process on the same host when its pid is gone. Ages are
measured on the storage service's clock (object modification times), never across machines'
clocks.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from imgtrain import atomic
from imgtrain.errors import UserError

NAME = ".lease.json"
RENEW_SECONDS = 15.0
STALE_SECONDS = 60.0


def modified(info: dict[str, Any]) -> Optional[datetime]:
    for key in ("LastModified", "updated", "mtime"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


class Lease:
    def __init__(self, fs, root: str, url: str) -> None:
        self.fs, self.url = fs, url
        self.path = f"{root}/{NAME}"
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def take(self, now: Optional[datetime]) -> None:
        """Take the lease or say who holds it; ``now`` is the service's clock (an object just
        written), None when unknown (a lease found then counts as stale)."""
        held = self._read()
        if held is not None and held[0].get("token") != self.mine["token"]:
            holder, modified = held
            age = (now - modified).total_seconds() if now and modified else STALE_SECONDS
            gone = holder.get("host") == self.mine["host"] and not atomic.alive(int(holder.get("pid", 0) or 0))
            if age < STALE_SECONDS and not gone:
                raise UserError(
                    f"{self.url} is in use by process {holder.get('pid')} on {holder.get('host')} (its lease was "
                    f"renewed {max(age, 0):.0f} s ago); wait for it to finish, or {STALE_SECONDS:.0f} s after it "
                    "stopped, or pass another --output"
                )
        self.renew()
        again = self._read()
        if again is None or again[0].get("token") != self.mine["token"]:
            raise UserError(f"{self.url} was taken by another process just now; wait for it, or pass another --output")

    def renew(self) -> None:
        self.fs.pipe_file(self.path, json.dumps(self.mine).encode())

    def release(self) -> None:
        held = self._read()
        if held is not None and held[0].get("token") == self.mine["token"]:
            self.fs.rm_file(self.path)

    def _read(self) -> Optional[tuple[dict, Optional[datetime]]]:
        try:
            info = self.fs.info(self.path)
            return json.loads(self.fs.cat_file(self.path)), modified(info)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}, None
