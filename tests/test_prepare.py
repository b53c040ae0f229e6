"""imgtrain prepare: TFRecord shards that round-trip, and give training the folder's examples, well mixed."""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from conftest import write_folder

from imgtrain.cli import main
from imgtrain.config import DataConfig, SplitConfig
from imgtrain.data import pipeline
from imgtrain.data.pipeline import EpochPlan, Shard
from imgtrain.data.sources import discover
from imgtrain.data.split import apply_split
from imgtrain.data.tfrecord import open_prepared, parse


def read_split(prepared, split):
    out = []
    for f in prepared.files(split):
        for rec in tf.data.TFRecordDataset(f):
            i, data, y, w = parse(rec)
            key = tf.io.parse_single_example(rec, {"image/key": tf.io.FixedLenFeature([], tf.string)})["image/key"]
            out.append((int(i), data.numpy(), int(y), float(w), key.numpy().decode()))
    return out


def test_round_trip_with_weights_vocabulary_and_bad_files(tmp_path: Path, capsys):
    data = write_folder(tmp_path / "img", per_class=10, fmt="mixed")
    (data / "red" / "broken.png").write_bytes(b"garbage")
    lines = ["path,label,weight"] + [
        f"img/{p.parent.name}/{p.name},{p.parent.name},{1 + (i % 3)}" for i, p in enumerate(sorted(data.rglob("*.*")))
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "prepared"
    argv = [
        "prepare",
        "--data",
        str(tmp_path / "m.csv"),
        "--output",
        str(out),
        "--shard-size-mb",
        "0.002",
        "--no-progress",
        "--set",
        "data.label_vocabulary=[red, green, blue]",
    ]
    assert main(argv) == 2  # on_bad_image=fail by default
    assert "broken.png" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    assert main(argv + ["--set", "data.on_bad_image=skip"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["red", "green", "blue"]
    assert [s["path"] for s in manifest["checks"]["skipped"]] == ["img/red/broken.png"]
    assert sum(len(v["shards"]) for v in manifest["splits"].values()) > 3  # small shards: several files
    prepared = open_prepared(str(out))
    expected = {}
    for line in lines[1:]:
        path, label, weight = line.split(",")
        if "broken" not in path:
            expected[path] = (["red", "green", "blue"].index(label), float(weight), (tmp_path / path).read_bytes())
    seen = {}
    for split in ("train", "val", "test"):
        rows = read_split(prepared, split)
        assert sorted(r[0] for r in rows) == list(range(len(rows)))  # each position in the split once
        if split == "train":  # written in a seeded order, not the folder's class by class
            assert [r[2] for r in rows] != sorted(r[2] for r in rows)
        assert sum(manifest["splits"][split]["per_class"].values()) == len(rows) == manifest["splits"][split]["count"]
        for _, data_bytes, y, w, key in rows:
            seen[key] = (y, w, data_bytes)
    assert seen == expected  # every image, label and weight came back the same, bytes included


def _epoch(ds) -> tuple[list[bytes], list[int]]:
    """An epoch's augmented images (as bytes) and each batch's count of distinct classes."""
    images, classes = [], []
    for x, y, _, real in ds:
        keep = real.numpy() > 0
        images += [im.tobytes() for im in x.numpy()[keep]]
        classes.append(len(set(y.numpy()[keep].tolist())))
    return images, classes


def test_prepared_shards_give_the_folders_images_in_batches_that_mix_classes(tmp_path: Path):
    """Each example is augmented from its shards exactly as from the folder, and records are
    written in a seeded order: through a shuffle window 12x smaller than the split, batches
    hold as many classes as the folder's full shuffle gives (class by class, two thirds as many)."""
    colours = {f"c{k}": (40 * k, 255 - 40 * k, (90 * k) % 256) for k in range(6)}
    data = write_folder(tmp_path / "img", per_class=24, fmt="mixed", classes=colours)
    whole = "data.split={train: 1.0, val: 0.0, test: 0.0}"
    out = tmp_path / "tfr"
    argv = ["prepare", "--data", str(data), "--output", str(out), "--no-progress", "--shard-size-mb", "0.04"]
    assert main([*argv, "--set", whole]) == 0
    prepared = open_prepared(str(out))
    assert prepared.manifest["order"] == "shuffled" and len(prepared.files("train")) >= 3
    examples = apply_split(discover(DataConfig(path=str(data))), SplitConfig(1.0, 0.0, 0.0), 0).split("train")
    cfg = DataConfig(image_size=[16, 16], shuffle_buffer=6)
    cfg.augment.horizontal_flip, cfg.augment.rotation, cfg.augment.random_resized_crop = True, 15.0, True
    for epoch in (0, 1):
        plan = EpochPlan(seed=3, epoch=epoch, batch_size=16)
        folder, folder_classes = _epoch(pipeline.train_dataset(examples, cfg, plan))
        shards, shard_classes = _epoch(pipeline.tfrecord_train_dataset(prepared.files("train"), [144], cfg, plan))
        assert sorted(shards) == sorted(folder) and len(shards) == 144  # the same pixels, example by example
        mixed, full = np.mean(shard_classes), np.mean(folder_classes)
        assert mixed >= 0.85 * full, (mixed, full)
    first = [r[4] for r in read_split(prepared, "train")]
    assert main([*argv, "--set", whole, "--seed", "4"]) == 0  # another split seed: another order
    assert [r[4] for r in read_split(open_prepared(str(out)), "train")] != first


def test_an_older_class_ordered_preparation_is_named_when_it_outgrows_the_shuffle_window(tmp_path: Path):
    data = write_folder(tmp_path / "img", per_class=10)
    assert main(["prepare", "--data", str(data), "--output", str(tmp_path / "tfr"), "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "tfr" / "manifest.json").read_text())
    assert open_prepared(str(tmp_path / "tfr")).order_warnings(5) == []  # written shuffled: no line
    del manifest["order"]  # as an older prepare wrote it
    (tmp_path / "tfr" / "manifest.json").write_text(json.dumps(manifest))
    older = open_prepared(str(tmp_path / "tfr"))
    n = older.count("train")
    assert older.order_warnings(n) == []  # the window holds the whole split: nothing to say
    (line,) = older.order_warnings(n - 1)
    assert "prepare it again" in line and f"data.shuffle_buffer={n - 1}" in line and str(data) in line


def test_workers_shard_by_file_and_see_each_example_once(tmp_path: Path):
    data = write_folder(tmp_path / "img", per_class=20)
    assert (
        main(
            [
                "prepare",
                "--data",
                str(data),
                "--output",
                str(tmp_path / "tfr"),
                "--no-progress",
                "--shard-size-mb",
                "0.003",
                "--set",
                "data.split={train: 1.0, val: 0.0, test: 0.0}",
            ]
        )
        == 0
    )
    prepared = open_prepared(str(tmp_path / "tfr"))
    files = prepared.files("train")
    assert len(files) >= 3
    cfg = DataConfig(image_size=[16, 16])
    total, steps = 0, set()
    counts = prepared.worker_counts("train", 2)
    for i in range(2):
        ds = pipeline.tfrecord_train_dataset(
            files, counts, cfg, EpochPlan(seed=0, epoch=0, batch_size=4, shard=Shard(2, i))
        )
        batches = list(ds)
        steps.add(len(batches))
        total += int(sum(float(r.numpy().sum()) for _, _, _, r in batches))
    assert total == prepared.count("train") == 60 and len(steps) == 1
    # Each epoch a worker reads the same shards (its count of examples is fixed) in another order.
    orders = [pipeline.epoch_shards(files, Shard(2, 1), 0, epoch) for epoch in range(4)]
    assert all(sorted(o) == sorted(files[1::2]) for o in orders) and len({tuple(o) for o in orders}) > 1


def test_broken_prepared_directory(tmp_path: Path, capsys):
    data = write_folder(tmp_path / "img", per_class=4)
    out = tmp_path / "tfr"
    assert main(["prepare", "--data", str(data), "--output", str(out), "--no-progress"]) == 0
    shard = next(out.glob("train-*.tfrecord"))
    damaged = bytearray(shard.read_bytes())
    damaged[40:44] = b"XXXX"  # a record's bytes changed, the size kept
    shard.write_bytes(bytes(damaged))
    assert main(["train", "--data", str(out), "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"imgtrain: error: prepared shard {shard} is damaged (corrupted record at "), err
    assert err[-1].endswith("run 'imgtrain prepare' again to write it anew") and "Traceback" not in "".join(err)
    shard.unlink()
    assert main(["train", "--data", str(out), "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "lacks shard" in capsys.readouterr().err


def test_prepare_reads_a_window_of_images_ahead_not_the_whole_split():
    """Images are read at most ``ahead`` ahead of the one written, in order: memory holds a
    window, however large the split (``pool.map`` would read them all first)."""
    from concurrent.futures import ThreadPoolExecutor

    from imgtrain.data.tfrecord import _in_order

    started: list[int] = []

    def read(i: int) -> bytes:
        started.append(i)
        return i.to_bytes(2, "big")

    with ThreadPoolExecutor(max_workers=4) as pool:
        for k, data in enumerate(_in_order(pool, read, list(range(500)), ahead=16)):
            assert data == k.to_bytes(2, "big") and len(started) <= k + 16, (k, len(started))
