"""Training-loop figures: imgtrain's loop, built by the run's own ``build_training``, against
``model.fit`` on the same model, in-memory data, batch size and optimizer; optionally XLA and
mixed precision, each against the same run without."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from imgtrain.bench.report import rate
from imgtrain.bench.synthetic import BenchSizes, balanced, examples_of
from imgtrain.config import Config
from imgtrain.data.source import DataSource

STEPS_PER_EXECUTION = 8  # the several-steps-per-call figure's N


def _train_config(
    model: str, batch: int, epochs: int, precision: str = "float32", jit: bool = False, steps_per_execution: int = 1
) -> Config:
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
            f"train.steps_per_execution={steps_per_execution}",
            "train.early_stopping.enabled=false",
            # model.fit does neither; both happen between epochs (outside the timed seconds) but
            # would lengthen the bench: re-estimating BatchNorm statistics, keeping old checkpoints.
            "train.precise_bn.enabled=false",
            "train.checkpoint.keep=1",
        ],
    )
    return cfg


def _memory_dataset(examples, size: Sequence[int]):
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
        self.cached = _memory_dataset(examples, size)
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


def bench_imgtrain_loop(
    cfg: Config,
    examples,
    num_classes: int,
    work: Path,
    listeners: Sequence[Any] = (),
    on_save: Optional[Callable[[], None]] = None,
    run: Optional[Path] = None,
) -> float:
    """Images/s of imgtrain's training loop, built by the run's own ``build_training``, over the
    timed epochs (the first epoch is the warm-up); ``listeners`` hear of each epoch, ``on_save``
    of each checkpoint (written in ``run``)."""
    import keras

    from imgtrain.train.assembly import build_training
    from imgtrain.train.distribution import SingleDevice

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    source = MemorySource(examples, num_classes, cfg.data.image_size, cfg.train.batch_size)
    run = run or work / f"loop-{cfg.model.name}-{cfg.train.precision}-{cfg.train.jit_compile}-{time.monotonic_ns()}"
    training = build_training(cfg, SingleDevice(), source, run, False, False, lambda _m: None, list(listeners), on_save)
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
    cached = _memory_dataset(examples, cfg.data.image_size)
    batch = cfg.train.batch_size
    model = build_model(cfg.model, num_classes, cfg.data.image_size).model
    model.compile(
        optimizer=build_optimizer(cfg.train.optimizer, cfg.train.optimizer.learning_rate, cfg.train.precision),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=cfg.train.jit_compile,
        steps_per_execution=cfg.train.steps_per_execution,
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

    cat, all_examples = examples_of(folder)
    k = len(cat.class_names)
    out: dict[str, Any] = {}
    mixed_policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    for name in models:
        examples = balanced(all_examples, sizes.train_images[name], k)
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
            "ratio": rate(ours, fit)["ratio"],
        }
        if jit:
            log(f"bench: training {name} with XLA")
            with_jit = bench_imgtrain_loop(
                _train_config(name, sizes.batch_size, 1 + sizes.epochs, jit=True), examples, k, work
            )
            entry["jit_compile"] = rate(with_jit, ours)
        if mixed:
            log(f"bench: training {name} with {mixed_policy}")
            with_mp = bench_imgtrain_loop(
                _train_config(name, sizes.batch_size, 1 + sizes.epochs, precision=mixed_policy), examples, k, work
            )
            entry["mixed_precision"] = rate(with_mp, ours, policy=mixed_policy)
        if name == "cnn":
            entry_spe = _bench_steps_per_execution(sizes, examples, k, work, fit, log)
            out["cnn_steps_per_execution"] = entry_spe
            out["cnn_tracked_to_a_silent_server"] = _bench_tracking(sizes, examples, k, work, log)
        out[name] = entry
    return out


def _bench_steps_per_execution(sizes: BenchSizes, examples, k: int, work: Path, fit_one: float, log) -> dict:
    """imgtrain's loop with N steps per call against ``fit`` with N = 1 (the ratio) and with the
    same N (``ratio_same_n``), interleaved as the other figures."""
    n = STEPS_PER_EXECUTION
    log(f"bench: training cnn with steps_per_execution={n} (imgtrain loop and model.fit)")
    cfg = _train_config("cnn", sizes.batch_size, 1 + sizes.epochs, steps_per_execution=n)
    ours = fit_n = 0.0
    for r in range(sizes.rounds):
        for which in ("loop", "fit") if r % 2 == 0 else ("fit", "loop"):
            if which == "loop":
                ours = max(ours, bench_imgtrain_loop(cfg, examples, k, work))
            else:
                fit_n = max(fit_n, bench_keras_fit(cfg, examples, k))
    return rate(
        ours,
        fit_one,
        steps_per_execution=n,
        fit_same_n_images_per_sec=round(fit_n, 1),
        ratio_same_n=rate(ours, fit_n)["ratio"],
    )


def _bench_tracking(sizes: BenchSizes, examples, k: int, work: Path, log) -> dict:
    """imgtrain's loop with MLflow tracking to a server that accepts connections and never
    answers (a dead proxy), against the same loop untracked, interleaved as the other
    figures: the tracker's calls must cost the epochs nothing (a ratio near 1)."""
    import importlib.util
    import socket

    if importlib.util.find_spec("mlflow") is None:
        return {"skipped": "MLflow is not installed (imgtrain[mlflow])"}
    from imgtrain.config import TrackingConfig
    from imgtrain.tracking import RunFacts, open_tracker

    log("bench: training cnn with MLflow tracking to a server that never answers, and without")
    cfg = _train_config("cnn", sizes.batch_size, 1 + sizes.epochs)
    tracked = untracked = 0.0
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel accepts the connections; nothing ever answers them
        tracking = TrackingConfig(mlflow=True, uri=f"http://127.0.0.1:{silent.getsockname()[1]}", experiment="bench")
        for r in range(sizes.rounds):
            for which in ("tracked", "untracked") if r % 2 == 0 else ("untracked", "tracked"):
                if which == "untracked":
                    untracked = max(untracked, bench_imgtrain_loop(cfg, examples, k, work))
                    continue
                tracker = open_tracker(tracking, work / f"tracked-{r}", True, lambda _m: None)
                try:
                    tracker.start(RunFacts({"model.name": "cnn"}, {}, [32, 32]))
                    tracked = max(tracked, bench_imgtrain_loop(cfg, examples, k, work, [tracker]))
                finally:
                    tracker.restore()
    return rate(tracked, untracked, server="accepts connections, never answers")
