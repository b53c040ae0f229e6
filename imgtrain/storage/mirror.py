"""A run directory in a bucket, kept as a local copy: pulled before a run, pushed as it goes.

TensorFlow and Keras write the local copy (``rundir``'s names, ``atomic``'s writes), and this
module moves it. Invariants, so that a kill at any moment leaves the bucket resumable:

- A push uploads in commit order: a checkpoint's data files, then its index, then every
  other changed file, then the checkpoint state file (``checkpoints/checkpoint``) naming only
  checkpoints whose files are all in the bucket, then deletes the bucket's older checkpoints,
  and uploads ``run.json`` (what makes a run finished) last. A PUT that lands after its writer
  died is harmless: nothing names a file before it is whole.
- The state file uploaded is written from what this push uploaded, not copied: the loop may
  save (and prune) checkpoints while a push runs.
- A pull takes the bucket's copy only when the bucket is ahead of the local one (by the
  newest checkpoint), and then only what a resume reads: the run's records and the newest
  checkpoint, its state file written last. A local copy that is ahead (uploads that failed)
  is kept, and the next push sends it.
- ``.uploaded.json`` in the local copy says what of it the bucket already holds (size and
  mtime per file), so a push sends only what changed and a rerun knows what is pending.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from imgtrain import atomic, rundir
from imgtrain.errors import UserError
from imgtrain.storage import urls

LEDGER = ".uploaded.json"
SEEN = "bucket's checkpoint state"  # the ledger's record of the state last seen in the bucket
STATE = f"{rundir.CHECKPOINTS}/{rundir.CHECKPOINT_STATE}"
# What a resume reads besides the checkpoint.
RESUME_RECORDS = (
    rundir.CONFIG,
    rundir.CLASS_NAMES,
    rundir.DATA_FINGERPRINT,
    rundir.HISTORY,
    rundir.SUMMARY,
    rundir.TRACKING,
)
# Never leaves the machine: the lock, the data cache (rebuilt from the data), hidden temporaries.
_LOCAL_ONLY = (rundir.LOCK, rundir.DATA_CACHE)


class RunMirror:
    """The bucket ``url`` and its local copy ``local``; ``push`` is safe from any one thread at a time."""

    def __init__(self, url: str, local: Path) -> None:
        self.url = url.rstrip("/")
        self.local = Path(local)
        self.fs = urls.filesystem(url)
        self.root = urls.bare(self.url)
        self._lock = threading.Lock()
        self.sent_files = 0  # what this process uploaded, for the run's last line and the bench
        self.sent_bytes = 0

    # -- the bucket's side ------------------------------------------------------------
    def _remote(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def listing(self) -> dict[str, int]:
        """Every file of the run in the bucket, by path relative to the run, with its size."""
        return {rel: int(info.get("size") or 0) for rel, info in urls.files_under(self.fs, self.root).items()}

    def check_writable(self) -> Optional[datetime]:
        """Before any training: write and remove a marker, or say in one line why not. Returns
        the service's clock (the marker's modification time), for the lease."""
        probe = self._remote(".imgtrain-write-check")
        try:
            self.fs.pipe_file(probe, b"")
            now = urls.modified(self.fs.info(probe))
            self.fs.rm_file(probe)
        except Exception as exc:  # noqa: BLE001 - explain() names what it knows, the rest keep their traceback
            raise urls.explain(exc, self.url, "write the run to") or exc from None
        return now

    def clear(self, say: Callable[[str], None]) -> None:
        """``--overwrite``: remove the earlier run's outputs from the bucket (and forget them)."""
        removed, left = rundir.overwritten(self.listing())
        if removed:
            self.fs.rm([self._remote(rel) for rel in removed])
        (self.local / LEDGER).unlink(missing_ok=True)
        rundir.say_overwritten(removed, left, self.url, say)

    # -- pulling --------------------------------------------------------------------------
    def pull(self, say: Callable[[str], None]) -> None:
        """Bring what a resume reads, when the bucket is ahead of this copy (the invariants)."""
        try:
            self._pull(say)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise urls.explain(exc, self.url, "read the run from") or exc from None

    def unsent(self) -> list[str]:
        """What this copy holds that its bucket does not, when the bucket is as this copy last
        saw it (this run's own progress, its uploads unfinished); [] for a copy the bucket has
        moved on from, or none. Reads only: a reader asks it of a training's copy."""
        if not (self.local / LEDGER).exists():
            return []
        listing = self.listing()
        remote_text = self.fs.cat_file(self._remote(STATE)).decode() if STATE in listing else ""
        return self.pending() if self._bucket_unchanged(remote_text) else []

    def abort_leftover_uploads(self) -> int:
        """Abort the multipart uploads a killed writer left under this run (S3 keeps, and bills,
        their parts until then); the number aborted."""
        if urls.scheme_of(self.url) != "s3":
            return 0  # GCS's resumable uploads expire on their own after a week
        bucket, key = urls.split(self.url)
        left = [u for u in self.fs.list_multipart_uploads(bucket) if str(u.get("Key", "")).startswith(key + "/")]
        for upload in left:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        return len(left)

    def _pull(self, say: Callable[[str], None]) -> None:
        listing = self.listing()
        remote_text = self.fs.cat_file(self._remote(STATE)).decode() if STATE in listing else ""
        complete = [n for n in rundir.checkpoints_named(remote_text) if self._complete(n, listing)]
        local_state = self.local / STATE
        local_names = rundir.checkpoints_named(local_state.read_text()) if local_state.exists() else []
        if local_names and self._bucket_unchanged(remote_text):
            if not complete or rundir.checkpoint_number(local_names[0]) >= rundir.checkpoint_number(complete[0]):
                return  # this copy is as new as the bucket's, or newer (its uploads are pending)
        elif local_names:
            # The bucket moved on without this copy (overwritten or trained elsewhere): it wins.
            rundir.clear(self.local, lambda _m: None)
            (self.local / LEDGER).unlink(missing_ok=True)
            say(f"{self.url} changed since this machine's copy of it was made: using the bucket's")
        if not complete and not any(rel in listing for rel in RESUME_RECORDS):
            return  # nothing of a run there yet
        records = [rel for rel in listing if rel in RESUME_RECORDS]
        files = [rel for rel in listing if complete and rundir.checkpoint_of(rel) == complete[0]]
        if (self.local / rundir.CHECKPOINTS).exists():
            shutil.rmtree(self.local / rundir.CHECKPOINTS)
        self._download(
            records + files, state=rundir.checkpoint_state_text(complete[:1]) if complete else None, seen=remote_text
        )
        if complete:
            say(f"resuming from {self.url}: fetched its checkpoint {complete[0]} and {len(records)} record(s)")

    def _bucket_unchanged(self, remote_text: str) -> bool:
        """Whether the bucket's checkpoint state is the one this copy last saw there (uploaded
        or fetched): then a newer local copy is this run's own progress, not a stale one."""
        return rundir.checkpoints_named(self._ledger().get(SEEN, "")) == rundir.checkpoints_named(remote_text)

    def _complete(self, name: str, listing: dict[str, int]) -> bool:
        parts = [rel for rel in listing if rundir.checkpoint_of(rel) == name]
        return any(p.endswith(".index") for p in parts) and any(".data-" in p for p in parts)

    def _download(self, rels: list[str], state: Optional[str], seen: Optional[str] = None) -> None:
        if not rels:
            return
        staging = self.local / ".pulling"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.fs.get([self._remote(r) for r in rels], [str(staging / r) for r in rels])
        ledger = self._ledger()
        for rel in rels:
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
            ledger[rel] = stamp(target)
        shutil.rmtree(staging, ignore_errors=True)
        if state is not None:
            atomic.write_text(self.local / STATE, state)  # last: it names the checkpoint just fetched
            ledger[STATE] = state
        if seen is not None:
            ledger[SEEN] = seen
        self._write_ledger(ledger)

    # -- pushing --------------------------------------------------------------------------
    def pending(self) -> list[str]:
        """The local files the bucket does not hold as they are here."""
        ledger = self._ledger()
        out = [rel for rel, stamp in self._local_files().items() if ledger.get(rel) != stamp]
        names = self._local_checkpoints()
        if names and ledger.get(STATE) != rundir.checkpoint_state_text(names):
            out.append(STATE)
        return sorted(out)

    def push(self) -> int:
        """Upload what changed, in commit order (the module's invariants); the number of files sent."""
        with self._lock:
            ledger = self._ledger()
            sent = 0
            files = self._local_files()
            checkpoint_files = {rel: s for rel, s in files.items() if rundir.checkpoint_of(rel)}
            uploaded: list[str] = []
            for name in self._local_checkpoints():
                parts = sorted(
                    (rel for rel in checkpoint_files if rundir.checkpoint_of(rel) == name),
                    key=lambda r: r.endswith(".index"),
                )
                if not any(r.endswith(".index") for r in parts):
                    continue
                try:
                    for rel in parts:
                        sent += self._put(rel, checkpoint_files[rel], ledger)
                except FileNotFoundError:
                    continue  # pruned by the loop meanwhile: a newer one is named instead
                uploaded.append(name)
            others = [rel for rel in files if not rundir.checkpoint_of(rel) and rel != rundir.SUMMARY]
            for rel in others:
                sent += self._put(rel, files[rel], ledger)
            state = rundir.checkpoint_state_text(uploaded)
            if uploaded and ledger.get(STATE) != state:
                self.fs.pipe_file(self._remote(STATE), state.encode())
                ledger[STATE] = ledger[SEEN] = state
                self._write_ledger(ledger)
                sent += 1
                self._drop_remote_checkpoints_but(set(uploaded), ledger)
            if rundir.SUMMARY in files:
                sent += self._put(rundir.SUMMARY, files[rundir.SUMMARY], ledger)
            return sent

    def _put(self, rel: str, stamp: list[int], ledger: dict) -> int:
        if ledger.get(rel) == stamp:
            return 0
        self.fs.put_file(str(self.local / rel), self._remote(rel))
        self.sent_files += 1
        self.sent_bytes += stamp[0]
        ledger[rel] = stamp
        self._write_ledger(ledger)
        return 1

    def _drop_remote_checkpoints_but(self, keep: set[str], ledger: dict) -> None:
        self.fs.invalidate_cache(self._remote(rundir.CHECKPOINTS))
        try:
            names = self.fs.ls(self._remote(rundir.CHECKPOINTS), detail=False)
        except FileNotFoundError:
            return
        prefix = self._remote(rundir.CHECKPOINTS) + "/"
        for full in names:
            rel = f"{rundir.CHECKPOINTS}/{full[len(prefix) :]}" if full.startswith(prefix) else ""
            name = rundir.checkpoint_of(rel)
            if name and name not in keep:
                try:
                    self.fs.rm_file(full)
                except FileNotFoundError:
                    pass  # gone already: a push cut short after this deletion, then repeated
                ledger.pop(rel, None)
        self._write_ledger(ledger)

    # -- the local side -------------------------------------------------------------------
    def _local_checkpoints(self) -> list[str]:
        state = self.local / STATE
        try:
            return rundir.checkpoints_named(state.read_text())
        except OSError:
            return []

    def _local_files(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        if not self.local.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(self.local):
            rel_dir = os.path.relpath(dirpath, self.local)
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".") and "_temp" not in d and not (rel_dir == "." and d in _LOCAL_ONLY)
            ]  # TensorFlow writes a checkpoint into ckpt-N_temp/ first
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if name.startswith(".") or rel in _LOCAL_ONLY or rel == STATE or name.endswith(("_temp", ".tmp")):
                    continue
                try:
                    out[rel] = stamp(self.local / rel)
                except FileNotFoundError:
                    continue
        return out

    def _ledger(self) -> dict:
        try:
            return json.loads((self.local / LEDGER).read_text())
        except (OSError, ValueError):
            return {}

    def _write_ledger(self, ledger: dict) -> None:
        atomic.write_text(self.local / LEDGER, json.dumps(ledger))


def stamp(path: Path) -> list[int]:
    """A file's size and modification time: what says it changed since it was sent or fetched."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]
