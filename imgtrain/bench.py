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

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from imgtrain.config import AugmentConfig, Config, DataConfig
from imgtrain.data.source import DataSource
from imgtrain.errors import UserError


@dataclass
class BenchSizes:
    pipeline_images: int  # 224x224 JPEGs for the input pipeline
    train_images: dict  # 32x32 JPEGs per model for the training loop
    memory_small: int
    memory_large: int
    epochs: int  # timed epochs after one warm-up epoch; the best one counts
    batch_size: int
    rounds: int  # interleaved repetitions of each measurement and its baseline


# On a shared 2-core machine one epoch can run 20% slow for reasons outside the
# process (model.fit and imgtrain's loop alike: ResNet-50 epochs come out near
# 100 or near 120 images/s, at random); the best of several timed epochs is the
# figure that repeats.
FULL = BenchSizes(
    pipeline_images=3000,
    train_images={"cnn": 4000, "resnet50": 1024},
    memory_small=2000,
    memory_large=20000,
    epochs=3,
    batch_size=32,
    rounds=3,
)
QUICK = BenchSizes(
    pipeline_images=96,
    train_images={"cnn": 48, "resnet50": 32},
    memory_small=32,
    memory_large=320,
    epochs=1,
    batch_size=16,
    rounds=1,
)

PIPELINE_AUGMENT = AugmentConfig(
    random_resized_crop=True, crop_scale=[0.25, 1.0], horizontal_flip=True, brightness=0.1, contrast=0.1
)
# The same crop without flip and colour jitter: splits the gap to the ceiling
# into what resampling costs and what the per-pixel jitter costs.
CROP_ONLY = AugmentConfig(random_resized_crop=True, crop_scale=[0.25, 1.0])


# -- data -------------------------------------------------------------------------------


