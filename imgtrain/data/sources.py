"""Where examples come from: an image folder, a CSV manifest, or a TFDS dataset.

File sources become a ``Catalog``: one ``Example`` per image with its path,
label index, loss weight and (when the folder was already split) its split.
Nothing is decoded here; images stay on disk and are streamed later by the
pipeline. TFDS datasets are streamed by TFDS itself and only described here.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from imgtrain.config import IMAGE_EXTENSIONS, DataConfig
from imgtrain.data.folders import BucketFolder, LocalFolder
from imgtrain.errors import UserError
from imgtrain.storage.urls import is_url

Folder = Union[LocalFolder, BucketFolder]

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Example:
    """One image file and what the loss should make of it."""

    path: str  # absolute path to the file that gets decoded
    key: str  # stable identity (relative path) used for the split hash and reports
    label: int
    weight: float = 1.0
    split: Optional[str] = None  # set when the source already says which split
    stamp: str = ""  # its content's stage.stamp when checked (the data's fingerprint records it)


@dataclass
class Catalog:
    """Everything the data stage knows about a file-based dataset."""

    class_names: list[str]
    examples: list[Example]
    root: str
    kind: str  # "folder" or "csv"
    has_weights: bool = False
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # said once by the run, not errors
    stamps: dict[str, str] = field(default_factory=dict)  # streamed data: each object's stage.stamp, by URL

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]


def is_tfds(path: Optional[str]) -> bool:
    return bool(path) and str(path).startswith("tfds:")


def check_local_path(given: Optional[str]) -> None:
    """The one line for a local data path that cannot be read as data (missing, or a file that
    is not a CSV manifest); nothing for a bucket URL, ``tfds:`` or none given. Cheap: the train
    command asks it before TensorFlow loads (8 s here), so a typo is answered at once."""
    if not given or is_tfds(given) or is_url(given):
        return
    path = Path(given).expanduser()
    if not path.exists():
        raise UserError(f"data path {path} does not exist; pass an image folder, a CSV manifest or tfds:NAME to --data")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise UserError(
            f"data path {path} is a file but not a .csv manifest; pass a folder or a CSV with path,label[,weight]"
        )


def discover(cfg: DataConfig) -> Catalog:
    """List the examples of a folder or CSV manifest; fail early on an unusable path."""
    if not cfg.path:
        raise UserError("no data given; pass --data FOLDER, --data manifest.csv or --data tfds:NAME")
    check_local_path(cfg.path)
    path = Path(cfg.path).expanduser()
    if path.is_file():
        return _from_csv(path, cfg.label_vocabulary)
    return _from_folder(LocalFolder(path), cfg.label_vocabulary)


def _vocabulary(found: list[str], given: Optional[list[str]], where: str) -> list[str]:
    """Class names in a fixed order: the given vocabulary, or the sorted names found."""
    if given is None:
        if all(n.lstrip("-").isdigit() for n in found):
            return sorted(found, key=int)
        return sorted(found)
    missing = [n for n in found if n not in given]
    if missing:
        raise UserError(
            f"label '{missing[0]}' in {where} is not in data.label_vocabulary {given}; "
            "add it to the vocabulary or fix the label"
        )
    return list(given)


def _layout(root: Folder) -> dict[Optional[str], Folder]:
    """Pre-split (root/train/<class>/...) or one folder per class, decided only when unambiguous.

    A folder named train, val or test is a split only when it holds class subfolders; one that
    holds images directly is a class of that name (classes bus, car, train). Split folders next
    to class folders, or a split-named folder with both images and subfolders, are refused.
    """
    subdirs = root.folders()
    splits: dict[str, Folder] = {}
    for d in subdirs:
        alias = SPLIT_ALIASES.get(d.name.lower())
        if alias is None:
            continue
        has_classes = bool(d.folders())
        if has_classes and d.has_images():
            raise UserError(
                f"data folder {d} holds both images and subfolders, so it is neither a class nor a "
                f"split; move its images into {d}/<class>/ or its subfolders out"
            )
        if has_classes:
            splits[alias] = d
    if not splits:
        return {None: root}
    others = [d.name for d in subdirs if d not in splits.values()]
    if others:
        raise UserError(
            f"data folder {root} mixes split folders ({', '.join(sorted(splits))}/) with the class folder "
            f"'{others[0]}'; move it under {root}/train/ (or val/, test/), or use one folder per class only"
        )
    if "train" not in splits:
        raise UserError(
            f"data folder {root} has {', '.join(sorted(splits))} folders but no train/; add train/<class>/ images"
        )
    return dict(splits)  # root/train/<class>/..., root/val/<class>/..., root/test/<class>/...


def from_bucket(url: str, stamps: dict[str, str], vocabulary: Optional[list[str]]) -> Catalog:
    """The catalog of an image folder in a bucket, from one listing (``stamps``, each object's
    ``stage.stamp`` by its path relative to ``url``): the examples its staged copy would give,
    read by URL."""
    catalog = _from_folder(BucketFolder(url, sorted(stamps)), vocabulary)
    catalog.stamps = {f"{catalog.root}/{rel}": v for rel, v in stamps.items()}
    return catalog


def _from_folder(root: Folder, vocabulary: Optional[list[str]]) -> Catalog:
    layout = _layout(root)
    names: set[str] = set()
    per_split: dict[Optional[str], dict[str, list[tuple[str, str]]]] = {}
    for split, base in layout.items():
        classes = {d.name: list(d.images()) for d in base.folders()}
        per_split[split] = classes
        names.update(classes)
    if not names:
        hint = " (images lie directly in it; put them in one subfolder per class)" if root.has_images() else ""
        raise UserError(f"data folder {root} has no class subfolders{hint}; expected {root}/<class>/<image>")
    class_names = _vocabulary(sorted(names), vocabulary, str(root))
    index = {n: i for i, n in enumerate(class_names)}
    examples = []
    for split, classes in per_split.items():
        for name, files in classes.items():
            for path, key in files:
                examples.append(Example(path, key, index[name], 1.0, split))
    if not examples:
        raise UserError(
            f"data folder {root} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images under {root}/<class>/"
        )
    return Catalog(class_names, examples, root.resolved(), "folder")


def _from_csv(path: Path, vocabulary: Optional[list[str]]) -> Catalog:
    """Read ``path,label[,weight][,split]``; paths are relative to the manifest's folder."""
    base = path.parent
    columns, rows = _csv_rows(path)
    raw = [_csv_record(path, lineno, row, columns) for lineno, row in rows]
    has_weights = "weight" in columns or any(r[5] for r in raw)
    raw, duplicates = _dedupe([r[:5] for r in raw], path)
    if has_weights and raw and all(r[3] == 0 for r in raw):
        raise UserError(f"every weight in CSV manifest {path} is 0, so nothing would be learned; fix the weight column")
    if vocabulary is not None:
        for lineno, _, label, _, _ in raw:
            if label not in vocabulary:
                raise UserError(
                    f"label '{label}' at {path} line {lineno} is not in data.label_vocabulary {vocabulary}; "
                    "add it to the vocabulary or fix the label"
                )
    class_names = _vocabulary(sorted({r[2] for r in raw}), vocabulary, str(path))
    index = {n: i for i, n in enumerate(class_names)}
    examples = []
    for _lineno, file, label, weight, split in raw:
        key = file.relative_to(base).as_posix() if file.is_relative_to(base) else file.as_posix()
        examples.append(Example(str(file.resolve()), key, index[label], weight, split))
    catalog = Catalog(class_names, examples, str(base.resolve()), "csv", has_weights=has_weights)
    if duplicates:
        catalog.warnings.append(
            f"CSV manifest {path} lists {duplicates} file(s) more than once with the same label; each is used once"
        )
    return catalog


