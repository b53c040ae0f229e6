"""Prepared datasets: sharded TFRecord files per split plus a manifest.

``imgtrain prepare`` reads a folder or manifest once (checked exactly as
training checks it), and writes each split as ~100 MB TFRecord shards. A
training run then reads a few large sequential files instead of many small
ones, interleaved in parallel, and workers shard by file. Each record keeps
the image's encoded bytes (the original file when TensorFlow decodes it
as it is, a PNG conversion otherwise), its label, weight, key and its
position in the split as the folder lists it, the position seeding its
augmentation exactly as it does for the folder it came from.

Records are written in a seeded permutation of the split (``seeds.prepared_order``), not in
the folder's order, which is class by class: read through a shuffle window smaller than the
split (``data.shuffle_buffer``), class-ordered shards would give batches of a few classes.
The manifest says so (``"order": "shuffled"``); an older, class-ordered one is named by a
warning when its training split outgrows the window.

The manifest is written last, atomically: a directory without one is an
interrupted ``prepare``, never a dataset.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence

import tensorflow as tf
from tqdm import tqdm

from imgtrain import atomic, seeds
from imgtrain.data.sources import SPLITS, Catalog, Example
from imgtrain.errors import UserError
from imgtrain.storage import stream

if TYPE_CHECKING:
    from imgtrain.storage.shards import ShardStream

FORMAT = "imgtrain-tfrecord"
MANIFEST = "manifest.json"
SHUFFLED = "shuffled"  # the manifest's "order" since records are written in a seeded order

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/key": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "weight": tf.io.FixedLenFeature([], tf.float32),
    "index": tf.io.FixedLenFeature([], tf.int64),
}


def _example(ex: Example, index: int, data: bytes) -> bytes:
    f = tf.train.Feature
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": f(bytes_list=tf.train.BytesList(value=[data])),
                "image/key": f(bytes_list=tf.train.BytesList(value=[ex.key.encode()])),
                "label": f(int64_list=tf.train.Int64List(value=[ex.label])),
                "weight": f(float_list=tf.train.FloatList(value=[ex.weight])),
                "index": f(int64_list=tf.train.Int64List(value=[index])),
            }
        )
    ).SerializeToString()


def write_split(
    examples: Sequence[Example],
    out_dir: Path,
    split: str,
    shard_bytes: int,
    progress: bool = True,
    workers: Optional[int] = None,
    order: Optional[Sequence[int]] = None,
) -> list[dict]:
    """Write one split's shards, its examples in ``order`` (positions in ``examples``; their
    own order when None), each record keeping its position; file reads run in parallel."""
    shards: list[dict] = []
    writer = None
    current: dict = {}
    positions = list(range(len(examples))) if order is None else list(order)
    threads = workers or min(16, (os.cpu_count() or 1) * 4)

    def read(index: int) -> bytes:
        return stream.read(examples[index].path)  # a file, or an object of data streamed from its bucket

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for index, data in zip(
            positions,
            tqdm(
                _in_order(pool, read, positions, ahead=4 * threads),
                total=len(positions),
                desc=f"writing {split}",
                unit="img",
                disable=not progress,
            ),
        ):
            if writer is None or current["bytes"] >= shard_bytes:
                if writer is not None:
                    writer.close()
                current = {"file": f".{split}-{len(shards):05d}.tmp", "count": 0, "bytes": 0}
                shards.append(current)
                writer = tf.io.TFRecordWriter(str(out_dir / current["file"]))
            record = _example(examples[index], index, data)
            writer.write(record)
            current["count"] += 1
            current["bytes"] += len(record)
    if writer is not None:
        writer.close()
    for k, shard in enumerate(shards):
        final = f"{split}-{k:05d}-of-{len(shards):05d}.tfrecord"
        os.replace(out_dir / shard["file"], out_dir / final)
        shard["file"] = final
    return shards


def _in_order(pool: ThreadPoolExecutor, read: Callable[[int], bytes], items: Sequence[int], ahead: int):
    """``read`` of each item, in order, run on ``pool`` at most ``ahead`` items ahead of the one
    taken: memory holds a window of images, not a split (``pool.map`` would ask for all at once)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(read, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def write_prepared(
    catalog: Catalog, out_dir: Path, shard_mb: float, extra: dict, split_seed: int = 0, progress: bool = True
) -> dict:
    """Write every split, each in its seeded order (``seeds.prepared_order`` of ``split_seed``),
    and then the manifest; return the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = own_files(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # invalid until the new one is complete
    for old in previous:  # only the shards the previous manifest lists: never a file of the user's
        (out_dir / old).unlink(missing_ok=True)
    splits = {}
    for split in SPLITS:
        examples = catalog.split(split)
        if not examples:
            continue
        order = seeds.prepared_order(split_seed, split, len(examples))
        shards = write_split(examples, out_dir, split, int(shard_mb * 2**20), progress=progress, order=order)
        per_class = Counter(catalog.class_names[e.label] for e in examples)
        splits[split] = {
            "count": len(examples),
            "per_class": {n: per_class.get(n, 0) for n in catalog.class_names},
            "shards": shards,
        }
    manifest = {
        "format": FORMAT,
        "version": 1,
        "order": SHUFFLED,
        "class_names": catalog.class_names,
        "has_weights": catalog.has_weights,
        "splits": splits,
        **extra,
    }
    atomic.write_json(out_dir / MANIFEST, manifest)
    return manifest


def own_files(out_dir: Path) -> list[str]:
    """The shard files a previous ``prepare`` in ``out_dir`` wrote, from its manifest."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return []
    names = [s.get("file", "") for v in manifest.get("splits", {}).values() for s in v.get("shards", [])]
    return [n for n in names if n and "/" not in n and n.endswith(".tfrecord")]


def check_output_dir(out_dir: Path) -> None:
    """Refuse to write into a folder holding anything but a previous prepare's output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output {out_dir} is a file; pass a new or empty directory")
    if not out_dir.exists():
        return
    ours = set(own_files(out_dir)) | {MANIFEST, ".checks"}
    foreign = sorted(
        p.name
        for p in out_dir.iterdir()
        if p.name not in ours and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    )
    if foreign:
        raise UserError(
            f"--output {out_dir} is not empty and not an 'imgtrain prepare' output (it holds {foreign[0]}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); pass a new or empty directory"
        )


@dataclass
class PreparedRecords:
    """A prepared directory as a training source."""

    root: Path
    manifest: dict
    streamed: Optional["ShardStream"] = None  # its shards in a bucket, read through a local cache

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    def count(self, split: str) -> int:
        return int(self.manifest["splits"].get(split, {}).get("count", 0))

    def order_warnings(self, shuffle_buffer: int) -> list[str]:
        """A line when the records are in the folder's (class by class) order, written by an
        older ``prepare``, and the training split outgrows the shuffle window mixing them."""
        n = self.count("train")
        if self.manifest.get("order") == SHUFFLED or n <= shuffle_buffer:
            return []
        source = self.manifest.get("source") or "the images"
        return [
            f"{self.streamed.url if self.streamed else self.root} was prepared by an older imgtrain, its records "
            f"class by class: {n} training images through a shuffle window of data.shuffle_buffer={shuffle_buffer} "
            f"give batches of a few classes each; prepare it again (imgtrain prepare --data {source} --output NEW), "
            f"which writes them in a seeded shuffled order (or raise data.shuffle_buffer to {n}, which holds "
            "that many encoded images in memory)"
        ]

    def files(self, split: str) -> list[str]:
        return [str(self.root / s["file"]) for s in self.manifest["splits"].get(split, {}).get("shards", [])]

    def file_counts(self, split: str) -> list[int]:
        return [int(s["count"]) for s in self.manifest["splits"].get(split, {}).get("shards", [])]

    def worker_counts(self, split: str, workers: int) -> list[int]:
        """Examples each worker reads when files are dealt out round-robin."""
        counts = self.file_counts(split)
        return [sum(counts[i::workers]) for i in range(workers)]


def is_prepared(path: Optional[str]) -> bool:
    return bool(path) and (Path(path) / MANIFEST).is_file()


def open_prepared(
    path: str, vocabulary: Optional[list[str]] = None, streamed: Optional["ShardStream"] = None
) -> PreparedRecords:
    """The prepared dataset at ``path`` (its shards on disk there, or ``streamed`` from their
    bucket, ``path`` then holding the manifest's copy), its shards whole as written."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {root / MANIFEST}: {exc}; run 'imgtrain prepare' again") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{root / MANIFEST} is not an imgtrain prepared dataset (format {manifest.get('format')!r})")
    prepared = PreparedRecords(root, manifest, streamed)
    where = streamed.url if streamed else str(root)

    def size(name: str) -> Optional[int]:
        if streamed:
            return streamed.sizes.get(name)
        return (root / name).stat().st_size if (root / name).is_file() else None

    for split in SPLITS:
        for shard in manifest["splits"].get(split, {}).get("shards", []):
            have = size(shard["file"])
            if have is None:
                raise UserError(f"prepared dataset {where} lacks shard {shard['file']}; run 'imgtrain prepare' again")
            # A TFRecord frames each record with 16 bytes (length, two CRCs): the size is exact.
            want = int(shard.get("bytes", -1)) + 16 * int(shard.get("count", 0))
            if shard.get("bytes") is not None and have != want:
                raise UserError(
                    f"prepared shard {where}/{shard['file']} is {have} bytes, not the {want} it was written "
                    "with (truncated or damaged); run 'imgtrain prepare' again"
                )
    if vocabulary is not None and list(vocabulary) != prepared.class_names:
        raise UserError(
            f"data.label_vocabulary {vocabulary} differs from the prepared classes {prepared.class_names}; "
            "prepare again with that vocabulary or remove it"
        )
    return prepared


class Opener(Protocol):
    """Where a shard named by its path is read from (streamed shards: ``storage.shards``)."""

    def local(self, path: str) -> str: ...  # its local copy, fetched if need be

    def done(self, path: str) -> None: ...  # read to its end

    def shown(self, path: str) -> str: ...  # its name for the user (its URL)

    def discard(self, path: str) -> None: ...  # its local copy is damaged: fetch it again when next read


def shard_records(path: tf.Tensor, opener: Optional[Opener] = None) -> tf.data.Dataset:
    """The records of the shard at ``path`` (a scalar string tensor): read from disk, or from
    ``opener``'s local copy, telling it once they have all been read (an empty tail that calls
    ``done`` as it is reached: the order of records is the same either way). Either way the
    shard is counted open meanwhile, so a damaged record can be traced to its shard."""

    # numpy_function marked stateless: a stateful function would, with op determinism on, make
    # TensorFlow rewrite the pipeline's parallel maps (logging an error line as it does). Each
    # call has its own input (one shard's path), so none is folded away or repeated.
    def local(p: bytes) -> bytes:
        name = p.decode()
        copy = opener.local(name) if opener is not None else name
        _open_shards.opened(copy, name, opener)
        return copy.encode()

    def done(p: bytes) -> bytes:
        name = p.decode()
        _open_shards.closed(name)
        if opener is not None:
            opener.done(name)
        return b""

    where = tf.ensure_shape(tf.numpy_function(local, [path], tf.string, stateful=False), [])
    # skip(1) reads its one element (calling done) and yields nothing.
    tail = tf.data.Dataset.from_tensors(path).map(
        lambda p: tf.ensure_shape(tf.numpy_function(done, [p], tf.string, stateful=False), [])
    )
    return tf.data.TFRecordDataset(where).concatenate(tail.skip(1))


class _OpenShards:
    """The shards this process's pipelines have open (name -> local copy, opener, readers), and
    the last ``RECENT`` closed: a parallel reader may read past a damaged record to the shard's
    end before the error reaches the loop."""

    RECENT = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, Optional[Opener], int]] = {}
        self._closed: deque[tuple[str, str, Optional[Opener]]] = deque(maxlen=self.RECENT)

    def opened(self, copy: str, name: str, opener: Optional[Opener]) -> None:
        with self._lock:
            readers = self._open.get(name, ("", None, 0))[2]
            self._open[name] = (copy, opener, readers + 1)

    def closed(self, name: str) -> None:
        with self._lock:
            copy, opener, readers = self._open.get(name, ("", None, 1))
            if readers <= 1:
                self._open.pop(name, None)
                self._closed.append((name, copy, opener))
            else:
                self._open[name] = (copy, opener, readers - 1)

    def suspects(self) -> list[tuple[str, str, Optional[Opener]]]:
        """Open shards first, then those closed last, newest first."""
        with self._lock:
            now = [(name, copy, opener) for name, (copy, opener, _n) in self._open.items()]
            return now + [c for c in reversed(self._closed) if c[0] not in self._open]


