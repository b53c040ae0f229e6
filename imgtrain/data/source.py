"""One interface for every kind of data a run can train on, chosen once from ``data.path``.

A ``DataSource`` knows its class names, how many examples each split has and
how many each worker reads, and builds this worker's training epoch and
evaluation batches through ``data.pipeline``; the run never asks which kind it
holds. Three kinds, picked by ``get`` from the first row of ``KINDS`` that
claims the path (heavy imports, TFDS's above all, happen only in the opener
that needs them):

- ``FileSource``: an image folder or CSV manifest, split by hash and checked
  image by image (``data.sources``, ``data.split``, ``data.validate``);
- ``RecordSource``: TFRecord shards written by ``imgtrain prepare``, sharded
  across workers by file;
- ``TfdsSource``: a TFDS dataset, streamed.

Invariants every source keeps: every worker yields the same number of steps
(``worker_counts`` says what each worker reads, padding makes up the rest);
the order of a training epoch is a pure function of (seed, epoch); and
``identity`` lists what defines each split, for the run's data fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import tensorflow as tf

from imgtrain import rundir
from imgtrain.config import Config, DataConfig
from imgtrain.data import pipeline
from imgtrain.data.pipeline import EpochPlan, Shard
from imgtrain.errors import UserError

if TYPE_CHECKING:  # the modules themselves are imported by the openers that need them
    from imgtrain.data.sources import Catalog
    from imgtrain.storage.shards import ShardStream
    from imgtrain.storage.stage import Listing


class DataSource:
    """The common interface; ``count`` and the two dataset builders are each kind's own."""

    class_names: list[str]
    skipped: list[dict]
    warnings: list[str]
    serviceable = False  # can send its training epoch through a tf.data service (data.service)
    # An epoch is one seeded order of examples strided over the workers, so what a stop leaves
    # trained is a prefix of it whatever the number of workers (else each worker has its own).
    ordered_by_example = False

    def count(self, split: str) -> int:
        raise NotImplementedError

    def has(self, split: str) -> bool:
        return self.count(split) > 0

    def fetched_bytes(self) -> int:
        """Bytes this process fetched from a bucket while reading (streamed shards), for run.json."""
        return 0

    def worker_counts(self, split: str, workers: int) -> list[int]:
        """Examples of ``split`` each worker reads: by example, unless the kind shards by file."""
        n = self.count(split)
        return [pipeline.shard_size(n, Shard(workers, i)) for i in range(workers)]

    def train_labels(self) -> list[int]:
        raise NotImplementedError

    def identity(self, split: str) -> list[str]:
        raise NotImplementedError

    def contents(self, split: str) -> list[str]:
        """``key\tstamp`` of each file that holds ``split`` (``stage.stamp``), for the data's
        fingerprint; none for data that is not files of the user's."""
        return []

    def example_keys(self, split: str) -> list[str]:
        """What names each example of ``split`` in a report, in the order of a one-worker
        ``eval_dataset``; a kind without file names numbers them."""
        return [f"{split}[{i}]" for i in range(self.count(split))]

    def train_dataset(self, cfg: DataConfig, plan: EpochPlan) -> tf.data.Dataset:
        raise NotImplementedError

    def kept(self, key: tuple, build: Callable[[], tf.data.Dataset]) -> tf.data.Dataset:
        """``build()``, made once per ``key`` for this source's life. ``data.cache`` keeps its
        images in the dataset object that cached them, so every epoch must read that one."""
        kept = self.__dict__.setdefault("_kept", {})
        if key not in kept:
            kept[key] = build()
        return kept[key]

    def eval_dataset(self, cfg: DataConfig, split: str, batch: int, shard: Shard, multiple: int) -> tf.data.Dataset:
        raise NotImplementedError


