"""Data in a bucket, staged once to local disk: later epochs and resumes read at local speed.

A staged copy lives under ``places.local_copy('data', url)`` with ``.staged.json``, the
version (ETag or generation, else size) of every object it holds. Staging lists the bucket
once, downloads only what is missing or changed (concurrently: fsspec's async clients),
removes what the bucket no longer has, and writes the list last, so a copy cut short by a
kill is completed, never trusted, by the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from imgtrain import atomic
from imgtrain.errors import UserError
from imgtrain.storage import places, urls

LIST = ".staged.json"
SPARE_BYTES = 1 << 30  # left free beside a staged copy: the run's checkpoints and caches
BATCH = 500  # files fetched at once (concurrently) between two writes of the list
DATA_FOLDER = "the folder of class folders (or shards) in the bucket"  # what --data names


def _version(info: dict) -> str:
    for key in ("ETag", "etag", "generation", "md5Hash", "crc32c"):
        if info.get(key):
            return str(info[key]).strip('"')
    return str(info.get("size"))


def stamp(size: int, mtime_ns: int) -> str:
    """What says a file's content is unchanged, for the data's fingerprint and the image check:
    its size and modification time. An object in a bucket has the stamp of its size and
    ``modified`` time, and its staged copy is given that time, so a run reads the same stamps
    from the bucket, from a copy, and from a copy on another machine."""
    return f"{int(size)}:{int(mtime_ns)}"


def stamp_of(info: dict[str, Any]) -> str:
    """The ``stamp`` of an object, from its listing entry."""
    when = urls.modified(info)
    return stamp(int(info.get("size") or 0), int(when.timestamp() * 1e9) if when else 0)


def file_stamp(path: "str | Path") -> Optional[str]:
    """The ``stamp`` of a local file; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stamp(st.st_size, st.st_mtime_ns)


def _explained(url: str, doing: str):
    def wrap(exc: BaseException) -> BaseException:
        return urls.explain(exc, url, doing) or exc

    return wrap


@dataclass(frozen=True)
class Listing:
    """What one listing of a bucket folder found: each file (path relative to ``url``) with
    its version and size."""

    url: str
    versions: dict[str, str]
    sizes: dict[str, int]
    stamps: dict[str, str]  # each file's ``stamp``: what its staged copy's stat gives too

    def bytes(self) -> int:
        return sum(self.sizes.values())


def list_folder(url: str, wanted: str = DATA_FOLDER) -> Listing:
    """Every file under ``url``, in one listing; one line for a URL that holds none (``wanted``
    names what it should be)."""
    fs = urls.filesystem(url)
    root = urls.bare(url).rstrip("/")
    try:
        files = urls.files_under(fs, root)
        one_file = not files and fs.isfile(root)
    except Exception as exc:  # noqa: BLE001
        raise _explained(url, "read the data from")(exc) from None
    if one_file:
        raise UserError(f"{url} is one file, not a folder; pass {wanted}")
    if not files:
        raise UserError(f"{url} holds no files; pass {wanted}")
    sizes = {rel: int(info.get("size") or 0) for rel, info in files.items()}
    return Listing(
        url, {rel: _version(info) for rel, info in files.items()}, sizes, {rel: stamp_of(i) for rel, i in files.items()}
    )


def list_files(base_url: str, rels: Iterable[str]) -> Listing:
    """The files ``rels`` (paths relative to ``base_url``, as a manifest names them), from one
    listing, not a request per file; one line when any is missing."""
    whole = list_folder(base_url)
    wanted = sorted(set(rels))
    missing = [rel for rel in wanted if rel not in whole.versions]
    if missing:
        raise UserError(
            f"{len(missing)} file(s) the manifest lists are not in {base_url} (first: {missing[0]}); "
            "fix the manifest or upload them"
        )
    return Listing(
        base_url,
        {r: whole.versions[r] for r in wanted},
        {r: whole.sizes[r] for r in wanted},
        {r: whole.stamps[r] for r in wanted},
    )


def fits(listing: Listing, local: Path) -> bool:
    """Whether a copy of ``listing`` at ``local`` leaves ``SPARE_BYTES`` free (what it already
    holds is not fetched again)."""
    needed = sum(listing.sizes[rel] for rel in _todo(listing, local, _held(local)))
    return needed + SPARE_BYTES <= shutil.disk_usage(existing_parent(local)).free


def stage_folder(
    url: str,
    say: Callable[[str], None] = print,
    into: Optional[Path] = None,
    wanted: str = DATA_FOLDER,
) -> Path:
    """A local copy of every file under ``url`` (an image folder, prepared shards), in the
    cache (or ``into``)."""
    return _sync(list_folder(url, wanted), into or places.local_copy("data", url), say)


def stage_listing(listing: Listing, into: Path, say: Callable[[str], None] = print) -> Path:
    """A local copy, under ``into``, of the files ``listing`` found."""
    return _sync(listing, Path(into), say)


