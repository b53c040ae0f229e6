"""Where the local copies of bucket things live: ``IMGTRAIN_CACHE_DIR``, else
``$XDG_CACHE_HOME/imgtrain``, else ``~/.cache/imgtrain`` (on Kubernetes, an ``emptyDir``).

A copy's folder is named by what it copies (``runs`` or ``data``) and by the URL's own name
and hash, so two URLs never share one, and the same URL finds its copy again on a rerun.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from imgtrain.errors import UserError

CACHE_ENV = "IMGTRAIN_CACHE_DIR"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgtrain"


def local_copy(kind: str, url: str, suffix: str = "") -> Path:
    """The folder holding the local copy of ``url`` (``kind``: ``runs`` or ``data``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1])[:40] or "root"
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    folder = cache_root() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
        reason = "it is not writable"
    except OSError as exc:
        writable, reason = False, exc.strerror or type(exc).__name__
    if not writable:
        raise UserError(
            f"cannot write imgtrain's local copy of {url} under {folder} ({reason}): point {CACHE_ENV} at a "
            "writable folder with room for it"
        )
    return folder / f"{name}-{digest}{suffix}"
