"""Prepared shards read from their bucket through a local cache of bounded size: no copy of the
dataset before the first batch, each worker fetching only the shards it reads.

TensorFlow reads shards from local files (it has no ``s3://``). ``ShardCache.local(rel)`` is
what the pipeline calls when it opens a shard: the path of its local copy, fetched now if it is
not there yet; it also asks the fetcher for the next ``AHEAD`` shards in this worker's order,
as the limit leaves room for them. ``done(rel)`` is called when the pipeline has read a shard
to its end: from then on the copy may be evicted to make room.

Invariants:

- The cache folder never holds more than ``limit`` bytes of shards: a fetch waits for room,
  and room is made only by evicting shards read to their end (oldest first), never one open.
- A copy is whole and of the bucket's version: fetched to a temporary name and renamed, and
  ``.cached.json`` (written after every change) names each copy's version, so a rerun reuses
  what is there and fetches again what changed in the bucket.
- With ``limit`` at least the shards' total, nothing is evicted: later epochs read the cache.
- One process per cache folder (a ``flock``, kept for the process's life): a second run on the
  same data and worker reads through a folder of its own, removed when it ends.
- Fetches run on one background worker (``background``), a shard at a time, each one large
  sequential read; a fetch that fails is retried ``ATTEMPTS`` times, then the shard's reader
  gets the error (``stream.lost_line`` turns it into the command's one line, exit 75).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from imgtrain import atomic, rundir
from imgtrain.background import Background
from imgtrain.errors import UserError
from imgtrain.storage import stage, stream, urls

LIST = ".cached.json"
ATTEMPTS = 3
# Shards fetched ahead of the one just opened. The pipeline opens them in this worker's order, so
# a few suffice to hide a fetch (3 of 100 MB: seconds of a GPU's reading); fetching all that the
# limit holds at once would take the CPU and bandwidth the epoch's first steps need (measured:
# 0.52 of local shards' images/s for an 8.5 GiB set with a roomy cache, against 0.94 at 1 GiB).
AHEAD = 3


class ShardStream:
    """A prepared dataset in a bucket (``url``), read through a local cache per worker: its
    shards' paths are named under ``root`` (where the manifest's copy is), each worker's copies
    kept in a folder of its own below it, within ``limit`` bytes each."""

    def __init__(
        self, url: str, root: Path, versions: dict[str, str], sizes: dict[str, int], stamps: dict[str, str], limit: int
    ) -> None:
        self.url, self.root, self.limit = url.rstrip("/"), Path(root), int(limit)
        self.versions, self.sizes, self.stamps = versions, sizes, stamps
        self._caches: dict[tuple[int, int], ShardCache] = {}

    def rel(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def opener(self, count: int, index: int, order: Sequence[str], reorder: bool = False) -> "ShardCache":
        """The cache of worker ``index`` of ``count``, which reads its training shards in ``order``
        (their paths under ``root``; an epoch's, then the next's); ``reorder`` gives an existing
        cache the order of a new epoch."""
        rels = [self.rel(p) for p in order]
        if (count, index) not in self._caches:
            folder = self.root / ".streamed" / f"worker-{index}-of-{count}"
            self._caches[(count, index)] = ShardCache(self, rels, folder)
        elif reorder:
            self._caches[(count, index)].reorder(rels)
        return self._caches[(count, index)]

    def fetched_bytes(self) -> int:
        """What this process's caches fetched."""
        return sum(cache.fetched_bytes for cache in self._caches.values())

    def close(self, seconds: float = 60.0) -> None:
        """Fetch nothing more; a fetch in flight is given ``seconds`` to end (the bench's passes)."""
        for cache in self._caches.values():
            cache.fetcher.close()
            cache.fetcher.wait(seconds)

    def any_opener(self) -> Optional["ShardCache"]:
        """A cache this process already has (a report reads the shards its training read)."""
        return next(iter(self._caches.values()), None)