def from_bucket_manifest(
    manifest: Path, base_url: str, stamps: dict[str, str], vocabulary: Optional[list[str]]
) -> Catalog:
    """The catalog of a CSV manifest in a bucket (``manifest``, its local copy), read by URL:
    its files are relative to it (``manifest_paths`` refused any other), under ``base_url``,
    with ``stamps`` by that relative path."""
    catalog = _from_csv(manifest, vocabulary)
    catalog.root = base_url.rstrip("/")
    for e in catalog.examples:
        e.path = f"{catalog.root}/{e.key}"
    catalog.stamps = {f"{catalog.root}/{rel}": v for rel, v in stamps.items()}
    return catalog


def manifest_paths(path: Path, shown: str) -> list[str]:
    """The files a manifest lists, as paths relative to it: what a manifest in a bucket may
    name (``shown``, its URL, for the one line that refuses anything else)."""
    columns, rows = _csv_rows(path)
    at = columns.index("path")
    out = []
    for lineno, row in rows:
        file = row[at].strip() if len(row) > at else ""
        if "://" in file or file.startswith(("/", "~")) or ".." in Path(file).parts:
            raise UserError(
                f"CSV manifest {shown} line {lineno} names {file}; a manifest in a bucket lists files by "
                "paths relative to it, inside its folder"
            )
        if file:
            out.append(Path(file).as_posix())
    return out


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The manifest's columns (from its header, or the default order) and its non-blank rows
    with their line numbers."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not column text
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read CSV manifest {path}: {exc}") from None
    numbered = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not numbered:
        raise UserError(f"CSV manifest {path} is empty; write one line per image: path,label[,weight]")
    header = [c.strip().lower() for c in numbered[0][1]]
    columns = ["path", "label", "weight", "split"]
    if "path" in header and "label" in header:
        unknown = [c for c in header if c not in columns]
        if unknown:
            raise UserError(
                f"CSV manifest {path} line 1 has unknown column '{unknown[0]}'; use path,label[,weight][,split]"
            )
        return header, numbered[1:]
    return columns, numbered


