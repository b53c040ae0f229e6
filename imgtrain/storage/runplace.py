"""A run directory named by a path or a bucket URL, for the commands: held by one training
(``RunPlace.training``: the local lock and the bucket's lease, its local copy, its uploads), or
read (``model_run``: a reader's copy, ``readcopy``); the commands' side of the storage seam."""

from __future__ import annotations

import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from imgtrain import atomic, rundir, runlock
from imgtrain.errors import LeaseLost, NotUploaded, UserError
from imgtrain.storage import places, urls
from imgtrain.storage.lease import Lease
from imgtrain.storage.mirror import RunMirror
from imgtrain.storage.readcopy import ReadCopy, reading
from imgtrain.storage.uploader import Uploader
from imgtrain.storage.urls import is_url

# How long the end of a run keeps trying a bucket that does not answer before it says what is
# not uploaded (the local copy keeps it; the same command sends it); IMGTRAIN_UPLOAD_WAIT sets it.
WAIT_ENV, WAIT_SECONDS = "IMGTRAIN_UPLOAD_WAIT", 120.0


def final_wait() -> float:
    text = os.environ.get(WAIT_ENV, "")
    if not text:
        return WAIT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or not 0 <= seconds <= 86400:
        raise UserError(f"{WAIT_ENV}={text!r} is not a number of seconds from 0 to 86400; unset it or fix it")
    return seconds