class FileSource(DataSource):
    serviceable = True  # a list of files, which the service splits among its workers
    ordered_by_example = True

    def __init__(self, catalog) -> None:
        self.catalog = catalog
        self.class_names, self.skipped, self.warnings = catalog.class_names, catalog.skipped, catalog.warnings

    def count(self, split: str) -> int:
        return len(self.catalog.split(split))

    def train_labels(self) -> list[int]:
        return [e.label for e in self.catalog.split("train")]

    def identity(self, split: str) -> list[str]:
        return sorted(f"{e.key}\t{e.label}\t{e.weight!r}" for e in self.catalog.split(split))

    def contents(self, split: str) -> list[str]:
        return [f"{e.key}\t{e.stamp}" for e in self.catalog.split(split)]

    def example_keys(self, split: str) -> list[str]:
        return [e.key for e in self.catalog.split(split)]  # the path as the user's folder or CSV names it

    def train_dataset(self, cfg: DataConfig, plan: EpochPlan) -> tf.data.Dataset:
        examples = self.catalog.split("train")
        decoded = None
        if cfg.cache:
            key = ("train", tuple(cfg.image_size))
            decoded = self.kept(key, lambda: pipeline.decoded_images(examples, cfg.image_size))
        return pipeline.train_dataset(examples, cfg, plan, decoded)

    def eval_dataset(self, cfg: DataConfig, split: str, batch: int, shard: Shard, multiple: int) -> tf.data.Dataset:
        examples = self.catalog.split(split)
        key = (split, tuple(cfg.image_size), cfg.eval_crop(), shard)
        images = self.kept(key, lambda: pipeline.eval_images(examples, cfg, shard)) if cfg.cache else None
        return pipeline.eval_dataset(examples, cfg, batch, shard, multiple, images)


class RecordSource(DataSource):
    def __init__(self, records, shuffle_buffer: int) -> None:
        self.records = records
        self.class_names, self.warnings = records.class_names, records.order_warnings(shuffle_buffer)
        self.skipped = list(records.manifest.get("checks", {}).get("skipped", []))

    def count(self, split: str) -> int:
        return self.records.count(split)

    def worker_counts(self, split: str, workers: int) -> list[int]:
        return self.records.worker_counts(split, workers)  # whole shards per worker

    def train_labels(self) -> list[int]:
        per_class = self.records.manifest["splits"]["train"]["per_class"]
        return [i for i, name in enumerate(self.class_names) for _ in range(per_class.get(name, 0))]

    def identity(self, split: str) -> list[str]:
        return [f"{Path(f).name}\t{c}" for f, c in zip(self.records.files(split), self.records.file_counts(split))]

    def contents(self, split: str) -> list[str]:
        from imgtrain.storage.stage import file_stamp

        streamed = self.records.streamed
        if streamed is not None:
            return [f"{Path(f).name}\t{streamed.stamps[streamed.rel(f)]}" for f in self.records.files(split)]
        return [f"{Path(f).name}\t{file_stamp(f)}" for f in self.records.files(split)]

    def fetched_bytes(self) -> int:
        streamed = self.records.streamed
        return streamed.fetched_bytes() if streamed is not None else 0

    def opener(self, shard: Optional[Shard] = None, plan: Optional[EpochPlan] = None):
        """How worker ``shard`` opens the shards: None for local ones, its cache for streamed
        (``shard`` None: this process's cache, whichever worker it is). Given the epoch's
        ``plan``, the cache is told the order the worker reads its training shards in, in this
        epoch and the next, so it fetches ahead the ones read next."""
        streamed = self.records.streamed
        if streamed is None:
            return None
        if shard is None:
            return streamed.any_opener() or self.opener(Shard())
        files = self.records.files("train")
        if plan is None:
            return streamed.opener(shard.count, shard.index, files[shard.index :: shard.count])
        order = [pipeline.epoch_shards(files, shard, plan.seed, plan.epoch + k) for k in (0, 1)]
        return streamed.opener(shard.count, shard.index, order[0] + order[1], reorder=True)

    def example_keys(self, split: str) -> list[str]:
        from imgtrain.data.tfrecord import read_keys

        return read_keys(self.records.files(split), self.opener())  # each record keeps its source's path

    def train_dataset(self, cfg: DataConfig, plan: EpochPlan) -> tf.data.Dataset:
        counts = self.worker_counts("train", plan.shard.count)
        opener = self.opener(plan.shard, plan)
        return pipeline.tfrecord_train_dataset(self.records.files("train"), counts, cfg, plan, opener)

    def eval_dataset(self, cfg: DataConfig, split: str, batch: int, shard: Shard, multiple: int) -> tf.data.Dataset:
        files, opener = self.records.files(split), self.opener(shard)
        key = (split, tuple(cfg.image_size), cfg.eval_crop(), shard)
        images = self.kept(key, lambda: pipeline.tfrecord_eval_images(files, cfg, shard, opener)) if cfg.cache else None
        return pipeline.tfrecord_eval_dataset(
            files, self.worker_counts(split, shard.count), cfg, batch, shard, multiple, images, opener
        )


