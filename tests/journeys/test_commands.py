"""Journey: after training, the README's other commands (evaluate, predict, export as the README
writes it, bench) with relative paths from the user's folder (prepare, then train on its shards:
tests/journeys/test_buckets.py, which streams them from a bucket too).
Every export format, run as a user types it from their folder and read back by its own reader,
is tests/test_export.py's."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from journeys import readme
from journeys.journey import Result, User

pytestmark = pytest.mark.slow

EVALUATE = readme.command(".venv/bin/imgtrain evaluate --run runs/photos")
PREDICT = readme.command(".venv/bin/imgtrain predict --run runs/photos new_photos/ --top-k 3 --output predictions.csv")
EXPORT = readme.command(".venv/bin/imgtrain export --run runs/photos --format tflite")


def new_photos(user: User, count: int = 5) -> list[Path]:
    """A folder of images the model has not been given by name: copies of a few of photos/."""
    target = user.cwd / "new_photos"
    target.mkdir(exist_ok=True)
    sources = sorted(p for p in (user.cwd / "photos").rglob("*") if p.is_file())[::7][:count]
    for i, source in enumerate(sources):
        shutil.copy(source, target / f"{i}{source.suffix}")
    return sorted(target.iterdir())


def test_evaluate(trained: User) -> None:
    result = trained.ok(EVALUATE)
    assert result.last_line.startswith("test accuracy "), result.last_line
    assert (trained.cwd / "runs/photos/report.json").exists()


def test_predict_a_folder_to_csv_then_single_files_then_a_new_folder(trained: User) -> None:
    photos = new_photos(trained)
    result = trained.ok(PREDICT)
    assert "predictions.csv" in result.last_line and str(len(photos)) in result.last_line, result.last_line
    with open(trained.cwd / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(photos)

    one, two = (p.relative_to(trained.cwd) for p in photos[:2])
    table = trained.ok(f".venv/bin/imgtrain predict --run runs/photos {one} {two} --top-k 2")
    assert str(one) in table.out and str(two) in table.out, table.out

    trained.ok(f".venv/bin/imgtrain predict --run runs/photos {one} --output out/new/predictions.json")
    written = json.loads((trained.cwd / "out/new/predictions.json").read_text())
    assert len(written) == 1 and json.dumps(written).count(one.name) >= 1


def test_export_as_the_readme_writes_it(trained: User) -> None:
    result = trained.ok(EXPORT)
    folder = trained.cwd / "runs/photos/export/tflite"
    assert (folder / "model.tflite").is_file(), result.text[-2000:]
    # The README's LiteRT example, as written, given the pixels it leaves to the user.
    (snippet,) = [b for b in readme.python_blocks() if "ai_edge_litert" in b]
    pixels = (
        "import numpy as np\nfrom ai_edge_litert.interpreter import Interpreter as I\n"
        "shape = I(model_path='model.tflite').get_signature_runner('serve_pixels').get_input_details()"
        "['pixels']['shape']\n"
        "pixels = np.random.default_rng(0).uniform(0, 255, (2, *shape[1:])).astype(np.float32)\n"
    )
    (folder / "snippet.py").write_text(pixels + snippet)
    out = trained.ok(f"{trained.cwd}/.venv/bin/python snippet.py", cwd=folder).out
    assert out.startswith("[b'") and "]" in out, out


def test_bench_quick(bench_quick: tuple[Result, dict]) -> None:
    """(tests/test_bench.py reads every figure of the same run.)"""
    result, figures = bench_quick
    assert result.code == 0 and figures and "ratio" in result.out, result.text[-2000:]
    assert "figures written to bench.json" in result.last_line, result.last_line