def _csv_record(path: Path, lineno: int, row: list[str], columns: list[str]) -> tuple:
    """One row as (lineno, file, label, weight, split, has_weight), or one line saying what is wrong."""
    if len(row) < 2 or len(row) > len(columns):
        raise UserError(
            f"CSV manifest {path} line {lineno} has {len(row)} fields; expected path,label[,weight] "
            f"(columns: {','.join(columns)})"
        )
    rec = dict(zip(columns, (c.strip() for c in row)))
    if not rec.get("path") or rec.get("label", "") == "":
        raise UserError(f"CSV manifest {path} line {lineno} has an empty path or label")
    weight = 1.0
    if rec.get("weight", "") != "":
        try:
            weight = float(rec["weight"])
        except ValueError:
            raise UserError(f"CSV manifest {path} line {lineno}: weight '{rec['weight']}' is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise UserError(
                f"CSV manifest {path} line {lineno}: weight {rec['weight']} is not a finite number "
                ">= 0; fix the weight column"
            )
    split = None
    if rec.get("split"):
        split = SPLIT_ALIASES.get(rec["split"].lower())
        if split is None:
            raise UserError(f"CSV manifest {path} line {lineno}: split '{rec['split']}' is not train, val or test")
    file = Path(rec["path"]).expanduser()
    file = file if file.is_absolute() else path.parent / file
    return (lineno, file, rec["label"], weight, split, rec.get("weight", "") != "")


def _dedupe(raw: list[tuple], path: Path) -> tuple[list[tuple], int]:
    """Drop exact repeats of a file; refuse a file listed with two labels (or weights, or splits)."""
    seen: dict[Path, tuple] = {}
    kept, repeats = [], 0
    for row in raw:
        lineno, file, label, weight, split = row
        key = file.resolve()
        if key in seen:
            first = seen[key]
            if (first[2], first[3], first[4]) != (label, weight, split):
                raise UserError(
                    f"CSV manifest {path} lists {file} twice with different entries (line {first[0]}: "
                    f"label '{first[2]}', line {lineno}: label '{label}'); keep one line per file"
                )
            repeats += 1
            continue
        seen[key] = row
        kept.append(row)
    return kept, repeats
