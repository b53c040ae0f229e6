"""imgtrain bench --quick: every figure and ratio is reported (speed itself is never asserted)."""

import json

import pytest

from imgtrain.cli import main

pytestmark = pytest.mark.slow

KEYS = [
    "pipeline.folder.ratio",
    "pipeline.tfrecord.ratio",
    "train.cnn.ratio",
    "train.resnet50.ratio",
    "memory.ratio",
    "pipeline.ceiling.images_per_sec",
    "pipeline.folder.images_per_sec",
    "pipeline.tfrecord.images_per_sec",
    "pipeline.crop_only.images_per_sec",
    "pipeline.crop_only.ratio",
    "train.cnn.imgtrain_images_per_sec",
    "train.cnn.fit_images_per_sec",
    "train.resnet50.imgtrain_images_per_sec",
    "train.resnet50.fit_images_per_sec",
    "memory.small.peak_rss_bytes",
    "memory.large.peak_rss_bytes",
    "train.cnn_steps_per_execution.ratio",
    "train.cnn_steps_per_execution.ratio_same_n",
    "pipeline.geometric.ratio",
    "pipeline.photo.ratio",
    "pipeline.vs_keras_layers.ratio",
    "pipeline.vs_image_data_generator.ratio",
    "pipeline.vs_keras_layers.baseline_images_per_sec",
    "pipeline.vs_image_data_generator.baseline_images_per_sec",
    "pipeline.vs_albumentations.ratio",  # albumentations is in the test extra
    "pipeline.on_device.ratio",
]


def lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


def test_quick_bench_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in KEYS:
        value = lookup(result, key)
        assert isinstance(value, (int, float)) and value > 0, key
    # Each ratio is its figure over the baseline it was measured against.
    p = result["pipeline"]
    assert p["folder"]["ratio"] == pytest.approx(
        p["folder"]["images_per_sec"] / p["ceiling"]["images_per_sec"], rel=0.01
    )
    t = result["train"]["cnn"]
    assert t["ratio"] == pytest.approx(t["imgtrain_images_per_sec"] / t["fit_images_per_sec"], rel=0.01)
    m = result["memory"]
    assert m["large"]["images"] == 10 * m["small"]["images"]
    assert m["ratio"] == pytest.approx(m["large"]["peak_rss_bytes"] / m["small"]["peak_rss_bytes"], rel=0.01)
    table = capsys.readouterr().out
    for key in ("geometric", "photo", "vs_keras_layers", "vs_image_data_generator", "vs_albumentations", "on_device"):
        f = p[key]
        assert f["ratio"] == pytest.approx(f["images_per_sec"] / f["baseline_images_per_sec"], rel=0.01), key
    rows = ("pipeline.folder", "pipeline.tfrecord", "pipeline.crop_only", "train.cnn", "train.resnet50", "memory")
    for row in rows + ("pipeline.geometric", "pipeline.vs_keras_layers", "pipeline.vs_image_data_generator"):
        assert row in table
    assert "pipeline.vs_albumentations" in table and "pipeline.on_device (on CPU)" in table  # no GPU here


def test_bench_options_add_their_figures(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--model", "cnn", "--jit-compile", "--mixed-precision", "--json", str(out)]) == 0
    cnn = json.loads(out.read_text())["train"]["cnn"]
    for opt in ("jit_compile", "mixed_precision"):
        assert cnn[opt]["baseline_images_per_sec"] == cnn["imgtrain_images_per_sec"]
        assert cnn[opt]["ratio"] == pytest.approx(
            cnn[opt]["images_per_sec"] / cnn[opt]["baseline_images_per_sec"], rel=0.01
        )
    assert "resnet50" not in json.loads(out.read_text())["train"]


def test_bench_bad_model(capsys):
    assert main(["bench", "--quick", "--model", "vgg"]) == 2
    assert "bench --model vgg" in capsys.readouterr().err