_open_shards = _OpenShards()


def damaged_line(exc: BaseException) -> Optional[str]:
    """For TensorFlow's DataLossError while shards were read: the line naming the shard whose
    record fails its checksum (the shards read last read again to find it), else None.
    A streamed shard's local copy is removed, so the same command fetches it anew."""
    if not isinstance(exc, tf.errors.DataLossError):
        return None
    for name, copy, opener in _open_shards.suspects():
        where = _first_bad_record(copy)
        if where is None:
            continue
        shown = opener.shown(name) if opener is not None else name
        if opener is None:
            return f"prepared shard {shown} is damaged ({where}); run 'imgtrain prepare' again to write it anew"
        opener.discard(name)
        return (
            f"prepared shard {shown} is damaged ({where}); its local copy was removed: run the same "
            "command again to fetch it anew, and if this line comes back, prepare the data again"
        )
    return f"a prepared shard is damaged ({_said(exc)}); run 'imgtrain prepare' again to write the data anew"


def _said(exc: tf.errors.OpError) -> str:
    """TensorFlow's own words for a bad record ("corrupted record at 2876"), without its op names."""
    return " ".join(str(exc.message).split()).split(" [Op:")[0].split("}} ")[-1] or "a record fails its checks"


def _first_bad_record(path: str) -> Optional[str]:
    """Where ``path``'s records first fail TensorFlow's checks, or None when they all pass."""
    try:
        for _ in tf.data.TFRecordDataset(path):
            pass
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as exc:
        return _said(exc)
    except tf.errors.NotFoundError:
        return None
    return None


def parse(record: tf.Tensor) -> tuple:
    """A serialized record -> (index, encoded bytes, label, weight)."""
    f = tf.io.parse_single_example(record, FEATURES)
    return f["index"], f["image/encoded"], tf.cast(f["label"], tf.int32), f["weight"]


def read_keys(files: list[str], opener: Optional[Opener] = None) -> list[str]:
    """The ``image/key`` of every record of ``files``, in file and record order."""
    spec = {"image/key": FEATURES["image/key"]}
    ds = tf.data.Dataset.from_tensor_slices(list(files)).flat_map(lambda f: shard_records(f, opener))
    ds = ds.map(lambda r: tf.io.parse_single_example(r, spec)["image/key"])
    return [k.decode("utf-8", "replace") for k in ds.as_numpy_iterator()]
