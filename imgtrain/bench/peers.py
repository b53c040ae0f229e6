"""imgtrain's pipeline against what people otherwise write, on the same JPEGs, output size,
batch and augmentations (flip, rotation 20 degrees, shift 0.2, zoom 0.2):

- Keras' ``ImageDataGenerator.flow_from_directory``, still in most tutorials (Keras 3 keeps
  it only under ``keras.src.legacy``; it resamples with SciPy on one Python thread);
- ``keras.utils.image_dataset_from_directory`` with Keras' ``RandomFlip``,
  ``RandomRotation``, ``RandomTranslation`` and ``RandomZoom`` layers in a parallel,
  prefetched ``map`` (today's Keras tutorial);
- Albumentations (``Resize``, ``HorizontalFlip``, ``Affine``) called through
  ``tf.numpy_function`` in a parallel, prefetched ``map``: what a user who cares about speed
  writes, OpenCV underneath as in imgtrain (skipped when Albumentations is not installed);
- imgtrain's training pipeline, whose ratio to each is reported; with
  ``data.augment.on_device`` (``on_device``: the step's augmentation on the default device,
  the GPU when there is one), against the decode ceiling; and against the decode
  ceiling of the same files (``geometric``), and, with full augmentation, on photo-size
  sources (500x375, near ImageNet's average) against their decode ceiling (``photo``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Optional

from imgtrain.bench.pipeline import PIPELINE_AUGMENT, images_per_sec
from imgtrain.bench.report import rate
from imgtrain.bench.synthetic import BenchSizes, examples_of, write_jpegs
from imgtrain.config import AugmentConfig, DataConfig

OUT = (224, 224)
GEOMETRIC = AugmentConfig(horizontal_flip=True, rotation=20.0, translate=0.2, zoom=0.2)
PEER_SOURCE = (240, 320)
PHOTO_SOURCE = (375, 500)


def tf_gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def decode_ceiling(paths: list[str], batch: int) -> Callable[[], Any]:
    import tensorflow as tf

    def make():
        ds = tf.data.Dataset.from_tensor_slices(paths)
        ds = ds.map(lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    return make


def keras_layers(folder: Path, batch: int) -> Callable[[], Any]:
    import keras
    import tensorflow as tf

    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(20.0 / 360.0),
            keras.layers.RandomTranslation(0.2, 0.2),
            keras.layers.RandomZoom(0.2),
        ]
    )

    def make():
        ds = keras.utils.image_dataset_from_directory(
            str(folder), image_size=OUT, batch_size=batch, shuffle=True, seed=0, verbose=False
        )
        return ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )

    return make


def image_data_generator(folder: Path, batch: int) -> Callable[[], Any]:
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(
        horizontal_flip=True, rotation_range=20, width_shift_range=0.2, height_shift_range=0.2, zoom_range=0.2
    )

    def make():
        with contextlib.redirect_stdout(io.StringIO()):  # "Found N images belonging to K classes."
            flow = generator.flow_from_directory(str(folder), target_size=OUT, batch_size=batch, seed=0)
        return (flow[i] for i in range(len(flow)))  # one epoch

    return make


def albumentations_pipeline(folder: Path, batch: int) -> Optional[Callable[[], Any]]:
    """uint8 batches, as imgtrain's OpenCV path yields them; None when Albumentations is not
    installed."""
    try:
        import albumentations as A
    except ImportError:
        return None
    import cv2
    import tensorflow as tf

    transform = A.Compose(
        [
            A.Resize(*OUT),
            A.HorizontalFlip(p=0.5),
            A.Affine(
                rotate=(-20, 20), translate_percent=(-0.2, 0.2), scale=(0.8, 1.2), border_mode=cv2.BORDER_REFLECT, p=1.0
            ),
        ],
        seed=0,
    )
    _, examples = examples_of(folder)
    paths, labels = [e.path for e in examples], [e.label for e in examples]

    def load(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        out = tf.numpy_function(lambda x: transform(image=x)["image"], [image], tf.uint8)
        return tf.ensure_shape(out, (*OUT, 3)), label

    def make():
        ds = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths), seed=0)
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)

    return make


def imgtrain_pipeline(folder: Path, augment: AugmentConfig, batch: int) -> Callable[[], Any]:
    from imgtrain.data import pipeline

    _, examples = examples_of(folder)
    cfg = DataConfig(image_size=list(OUT), augment=augment)
    return lambda: pipeline.train_dataset(examples, cfg, pipeline.EpochPlan(0, 1, batch))


def on_device_pipeline(folder: Path, batch: int) -> Callable[[], Any]:
    """imgtrain with ``data.augment.on_device``: tf.data decodes and resizes, then each batch is
    augmented as the training step does it (``train.inputs.model_input``), on TensorFlow's
    default device: the GPU when there is one."""
    import dataclasses

    import tensorflow as tf

    from imgtrain.train.inputs import model_input

    cfg = dataclasses.replace(GEOMETRIC, on_device=True)
    make = imgtrain_pipeline(folder, cfg, batch)
    step = tf.function(lambda x: model_input(x, cfg))
    return lambda: ((step(x), *rest) for x, *rest in make())


def bench_peers(sizes: BenchSizes, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    n, batch = sizes.peer_images, sizes.batch_size
    log(f"bench: {n} JPEGs at {PEER_SOURCE[1]}x{PEER_SOURCE[0]} and {n} at {PHOTO_SOURCE[1]}x{PHOTO_SOURCE[0]}")
    peers = write_jpegs(work / "peer", n, PEER_SOURCE, seed=2)
    photos = write_jpegs(work / "photo", n, PHOTO_SOURCE, seed=3)
    peer_paths = [e.path for e in examples_of(peers)[1]]
    photo_paths = [e.path for e in examples_of(photos)[1]]
    runs = {
        "ceiling": decode_ceiling(peer_paths, batch),
        "imgtrain": imgtrain_pipeline(peers, GEOMETRIC, batch),
        "on_device": on_device_pipeline(peers, batch),
        "keras_layers": keras_layers(peers, batch),
        "image_data_generator": image_data_generator(peers, batch),
        "photo_ceiling": decode_ceiling(photo_paths, batch),
        "photo": imgtrain_pipeline(photos, PIPELINE_AUGMENT, batch),
    }
    albumentations = albumentations_pipeline(peers, batch)
    if albumentations is None:
        log("bench: albumentations is not installed (pip install 'imgtrain[bench]'); its peer is skipped")
    else:
        runs["albumentations"] = albumentations
    warm = max(1, min(3, n // batch // 3))
    best = {k: 0.0 for k in runs}
    for _ in range(sizes.rounds):  # interleaved, best of each, as the other figures
        for key, make in runs.items():
            log(f"bench: pipeline {key}")
            best[key] = max(best[key], images_per_sec(make, warm))
    common = {"images": n, "source": list(PEER_SOURCE), "image_size": list(OUT), "batch_size": batch}
    work_done = "horizontal_flip, rotation 20, translate 0.2, zoom 0.2"
    out = {
        "geometric": rate(best["imgtrain"], best["ceiling"], augment=work_done, **common),
        "vs_keras_layers": rate(best["imgtrain"], best["keras_layers"], augment=work_done, **common),
        "vs_image_data_generator": rate(best["imgtrain"], best["image_data_generator"], augment=work_done, **common),
        "photo": rate(
            best["photo"],
            best["photo_ceiling"],
            augment="random_resized_crop, horizontal_flip, brightness, contrast",
            **{**common, "source": list(PHOTO_SOURCE)},
        ),
    }
    device = "GPU" if tf_gpus() else "CPU"
    out["on_device"] = rate(best["on_device"], best["ceiling"], augment=work_done, device=device, **common)
    if "albumentations" in best:
        out["vs_albumentations"] = rate(best["imgtrain"], best["albumentations"], augment=work_done, **common)
    return out
