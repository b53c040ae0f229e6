"""Bucket figures (``bench --data s3://...``, ``--upload URL``): the data read from the bucket
each epoch (streamed) and copied once (staged) against the same files on local disk, and a
training run uploaded as it goes against the same run kept local, interleaved rounds in one
process as every other figure."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable

from imgtrain.bench.report import rate
from imgtrain.bench.synthetic import BenchSizes
from imgtrain.storage import stage, stream, urls


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
