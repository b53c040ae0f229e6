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
    return cache_root() / kind / f"{name}-{digest}{suffix}"
