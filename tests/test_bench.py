"""imgtrain bench --quick: every figure and ratio is reported (speed itself is never asserted).
The figures are those of the session's one ``bench --quick`` run, the README's command run by
tests/journeys/test_commands.py."""

import pytest

from imgtrain.cli import main

KEYS = [
    "pipeline.folder.ratio",
    "pipeline.tfrecord.ratio",
    "train.cnn.ratio",
    "memory.ratio",
    "pipeline.ceiling.images_per_sec",
    "pipeline.folder.images_per_sec",
    "pipeline.tfrecord.images_per_sec",
    "pipeline.crop_only.images_per_sec",
    "pipeline.crop_only.ratio",
    "train.cnn.imgtrain_images_per_sec",
    "train.cnn.fit_images_per_sec",
    "memory.small.peak_rss_bytes",
    "memory.large.peak_rss_bytes",
    "train.cnn_steps_per_execution.ratio",
    "train.cnn_steps_per_execution.ratio_same_n",
    "train.cnn_tracked_to_a_silent_server.ratio",  # mlflow is in the test extra
    "pipeline.geometric.ratio",
    "pipeline.photo.ratio",
    "pipeline.vs_keras_layers.ratio",
    "pipeline.vs_image_data_generator.ratio",
    "pipeline.vs_keras_layers.baseline_images_per_sec",
    "pipeline.vs_image_data_generator.baseline_images_per_sec",
    "pipeline.vs_albumentations.ratio",  # albumentations is in the test extra
    "pipeline.on_device.ratio",
]


# The figures are rounded to 0.1 images/s and the ratios to 3 decimals: a ratio matches its
# figures within 1% or within half its last decimal (a ratio of 0.028 is 1% off at 0.0003).
ROUNDED = {"rel": 0.01, "abs": 5e-4}


def lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


@pytest.mark.slow
def test_quick_bench_writes_every_figure(bench_quick):
    printed, result = bench_quick
    for key in KEYS:
        value = lookup(result, key)
        assert isinstance(value, (int, float)) and value > 0, key
    # Each ratio is its figure over the baseline it was measured against.
    p = result["pipeline"]
    assert p["folder"]["ratio"] == pytest.approx(
        p["folder"]["images_per_sec"] / p["ceiling"]["images_per_sec"], **ROUNDED
    )
    t = result["train"]["cnn"]
    assert t["ratio"] == pytest.approx(t["imgtrain_images_per_sec"] / t["fit_images_per_sec"], **ROUNDED)
    m = result["memory"]
    assert m["large"]["images"] == 10 * m["small"]["images"]
    assert m["ratio"] == pytest.approx(m["large"]["peak_rss_bytes"] / m["small"]["peak_rss_bytes"], **ROUNDED)
    table = printed.out
    for key in ("geometric", "photo", "vs_keras_layers", "vs_image_data_generator", "vs_albumentations", "on_device"):
        f = p[key]
        assert f["ratio"] == pytest.approx(f["images_per_sec"] / f["baseline_images_per_sec"], **ROUNDED), key
    rows = ("pipeline.folder", "pipeline.tfrecord", "pipeline.crop_only", "train.cnn", "memory")
    for row in rows + ("pipeline.geometric", "pipeline.vs_keras_layers", "pipeline.vs_image_data_generator"):
        assert row in table
    assert "resnet50" not in result["train"]  # --quick times the cnn alone
    assert "pipeline.vs_albumentations" in table and "pipeline.on_device (on CPU)" in table  # no GPU here


@pytest.mark.slow
def test_bench_options_add_their_figures(bench_quick):
    """--jit-compile and --mixed-precision (the session's bench has both) add, for each model
    timed, the figure with the option against the same loop without it."""
    _printed, result = bench_quick
    cnn = result["train"]["cnn"]
    for opt in ("jit_compile", "mixed_precision"):
        assert cnn[opt]["baseline_images_per_sec"] == cnn["imgtrain_images_per_sec"]
        assert cnn[opt]["images_per_sec"] > 0
        assert cnn[opt]["ratio"] == pytest.approx(
            cnn[opt]["images_per_sec"] / cnn[opt]["baseline_images_per_sec"], **ROUNDED
        )
    assert cnn["mixed_precision"]["policy"] == "mixed_bfloat16"  # no GPU here


def test_bench_bad_model(capsys):
    assert main(["bench", "--quick", "--model", "vgg"]) == 2
    assert "bench --model vgg" in capsys.readouterr().err