def write_jpegs(root: Path, count: int, size: int, classes: int = 10, seed: int = 0) -> Path:
    """Synthetic but JPEG-realistic images: smooth colour fields plus noise and shapes, per class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        c = i % classes
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([np.sin((xx * (c + 1) + yy) * 3 + p) for p in phase], -1) * 80 + 128
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def _examples(folder: Path, limit: Optional[int] = None):
    from imgtrain.data.sources import discover
    from imgtrain.data.split import apply_split

    cfg = DataConfig(path=str(folder))
    cfg.split.train, cfg.split.val, cfg.split.test = 1.0, 0.0, 0.0
    cat = apply_split(discover(cfg), cfg.split, 0)
    ex = cat.examples[:limit] if limit else cat.examples
    return cat, ex


# -- timing -----------------------------------------------------------------------------


def images_per_sec(dataset_fn: Callable[[], Any], batch_size: int, warmup_batches: int = 3) -> float:
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

    cat, examples = _examples(folder)
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
            best[key] = max(best[key], images_per_sec(fn, batch, warm))
    out["ceiling"] = {"images_per_sec": round(best["ceiling"], 1)}
    folder_rate, tfr_rate = best["folder"], best["tfrecord"]
    ceiling_rate = out["ceiling"]["images_per_sec"]
    out["folder"] = {"images_per_sec": round(folder_rate, 1), "ratio": round(folder_rate / ceiling_rate, 3)}
    out["tfrecord"] = {
        "images_per_sec": round(tfr_rate, 1),
        "ratio": round(tfr_rate / ceiling_rate, 3),
        "shards": len(files),
    }
    out["crop_only"] = {
        "images_per_sec": round(best["crop_only"], 1),
        "ratio": round(best["crop_only"] / ceiling_rate, 3),
        "augment": "random_resized_crop",
    }
    cores = os.cpu_count() or 1
    out["per_core_images_per_sec"] = round(folder_rate / cores, 1)
    return out


# -- training ---------------------------------------------------------------------------


def _train_config(model: str, batch: int, epochs: int, precision: str = "float32", jit: bool = False) -> Config:
    cfg = Config.load(
        None,
        [
            f"model.name={model}",
            "data.image_size=[32,32]",
            f"train.batch_size={batch}",
            f"train.epochs={epochs}",
            "train.optimizer.name=adam",
            "train.optimizer.learning_rate=0.001",
            "model.resnet50.weights=none",
            "model.cnn.filters=[32,64,128]",
            f"train.precision={precision}",
            f"train.jit_compile={str(jit).lower()}",
            "train.early_stopping.enabled=false",
            # model.fit does neither; both happen between epochs (outside the timed seconds) but
            # would lengthen the bench: re-estimating BatchNorm statistics, keeping old checkpoints.
            "train.precise_bn.enabled=false",
            "train.checkpoint.keep=1",
        ],
    )
    return cfg


def _memory_dataset(examples, size: Sequence[int], batch: int):
    """Decoded once into memory: the training step, not the input pipeline, is what is timed."""
    import tensorflow as tf

    from imgtrain.data.images import load

    ds = tf.data.Dataset.from_tensor_slices(([e.path for e in examples], [e.label for e in examples]))
    ds = ds.map(lambda p, y: (load(p, size), y), num_parallel_calls=tf.data.AUTOTUNE).cache()
    list(ds)  # fill the cache now
    return ds


class MemorySource(DataSource):
    """Images decoded once into memory: the training step, not the input pipeline, is what the
    loop figures time. It has a training split only."""

    def __init__(self, examples, num_classes: int, size: Sequence[int], batch: int) -> None:
        self.cached = _memory_dataset(examples, size, batch)
        self.n = (len(examples) // batch) * batch  # whole batches, as model.fit gets them
        self.class_names = [str(i) for i in range(num_classes)]
        self.skipped, self.warnings = [], []

    def count(self, split: str) -> int:
        return self.n if split == "train" else 0

    def worker_counts(self, split: str, workers: int) -> list[int]:
        return [self.count(split)]

    def train_dataset(self, cfg, plan):
        import tensorflow as tf

        ds = self.cached.take(self.n).shuffle(self.n, seed=plan.epoch)
        ds = ds.map(lambda x, y: (x, tf.cast(y, tf.int32), 1.0, 1.0))
        return ds.batch(plan.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def bench_imgtrain_loop(cfg: Config, examples, num_classes: int, work: Path) -> float:
    """Images/s of imgtrain's training loop, built by the run's own ``build_training``, over the
    timed epochs (the first epoch is the warm-up)."""
    import keras

    from imgtrain.run import build_training
    from imgtrain.train.distribution import SingleDevice

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    source = MemorySource(examples, num_classes, cfg.data.image_size, cfg.train.batch_size)
    run = work / f"loop-{cfg.model.name}-{cfg.train.precision}-{cfg.train.jit_compile}-{time.monotonic_ns()}"
    training = build_training(cfg, SingleDevice(), source, run, progress=False, say=lambda _m: None)
    result = training.loop.fit()
    keras.mixed_precision.set_global_policy("float32")
    timed = result.history[1:] or result.history
    return float(max(float(r["images_per_sec"]) for r in timed))


def bench_keras_fit(cfg: Config, examples, num_classes: int) -> float:
    """Images/s of plain ``model.fit`` on the same model, data, batch size and optimizer."""
    import keras
    import tensorflow as tf

    from imgtrain.models import build_model
    from imgtrain.train.optim import build_optimizer

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    cached = _memory_dataset(examples, cfg.data.image_size, cfg.train.batch_size)
    batch = cfg.train.batch_size
    model = build_model(cfg.model, num_classes, cfg.data.image_size).model
    model.compile(
        optimizer=build_optimizer(cfg.train.optimizer, cfg.train.optimizer.learning_rate, cfg.train.precision),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=cfg.train.jit_compile,
    )
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    def epoch_ds():
        return cached.shuffle(len(examples), seed=0).batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    model.fit(epoch_ds(), epochs=cfg.train.epochs, verbose=0, shuffle=False, callbacks=[Timer()])
    keras.mixed_precision.set_global_policy("float32")
    n = (len(examples) // batch) * batch
    timed = times[1:] or times
    return float(max(n / t for t in timed))


def _balanced(examples, count: int, classes: int):
    """The first ``count`` examples taken round-robin over classes."""
    by_class: dict[int, list] = {}
    for e in examples:
        by_class.setdefault(e.label, []).append(e)
    out = []
    for i in range(count):
        bucket = by_class.get(i % classes, [])
        if i // classes < len(bucket):
            out.append(bucket[i // classes])
    return out


def bench_training(
    folder: Path,
    sizes: BenchSizes,
    models: Sequence[str],
    jit: bool,
    mixed: bool,
    work: Path,
    log: Callable[[str], None],
) -> dict:
    import tensorflow as tf

    cat, all_examples = _examples(folder)
    k = len(cat.class_names)
    out: dict[str, Any] = {}
    mixed_policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    for name in models:
        examples = _balanced(all_examples, sizes.train_images[name], k)
        cfg = _train_config(name, sizes.batch_size, 1 + sizes.epochs)
        rounds = sizes.rounds
        log(f"bench: training {name} (imgtrain loop and model.fit, {rounds} interleaved round(s))")
        ours = fit = 0.0
        for r in range(rounds):
            # Whichever goes first in a process runs on a colder machine; alternate, keep the best.
            for which in ("loop", "fit") if r % 2 == 0 else ("fit", "loop"):
                if which == "loop":
                    ours = max(ours, bench_imgtrain_loop(cfg, examples, k, work))
                else:
                    fit = max(fit, bench_keras_fit(cfg, examples, k))
        entry: dict[str, Any] = {
            "images": len(examples),
            "image_size": [32, 32],
            "batch_size": sizes.batch_size,
            "imgtrain_images_per_sec": round(ours, 1),
            "fit_images_per_sec": round(fit, 1),
            "ratio": round(ours / fit, 3),
        }
        if jit:
            log(f"bench: training {name} with XLA")
            with_jit = bench_imgtrain_loop(
                _train_config(name, sizes.batch_size, 1 + sizes.epochs, jit=True), examples, k, work
            )
            entry["jit_compile"] = {
                "images_per_sec": round(with_jit, 1),
                "baseline_images_per_sec": round(ours, 1),
                "ratio": round(with_jit / ours, 3),
            }
        if mixed:
            log(f"bench: training {name} with {mixed_policy}")
            with_mp = bench_imgtrain_loop(
                _train_config(name, sizes.batch_size, 1 + sizes.epochs, precision=mixed_policy), examples, k, work
            )
            entry["mixed_precision"] = {
                "policy": mixed_policy,
                "images_per_sec": round(with_mp, 1),
                "baseline_images_per_sec": round(ours, 1),
                "ratio": round(with_mp / ours, 3),
            }
        out[name] = entry
    return out


# -- memory -----------------------------------------------------------------------------


def memory_probe(folder: str, count: int, batch: int) -> dict:
    """Run in a child process: one training epoch over ``count`` images; report the peak RSS."""
    import tensorflow as tf

    from imgtrain.data import pipeline
    from imgtrain.models import build_model

    _, examples = _examples(Path(folder), count)
    cfg = DataConfig(image_size=[32, 32], augment=AugmentConfig(horizontal_flip=True, rotation=10))
    import keras

    model = build_model(Config().model, 10, [32, 32]).model
    opt = keras.optimizers.Adam()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, model(x, training=True), from_logits=True)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    start = time.perf_counter()
    n = 0
    for x, y, _, _ in pipeline.train_dataset(examples, cfg, pipeline.EpochPlan(0, 0, batch)):
        step(x, y)
        n += int(x.shape[0])
    return {"images": n, "peak_rss_bytes": peak_rss_bytes(), "seconds": round(time.perf_counter() - start, 2)}


def peak_rss_bytes() -> int:
    """This process's own peak RSS.

    Linux's ``getrusage(...).ru_maxrss`` keeps the high-water mark from before
    ``exec``, i.e. the parent's RSS at fork time, so a probe started by a big
    parent would report the parent's size. ``VmHWM`` belongs to the current
    program only; ``ru_maxrss`` is the fallback where /proc is absent.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def start_memory_probes(folder: Path, sizes: BenchSizes, work: Path) -> dict[str, subprocess.Popen]:
    """Both epochs at once, each in its own fresh process: peaks do not mix, and it takes half the time.

    Their stderr goes to files, not pipes: nobody reads a probe until it ends, and a full pipe
    would stall it.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = {}
    for label, count in (("small", sizes.memory_small), ("large", sizes.memory_large)):
        with open(work / f"memory-{label}.err", "w") as err:
            procs[label] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "imgtrain.bench",
                    "--memory-probe",
                    str(folder),
                    str(count),
                    str(sizes.batch_size),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
    return procs


def collect_memory_probes(procs: dict[str, subprocess.Popen], work: Path) -> dict:
    out: dict[str, Any] = {}
    for label, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            stderr = (work / f"memory-{label}.err").read_text(errors="replace")
            raise RuntimeError(f"memory probe failed: {stderr[-2000:]}")
        out[label] = json.loads(stdout.strip().splitlines()[-1])
    out["ratio"] = round(out["large"]["peak_rss_bytes"] / out["small"]["peak_rss_bytes"], 3)
    return out


# -- the command --------------------------------------------------------------------------


def run_bench(
    data: Optional[str], quick: bool, models: Sequence[str], jit: bool, mixed: bool, log: Callable[[str], None] = print
) -> dict:
    import keras
    import tensorflow as tf

    sizes = QUICK if quick else FULL
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="imgtrain-bench-") as tmp:
        work = Path(tmp)
        if data:
            folder224 = folder32 = Path(data)
            if not folder224.is_dir():
                raise UserError(f"--data {data} must be an image folder (one subfolder per class)")
        else:
            n32 = max(max(sizes.train_images.values()), sizes.memory_large)
            log(f"bench: writing {sizes.pipeline_images} JPEGs at 224x224 and {n32} at 32x32 in {tmp}")
            folder224 = write_jpegs(work / "jpeg224", sizes.pipeline_images, 224)
            folder32 = write_jpegs(work / "jpeg32", n32, 32, seed=1)
        log("bench: input pipeline")
        result: dict[str, Any] = {
            "quick": quick,
            "machine": {
                "cpu_count": os.cpu_count(),
                "gpus": len(tf.config.list_physical_devices("GPU")),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
            "pipeline": bench_pipeline(folder224, sizes, work),
        }
        result["train"] = bench_training(folder32, sizes, models, jit, mixed, work, log)
        log("bench: peak memory of a training epoch")
        probes = start_memory_probes(folder32, sizes, work)
        try:
            result["memory"] = collect_memory_probes(probes, work)
        finally:
            for proc in probes.values():  # Ctrl-C leaves no probe behind
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    result["seconds"] = round(time.time() - started, 1)
    return result


def format_table(r: dict) -> str:
    rows = [("figure", "images/s", "baseline", "baseline images/s", "ratio")]
    p = r["pipeline"]
    for key in ("folder", "tfrecord", "crop_only"):
        rows.append(
            (
                f"pipeline.{key}",
                f"{p[key]['images_per_sec']:.0f}",
                "decode ceiling",
                f"{p['ceiling']['images_per_sec']:.0f}",
                f"{p[key]['ratio']:.2f}",
            )
        )
    for name, t in r["train"].items():
        rows.append(
            (
                f"train.{name}",
                f"{t['imgtrain_images_per_sec']:.0f}",
                "model.fit",
                f"{t['fit_images_per_sec']:.0f}",
                f"{t['ratio']:.2f}",
            )
        )
        for opt in ("jit_compile", "mixed_precision"):
            if opt in t:
                rows.append(
                    (
                        f"train.{name}.{opt}",
                        f"{t[opt]['images_per_sec']:.0f}",
                        "same, without",
                        f"{t[opt]['baseline_images_per_sec']:.0f}",
                        f"{t[opt]['ratio']:.2f}",
                    )
                )
    m = r["memory"]
    rows.append(
        (
            f"memory ({m['large']['images']} vs {m['small']['images']} images)",
            f"{m['large']['peak_rss_bytes'] / 2**20:.0f} MiB",
            "small epoch",
            f"{m['small']['peak_rss_bytes'] / 2**20:.0f} MiB",
            f"{m['ratio']:.2f}",
        )
    )
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main_probe(argv: list[str]) -> int:
    folder, count, batch = argv[0], int(argv[1]), int(argv[2])
    print(json.dumps(memory_probe(folder, count, batch)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-probe":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        sys.exit(main_probe(sys.argv[2:]))
    print("use 'imgtrain bench'", file=sys.stderr)
    sys.exit(2)