class ShardCache:
    """One worker's cache of ``stream``'s shards, which it reads in ``order`` (paths relative to
    the bucket folder), in ``folder``, within the stream's limit. ``local`` and ``done`` take the
    shards' paths under ``stream.root``, as the pipeline names them."""

    def __init__(self, source: ShardStream, order: Sequence[str], folder: Path) -> None:
        self.stream, self.url, self.order = source, source.url, list(order)
        versions, sizes, limit = source.versions, source.sizes, source.limit
        self.versions, self.sizes = versions, sizes
        self.folder, self.limit = _own_folder(Path(folder)), int(limit)
        self._cv = threading.Condition()
        self._held = self._adopt()  # rel -> version of each whole copy in the folder
        self._open: dict[str, int] = {}  # rel -> readers that have it open
        self._read: list[str] = list(self._held)  # evictable, oldest first: read to their end, or an earlier run's
        self._failed: dict[str, BaseException] = {}
        self._wanted: list[str] = []  # asked for, not yet fetched
        self.fetched_bytes = 0  # what this process fetched, for the bench and the tests
        self.most_open = 0  # shards open at once, at most
        self.fetcher = Background("imgtrain-shards", self._serve)

    # -- the pipeline's side ------------------------------------------------------------
    def reorder(self, order: Sequence[str]) -> None:
        """From now on the worker reads its shards in ``order`` (a new epoch's, then the next's)."""
        with self._cv:
            self.order = list(order)

    def local(self, path: str) -> str:
        """The local copy of the shard named ``path``, fetched first if need be; it stays until ``done``."""
        rel = self.stream.rel(path)
        with self._cv:
            self._open[rel] = self._open.get(rel, 0) + 1
            self.most_open = max(self.most_open, len(self._open))
            if rel in self._read:
                self._read.remove(rel)
            self._ask(rel)
            self._ask_ahead(rel)
            while rel not in self._held and rel not in self._failed:
                self._cv.wait(0.5)
            if rel in self._failed:
                raise self._failed[rel]
        return str(self.folder / rel)

    def done(self, path: str) -> None:
        """The pipeline read the shard named ``path`` to its end: its copy may be evicted."""
        rel = self.stream.rel(path)
        with self._cv:
            left = self._open.get(rel, 0) - 1
            if left <= 0:
                self._open.pop(rel, None)
                if rel not in self._read:
                    self._read.append(rel)
            else:
                self._open[rel] = left
            self._cv.notify_all()

    def shown(self, path: str) -> str:
        """The shard's URL, as the user names it."""
        return f"{self.url}/{self.stream.rel(path)}"

    def discard(self, path: str) -> None:
        """The local copy of ``path`` failed its records' checks: removed, fetched again when next opened."""
        rel = self.stream.rel(path)
        with self._cv:
            if self._held.pop(rel, None) is not None:
                (self.folder / rel).unlink(missing_ok=True)
                self._write_list()

    # -- fetching -----------------------------------------------------------------------
    def _ask(self, rel: str) -> None:
        if rel not in self._held and rel not in self._wanted:
            self._wanted.append(rel)
            self.fetcher.ask("fetch", rel)

    def _ask_ahead(self, rel: str) -> None:
        """The ``AHEAD`` shards after ``rel`` in this worker's order (which runs into the next
        epoch's), as far as the limit would hold them beside what is open or asked for."""
        start = self.order.index(rel) if rel in self.order else -1
        kept = set(self._open) | set(self._wanted) | {rel} | (set(self._held) - set(self._read))
        room = self.limit - sum(self.sizes[r] for r in kept)
        for nxt in self.order[start + 1 : start + 1 + AHEAD]:
            if nxt in self._open or nxt in self._wanted:
                continue
            room -= self.sizes[nxt]
            if room < 0:
                break
            self._ask(nxt)

    def _serve(self, _what: str, rel: str) -> None:
        with self._cv:
            if rel in self._held:
                self._wanted.remove(rel)
                return
            if not self._make_room(self.sizes[rel], rel):
                return  # asked ahead, and the room is still another's: asked again when it is opened
        try:
            self._fetch(rel)
        except BaseException as exc:  # noqa: BLE001 - the shard's reader raises it
            with self._cv:
                self._failed[rel] = exc
                self._wanted.remove(rel)
                self._cv.notify_all()
            return
        with self._cv:
            self._held[rel] = self.versions[rel]
            self._wanted.remove(rel)
            self._write_list()
            self._cv.notify_all()

    def _make_room(self, size: int, rel: str) -> bool:
        """Evict shards read to their end until ``size`` more bytes fit; a shard opened by the
        pipeline waits for room, one asked ahead gives up at once (False)."""
        while sum(self.sizes[r] for r in self._held) + size > self.limit:
            if self._read:
                victim = self._read.pop(0)
                if victim in self._held:
                    del self._held[victim]
                    (self.folder / victim).unlink(missing_ok=True)
                    self._write_list()
                continue
            if rel not in self._open:
                self._wanted.remove(rel)
                return False
            self._cv.wait(0.5)
        return True

    def _fetch(self, rel: str) -> None:
        fs, target = stream.client(self.url), self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(ATTEMPTS):
            try:
                with atomic.replacing(target) as tmp:
                    fs.get_file(urls.bare(f"{self.url}/{rel}"), str(tmp))
                if target.stat().st_size != self.sizes[rel]:  # replaced in the bucket since it was listed
                    raise stream.lost(f"{self.url}/{rel} changed in the bucket while the run read it")
                self.fetched_bytes += self.sizes[rel]
                return
            except stream.ReadLost:
                raise
            except FileNotFoundError:  # not a fault to wait out: the shard was removed
                raise stream.lost(f"{self.url}/{rel} is gone (it was there when the data was opened)") from None
            except Exception as exc:  # noqa: BLE001 - retried, then said as the stream says it
                if attempt == ATTEMPTS - 1:
                    said = urls.explain(exc, f"{self.url}/{rel}", "read")
                    raise stream.lost(str(said) if said else f"cannot read {self.url}/{rel} ({exc})") from None
                time.sleep(2**attempt)

    # -- the list of what is held ------------------------------------------------------
    def _adopt(self) -> dict[str, str]:
        """The copies an earlier run left whole and still of the bucket's version; anything else
        in the folder (older versions, what a killed fetch left half-written) removed."""
        try:
            listed = json.loads((self.folder / LIST).read_text())
        except (OSError, ValueError):
            listed = {}
        held = {}
        for rel, version in listed.items() if isinstance(listed, dict) else []:
            path = self.folder / rel
            if self.versions.get(rel) == version and path.is_file() and path.stat().st_size == self.sizes.get(rel):
                held[rel] = version
        for path in self.folder.rglob("*"):
            rel = path.relative_to(self.folder).as_posix()
            if path.is_file() and rel not in held and rel not in (LIST, _LOCK):
                path.unlink(missing_ok=True)
        return held

    def _write_list(self) -> None:
        atomic.write_text(self.folder / LIST, json.dumps(self._held))


