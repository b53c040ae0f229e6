"""``imgtrain bench``: how fast imgtrain turns images into a model, against baselines.

Every figure is measured in this process after a warm-up and reported with a
baseline measured the same way, as images/s and as a ratio:

- pipeline: imgtrain's augmented training pipeline, from an image folder and
  from prepared TFRecords, against the decode ceiling (the same JPEG files
  through ``tf.io.decode_jpeg`` in a parallel ``tf.data`` map, nothing else);
- train: imgtrain's training loop against ``model.fit`` on the same model,
  in-memory data, batch size and optimizer; optionally with XLA and mixed
  precision, each against the same run without;
- memory: peak RSS of one training epoch over many images against one over
  a tenth as many (each in a fresh child process, since a process's peak
  only grows).

Tests run ``--quick``; they check that every figure is there, never a speed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from imgtrain.bench.buckets import bench_bucket_data, bench_bucket_shards, bench_uploads, is_prepared_url
from imgtrain.bench.latency import delayed
from imgtrain.bench.memory import collect_memory_probes, start_memory_probes
from imgtrain.bench.peers import bench_peers
from imgtrain.bench.pipeline import bench_pipeline
from imgtrain.bench.report import format_table
from imgtrain.bench.synthetic import FULL, QUICK, balanced, examples_of, write_jpegs
from imgtrain.bench.training import bench_training
from imgtrain.errors import UserError
from imgtrain.storage import urls

__all__ = ["format_table", "run_bench"]


def run_bench(
    data: Optional[str],
    quick: bool,
    models: Sequence[str],
    jit: bool,
    mixed: bool,
    log: Callable[[str], None] = print,
    upload: Optional[str] = None,
    latency_ms: float = 0.0,
    bucket_only: bool = False,
) -> dict:
    import keras
    import tensorflow as tf

    sizes = QUICK if quick else FULL
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="imgtrain-bench-") as tmp:
        work = Path(tmp)
        buckets: dict[str, Any] = {}
        folder224 = folder32 = Path(data) if data and not urls.is_url(data) else None
        if folder224 is not None and not folder224.is_dir():
            raise UserError(f"--data {data} must be an image folder (one subfolder per class)")
        if data and urls.is_url(data):
            with delayed(data, latency_ms):
                if is_prepared_url(data):
                    buckets["shards"] = bench_bucket_shards(data, sizes, quick, work, log)
                else:
                    folder224, buckets["data"] = bench_bucket_data(data, work, log)
                    folder32 = folder224
        if upload and bucket_only:
            with delayed(upload, latency_ms):
                buckets["uploads"] = _uploads(upload, sizes, _folder32(folder32, sizes, work, log), work, log)
        result: dict[str, Any] = {
            "quick": quick,
            "latency_ms": latency_ms,
            "machine": {
                "cpu_count": os.cpu_count(),
                "gpus": len(tf.config.list_physical_devices("GPU")),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
        }
        if not bucket_only:
            if folder224 is None:
                log(f"bench: writing {sizes.pipeline_images} JPEGs at 224x224 in {tmp}")
                folder224 = write_jpegs(work / "jpeg224", sizes.pipeline_images, 224)
            folder32 = _folder32(folder32, sizes, work, log)
            result.update(_local_figures(folder224, folder32, sizes, models, jit, mixed, work, log))
            if upload:
                with delayed(upload, latency_ms):
                    buckets["uploads"] = _uploads(upload, sizes, folder32, work, log)
        if buckets:
            result["bucket"] = buckets
    result["seconds"] = round(time.time() - started, 1)
    return result


def _folder32(given: Optional[Path], sizes: Any, work: Path, log: Callable[[str], None]) -> Path:
    if given is not None:
        return given
    n32 = max(max(sizes.train_images.values()), sizes.memory_large)
    log(f"bench: writing {n32} JPEGs at 32x32 in {work}")
    return write_jpegs(work / "jpeg32", n32, 32, seed=1)


def _uploads(upload: str, sizes: Any, folder32: Path, work: Path, log: Callable[[str], None]) -> dict:
    cat, found = examples_of(folder32)
    examples = balanced(found, sizes.train_images["cnn"], len(cat.class_names))
    return bench_uploads(upload, sizes, examples, len(cat.class_names), work, log)


def _local_figures(
    folder224: Path,
    folder32: Path,
    sizes: Any,
    models: Sequence[str],
    jit: bool,
    mixed: bool,
    work: Path,
    log: Callable[[str], None],
) -> dict:
    """The pipeline, training and memory figures, on image folders on this machine."""
    log("bench: input pipeline")
    out: dict[str, Any] = {"pipeline": bench_pipeline(folder224, sizes, work)}
    out["pipeline"].update(bench_peers(sizes, work, log))
    out["train"] = bench_training(folder32, sizes, models, jit, mixed, work, log)
    log("bench: peak memory of a training epoch")
    probes = start_memory_probes(folder32, sizes, work)
    try:
        out["memory"] = collect_memory_probes(probes, work)
    finally:
        for proc in probes.values():  # Ctrl-C leaves no probe behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out
