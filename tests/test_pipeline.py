import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_folder

from imgtrain import seeds
from imgtrain.config import AugmentConfig, DataConfig, SplitConfig
from imgtrain.data import augment as aug
from imgtrain.data.pipeline import EpochPlan, Shard, eval_dataset, steps_per_epoch, train_dataset
from imgtrain.data.sources import discover
from imgtrain.data.split import apply_split

FULL_AUG = AugmentConfig(
    random_resized_crop=True,
    crop_scale=[0.5, 1.0],
    horizontal_flip=True,
    vertical_flip=True,
    rotation=20,
    zoom=0.2,
    translate=0.1,
    brightness=0.1,
    contrast=0.2,
)


def _examples(folder: Path):
    cat = apply_split(discover(DataConfig(path=str(folder))), SplitConfig(1.0, 0.0, 0.0), 0)
    return cat.examples


def _collect(ds):
    xs, ys, ws, rs = [], [], [], []
    for x, y, w, r in ds:
        xs.append(x.numpy()), ys.append(y.numpy()), ws.append(w.numpy()), rs.append(r.numpy())
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(rs)


@pytest.mark.parametrize("cache", [False, True])
def test_same_seed_same_batches(image_folder: Path, cache: bool):
    ex = _examples(image_folder)
    cfg = DataConfig(image_size=[16, 16], augment=FULL_AUG, cache=cache)
    a = _collect(train_dataset(ex, cfg, EpochPlan(seed=3, epoch=1, batch_size=5)))
    b = _collect(train_dataset(ex, cfg, EpochPlan(seed=3, epoch=1, batch_size=5)))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = _collect(train_dataset(ex, cfg, EpochPlan(seed=3, epoch=2, batch_size=5)))
    assert not np.array_equal(a[1], c[1]) or not np.array_equal(a[0], c[0])
    d = _collect(train_dataset(ex, cfg, EpochPlan(seed=4, epoch=1, batch_size=5)))
    assert not np.array_equal(a[0], d[0])


def test_each_epoch_sees_every_example_once(image_folder: Path):
    ex = _examples(image_folder)
    cfg = DataConfig(image_size=[16, 16])
    labels = sorted(e.label for e in ex)
    for epoch in range(3):
        _, ys, _, real = _collect(train_dataset(ex, cfg, EpochPlan(seed=0, epoch=epoch, batch_size=7)))
        assert (real == 1).all()
        assert sorted(ys.tolist()) == labels


def test_skip_resumes_mid_epoch_exactly(image_folder: Path):
    ex = _examples(image_folder)
    cfg = DataConfig(image_size=[16, 16], augment=FULL_AUG)
    full = list(train_dataset(ex, cfg, EpochPlan(seed=1, epoch=0, batch_size=4)))
    rest = list(train_dataset(ex, cfg, EpochPlan(seed=1, epoch=0, batch_size=4, skip_examples=12)))
    assert len(rest) == len(full) - 3
    for (x1, y1, _, _), (x2, y2, _, _) in zip(full[3:], rest):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())


@pytest.mark.parametrize("workers, per_class, batch", [(2, 12, 4), (3, 11, 4), (4, 1, 2)])
def test_shards_see_every_example_exactly_once(tmp_path: Path, workers, per_class, batch):
    folder = write_folder(tmp_path / "imgs", per_class=per_class)
    ex = _examples(folder)
    cfg = DataConfig(image_size=[16, 16])  # the files' own size: pixels come through unchanged
    from PIL import Image

    identity = {np.asarray(Image.open(e.path).convert("RGB"), np.float32).tobytes() for e in ex}
    seen, steps = [], set()
    for i in range(workers):
        xs, _, _, real = _collect(
            train_dataset(ex, cfg, EpochPlan(seed=0, epoch=1, batch_size=batch, shard=Shard(workers, i)))
        )
        steps.add(
            len(list(train_dataset(ex, cfg, EpochPlan(seed=0, epoch=1, batch_size=batch, shard=Shard(workers, i)))))
        )
        seen += [x.tobytes() for x, r in zip(xs, real) if r == 1]
    assert len(steps) == 1  # every worker takes the same number of steps (collectives never wait forever)
    assert steps == {steps_per_epoch(len(ex), batch, Shard(workers, 1))}
    assert len(seen) == len(ex) and set(seen) == identity