def fetch_file(url: str, into: Path) -> Path:
    """One object, downloaded to ``into/<its name>`` (atomically)."""
    fs = urls.filesystem(url)
    target = Path(into) / urls.bare(url).rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic.replacing(target) as tmp:
            fs.get_file(urls.bare(url), str(tmp))
    except FileNotFoundError:
        raise UserError(f"{url} does not exist; check the URL") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _explained(url, "read")(exc) from None
    return target


def _sync(listing: Listing, local: Path, say) -> Path:
    local.mkdir(parents=True, exist_ok=True)
    # Workers on one machine stage the same copy: one at a time, the others then find it done.
    with open(local.parent / f".{local.name}.staging", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _sync_locked(listing, local, say)


def _sync_locked(listing: Listing, local: Path, say) -> Path:
    """The copy brought to ``listing``; the list names only files whole at their version, and is
    written after every batch, so a staging cut short resumes where it stopped."""
    url, objects = listing.url, listing.versions
    held = _held(local)
    todo = _todo(listing, local, held)
    for rel in set(held) - set(objects):
        (local / rel).unlink(missing_ok=True)
    _check_room(url, local, sum(listing.sizes[rel] for rel in todo))
    if todo:
        say(f"staging {len(todo)} of {len(objects)} file(s) from {url} to {local}")
        kept = {rel: v for rel, v in held.items() if rel in objects and rel not in todo}
        atomic.write_text(local / LIST, json.dumps(kept))  # what is about to be replaced is not trusted
        fs, base = urls.filesystem(url), urls.bare(url).rstrip("/")
        try:
            for batch in _batches(todo, BATCH):
                targets = [str(local / rel) for rel in batch]
                for t in targets:
                    os.makedirs(os.path.dirname(t), exist_ok=True)
                fs.get([f"{base}/{rel}" for rel in batch], targets)
                kept.update((rel, objects[rel]) for rel in batch)
                _given_stamps(local, listing, batch)
                atomic.write_text(local / LIST, json.dumps(kept))
        except Exception as exc:  # noqa: BLE001
            raise _explained(url, "read the data from")(exc) from None
    _given_stamps(local, listing, [rel for rel in objects if file_stamp(local / rel) != listing.stamps[rel]])
    atomic.write_text(local / LIST, json.dumps(objects))
    return local


def _given_stamps(local: Path, listing: Listing, rels: Iterable[str]) -> None:
    """Each file's modification time set to its object's, so that its ``stamp`` is the bucket's."""
    for rel in rels:
        mtime_ns = int(listing.stamps[rel].split(":")[1])
        if mtime_ns:
            os.utime(local / rel, ns=(mtime_ns, mtime_ns))


def _todo(listing: Listing, local: Path, held: dict[str, str]) -> list[str]:
    """The files of ``listing`` that ``local`` does not hold at their version."""
    return [rel for rel, version in listing.versions.items() if held.get(rel) != version or not (local / rel).exists()]


def existing_parent(path: Path) -> Path:
    """``path``, or its nearest parent that exists (what a disk's free space is asked of)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_room(url: str, local: Path, needed: int) -> None:
    """Refuse, before any download, a copy that would not fit (with room left for the run)."""
    free = shutil.disk_usage(local).free
    if needed + SPARE_BYTES > free:
        raise UserError(
            f"staging {url} needs {needed / 2**30:.2f} GiB, plus {SPARE_BYTES / 2**30:.0f} GiB kept free for the run, "
            f"and {local.parent} has {free / 2**30:.2f} GiB free; "
            f"point {places.CACHE_ENV} at a larger disk, or set data.stage=never to read it from the bucket "
            "every epoch"
        )


def _held(local: Path) -> dict[str, str]:
    try:
        return json.loads((local / LIST).read_text())
    except (OSError, ValueError):
        return {}


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def local_inputs(paths: Iterable[str], say: Callable[[str], None] = print) -> tuple[list[str], Callable[[str], str]]:
    """Files or folders to read, any of them a bucket URL: their local paths (an object fetched,
    a prefix staged), and the map from a local file back to the name the user gave."""
    local, back = [], {}
    for given in paths:
        if not urls.is_url(given):
            local.append(given)
            continue
        fs = urls.filesystem(given)
        try:
            is_file = fs.isfile(urls.bare(given))
        except Exception as exc:  # noqa: BLE001
            raise _explained(given, "read")(exc) from None
        if is_file:
            copy = fetch_file(given, places.local_copy("inputs", given))
            back[str(copy)] = given
        else:
            copy = stage_folder(given, say, wanted="an image's URL, or a folder of images in the bucket")
            back[str(copy) + os.sep] = given.rstrip("/") + "/"
        local.append(str(copy))

    def shown(path: str) -> str:
        for prefix, url in back.items():
            if path == prefix or (prefix.endswith(os.sep) and path.startswith(prefix)):
                return url + path[len(prefix) :].replace(os.sep, "/") if prefix.endswith(os.sep) else url
        return path

    return local, shown
