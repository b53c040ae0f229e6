"""Files written whole or not at all, safe when several processes write the same one.

A write goes to a temporary sibling and is then ``os.replace``d over the
target, so a reader (or a crash) sees the old file or the new one, never half
of either. The temporary name is unique to the process and the call: in a
multi-worker run every worker checks the same images and may write the same
cache file at the same moment, and with one shared temporary name the first
worker's rename would pull the file from under the second.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temp_sibling(path: Path) -> Path:
    """A hidden name next to ``path`` that no other process or call uses; it keeps the suffix,
    since some writers (``model.save``, PIL) choose the format from it."""
    return path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


_TEMP = re.compile(r"^\.tmp-(\d+)-[0-9a-f]{8}-.")


def alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` still runs (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def remove_path(path: Path) -> None:
    """Remove a file, a link or a whole folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_orphans(folder: Path, before: float) -> list[str]:
    """Remove the temporaries in ``folder`` that a process killed mid-write left behind; return
    their names. A temporary is an orphan when the process its name holds is not running here
    and it was last written before ``before`` (the caller's start): a worker on another node,
    whose pid means nothing here, writes only after the run it belongs to started."""
    removed = []
    for entry in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        match = _TEMP.match(entry.name)
        try:
            if not match or alive(int(match.group(1))) or entry.lstat().st_mtime >= before:
                continue
            remove_path(entry)
        except OSError:
            continue  # gone already, or not ours to remove: leave it
        removed.append(entry.name)
    return removed


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            if exc.filename is None and exc.errno is not None:
                # A write through an open file names no path: name the target (same errno, so
                # the same subclass). An error without an errno (a client's own) passes as it is.
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def replacing_dir(final: Path) -> Iterator[Path]:
    """Yield a folder path (not yet made) to write a whole directory into; on success it is
    swapped in for ``final``, on error (a full disk) it is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = temp_sibling(final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None: JSON has no NaN, and a file
    with a bare ``NaN`` in it is not JSON any tool other than Python's will read."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(finite(data), indent=indent, allow_nan=False) + "\n")
