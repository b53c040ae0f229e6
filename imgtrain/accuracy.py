"""``python -m imgtrain.accuracy``: test accuracy and wall time, imgtrain against a plain Keras script.

Both sides train on the same files of the same split (imgtrain's, so the test
images are identical), for the same epochs and batch size, in this process,
one after the other. The plain Keras script is what the Keras tutorials teach:
``keras.utils.image_dataset_from_directory`` on per-split folders (symlinks to
the same files), the same CNN as imgtrain's default written out in Keras
layers, Keras' augmentation layers when the imgtrain row augments, Adam, and
``model.fit`` for the epochs given, and once more with the ``EarlyStopping(restore_best_weights=True)``
callback a careful script adds.

Datasets are the ones that ship offline: scikit-learn's digits and the
generated shapes (``imgtrain.datasets``). ``--quick`` runs each for one epoch
(tests use it; the figures then mean nothing).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from imgtrain.config import Config
from imgtrain.datasets import write_digits, write_shapes

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class Dataset:
    name: str
    write: Any  # (root) -> root
    epochs: int
    batch_size: int
    image_size: int = 32
    # imgtrain rows: (label, config file or None, extra overrides)
    rows: list[tuple[str, Optional[str], tuple[str, ...]]] = field(default_factory=list)


DIGITS_AUG = (
    "data.augment.rotation=10",
    "data.augment.zoom=0.1",
    "data.augment.translate=0.08",
    "data.augment.fill_mode=constant",
)
DATASETS = [
    Dataset(
        "digits (1,797 8x8 scans, 10 classes)",
        write_digits,
        epochs=20,
        batch_size=32,
        rows=[
            ("imgtrain defaults", None, ()),
            ("imgtrain defaults + augmentation", None, DIGITS_AUG),
            ("imgtrain configs/digits.yaml (make demo)", "digits.yaml", ()),
            ("imgtrain configs/from-scratch.yaml", "from-scratch.yaml", ("data.augment.horizontal_flip=false",)),
        ],
    ),
    Dataset(
        "shapes (3 x 40 generated 32x32)",
        lambda root: write_shapes(root),
        epochs=8,
        batch_size=16,
        rows=[
            ("imgtrain defaults", None, ()),
            ("imgtrain defaults, precise BN off", None, ("train.precise_bn.enabled=false",)),
            ("imgtrain configs/from-scratch.yaml", "from-scratch.yaml", ()),
        ],
    ),
]


def _config(
    ds: Dataset, data: Path, out: Path, config: Optional[str], extra: Sequence[str], epochs: int, seed: int
) -> Config:
    items = [
        f"data.path={data}",
        f"output={out}",
        f"data.image_size=[{ds.image_size},{ds.image_size}]",
        f"train.epochs={epochs}",
        f"train.batch_size={ds.batch_size}",
        f"seed={seed}",
        *extra,
    ]
    if config is None:
        return Config.load(None, items)
    # A preset keeps its own settings except what makes the comparison fair: data, size, epochs, batch.
    return Config.load(CONFIGS / config, items)


def run_imgtrain(cfg: Config) -> dict[str, Any]:
    from imgtrain.run import train_run

    start = time.perf_counter()
    summary = train_run(cfg, progress=False, log=lambda _m: None)
    return {"test_accuracy": summary["test_accuracy"], "seconds": time.perf_counter() - start}


def split_folders(cfg: Config, root: Path) -> tuple[list[str], dict[str, Path]]:
    """imgtrain's split of ``cfg.data.path`` as root/<split>/<class>/ symlinks."""
    from imgtrain.run import prepare_data

    prep = prepare_data(cfg, root / "_check", progress=False)
    folders = {}
    for split in ("train", "val", "test"):
        for e in prep.catalog.split(split):
            target = root / split / prep.class_names[e.label] / Path(e.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(e.path, target)
        folders[split] = root / split
    return prep.class_names, folders


def keras_cnn(num_classes: int, size: int, augment: Sequence[str]):
    """imgtrain's default CNN, written as a Keras tutorial would (Sequential, built-in layers)."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((size, size, 3)), layers.Rescaling(1.0 / 255)])
    if "rotation" in " ".join(augment):  # the same geometry as DIGITS_AUG, as Keras layers
        model.add(layers.RandomRotation(10 / 360, fill_mode="constant"))
        model.add(layers.RandomZoom(0.1, fill_mode="constant"))
        model.add(layers.RandomTranslation(0.08, 0.08, fill_mode="constant"))
    for filters in (32, 64, 128):
        for _ in range(2):
            model.add(layers.Conv2D(filters, 3, padding="same", use_bias=False))
            model.add(layers.BatchNormalization())
            model.add(layers.ReLU())
        model.add(layers.MaxPooling2D())
        model.add(layers.Dropout(0.1))
    model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dropout(0.3))
    model.add(layers.Dense(num_classes))
    return model


def run_keras(
    folders: dict[str, Path],
    class_names: list[str],
    ds: Dataset,
    epochs: int,
    seed: int,
    augment: Sequence[str] = (),
    early_stopping: bool = False,
) -> dict[str, Any]:
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()

    def load(split: str, shuffle: bool):
        return keras.utils.image_dataset_from_directory(
            folders[split],
            labels="inferred",
            label_mode="int",
            class_names=class_names,
            color_mode="rgb",
            batch_size=ds.batch_size,
            image_size=(ds.image_size, ds.image_size),
            shuffle=shuffle,
            seed=seed,
            verbose=False,
        )

    model = keras_cnn(len(class_names), ds.image_size, augment)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = (
        [keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)]
        if early_stopping
        else []
    )
    model.fit(load("train", True), validation_data=load("val", False), epochs=epochs, verbose=0, callbacks=callbacks)
    _, accuracy = model.evaluate(load("test", False), verbose=0)
    return {"test_accuracy": float(accuracy), "seconds": time.perf_counter() - start}


def measure(work: Path, quick: bool = False, seed: int = 1) -> list[dict[str, Any]]:
    results = []
    for i, ds in enumerate(DATASETS):
        data = ds.write(work / f"data{i}")
        epochs = 1 if quick else ds.epochs
        for label, config, extra in ds.rows:
            quick_fix = ("train.schedule.warmup_epochs=0",) if quick and config else ()  # presets warm up longer
            cfg = _config(ds, data, work / f"run{i}-{len(results)}", config, extra + quick_fix, epochs, seed)
            results.append({"dataset": ds.name, "setup": label, "epochs": epochs, **run_imgtrain(cfg)})
            print(_line(results[-1]), flush=True)
        class_names, folders = split_folders(
            _config(ds, data, work / "split", None, (), epochs, seed), work / f"split{i}"
        )
        variants = [("", (), False), (" + EarlyStopping(val_loss, 5, restore best)", (), True)]
        if ds.rows[1][2] == DIGITS_AUG:
            variants.append((" + augmentation layers", DIGITS_AUG, False))
        for suffix, aug, early in variants:
            results.append(
                {
                    "dataset": ds.name,
                    "setup": f"plain Keras script{suffix}",
                    "epochs": epochs,
                    **run_keras(folders, class_names, ds, epochs, seed, aug, early),
                }
            )
            print(_line(results[-1]), flush=True)
    return results


def _line(r: dict[str, Any]) -> str:
    return f"| {r['dataset']} | {r['setup']} | {r['epochs']} | {r['test_accuracy']:.4f} | {r['seconds']:.0f} s |"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgtrain.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per run (checks the harness, not accuracy)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    print("| data | setup | epochs | test accuracy | wall time |\n| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="imgtrain-accuracy-") as tmp:
        results = measure(Path(tmp), args.quick, args.seed)
    if args.json:
        from imgtrain import atomic

        atomic.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