@dataclass
class RunPlace:
    """A run directory: ``local`` is where TensorFlow writes; ``mirror`` the bucket it is kept in."""

    local: Path
    mirror: Optional[RunMirror] = None
    uploader: Optional[Uploader] = field(default=None, repr=False)
    lease: Optional[Lease] = field(default=None, repr=False)
    held: Optional[runlock.Held] = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The run directory as the user named it."""
        return self.mirror.url if self.mirror else str(self.local)

    @contextmanager
    def training(
        self, chief: bool, overwrite: bool, agree: Callable[[bool], Any], say: Callable[[str], None], began: float
    ) -> Iterator[Path]:
        """The run directory held by one training, its local folder yielded: made; its lock taken
        (the chief's: ``runlock``), what a killed run left half-written removed, ``--overwrite``
        applied here and in the bucket before a barrier (``agree``), the bucket's lease taken and
        its newer state pulled (``open``); at the end the last upload, and the lease given back
        (``close``, which says what is not uploaded)."""
        rundir.make(self.local)
        with runlock.hold(self.local, enabled=chief, shown=self.shown) as self.held:
            if chief:
                left = atomic.remove_orphans(self.local, before=began)
                if left:
                    listed = ", ".join(left)
                    say(f"removed {len(left)} temporary file(s) an interrupted run left in {self.local}: {listed}")
                if overwrite:
                    rundir.clear(self.local, say)
            finished = False
            try:
                # a barrier after --overwrite: no worker looks for checkpoints while the chief removes them
                self.open(chief, (lambda: agree(True)) if overwrite else None, say)
                yield self.local
                finished = True
            except OSError:
                # a write that found its folder gone (history before the checkpoint that looks)
                if self.held is not None and not self.held.intact():
                    raise self._vanished() from None
                raise
            finally:
                self.close(finished)

    def open(self, chief: bool, overwrite_then: Optional[Callable[[], None]], say: Callable[[str], None]) -> None:
        """Before training: the bucket is writable (chief), an ``--overwrite`` clears it (chief),
        ``overwrite_then`` is the barrier after which every worker pulls what it resumes from."""
        if self.mirror and chief:
            final_wait()  # a bad IMGTRAIN_UPLOAD_WAIT is said now, not after the training
            try:
                self._claim(overwrite_then is not None, say)
            except (UserError, LeaseLost):
                raise
            except Exception as exc:  # noqa: BLE001 - explain() names what it knows, the rest keep their traceback
                raise urls.explain(exc, self.mirror.url, "write the run to") or exc from None
        if overwrite_then is not None:
            overwrite_then()
        if self.mirror:
            self.mirror.pull(say)
            if chief:
                self.uploader = Uploader(self.mirror, say, self.lease)

    def _claim(self, overwrite: bool, say: Callable[[str], None]) -> None:
        """The chief's first calls to the bucket: it is writable, the lease is this run's, what
        a killed run left half-uploaded is aborted, an ``--overwrite`` clears it."""
        assert self.mirror is not None
        now = self.mirror.check_writable()
        self.lease = Lease(self.mirror.fs, self.mirror.root, self.mirror.url)
        self.lease.take(now)
        aborted = self.mirror.abort_leftover_uploads()
        if aborted:
            say(f"aborted {aborted} upload(s) to {self.mirror.url} that an interrupted run left unfinished")
        if overwrite:
            self.mirror.clear(say)

    def saved(self) -> None:
        """After every checkpoint: upload soon (off this thread); ``LeaseLost`` once another
        process holds the run (this one stops before it writes there again); one line once the
        run directory was removed or replaced under the run (never a folder silently rebuilt)."""
        if self.held is not None and not self.held.intact():
            raise self._vanished()
        if self.lease is not None:
            self.lease.check()
        if self.uploader:
            self.uploader.soon()

    def _vanished(self) -> UserError:
        """The run directory went from under the run: a local run keeps the checkpoint just
        written there; a bucket run's copy, rebuilt by that save alone, is neither uploaded nor
        kept, and the bucket's run stands as last uploaded."""
        gone = f"{self.local} was removed or replaced while this run trained in it (its {rundir.LOCK} is gone)"
        if self.mirror is None:
            return UserError(
                f"the run directory {gone}; the run stopped, keeping only what it wrote there since. "
                "Run the same command with --overwrite to start again, or pass another --output"
            )
        if self.uploader is not None:
            self.uploader.abandon()
            self.uploader = None
        shutil.rmtree(self.local, ignore_errors=True)
        return UserError(
            f"this machine's copy of {self.mirror.url}, {gone}; the run stopped without uploading it. The same "
            "command resumes from the last checkpoint the bucket holds"
        )

    def close(self, finished: bool) -> None:
        """The last upload; a run that ends without one in its bucket says so (``NotUploaded``
        when it finished, a warning after a stop or a failure, whose own line comes next)."""
        if not self.uploader:
            if self.lease is not None:  # opening failed after the lease was taken
                self.lease.release()
                self.lease = None
            return
        uploader, self.uploader = self.uploader, None
        left = uploader.close(final_wait() if finished else min(10.0, final_wait()))
        if self.lease is not None and self.lease.lost:
            if finished:
                raise LeaseLost(self.lease.lost)
            return  # what ended the run (the lost lease itself, at a checkpoint) says its own line
        if not left:
            mirror = uploader.mirror
            if mirror.sent_files:
                uploader.say(
                    f"uploaded to {mirror.url}: {mirror.sent_files} file(s), {mirror.sent_bytes / 2**20:.1f} MiB, "
                    f"in {uploader.seconds:.1f} s beside the training"
                )
            return
        what = f"{len(left)} file(s) of the run ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''})"
        message = (
            f"{what} are in {self.local} but not in {self.shown}, which could not be reached; run the same "
            "command again to upload them"
        )
        if finished:
            raise NotUploaded(message)
        uploader.say(f"warning: {message}")


def run_place(output: str, rank: int = 0) -> RunPlace:
    """The place of a run directory named ``output`` (a path, or a bucket URL) for worker ``rank``."""
    if not is_url(output):
        return RunPlace(Path(output))
    local = places.local_copy("runs", output, "" if rank == 0 else f".worker-{rank}")
    return RunPlace(local, RunMirror(output, local))


@dataclass
class ModelRun:
    """A finished run that evaluate, predict, export or ``--warm-start`` reads: its folder on
    this machine (a bucket run's in a reader's copy: ``readcopy``), and where what the command
    writes there is found."""

    local: Path
    copy: Optional[ReadCopy] = None

    def shown(self, path: Path) -> str:
        return self.copy.shown(path) if self.copy else str(path)


@contextmanager
def model_run(run: str, say: Callable[[str], None] = print, writes: bool = False) -> Iterator[ModelRun]:
    """A finished run's folder for a model command: a local path as given; a bucket run read
    into a copy of the reader's own, and what ``writes`` commands leave there (reports,
    exports) sent back once the command succeeded."""
    urls.check(run, "--run")
    if not is_url(run):
        yield ModelRun(Path(run))
        return
    with reading(run, rundir.MODEL_READS, say) as copy:
        yield ModelRun(copy.local, copy)
        if writes:
            copy.publish()


def local_model(source: str, say: Callable[[str], None] = print) -> Path:
    """``--warm-start`` from a bucket: a ``.keras``/``.weights.h5`` object fetched, or a bucket
    run's model (its folder, holding ``model.keras``); a local path as it is."""
    if not is_url(source):
        return Path(source).expanduser()
    if source.endswith((".keras", ".weights.h5")):
        from imgtrain.storage.stage import fetch_file

        return fetch_file(source, places.local_copy("models", source))
    with reading(source, (rundir.MODEL,), say) as copy:
        return copy.local


@contextmanager
def output_path(output: Optional[str], last: tuple[str, ...] = ()) -> Iterator[Optional[Path]]:
    """Where a command writes ``output`` (a file or folder it names): the path itself, or for a
    bucket URL a local file of the same name, uploaded once the command has written it whole
    (a folder's files named in ``last`` after the rest: ``put_folder``)."""
    urls.check(output, "--output")
    if output is None or not is_url(output):
        yield Path(output) if output is not None else None
        return
    local = places.local_copy("outputs", output) / output.rstrip("/").rsplit("/", 1)[-1]
    if local.parent.exists():
        shutil.rmtree(local.parent)
    local.parent.mkdir(parents=True)
    yield local
    if local.is_dir():
        put_folder(local, output, last)
    elif local.exists():
        put_file(local, output)
    shutil.rmtree(local.parent, ignore_errors=True)


def put_file(local: Path, url: str) -> None:
    """Upload one file (an export, predictions), or say in one line why it cannot be."""
    fs = urls.filesystem(url)
    try:
        fs.put_file(str(local), urls.bare(url))
    except Exception as exc:  # noqa: BLE001
        raise urls.explain(exc, url, "write") or exc from None


def put_folder(local: Path, url: str, last: tuple[str, ...] = ()) -> None:
    """Upload a folder's files (``prepare``'s shards, a SavedModel export), those named in
    ``last`` (what names the others: a manifest) after the rest, so that a reader that finds
    them finds the files they name."""
    fs = urls.filesystem(url)
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    final = [p for p in files if p.name in last]
    try:
        for path in [p for p in files if p not in final] + final:
            fs.put_file(str(path), f"{urls.bare(url)}/{path.relative_to(local).as_posix()}")
    except Exception as exc:  # noqa: BLE001
        raise urls.explain(exc, url, "write") or exc from None
