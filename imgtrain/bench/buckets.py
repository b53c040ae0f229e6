"""Bucket figures (``bench --data s3://...``, ``--upload URL``): the data read from the bucket
each epoch (streamed) and copied once (staged) against the same files on local disk, and a
training run uploaded as it goes against the same run kept local, interleaved rounds in one
process as every other figure."""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from imgtrain.bench.pipeline import PIPELINE_AUGMENT, images_per_sec
from imgtrain.bench.report import rate
from imgtrain.bench.synthetic import BenchSizes
from imgtrain.config import DataConfig
from imgtrain.storage import stage, stream, urls


def is_prepared_url(url: str) -> bool:
    """Whether ``url`` is a prepared dataset (its manifest in the bucket)."""
    from imgtrain.data.tfrecord import MANIFEST

    return bool(stream.client(url).exists(urls.bare(urls.join(url, MANIFEST))))


def bench_bucket_data(url: str, work: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Stage ``url`` into ``work`` (timed), then read its objects from the bucket and from the
    staged copy, bytes only (the decode is the same either way): images/s of each."""
    log(f"bench: staging {url}")
    began = time.perf_counter()
    local = stage.stage_folder(url, lambda _m: None, into=work / "staged")
    stage_seconds = time.perf_counter() - began
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
    remote = [urls.join(url, p.relative_to(local).as_posix()) for p in files]

    def streamed() -> float:  # as the pipeline reads data.stage=never: stream.read_many's batches
        began = time.perf_counter()
        for i in range(0, len(remote), stream.PARALLEL_READS):
            stream.read_many(remote[i : i + stream.PARALLEL_READS])
        return len(remote) / (time.perf_counter() - began)

    def from_disk() -> float:
        began = time.perf_counter()
        for path in files:
            path.read_bytes()
        return len(files) / (time.perf_counter() - began)

    log("bench: reading the data from the bucket and from local disk")
    best = {"streamed": 0.0, "local": 0.0}
    for _ in range(2):
        best["streamed"] = max(best["streamed"], streamed())
        best["local"] = max(best["local"], from_disk())
    return local, {
        "url": url,
        "files": len(files),
        "megabytes": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "streamed": rate(best["streamed"], best["local"]),
        "staged_once": rate(len(files) / stage_seconds, best["local"], seconds=round(stage_seconds, 2)),
    }


def bench_uploads(upload: str, sizes: BenchSizes, examples, k: int, work: Path, log: Callable[[str], None]) -> dict:
    """imgtrain's loop with a checkpoint each epoch uploaded to ``upload`` (a fresh prefix under
    it, removed after) against the same loop kept local: the uploads' cost to the epochs (a
    ratio near 1) and their own time per epoch as a share of the epoch's."""
    from imgtrain.bench.training import _train_config, bench_imgtrain_loop
    from imgtrain.storage.mirror import RunMirror
    from imgtrain.storage.uploader import Uploader

    log(f"bench: training cnn with its run uploaded to {upload}, and kept local")
    cfg = _train_config("cnn", sizes.batch_size, 1 + sizes.epochs)
    prefix = urls.join(upload, f"imgtrain-bench-{uuid.uuid4().hex[:8]}")
    uploaded = local = 0.0
    seconds = epochs_seconds = 0.0
    try:
        for r in range(sizes.rounds):
            for which in ("uploaded", "local") if r % 2 == 0 else ("local", "uploaded"):
                if which == "local":
                    local = max(local, bench_imgtrain_loop(cfg, examples, k, work))
                    continue
                run = work / f"uploaded-{r}"
                mirror = RunMirror(urls.join(prefix, str(r)), run)
                uploader = Uploader(mirror, lambda _m: None)
                began = time.perf_counter()
                uploaded = max(uploaded, bench_imgtrain_loop(cfg, examples, k, work, on_save=uploader.soon, run=run))
                epochs_seconds += time.perf_counter() - began
                uploader.close(60.0)
                seconds += uploader.seconds
    finally:
        fs = urls.filesystem(prefix)
        if fs.exists(urls.bare(prefix)):
            fs.rm(urls.bare(prefix), recursive=True)
    return rate(uploaded, local, upload_share_of_epoch_time=round(seconds / max(epochs_seconds, 1e-9), 3))


# Images each timed pass over prepared shards reads (at most). A reader interleaves 8 shards, so
# a pass reads past its first 8 only after about 8 shards' worth (36,000 224-pixel images in
# 100 MB shards): a full pass is long enough to fetch while it is timed.
SHARD_PASS_IMAGES = {"full": 80_000, "quick": 256}
SHARD_PIPELINE = DataConfig(image_size=[224, 224], augment=PIPELINE_AUGMENT)  # the pipeline figures' own