class TfdsSource(DataSource):
    def __init__(self, data) -> None:
        self.data = data
        self.class_names, self.skipped, self.warnings = data.class_names, [], []

    def count(self, split: str) -> int:
        return self.data.counts.get(split, 0)

    def train_labels(self) -> list[int]:
        return [int(y) for _, y in self.data.splits["train"].as_numpy_iterator()]

    def identity(self, split: str) -> list[str]:
        return [f"tfds:{self.data.name}\t{self.count(split)}"]

    def train_dataset(self, cfg: DataConfig, plan: EpochPlan) -> tf.data.Dataset:
        return pipeline.tfds_train_dataset(self.data.splits["train"], self.count("train"), cfg, plan)

    def eval_dataset(self, cfg: DataConfig, split: str, batch: int, shard: Shard, multiple: int) -> tf.data.Dataset:
        return pipeline.tfds_eval_dataset(self.data.splits[split], self.count(split), cfg, batch, shard, multiple)


def _is_tfds(cfg: Config) -> bool:
    from imgtrain.data.sources import is_tfds

    return is_tfds(cfg.data.path) or (cfg.data.path is None and bool(cfg.data.tfds.name))


def _open_tfds(cfg: Config, run_dir: Path, progress: bool) -> DataSource:
    from imgtrain.data.sources import is_tfds
    from imgtrain.data.tfds_source import load_tfds, tfds_name

    name = tfds_name(cfg.data.path) if is_tfds(cfg.data.path) else cfg.data.tfds.name
    data = load_tfds(name, cfg.data.tfds)
    if cfg.data.label_vocabulary and list(cfg.data.label_vocabulary) != data.class_names:
        raise UserError(f"data.label_vocabulary does not match TFDS '{name}' classes {data.class_names}; remove it")
    return TfdsSource(data)


def _is_records(cfg: Config) -> bool:
    from imgtrain.data.tfrecord import is_prepared

    return is_prepared(cfg.data.path)


def _open_records(cfg: Config, run_dir: Path, progress: bool) -> DataSource:
    from imgtrain.data.tfrecord import open_prepared

    return RecordSource(open_prepared(cfg.data.path, cfg.data.label_vocabulary), cfg.data.shuffle_buffer)


def _open_files(cfg: Config, run_dir: Path, progress: bool) -> DataSource:
    from imgtrain.data.sources import discover

    return _checked(discover(cfg.data), cfg, run_dir, progress)


def _checked(catalog: "Catalog", cfg: Config, run_dir: Path, progress: bool) -> DataSource:
    """A folder's or manifest's catalog, split and checked image by image."""
    from imgtrain.data.split import apply_split
    from imgtrain.data.validate import validate_catalog

    apply_split(catalog, cfg.data.split, cfg.effective_split_seed)
    validate_catalog(catalog, cfg.data.on_bad_image, run_dir / rundir.DATA_CACHE, progress=progress)
    return FileSource(catalog)


Opener = Callable[[Config, Path, bool], DataSource]
# The one table of kinds, first match wins: (claims the config's data, opens it).
KINDS: list[tuple[str, Callable[[Config], bool], Opener]] = [
    ("tfds", _is_tfds, _open_tfds),
    ("tfrecord", _is_records, _open_records),
    ("files", lambda cfg: True, _open_files),  # a folder or CSV manifest; discover() refuses anything else
]


def get(cfg: Config, run_dir: Path, progress: bool = True, kind: Optional[str] = None) -> DataSource:
    """Find, split and check the data of ``cfg``; cheap on a resumed run thanks to the check cache.
    Data in a bucket is staged to local disk first, or streamed from the bucket (``placed``)."""
    from imgtrain.storage.shards import ShardStream

    cfg, streamed = placed(cfg, progress)
    if isinstance(streamed, ShardStream):
        from imgtrain.data.tfrecord import open_prepared

        return RecordSource(open_prepared(cfg.data.path, cfg.data.label_vocabulary, streamed), cfg.data.shuffle_buffer)
    if streamed is not None:
        return _checked(streamed, cfg, Path(run_dir), progress)
    for name, claims, opener in KINDS:
        if (kind == name) if kind else claims(cfg):
            return opener(cfg, Path(run_dir), progress)
    raise UserError(f"unknown data source kind '{kind}'; one of: {', '.join(k for k, _, _ in KINDS)}")