_LOCK = rundir.LOCK  # the same name as a run directory's lock


def _own_folder(folder: Path) -> Path:
    """``folder``, held by this process for its life (a ``flock``); when another process holds it
    (a second run on the same data and worker), a folder of this process's own beside it. A
    folder this process holds already is its own again (a later read of the same data here)."""
    for candidate in (folder, folder.with_name(f"{folder.name}-pid{os.getpid()}")):
        if candidate in _HELD_FOLDERS:
            return candidate
        candidate.mkdir(parents=True, exist_ok=True)
        fd = os.open(candidate / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _HELD_FOLDERS[candidate] = fd  # kept open, so held, until the process ends
        if candidate != folder:  # a second reader's copies are its own: gone with it
            atexit.register(shutil.rmtree, candidate, True)
        return candidate
    raise UserError(f"cannot hold a shard cache in {folder}; remove {folder.parent} and run again")


_HELD_FOLDERS: dict[Path, int] = {}


def needed(sizes: dict[str, int], open_at_once: int) -> int:
    """The smallest limit that reads: the ``open_at_once`` largest shards."""
    return sum(sorted(sizes.values(), reverse=True)[:open_at_once])


def check_limit(url: str, limit: int, sizes: dict[str, int], open_at_once: int, setting: str) -> None:
    """Refuse, before training, a limit that cannot hold the shards a reader has open at once."""
    least = needed(sizes, open_at_once)
    if limit < least:
        raise UserError(
            f"{setting} is {limit / 2**30:.2f} GiB, but reading {url} holds {open_at_once} of its shards at once "
            f"({least / 2**30:.2f} GiB, the largest {max(sizes.values()) / 2**20:.0f} MiB): raise {setting} to "
            f"at least {least / 2**30:.2f}, or prepare smaller shards (imgtrain prepare --shard-size-mb)"
        )


def free_for_cache(folder: Path, spare: int) -> int:
    """The bytes a cache in ``folder`` may take when no limit is given: the disk's free space
    less ``spare`` (the run's own files), plus what the cache already holds."""
    held = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).is_dir() else 0
    return max(0, shutil.disk_usage(stage.existing_parent(folder)).free - spare + held)
