"""``imgtrain export``: every format from one run, read back by its own reader in a process
that never imports imgtrain, and the serving signature's per-image errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from conftest import write_folder

from imgtrain.cli import main

pytestmark = pytest.mark.slow

# Run in a fresh interpreter: only the format's own reader is imported, and the script
# proves imgtrain never was. Prints the top-1 class of each test image as JSON.
READERS = {
    "saved_model": """
        import tensorflow as tf
        fn = tf.saved_model.load(PATH).signatures["serve_pixels"]
        probs = fn(pixels=tf.constant(x))["probabilities"].numpy()
    """,
    "keras": """
        import keras
        probs = keras.saving.load_model(PATH, compile=False).predict(x, verbose=0)
    """,
    "tflite": """
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(model_path=PATH).get_signature_runner("serve_pixels")
        probs = runner(pixels=x)["probabilities"]
    """,
    "onnx": """
        import onnxruntime
        s = onnxruntime.InferenceSession(PATH, providers=["CPUExecutionProvider"])
        probs = s.run(None, {s.get_inputs()[0].name: x})[0]
    """,
    "mlflow": """
        import mlflow.pyfunc
        probs = mlflow.pyfunc.load_model(PATH).predict(x)
    """,
}
READERS["tflite-int8"] = READERS["tflite"]
FILES = {
    "saved_model": "saved_model/3",
    "keras": "keras/model.keras",
    "tflite": "tflite/model.tflite",
    "tflite-int8": "tflite-int8/model_int8.tflite",
    "onnx": "onnx/model.onnx",
    "mlflow": "mlflow",  # the MLflow model directory itself
}


def read_outside(fmt: str, path, pixels_file) -> tuple[list[int], np.ndarray]:
    script = "import json, sys\nimport numpy as np\n"
    script += f"PATH = {str(path)!r}\nx = np.load({str(pixels_file)!r})\n"
    script += textwrap.dedent(READERS[fmt])
    script += "assert not any(m.startswith('imgtrain') for m in sys.modules), 'imgtrain was imported'\n"
    script += (
        "print(json.dumps({'top': np.asarray(probs).argmax(-1).tolist(), 'sum': np.asarray(probs).sum(-1).tolist()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["top"], np.array(out["sum"])


@pytest.fixture(scope="module")
def run_and_pixels(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = write_folder(root / "images", per_class=40, size=20, fmt="mixed")
    run = root / "run"
    args = ["train", "--data", str(data), "--output", str(run), "--epochs", "3", "--batch-size", "8"]
    args += ["--image-size", "20", "--set", "model.cnn.filters=[8,16]", "--no-progress"]
    assert main(args) == 0
    from imgtrain.config import Config
    from imgtrain.export.check import test_batches
    from imgtrain.predict import load_run

    model, _, cfg = load_run(run)
    batches = test_batches(Config.load(run / "config.yaml"), run, 1000, print)
    pixels = np.concatenate([x[r > 0] for x, r in batches])
    np.save(root / "pixels.npy", pixels)
    expected = np.asarray(model.predict(pixels, verbose=0)).argmax(-1).tolist()
    return run, root / "pixels.npy", expected


@pytest.mark.parametrize("fmt", list(FILES))
def test_every_format_is_read_by_its_own_reader(fmt, run_and_pixels, capsys):
    run, pixels, expected = run_and_pixels
    out = run / "export"
    assert main(["export", "--run", str(run), "--format", fmt, "--output", str(out / fmt), "--version", "3"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement with the run's model" in printed and "MiB" in printed
    path = out / FILES[fmt]
    assert path.exists()
    if fmt == "mlflow":  # the names in the MLflow model's metadata
        assert yaml.safe_load((path / "MLmodel").read_text())["metadata"]["class_names"] == ["blue", "green", "red"]
    elif fmt != "saved_model":  # the SavedModel returns the names itself
        assert json.loads((path.parent / "class_names.json").read_text()) == ["blue", "green", "red"]
    top, sums = read_outside(fmt, path, pixels)
    agree = np.mean(np.array(top) == np.array(expected))
    assert agree >= (0.99 if fmt == "tflite-int8" else 1.0), (fmt, top, expected)
    np.testing.assert_allclose(sums, 1.0, atol=1e-3)  # probabilities, not logits


def test_a_name_of_another_formats_kind_is_refused(run_and_pixels, tmp_path, capsys):
    """``--format tflite --output c.onnx`` made a folder c.onnx/ holding model.tflite."""
    run, _, _ = run_and_pixels
    assert main(["export", "--run", str(run), "--format", "tflite", "--output", str(tmp_path / "c.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "names a .onnx file but --format is tflite" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "c.onnx").exists()


def test_an_unwritable_output_is_one_line(run_and_pixels, tmp_path, capsys):
    run, _, _ = run_and_pixels
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert main(["export", "--run", str(run), "--format", "keras", "--output", str(blocked / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the export to" in err[0] and "--output" in err[0]


def test_format_choices_are_the_table(capsys):
    from imgtrain.commands.export import FORMAT_NAMES
    from imgtrain.export import FORMATS

    assert tuple(FORMATS) == FORMAT_NAMES
    assert main(["export", "--run", "x", "--format", "pickle"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bytes_signature_marks_an_undecodable_image_and_serves_the_rest(run_and_pixels, tmp_path):
    run, _, _ = run_and_pixels
    images = sorted((run.parent / "images").rglob("*.png"))[:3]
    good = [p.read_bytes() for p in images]
    jpg = next((run.parent / "images").rglob("*.jpg")).read_bytes()
    batch = [good[0], b"not an image at all", jpg[: len(jpg) // 2], good[1], good[2]]
    np.save(tmp_path / "batch.npy", np.array(batch, dtype=object), allow_pickle=True)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, tensorflow as tf
        fn = tf.saved_model.load({str(run / "saved_model")!r}).signatures["serving_default"]
        batch = np.load({str(tmp_path / "batch.npy")!r}, allow_pickle=True).tolist()
        out = fn(image_bytes=tf.constant(batch))
        one = [fn(image_bytes=tf.constant([b]))["class_index"].numpy()[0] for b in batch]
        assert not any(m.startswith("imgtrain") for m in sys.modules)
        print(json.dumps({{"index": out["class_index"].numpy().tolist(), "one": [int(i) for i in one],
                          "error": [e.decode() for e in out["error"].numpy()],
                          "name": [n.decode() for n in out["class_name"].numpy()],
                          "sum": out["probabilities"].numpy().sum(-1).tolist()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["index"][1] == out["index"][2] == -1
    assert out["error"] == ["", "undecodable image", "undecodable image", "", ""]
    assert out["name"][1] == out["name"][2] == ""
    assert out["index"] == out["one"]  # each good image classified as it is alone
    assert [round(s, 3) for s in out["sum"]] == [1.0, 0.0, 0.0, 1.0, 1.0]


def test_relative_run_and_output_from_another_working_directory(run_and_pixels, tmp_path, monkeypatch, capsys):
    run, _, _ = run_and_pixels
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(run, tmp_path)
    assert main(["export", "--run", relative, "--format", "keras", "--output", "exports/k"]) == 0
    assert (tmp_path / "exports" / "k" / "model.keras").exists()
    assert "top-1 agreement with the run's model" in capsys.readouterr().out


# What each file says its class names are, read in a process without imgtrain.
NAMES_INSIDE = {
    "tflite": """
        from ai_edge_litert.interpreter import Interpreter
        out = Interpreter(model_path=PATH).get_signature_runner("serve_pixels")(pixels=x)
        names = sorted({n.decode() for n in out["class_name"]})
    """,
    "onnx": """
        import onnxruntime
        s = onnxruntime.InferenceSession(PATH, providers=["CPUExecutionProvider"])
        names = json.loads(s.get_modelmeta().custom_metadata_map["class_names"])
    """,
}


@pytest.mark.parametrize("fmt,name", [("tflite", "m.tflite"), ("keras", "m.keras"), ("onnx", "m.onnx")])
def test_an_output_named_with_the_formats_suffix_is_that_file(fmt, name, run_and_pixels, tmp_path):
    """``imgtrain export --format tflite --output m.tflite`` (as a user types it, from their
    folder) writes m.tflite, which the format's own reader opens in a process without imgtrain;
    the class names are inside the file where the format has a place for them. (That each
    format's file predicts what the run's model does: the test above.)"""
    run, pixels, _ = run_and_pixels
    cmd = [sys.executable, "-m", "imgtrain", "export", "--run", os.path.relpath(run, tmp_path)]
    for given in (["--format", fmt], []):  # twice: the second replaces the first, its format read from the name
        proc = subprocess.run(
            cmd + given + ["--output", name], capture_output=True, text=True, cwd=tmp_path, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith(f"{fmt}: {name} (")  # the path as the user gave it
    assert (tmp_path / name).is_file()
    beside = sorted(p.name for p in tmp_path.iterdir())
    if fmt == "keras":  # a .keras file keeps no metadata of its own: NAME.class_names.json beside it
        names = name.replace(".keras", ".class_names.json")
        assert beside == [names, name]
        assert json.loads((tmp_path / names).read_text()) == ["blue", "green", "red"]
        return
    assert beside == [name]
    script = "import json, sys\nimport numpy as np\n"
    script += f"PATH = {str(tmp_path / name)!r}\nx = np.load({str(pixels)!r})\n"
    script += textwrap.dedent(NAMES_INSIDE[fmt]) + "print(json.dumps(names))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(names) <= {"blue", "green", "red"} and (fmt == "tflite" or names == ["blue", "green", "red"])
