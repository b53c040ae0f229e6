"""A bucket run read by evaluate, predict, export and ``--warm-start``: a copy of its own.

The training's local copy of a run (``places.local_copy("runs", url)``) is the training's: its
lock, its ledger of what is uploaded, its lease. A reader never writes it, and never writes
the training's files in the bucket. Invariants:

- A reader works in ``places.local_copy("reads", url)``; readers of one URL on one machine
  take turns on it (``runlock.taking_turns``).
- Its source is the bucket's last complete model, fetched (``rundir.MODEL_READS``) only when
  the bucket's version of a file changed since the last fetch. When this machine's training
  copy is ahead of the bucket (uploads that did not finish) and no training holds it, that
  copy is read instead, and said; a training holding it now means the bucket's model, said.
- Whatever else is in the reader's copy is removed before it is used (no report or export of
  an earlier read is taken for this one's).
- ``publish`` sends back only what the reader wrote (``rundir.READER_WRITES``: reports, test
  figures, exports, TensorBoard's test events), each file committed on its own by one PUT;
  never checkpoints, ``run.json``, ``history.csv``, ``mlflow.json`` or the model. A read of a
  training copy that is ahead publishes nothing: the bucket stays one run's, as its training
  left it, until that training's command uploads the rest.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from imgtrain import atomic, rundir, runlock
from imgtrain.errors import UserError
from imgtrain.storage import places, urls
from imgtrain.storage.mirror import RunMirror, stamp

FETCHED = ".fetched.json"  # per file: the bucket's version fetched, and the local copy's stamp
_KEEP = (rundir.LOCK, rundir.DATA_CACHE, FETCHED)  # the image checks are reused between reads


class ReadCopy:
    """The reader's copy of the bucket run ``url``, in ``local``; ``publishes`` when its outputs
    go back to the bucket."""

    def __init__(self, url: str, local: Path) -> None:
        self.url = url.rstrip("/")
        self.local = Path(local)
        self.fs = urls.filesystem(url)
        self.publishes = True
        self._read: dict[str, list] = {}

    def shown(self, path: Path) -> str:
        """``path`` of this copy as the user will find it: in the bucket, or here."""
        if not self.publishes:
            return str(path)
        try:
            return urls.join(self.url, Path(path).relative_to(self.local).as_posix())
        except ValueError:
            return str(path)

    def fill(self, wanted: tuple[str, ...], say: Callable[[str], None]) -> None:
        """Bring the files ``wanted`` from the run's source (the module's invariants)."""
        training = places.local_copy("runs", self.url)
        busy = runlock.holder(training) if training.is_dir() else None
        try:
            unsent = [] if busy or not training.is_dir() else RunMirror(self.url, training).unsent()
            if rundir.MODEL in unsent or rundir.SUMMARY in unsent:
                self._copy_from(training, wanted, unsent, say)
                return
            self._fetch(wanted, busy)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise urls.explain(exc, self.url, "read the run from") or exc from None
        if busy:
            say(
                f"{self.url} is training on this machine ({busy}): reading the model its bucket holds now, "
                "the last one that training finished before"
            )

    def _fetch(self, wanted: tuple[str, ...], busy: Optional[str]) -> None:
        listing = urls.files_under(self.fs, urls.bare(self.url))
        if rundir.MODEL in wanted and rundir.MODEL not in listing:
            raise UserError(
                f"{self.url} is training on this machine ({busy}) and has finished no model yet; wait for it"
                if busy
                else f"{self.url} holds no trained model ({rundir.MODEL}); pass the URL a finished "
                "'imgtrain train --output' wrote to"
            )
        fetched = _load(self.local / FETCHED)
        present = [rel for rel in wanted if rel in listing]
        versions = {rel: urls.version_in(listing[rel]) or str(listing[rel].get("size")) for rel in present}
        todo = [
            rel
            for rel in present
            if fetched.get(rel, [None])[0] != versions[rel] or fetched[rel][1] != _stamp(self.local / rel)
        ]
        self._clear_but(present)
        staging = self.local / ".fetching"
        shutil.rmtree(staging, ignore_errors=True)
        if todo:
            staging.mkdir(parents=True)
            root = urls.bare(self.url)
            self.fs.get([f"{root}/{rel}" for rel in todo], [str(staging / rel) for rel in todo])
            for rel in todo:
                (self.local / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, self.local / rel)
            shutil.rmtree(staging, ignore_errors=True)
        self._record({rel: [versions[rel], _stamp(self.local / rel)] for rel in present})

    def _copy_from(self, training: Path, wanted: tuple[str, ...], unsent: list[str], say: Callable) -> None:
        present = [rel for rel in wanted if (training / rel).is_file()]
        self._clear_but([])
        for rel in present:
            (self.local / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(training / rel, self.local / rel)
        self._record({rel: ["local", _stamp(self.local / rel)] for rel in present})  # fetched anew next time
        self.publishes = False
        say(
            f"this machine's copy of {self.url} ({training}) holds {len(unsent)} file(s) its bucket does not "
            "(its uploads did not finish): reading that newer run; what this command writes stays here, and the "
            "train command run again uploads the run"
        )

    def _clear_but(self, keep: list[str]) -> None:
        """Remove everything in the copy but ``keep`` (and the lock, the image checks, the ledger)."""
        if not self.local.is_dir():
            return
        for path in sorted(self.local.rglob("*"), reverse=True):
            rel = path.relative_to(self.local).as_posix()
            if rel.split("/", 1)[0] in _KEEP or rel in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink()

    def _record(self, read: dict[str, list]) -> None:
        self._read = read
        atomic.write_json(self.local / FETCHED, read)

    def publish(self) -> list[str]:
        """Send back what this command wrote (the module's invariants); the files sent."""
        if not self.publishes:
            return []
        root, sent = urls.bare(self.url), []
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            if rel.split("/", 1)[0] not in rundir.READER_WRITES or path.name.startswith("."):
                continue
            if rel in self._read and self._read[rel][1] == _stamp(path):
                continue  # as fetched
            try:
                self.fs.put_file(str(path), f"{root}/{rel}")
            except Exception as exc:  # noqa: BLE001
                raise urls.explain(exc, self.url, "write") or exc from None
            sent.append(rel)
            self._read.pop(rel, None)  # the bucket's version is now this one: fetched anew next time
        atomic.write_json(self.local / FETCHED, self._read)
        return sent


@contextmanager
def reading(url: str, wanted: tuple[str, ...], say: Callable[[str], None]) -> Iterator[ReadCopy]:
    """The bucket run ``url`` in a reader's copy holding ``wanted``, this reader's alone while held."""
    local = places.local_copy("reads", url)
    with runlock.taking_turns(local, lambda: say(f"waiting for another imgtrain command reading {url} here")):
        copy = ReadCopy(url, local)
        copy.fill(wanted, say)
        yield copy


def _load(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(path: Path) -> list[int]:
    try:
        return stamp(path)
    except OSError:
        return []  # not there: never as fetched
