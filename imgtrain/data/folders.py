"""A folder of images as the layout rules see it (``data.sources``): on local disk, or in a
bucket as one listing (data streamed, not staged).

Both answer the same four questions, in the same order for the same tree: the subfolders
(sorted, hidden ones left out), whether images lie directly in it, every image under it
(sorted by path components, hidden files left out), and what the pipeline reads for an
image. So a bucket folder gives the catalog its staged copy would, but with URLs to read.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterator

from imgtrain.config import IMAGE_EXTENSIONS


def _image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".")


class LocalFolder:
    """A folder on disk; ``root`` is the data folder the keys are relative to."""

    def __init__(self, path: Path, root: Path | None = None) -> None:
        self.path, self.root = path, root or path

    @property
    def name(self) -> str:
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalFolder) and other.path == self.path

    __hash__ = None  # type: ignore[assignment]

    def folders(self) -> list["LocalFolder"]:
        found = sorted(d for d in self.path.iterdir() if d.is_dir() and not d.name.startswith("."))
        return [LocalFolder(d, self.root) for d in found]

    def has_images(self) -> bool:
        return any(p.is_file() and _image_name(p.name) for p in self.path.iterdir())

    def images(self) -> Iterator[tuple[str, str]]:
        """(what to read, key relative to the data folder) of every image under this one."""
        for p in sorted(self.path.rglob("*")):
            if p.is_file() and _image_name(p.name):
                yield str(p.resolve()), p.relative_to(self.root).as_posix()

    def resolved(self) -> str:
        return str(self.path.resolve())


class BucketFolder:
    """A folder in a bucket: ``files`` are every object's path relative to the data folder
    ``url``; ``at`` is this folder's own path under it ('' for the data folder)."""

    def __init__(self, url: str, files: list[str], at: str = "") -> None:
        self.url, self.files, self.at = url.rstrip("/"), files, at

    @property
    def name(self) -> str:
        return self.at.rsplit("/", 1)[-1] if self.at else self.url.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.url}/{self.at}" if self.at else self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketFolder) and (other.url, other.at) == (self.url, self.at)

    __hash__ = None  # type: ignore[assignment]

    def _below(self) -> Iterator[list[str]]:
        """The path components of each file under this folder, below it."""
        depth = len(self.at.split("/")) if self.at else 0
        head = self.at.split("/") if self.at else []
        for rel in self.files:
            parts = rel.split("/")
            if parts[:depth] == head and len(parts) > depth:
                yield parts[depth:]

    def folders(self) -> list["BucketFolder"]:
        names = sorted({p[0] for p in self._below() if len(p) > 1 and not p[0].startswith(".")})
        mine = [p for p in self.files if not self.at or p.startswith(self.at + "/")]
        return [BucketFolder(self.url, mine, f"{self.at}/{n}" if self.at else n) for n in names]

    def has_images(self) -> bool:
        return any(len(p) == 1 and _image_name(p[0]) for p in self._below())

    def images(self) -> Iterator[tuple[str, str]]:
        head = f"{self.at}/" if self.at else ""
        for parts in sorted(self._below()):
            if _image_name(parts[-1]):
                rel = head + "/".join(parts)
                yield f"{self.url}/{rel}", rel

    def resolved(self) -> str:
        return self.url
