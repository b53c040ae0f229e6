"""One process trains in a run directory at a time.

``train`` holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for the life of
the run. The kernel drops the lock when the process dies, however it dies, so
a killed run never blocks its own resume; a second ``train`` on the same
directory while the first is alive gets one line naming the holder. In a
multi-worker run only the chief takes it (the workers write nothing there that
the chief does not own), so workers never wait on each other for it.

A reader asks ``holder`` whether a training holds a folder now (it takes the lock shared for
an instant and never writes the file); readers of one bucket run on one machine take turns
on their own copy with ``taking_turns``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Callable, Iterator, Optional

from imgtrain import rundir
from imgtrain.errors import UserError


class Held:
    """The lock held on a run directory; ``intact`` says whether the directory is still the one
    locked (not removed, nor replaced by another, under the run)."""

    def __init__(self, path: Path, fd: int) -> None:
        st = os.fstat(fd)
        self.path, self._identity = path, (st.st_dev, st.st_ino)

    def intact(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity


@contextlib.contextmanager
def hold(run_dir: Path, enabled: bool = True, shown: Optional[str] = None) -> Iterator[Optional[Held]]:
    """The run directory's lock for the ``with``'s life (None when not ``enabled``: a worker);
    ``shown`` names the run in the refusal as the user named it (a bucket run's URL)."""
    if not enabled:
        yield None
        return
    path = Path(run_dir) / rundir.LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise UserError(
                f"{shown or run_dir} is in use by {holder}; wait for it to finish or pass another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"imgtrain pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield Held(path, fd)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def holder(run_dir: Path) -> Optional[str]:
    """Who holds ``run_dir``'s lock now (a training there), None when nobody does."""
    try:
        fd = os.open(Path(run_dir) / rundir.LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def taking_turns(folder: Path, waiting: Callable[[], None]) -> Iterator[None]:
    """Hold ``folder``'s lock, waiting for whoever holds it (a reader's copy: short work);
    ``waiting`` is called once first when somebody does."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(folder) / rundir.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