def test_eval_shards_pad_and_cover(image_folder: Path):
    ex = _examples(image_folder)[:7]
    cfg = DataConfig(image_size=[16, 16])
    counts, batches = 0, set()
    for i in range(2):
        _, _, _, real = _collect(eval_dataset(ex, cfg, batch_size=2, shard=Shard(2, i)))
        counts += int(real.sum())
        batches.add(len(list(eval_dataset(ex, cfg, batch_size=2, shard=Shard(2, i)))))
    assert counts == 7 and len(batches) == 1


def test_eval_dataset_is_plain_resize_in_order(image_folder: Path):
    ex = _examples(image_folder)
    cfg = DataConfig(image_size=[16, 16], augment=FULL_AUG, eval_crop_fraction=None)
    xs, ys, ws, real = _collect(eval_dataset(ex, cfg, batch_size=8))
    assert (real == 1).all()
    assert ys.tolist() == [e.label for e in ex]
    from PIL import Image

    first = np.asarray(Image.open(ex[0].path).convert("RGB"), np.float32)
    np.testing.assert_allclose(xs[0], first, atol=1e-3)  # same size: resize is the identity
    assert (ws == 1.0).all()
    # With random resized crops in training, evaluation takes the centre crop by default (0.875).
    cropped, *_ = _collect(eval_dataset(ex, DataConfig(image_size=[16, 16], augment=FULL_AUG), batch_size=8))
    want = tf.image.resize(first[1:15, 1:15], [16, 16]).numpy()
    np.testing.assert_allclose(cropped[0], want, atol=1e-3)
    assert not np.allclose(cropped[0], first)


def test_augmentations_change_images_and_stay_in_range():
    img = tf.random.stateless_uniform([24, 24, 3], [1, 2], 0, 255)
    seed = seeds.example(0, tf.constant(0), tf.constant(5))
    for field in ("horizontal_flip", "vertical_flip", "rotation", "zoom", "translate", "brightness", "contrast"):
        cfg = AugmentConfig(**{field: True if "flip" in field else (15.0 if field == "rotation" else 0.3)})
        outs = [aug.augment(img, seeds.example(0, tf.constant(0), tf.constant(i)), cfg).numpy() for i in range(6)]
        assert any(not np.allclose(o, img.numpy()) for o in outs), field
        assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
    same = aug.augment(img, seed, FULL_AUG).numpy()
    again = aug.augment(img, seed, FULL_AUG).numpy()
    np.testing.assert_array_equal(same, again)
    crop = aug.random_resized_crop(tf.cast(img, tf.uint8), seed, FULL_AUG, [10, 10])
    assert crop.shape == (10, 10, 3)


def test_pipeline_streams_from_disk(tmp_path: Path):
    # The dataset graph holds paths, not pixels: deleting the files breaks iteration.
    folder = write_folder(tmp_path / "imgs", per_class=2)
    ds = train_dataset(_examples(folder), DataConfig(image_size=[8, 8]), EpochPlan(seed=0, epoch=0, batch_size=2))
    for p in folder.rglob("*.png"):
        p.unlink()
    with pytest.raises(tf.errors.NotFoundError):
        list(ds)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_crop_while_decoding_matches_crop_after_decoding(fmt: str):
    # JPEGs are decoded only inside the crop box; the box and the pixels are those of decoding
    # the whole image and cropping it. Pixels may differ by a level or two where the JPEG's
    # half-resolution colour is upsampled at the box's edge; PNGs take the plain path, exactly.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    pixels = np.stack([xx * 2, yy * 2, (xx + yy) % 256], -1) + rng.integers(0, 20, (96, 128, 3))
    image = tf.constant(np.clip(pixels, 0, 255).astype(np.uint8))
    encoded = tf.io.encode_jpeg(image, quality=95) if fmt == "jpeg" else tf.io.encode_png(image)
    cfg = AugmentConfig(random_resized_crop=True, crop_scale=[0.1, 0.5])
    for i in range(8):
        seed = seeds.example(3, tf.constant(1), tf.constant(i))
        fast = aug.decode_random_resized_crop(encoded, seed, cfg, [40, 40]).numpy()
        slow = aug.random_resized_crop(tf.io.decode_image(encoded, channels=3), seed, cfg, [40, 40]).numpy()
        assert fast.shape == (40, 40, 3)
        if fmt == "png":
            np.testing.assert_array_equal(fast, slow)
        else:
            assert (
                np.abs(fast - slow).mean() < 0.1 and np.abs(fast - slow).max() < 4
            )  # another box: 12 to 60 on average