def bench_bucket_shards(url: str, sizes: BenchSizes, quick: bool, work: Path, log: Callable[[str], None]) -> dict:
    """Prepared shards in a bucket read as training reads them: streamed through the cache (each
    pass from an empty one) against the same shards copied to local disk first, in interleaved
    rounds. Figures: the training pipeline's images/s after its first batch; the records alone
    (no decode) from opening the data, with the client CPU that streaming adds per image (the
    whole process's, fetch threads included, per byte fetched, times an image's bytes); the
    time from opening the data to its first batch, streamed and copied first."""
    most = SHARD_PASS_IMAGES["quick" if quick else "full"]
    log(f"bench: copying {url} to local disk (the baseline), timed to its first batch")
    local, copy_seconds = _shard_source(url, "always", work / "copied", sizes.batch_size)
    shards = local.records.manifest["splits"]["train"]["shards"]
    image_bytes = sum(s["bytes"] for s in shards) / max(1, sum(s["count"] for s in shards))
    best = {"streamed": 0.0, "local": 0.0}
    records = {"streamed": (0.0, 0.0, 0), "local": (0.0, 0.0, 0)}  # images/s, CPU s, images
    first, passes = float("inf"), []  # streamed records passes: CPU s, images, bytes fetched
    log(f"bench: reading {url} streamed (from an empty cache each pass) and from the local copy")
    for r in range(min(sizes.rounds, 2)):
        for which in ("streamed", "local") if r % 2 == 0 else ("local", "streamed"):
            cache = work / f"streamed-{r}"
            src = local
            if which == "streamed":
                src, seconds = _shard_source(url, "auto", cache, sizes.batch_size)
                first = min(first, seconds)
            best[which] = max(best[which], _pipeline_rate(src, sizes.batch_size, most))
            if which == "streamed":  # its fetches stopped, its copies gone: no pass pays for another's
                src.records.streamed.close()
                shutil.rmtree(cache, ignore_errors=True)
            began, cpu_began = time.perf_counter(), time.process_time()
            src = local if which == "local" else _shard_source(url, "auto", cache, sizes.batch_size, first=False)[0]
            n = _count_records(src, most)
            rate_now, cpu_seconds = n / (time.perf_counter() - began), time.process_time() - cpu_began
            if rate_now > records[which][0]:
                records[which] = (rate_now, cpu_seconds, n)
            if which == "streamed":
                passes.append((cpu_seconds, n, src.fetched_bytes()))
                src.records.streamed.close()
                shutil.rmtree(cache, ignore_errors=True)
    local_cpu = records["local"][1] / max(1, records["local"][2])  # per image
    transport = min(max(0.0, cpu - local_cpu * n) / max(1, fetched) * image_bytes for cpu, n, fetched in passes)
    return {
        "url": url,
        "shards": len(local.records.files("train")),
        "images_per_pass": most,
        "pipeline": rate(best["streamed"], best["local"]),
        "records": rate(
            records["streamed"][0],
            records["local"][0],
            transport_cpu_ms=round(transport * 1000, 4),
        ),
        "first_batch_seconds": {"streamed": round(first, 2), "copied_first": round(copy_seconds, 2)},
    }


def _shard_source(url: str, stage_mode: str, cache: Path, batch: int, first: bool = True) -> tuple[Any, float]:
    """The data source of ``url`` with its local copies under ``cache``, and the seconds from
    opening it to its first training batch (when ``first``)."""
    from imgtrain.bench.latency import variable
    from imgtrain.config import Config
    from imgtrain.data import source
    from imgtrain.data.pipeline import EpochPlan
    from imgtrain.storage.places import CACHE_ENV

    began = time.perf_counter()
    with variable(CACHE_ENV, str(cache)), contextlib.redirect_stdout(io.StringIO()):  # its "streaming" lines
        cfg = Config.load(None, [f"data.path={url}", f"data.stage={stage_mode}"])
        src = source.get(cfg, cache / "run", progress=False)
    if first:
        next(iter(src.train_dataset(SHARD_PIPELINE, EpochPlan(0, 0, batch))))
    return src, time.perf_counter() - began


def _pipeline_rate(src: Any, batch: int, most: int) -> float:
    """The training pipeline's images/s over its first ``most`` images, after its first batch."""
    from imgtrain.data.pipeline import EpochPlan

    return images_per_sec(
        lambda: src.train_dataset(SHARD_PIPELINE, EpochPlan(0, 0, batch)).take(max(2, most // batch)), 1
    )


def _count_records(src: Any, most: int) -> int:
    """Read the training shards' first ``most`` records, parsed (not decoded), in the training order."""
    from imgtrain.data.pipeline import Shard, _records

    n = 0
    for index, *_rest in _records(src.records.files("train"), Shard(), src.opener(Shard())).take(most).batch(256):
        n += int(index.shape[0])
    return n
