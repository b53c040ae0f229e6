"""The user's contract, end to end: train -> evaluate -> predict, and the exported SavedModel."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
import tiny
import yaml
from conftest import write_folder

from imgtrain.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = write_folder(root / "images", per_class=14, fmt="mixed")
    run = root / "run"
    cfg = root / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            tiny.merged(
                tiny.config(),
                {
                    "data": {"augment": {"horizontal_flip": True, "brightness": 0.05}},
                    "train": {"optimizer": {"name": "adam", "learning_rate": 0.01}, "early_stopping": {"patience": 10}},
                    "export": {"saved_model": True},  # the default, which tiny's settings turn off
                },
            )
        )
    )
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--data",
            str(data),
            "--output",
            str(run),
            "--epochs",
            "4",
            "--batch-size",
            "8",
            "--seed",
            "3",
            "--set",
            "train.schedule.name=cosine",
            "--no-progress",
        ]
    )
    assert rc == 0
    return data, run


def test_train_writes_every_artifact(trained_run):
    data, run = trained_run
    for name in (
        "config.yaml",
        "run.json",
        "history.csv",
        "model.keras",
        "saved_model/saved_model.pb",
        "report.json",
        "report.md",
        "confusion_matrix.png",
        "curves.png",
        "class_names.json",
    ):
        assert (run / name).exists(), name
    assert list((run / "logs" / "train").glob("events.out.tfevents.*"))
    assert list((run / "logs" / "validation").glob("events.out.tfevents.*"))
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 4 and resolved["seed"] == 3  # flags won over the file
    assert resolved["train"]["schedule"]["name"] == "cosine"  # --set applied
    assert resolved["data"]["augment"]["horizontal_flip"] is True  # the file applied
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["images_per_sec"]) > 0 for r in rows)
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_contents(trained_run):
    _, run = trained_run
    report = json.loads((run / "report.json").read_text())
    for key in (
        "class_names",
        "accuracy",
        "loss",
        "per_class",
        "macro_avg",
        "weighted_avg",
        "confusion_matrix",
        "skipped_files",
    ):
        assert key in report, key
    assert "top5_accuracy" not in report  # only three classes
    assert report["class_names"] == ["blue", "green", "red"]
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == report["num_examples"] > 0
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert report["accuracy"] >= 0.8  # colours are easy: the model did learn
    for name in report["class_names"]:
        assert set(report["per_class"][name]) == {"precision", "recall", "f1", "support"}


def test_evaluate_rewrites_the_same_report(trained_run, capsys):
    _, run = trained_run
    before = json.loads((run / "report.json").read_text())
    (run / "report.json").unlink()
    assert main(["evaluate", "--run", str(run), "--no-progress"]) == 0
    after = json.loads((run / "report.json").read_text())
    assert after["confusion_matrix"] == before["confusion_matrix"]
    assert after["accuracy"] == pytest.approx(before["accuracy"])
    assert "test accuracy" in capsys.readouterr().out


def test_report_has_context_errors_and_calibration(trained_run):
    data, run = trained_run
    report = json.loads((run / "report.json").read_text())
    ctx = report["context"]
    assert ctx["data"] == str(data) and ctx["model"] == "cnn" and ctx["strategy"] == "single"
    assert ctx["world_size"] == 1 and ctx["splits"]["test"] == report["num_examples"]
    assert 1 <= ctx["best_epoch"] <= 4 and ctx["stopped"] and ctx["wall_seconds"] > 0
    wrong = report["misclassified"]
    assert report["misclassified_total"] == report["num_examples"] - round(report["accuracy"] * report["num_examples"])
    assert [w["confidence"] for w in wrong] == sorted((w["confidence"] for w in wrong), reverse=True)
    for w in wrong:
        assert (data / w["path"]).exists() and w["true"] != w["predicted"]
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
    assert sum(b["count"] for b in report["calibration"]["bins"]) == report["num_examples"]
    for name in ("report.html", "calibration.png", "per_class_accuracy.png"):
        assert (run / name).exists(), name
    assert (run / "misclassified.png").exists() == bool(wrong)
    assert "Misclassified images" in (run / "report.md").read_text()


def test_tensorboard_logs_read_by_tensorboard(trained_run):
    """Keras' tag names and steps, plus HParams, the augmented grid and the test metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = trained_run

    def load(name):
        ea = EventAccumulator(str(run / "logs" / name), size_guidance={"tensors": 0})
        ea.Reload()
        return ea

    train, val, test = load("train"), load("validation"), load("test")
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
        assert [e.step for e in train.Tensors(tag)] == [0, 1, 2, 3], tag
    for tag in ("epoch_loss", "epoch_accuracy"):
        assert [e.step for e in val.Tensors(tag)] == [0, 1, 2, 3], tag
    history = list(csv.DictReader((run / "history.csv").open()))
    logged = [float(tf.make_ndarray(e.tensor_proto)) for e in val.Tensors("epoch_accuracy")]
    assert logged == pytest.approx([float(r["val_accuracy"]) for r in history], abs=1e-6)
    grid = train.Tensors("augmented_training_images")[0]
    assert grid.step == 0 and tf.make_ndarray(grid.tensor_proto).shape == (3,)  # width, height, PNG bytes
    assert "_hparams_/session_start_info" in train.Tags()["tensors"]
    hparams = train.SummaryMetadata("_hparams_/session_start_info").plugin_data
    assert hparams.plugin_name == "hparams" and b"train.epochs" in hparams.content
    report = json.loads((run / "report.json").read_text())
    accuracy = test.Tensors("epoch_accuracy")[0]
    assert accuracy.step == 3 and float(tf.make_ndarray(accuracy.tensor_proto)) == pytest.approx(report["accuracy"])
    assert test.Tensors("confusion_matrix")