@pytest.mark.parametrize(
    "augment",
    [
        AugmentConfig(horizontal_flip=True, vertical_flip=True, rotation=20, zoom=0.2, translate=0.2),
        AugmentConfig(horizontal_flip=True, brightness=0.2, contrast=0.3, rotation=10, fill_mode="constant"),
        AugmentConfig(horizontal_flip=True),
    ],
)
def test_on_device_makes_the_pixels_the_pipeline_makes(tmp_path, augment: AugmentConfig):
    """data.augment.on_device: tf.data sends each image with its draws, the step augments the
    batch; from images at the training size (PNG: one decode for both) these are the pixels
    the pipeline's TensorFlow path makes (the same kernel and matrices), example by example."""
    from PIL import Image

    from imgtrain.train.inputs import model_input

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for k in range(5):
            pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{k}.png")
    examples = apply_split(discover(DataConfig(path=str(tmp_path))), SplitConfig(1.0, 0.0, 0.0), 0).split("train")
    plan = EpochPlan(seed=3, epoch=2, batch_size=4)
    on_tf = DataConfig(image_size=[24, 32], augment=dataclasses.replace(augment, resampler="tensorflow"))
    on_step = DataConfig(image_size=[24, 32], augment=dataclasses.replace(augment, on_device=True))
    batches = 0
    for want, got in zip(train_dataset(examples, on_tf, plan), train_dataset(examples, on_step, plan)):
        images, draws = got[0]
        assert draws.shape == (images.shape[0], 8)
        pixels = model_input(got[0], on_step.augment).numpy()
        np.testing.assert_allclose(pixels, want[0].numpy(), atol=2e-3)
        for a, b in zip(want[1:], got[1:]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        batches += 1
    assert batches == 3


def test_data_cache_reads_each_image_once_per_run(tmp_path: Path):
    """``data.cache``: the second epoch, validation and the test split read no file: with the
    images gone from disk after the first reading, every epoch yields what it would have."""
    from imgtrain.data.source import FileSource

    folder = write_folder(tmp_path / "images", per_class=6)
    cat = apply_split(discover(DataConfig(path=str(folder))), SplitConfig(0.5, 0.5, 0.0), 0)
    cfg = DataConfig(image_size=[16, 16], augment=FULL_AUG, cache=True)
    first, again = FileSource(cat), FileSource(cat)  # `again` has cached nothing
    seen = [_collect(first.train_dataset(cfg, EpochPlan(seed=1, epoch=e, batch_size=4))) for e in (0, 1)]
    val = _collect(first.eval_dataset(cfg, "val", 4, Shard(), 1))
    for image in folder.rglob("*.png"):
        image.unlink()
    for epoch, expected in ((0, seen[0]), (1, seen[1]), (2, None)):
        got = _collect(first.train_dataset(cfg, EpochPlan(seed=1, epoch=epoch, batch_size=4)))
        for u, v in zip(got, expected or ()):
            np.testing.assert_array_equal(u, v)
    for u, v in zip(_collect(first.eval_dataset(cfg, "val", 4, Shard(), 1)), val):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(tf.errors.NotFoundError):  # a source that cached nothing does read the files
        _collect(again.train_dataset(cfg, EpochPlan(seed=1, epoch=0, batch_size=4)))


CACHE_PROBE = """
import json, os, sys
import numpy as np
from imgtrain.config import DataConfig
from imgtrain.data.pipeline import decoded_images
from imgtrain.data.sources import discover

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

examples = discover(DataConfig(path=sys.argv[1])).examples
cached = decoded_images(examples, [128, 128])
for _ in decoded_images(examples[:8], [128, 128]):  # tf.data's own first-use allocations
    pass
before = rss()
images = [x.numpy() for _i, x, _y, _w in cached]
grown = rss() - before - sum(x.nbytes for x in images)  # what the cache itself holds
whole = all(np.array_equal(x, np.round(x)) for x in images[:5])
print(json.dumps({"n": len(images), "dtype": str(images[0].dtype), "grown": grown, "whole": whole}))
"""


def test_data_cache_holds_uint8_a_quarter_of_float32(tmp_path: Path):
    """A cached epoch costs about one byte per pixel: 300 images at 128x128 grow a fresh process
    by about 21 MiB (uint8), not the 57 MiB a float32 cache took; the images read back are
    whole levels."""
    import json
    import subprocess
    import sys

    folder = write_folder(tmp_path / "images", per_class=100, size=128)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE, str(folder)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    as_float32 = found["n"] * 128 * 128 * 3 * 4
    assert found["n"] == 300 and found["dtype"] == "float32" and found["whole"]
    assert found["grown"] < 0.6 * as_float32, f"the cache grew the process by {found['grown'] / 2**20:.0f} MiB"
