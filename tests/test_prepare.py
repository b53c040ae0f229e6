"""imgtrain prepare: TFRecord shards that round-trip, and train exactly like the folder they came from."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_folder

from imgtrain.cli import main
from imgtrain.config import DataConfig
from imgtrain.data import pipeline
from imgtrain.data.pipeline import EpochPlan, Shard
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
        assert [r[0] for r in rows] == list(range(len(rows)))  # positions in the split, in order
        assert sum(manifest["splits"][split]["per_class"].values()) == len(rows) == manifest["splits"][split]["count"]
        for _, data_bytes, y, w, key in rows:
            seen[key] = (y, w, data_bytes)
    assert seen == expected  # every image, label and weight came back the same, bytes included


@pytest.mark.slow
def test_training_from_tfrecords_equals_training_from_the_folder(tmp_path: Path):
    data = write_folder(tmp_path / "img", per_class=15, fmt="mixed")
    assert (
        main(["prepare", "--data", str(data), "--output", str(tmp_path / "tfr"), "--no-progress", "--seed", "4"]) == 0
    )
    common = [
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--seed",
        "4",
        "--deterministic",
        "--no-progress",
        "--set",
        "model.cnn.filters=[8]",
        "--set",
        "data.augment.rotation=15",
        "--set",
        "data.augment.horizontal_flip=true",
        "--set",
        "data.augment.random_resized_crop=true",
    ]
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--data", str(tmp_path / "tfr"), "--output", str(tmp_path / "b"), *common]) == 0
    import keras

    wa = keras.models.load_model(tmp_path / "a" / "model.keras", compile=False).get_weights()
    wb = keras.models.load_model(tmp_path / "b" / "model.keras", compile=False).get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)
    ra = json.loads((tmp_path / "a" / "report.json").read_text())
    rb = json.loads((tmp_path / "b" / "report.json").read_text())
    assert ra["confusion_matrix"] == rb["confusion_matrix"]


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
