"""Images read from their bucket one object at a time: data that is streamed, not staged
(``data.stage``), for the tf.data pipeline and the image check.

TensorFlow has no ``s3://``, so reads are a Python call into fsspec's client: the pipeline
wraps ``read_many`` in ``tf.numpy_function``, ``PARALLEL_READS`` objects a call, fetched at
once on the client's event loop (a read waits on the network, not on a core, and tf.data runs
only as many Python calls at once as the machine has cores). One client per scheme and
endpoint serves the whole process.

A read that still fails after ``ATTEMPTS`` tries (a bucket gone mid-epoch) raises an error
whose text carries ``LOST``; it reaches the command through TensorFlow, which keeps only the
text, and ``lost_line`` turns it back into the one line the command ends with (exit 75: the
last complete checkpoint stands, and the same command resumes from it).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from imgtrain.storage import urls

PARALLEL_READS = 32  # objects a call of read_many fetches at once
ATTEMPTS = 3  # tries, 1 and 2 s apart (each the client's own retries): a blip is ridden out, an outage ends the run
LOST = "imgtrain-stream-lost"  # marks a read that gave up, through TensorFlow's error text
_LOST_TEXT = re.compile(LOST + r": (.*?) :" + LOST)

_clients: dict[tuple, object] = {}
_given_up: list[ReadLost] = []  # the streamed read that failed for good, in this process
_lock = threading.Lock()


class ReadLost(OSError):
    """An object of streamed data could not be read, after retries."""


def read(path: str) -> bytes:
    """The bytes of ``path``: an object in a bucket, or a local file (images the check
    converted to PNG stay on local disk beside streamed data). FileNotFoundError when there is
    none; ``LOST`` when the bucket does not answer."""
    if not urls.is_url(path):
        return Path(path).read_bytes()
    result = _fetch([path])[path]
    if isinstance(result, FileNotFoundError):
        raise result
    return result


def read_many(paths: Sequence[str]) -> list[bytes]:
    """The bytes of each of ``paths`` (images the check has seen), the bucket's fetched at once
    on the client's event loop. One gone since the check, or a bucket that still does not
    answer after ``ATTEMPTS`` tries, ends the run (``LOST``)."""
    got = _fetch(sorted({p for p in paths if urls.is_url(p)}))
    for path, result in got.items():
        if isinstance(result, FileNotFoundError):
            raise _give_up(f"{path} is gone (it was there when the images were checked)")
    return [got[p] if p in got else Path(p).read_bytes() for p in paths]  # type: ignore[misc]


def _fetch(wanted: list[str]) -> dict[str, "bytes | FileNotFoundError"]:
    """Each object's bytes, or its FileNotFoundError, tried ``ATTEMPTS`` times; ``LOST`` when
    the bucket does not answer. An outage is said once: every read after it fails at once
    (tf.data runs every read left in the epoch before it reports the first failure)."""
    if _given_up:
        raise _given_up[0]
    got: dict[str, bytes | FileNotFoundError] = {}
    for attempt in range(ATTEMPTS):
        todo = [u for u in wanted if u not in got]
        if not todo:
            break
        fs = client(todo[0])
        from fsspec.asyn import sync  # fsspec is there: the client came from it

        failed: Optional[BaseException] = None
        try:  # a call's deadline, as for every call to a bucket (urls.DEADLINES)
            results = sync(fs.loop, _gather, fs, [urls.bare(u) for u in todo], timeout=urls.CALL_SECONDS)
        except TimeoutError as exc:  # fsspec's FSTimeoutError: the server holds the connections silent
            failed, results = exc, []
        for url, result in zip(todo, results):
            if isinstance(result, (bytes, FileNotFoundError)):
                got[url] = result
            else:
                failed = failed or result
        if failed is not None and attempt == ATTEMPTS - 1:
            said = urls.explain(failed, todo[0], "read")
            raise _give_up(str(said) if said else f"cannot read {todo[0]} ({type(failed).__name__}: {failed})")
        if failed is not None:
            time.sleep(2**attempt)
    return got


async def _gather(fs, paths: list[str]) -> list:
    return await asyncio.gather(*(fs._cat_file(p) for p in paths), return_exceptions=True)


def _give_up(reason: str) -> ReadLost:
    """The error that ends the run, raised again at once by every read after it."""
    _given_up.append(lost(reason))
    return _given_up[0]


def lost(reason: str) -> ReadLost:
    """The error that ends a run whose data stopped answering (``lost_line`` reads it back)."""
    return ReadLost(f"{LOST}: {' '.join(reason.split())} :{LOST}")


def lost_line(exc: BaseException) -> Optional[str]:
    """The line for a run that ended because streamed data could not be read, else None."""
    for e in (exc, exc.__cause__, exc.__context__):
        match = _LOST_TEXT.search(str(e or ""))
        if match:
            return (
                f"{match.group(1)}; the data could not be read from its bucket. Run the same command again "
                "when the bucket answers (a run resumes from its last complete checkpoint)"
            )
    return None


def client(url: str):
    """The process's one client for ``url``'s scheme and endpoint."""
    scheme = urls.scheme_of(url)
    key = (scheme, os.environ.get(urls.SCHEMES[scheme].endpoint or ""))  # type: ignore[index]
    with _lock:
        if key not in _clients:
            _clients[key] = urls.filesystem(url)
        return _clients[key]
