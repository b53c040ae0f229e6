"""Input-pipeline figures: imgtrain's augmented pipeline, from a folder and from TFRecords,
against the decode ceiling (the same JPEGs through ``tf.io.decode_jpeg`` and nothing else)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from imgtrain.bench.report import rate
from imgtrain.bench.synthetic import BenchSizes, examples_of
from imgtrain.config import AugmentConfig, DataConfig

PIPELINE_AUGMENT = AugmentConfig(
    random_resized_crop=True, crop_scale=[0.25, 1.0], horizontal_flip=True, brightness=0.1, contrast=0.1
)
# The same crop without flip and colour jitter: splits the gap to the ceiling
# into what resampling costs and what the per-pixel jitter costs.
CROP_ONLY = AugmentConfig(random_resized_crop=True, crop_scale=[0.25, 1.0])


def images_per_sec(dataset_fn: Callable[[], Any], warmup_batches: int = 3) -> float:
    """Iterate a dataset once after a warm-up pass over its first batches; images per second."""
    it = iter(dataset_fn())
    for _ in range(warmup_batches):
        next(it, None)
    n, start = 0, time.perf_counter()
    for batch in it:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        n += int(first.shape[0])
    seconds = time.perf_counter() - start
    return n / seconds if seconds > 0 else 0.0


def bench_pipeline(folder: Path, sizes: BenchSizes, work: Path) -> dict:
    import tensorflow as tf

    from imgtrain.data import pipeline
    from imgtrain.data.tfrecord import open_prepared, write_prepared

    cat, examples = examples_of(folder)
    paths = [e.path for e in examples]
    batch = sizes.batch_size
    cfg = DataConfig(image_size=[224, 224], augment=PIPELINE_AUGMENT)
    warm = max(1, min(3, len(paths) // batch // 3))

    def ceiling():
        ds = tf.data.Dataset.from_tensor_slices(paths)
        ds = ds.map(lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    out = {
        "images": len(paths),
        "image_size": [224, 224],
        "batch_size": batch,
        "augment": "random_resized_crop, horizontal_flip, brightness, contrast",
    }
    write_prepared(
        cat,
        work / "tfrecords",
        shard_mb=max(1.0, sum(os.path.getsize(p) for p in paths) / 2**20 / 8),
        extra={},
        progress=False,
    )
    prepared = open_prepared(str(work / "tfrecords"))
    files, counts = prepared.files("train"), prepared.worker_counts("train", 1)
    crop_cfg = DataConfig(image_size=[224, 224], augment=CROP_ONLY)
    runs = {
        "ceiling": ceiling,
        "folder": lambda: pipeline.train_dataset(examples, cfg, pipeline.EpochPlan(0, 1, batch)),
        "crop_only": lambda: pipeline.train_dataset(examples, crop_cfg, pipeline.EpochPlan(0, 1, batch)),
        "tfrecord": lambda: pipeline.tfrecord_train_dataset(files, counts, cfg, pipeline.EpochPlan(0, 1, batch)),
    }
    # Interleaved rounds, best of each: load from outside the process only ever slows a run down.
    best = {k: 0.0 for k in runs}
    for _ in range(sizes.rounds):
        for key, fn in runs.items():
            best[key] = max(best[key], images_per_sec(fn, warm))
    ceiling_rate = round(best["ceiling"], 1)
    out["ceiling"] = {"images_per_sec": ceiling_rate}
    out["folder"] = rate(best["folder"], ceiling_rate)
    out["tfrecord"] = rate(best["tfrecord"], ceiling_rate, shards=len(files))
    out["crop_only"] = rate(best["crop_only"], ceiling_rate, augment="random_resized_crop")
    cores = os.cpu_count() or 1
    out["per_core_images_per_sec"] = round(best["folder"] / cores, 1)
    return out