def placed(cfg: Config, progress: bool = True) -> tuple[Config, "Optional[Catalog | ShardStream]"]:
    """Where bucket data (``data.path`` an ``s3://``/``gs://`` URL) is read from, by
    ``data.stage``: ``(cfg with its local copy, None)`` when staged, a folder (of class folders,
    or shards) whole, a CSV manifest with the files it lists (relative to the manifest's URL);
    ``(cfg, its catalog of URLs)`` when its images are streamed; prepared shards streamed:
    ``(cfg with its manifest's copy, their ShardStream)``. Keys stay relative either way, so the data's
    fingerprint is the bucket's wherever it is read from. Local data: ``(cfg, None)``."""
    import dataclasses

    from imgtrain.data import sources
    from imgtrain.data.tfrecord import MANIFEST
    from imgtrain.storage import places, stage, urls

    url = cfg.data.path
    if not urls.is_url(url):
        return cfg, None
    url = str(url)
    say = print  # what is staged or streamed is said with or without progress bars
    into = places.local_copy("data", url)
    if url.lower().endswith(".csv"):
        manifest = stage.fetch_file(url, into)
        base = url.rsplit("/", 1)[0]
        listing = stage.list_files(base, sources.manifest_paths(manifest, url))
        if not _stages(cfg, listing, into, say, shards=False):
            return cfg, sources.from_bucket_manifest(manifest, base, listing.stamps, cfg.data.label_vocabulary)
        stage.stage_listing(listing, into, say)
        local = manifest
    else:
        listing = stage.list_folder(url)
        if MANIFEST in listing.versions and cfg.data.stage != "always" and not cfg.data.service:
            return _streamed_shards(cfg, listing, into, say)
        if not _stages(cfg, listing, into, say, shards=MANIFEST in listing.versions):
            return cfg, sources.from_bucket(url, listing.stamps, cfg.data.label_vocabulary)
        local = stage.stage_listing(listing, into, say)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(local))), None


def _streamed_shards(cfg: Config, listing: "Listing", into: Path, say: Callable[[str], None]) -> tuple:
    """Prepared shards in a bucket, read through a bounded local cache (``storage.shards``): the
    manifest is fetched, the limit checked against the shards a reader holds at once."""
    import dataclasses
    import json

    from imgtrain.data.tfrecord import MANIFEST
    from imgtrain.storage import shards, stage

    url = listing.url
    manifest = stage.fetch_file(f"{url}/{MANIFEST}", into)
    try:
        splits = json.loads(manifest.read_text())["splits"]
        named = {split: [s["file"] for s in splits[split]["shards"]] for split in splits}
    except (OSError, ValueError, KeyError, TypeError):
        named = {}  # open_prepared says what is wrong with the manifest
    train = named.get("train", [])
    sizes = {rel: listing.sizes[rel] for files in named.values() for rel in files if rel in listing.sizes}
    setting = "data.shard_cache_gb"
    limit = (
        int(cfg.data.shard_cache_gb * 2**30)
        if cfg.data.shard_cache_gb is not None
        else shards.free_for_cache(into, stage.SPARE_BYTES)
    )
    at_once = pipeline.shards_open_at_once(len(train)) + 1  # + the next one, fetched while they are read
    if sizes and train:
        shards.check_limit(url, limit, {r: sizes[r] for r in train if r in sizes} or sizes, at_once, setting)
    total = sum(sizes.values())
    say(
        f"streaming {url}: {len(sizes)} shard(s), {total / 2**30:.2f} GiB, through a local cache of "
        f"{min(limit, total) / 2**30:.2f} GiB"
        + (" (all of it: later epochs read the cache)" if limit >= total else f"; {setting} sets it")
    )
    stream = shards.ShardStream(url, into, listing.versions, listing.sizes, listing.stamps, limit)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(into))), stream


def _stages(cfg: Config, listing: "Listing", into: Path, say: Callable[[str], None], shards: bool) -> bool:
    """``data.stage`` for this data: ``auto`` stages what fits the disk beside the run, and
    streams the rest. The tf.data service reads files on disk, so its data is staged; prepared
    shards get here only with ``always`` (otherwise ``_streamed_shards``)."""
    from imgtrain.storage import places, stage

    mode, url = cfg.data.stage, listing.url
    if mode == "never" and (shards or cfg.data.service):
        what = "prepared shards" if shards else "data.service"
        raise UserError(
            f"data.stage=never reads images from {url} one by one, but {what} read(s) files on disk; "
            "set data.stage=auto (staged when the data fits the disk) or always"
        )
    if mode == "always" or shards or cfg.data.service or (mode == "auto" and stage.fits(listing, into)):
        return True
    if mode == "auto":
        prepared = (url.rsplit("/", 1)[0] if url.lower().endswith(".csv") else url.rstrip("/")) + "-prepared"
        say(
            f"reading {url} from the bucket every epoch, an object per image: its {listing.bytes() / 2**30:.1f} GiB "
            f"do not fit beside the run in {places.cache_root()}. 'imgtrain prepare --data {url} --output "
            f"{prepared}' once, then --data {prepared}, streams it in large shards"
        )
    return False