def test_predict_table_csv_json_and_saved_model_agree(trained_run, tmp_path, capsys):
    data, run = trained_run
    files = sorted(p for p in data.rglob("*") if p.is_file())[:9]
    assert main(["predict", "--run", str(run), "--top-k", "2", *map(str, files)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].split() == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert len(table) == 10
    out_json = tmp_path / "p.json"
    assert main(["predict", "--run", str(run), "--output", str(out_json), str(data / "red")]) == 0
    preds = json.loads(out_json.read_text())
    assert len(preds) == 14 and all(len(p["predictions"]) == 3 for p in preds)
    assert sum(p["predictions"][0]["class"] == "red" for p in preds) >= 10
    out_csv = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), "--output", str(out_csv), *map(str, files)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 9

    from imgtrain.predict import predict_files

    records = predict_files(run, [str(f) for f in files], top_k=3)
    served = tf.saved_model.load(str(run / "saved_model"))
    fn = served.signatures["serving_default"]
    out = fn(image_bytes=tf.constant([f.read_bytes() for f in files]))
    np.testing.assert_allclose(out["probabilities"].numpy(), np.array([r["probabilities"] for r in records]), atol=1e-5)
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [r["top"][0][0] for r in records]


def test_csv_manifest_with_weights_and_vocabulary_trains_dnn(tmp_path):
    data = write_folder(tmp_path / "img", per_class=10)
    lines = ["path,label,weight"]
    for p in sorted(data.rglob("*.png")):
        lines.append(f"img/{p.parent.name}/{p.name},{p.parent.name.upper()},{2.0 if p.parent.name == 'red' else 1.0}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(tmp_path / "m.csv"),
            "--model",
            "dnn",
            "--image-size",
            "8",
            "--epochs",
            "2",
            "--output",
            str(run),
            "--no-progress",
            "--set",
            "data.label_vocabulary=[RED, GREEN, BLUE]",
            "--set",
            "model.dnn.hidden_units=[16]",
            "--set",
            "model.dnn.batch_norm=true",
            "--set",
            "train.class_weights=balanced",
            "--set",
            "train.optimizer.name=sgd",
        ]
    )
    assert rc == 0
    assert json.loads((run / "class_names.json").read_text()) == ["RED", "GREEN", "BLUE"]
    assert json.loads((run / "report.json").read_text())["class_names"] == ["RED", "GREEN", "BLUE"]


def test_skip_policy_lists_bad_files_in_report(tmp_path):
    data = write_folder(tmp_path / "img", per_class=8)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run = tmp_path / "run"
    base = [
        "train",
        "--data",
        str(data),
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--output",
        str(run),
        "--no-progress",
        "--set",
        "model.cnn.filters=[4]",
        "--set",
        "data.split={train: 0.6, val: 0.2, test: 0.2}",
    ]
    assert main(base) == 2  # fail is the default policy
    assert main(base + ["--set", "data.on_bad_image=skip"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert [s["path"] for s in report["skipped_files"]] == ["red/broken.jpg"]
    assert "red/broken.jpg" in (run / "report.md").read_text()


def test_mixed_precision_and_xla_train(tmp_path):
    data = write_folder(tmp_path / "img", per_class=6)
    for extra in (["--set", "train.precision=mixed_bfloat16"], ["--set", "train.jit_compile=true"]):
        run = tmp_path / ("run" + str(len(extra[1])))
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(data),
                    "--image-size",
                    "8",
                    "--epochs",
                    "1",
                    "--output",
                    str(run),
                    "--no-progress",
                    "--set",
                    "model.cnn.filters=[4]",
                    *extra,
                ]
            )
            == 0
        )
        assert (run / "model.keras").exists()
    import keras

    keras.mixed_precision.set_global_policy("float32")


def test_tfds_source_with_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from imgtrain.data import tfds_source

    monkeypatch.setattr(tfds_source, "_check_reachable", lambda *_: None)  # mock_data stands in for the network

    run = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=24):
        rc = main(
            [
                "train",
                "--data",
                "tfds:mnist",
                "--image-size",
                "12",
                "--epochs",
                "1",
                "--output",
                str(run),
                "--no-progress",
                "--set",
                "model.cnn.filters=[4]",
                "--set",
                "data.tfds.data_dir=" + str(tmp_path / "tfds"),
            ]
        )
    assert rc == 0
    report = json.loads((run / "report.json").read_text())
    assert report["class_names"] == [str(i) for i in range(10)]
    assert report["num_examples"] == 24 and "top5_accuracy" in report


def test_a_tfds_dataset_not_downloaded_with_download_off_says_so(tmp_path, capsys):
    rc = main(
        [
            "train",
            "--data",
            "tfds:mnist",
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            f"data.tfds.data_dir={tmp_path / 'empty'}",
            "--set",
            "data.tfds.download=false",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert "is not prepared in" in err and "data.tfds.download=true" in err and "_split" not in err


def test_a_tfds_download_without_network_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    """No network (here: every request through a proxy whose port is closed): one line naming
    the host that did not answer, in seconds, not after TFDS's retries (218 s) and urllib3's
    warnings."""
    import socket
    import time

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens once it is closed
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    started = time.monotonic()
    rc = main(["train", "--data", "tfds:mnist", "--output", str(tmp_path / "run"), "--no-progress", "--set",
               f"data.tfds.data_dir={tmp_path / 'empty'}"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert "cannot be downloaded: storage.googleapis.com did not answer" in err and "data.tfds.data_dir" in err, err
    assert time.monotonic() - started < 30
