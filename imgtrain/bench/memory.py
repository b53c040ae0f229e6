"""Peak memory of a training epoch over many images against one over a tenth as many, each in a
fresh child process (a process's peak only grows). ``python -m imgtrain.bench.memory FOLDER
COUNT BATCH`` is the child: it prints one JSON line."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from imgtrain.bench.synthetic import BenchSizes, examples_of
from imgtrain.config import AugmentConfig, Config, DataConfig


def memory_probe(folder: str, count: int, batch: int) -> dict:
    """Run in a child process: one training epoch over ``count`` images; report the peak RSS."""
    import tensorflow as tf

    from imgtrain.data import pipeline
    from imgtrain.models import build_model

    _, examples = examples_of(Path(folder), count)
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
                    "imgtrain.bench.memory",
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


def main_probe(argv: list[str]) -> int:
    folder, count, batch = argv[0], int(argv[1]), int(argv[2])
    print(json.dumps(memory_probe(folder, count, batch)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main_probe(sys.argv[1:]))
