"""Shared fixtures: small real image datasets written to disk for each test that needs one."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 210)}


def pytest_collection_modifyitems(items: list) -> None:
    """The image check last: in CI its build runs in the background meanwhile (test_image.py)."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_image.py"))


def make_image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 16) -> Image.Image:
    """A noisy image dominated by one colour: easy to learn, never identical twice."""
    base = np.array(colour, dtype=np.float32)[None, None, :]
    noise = rng.normal(0, 25, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def write_folder(
    root: Path,
    per_class: int = 12,
    size: int = 16,
    seed: int = 0,
    fmt: str = "png",
    classes: dict[str, tuple[int, int, int]] | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in (classes or COLOURS).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = fmt if fmt != "mixed" else ("png", "jpg", "bmp")[i % 3]
            make_image(colour, rng, size).save(root / name / f"{name}_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three colour classes, 12 PNG images each, 16x16."""
    return write_folder(tmp_path / "images")


def small(data: Path, output: Path, extra: tuple[str, ...] = ()):
    """A fast config for end-to-end runs on ``write_folder``'s images: tiny CNN, few epochs."""
    from imgtrain.config import Config

    items = [
        f"data.path={data}",
        f"output={output}",
        "data.image_size=[16,16]",
        "model.cnn.filters=[8,16]",
        "model.cnn.convs_per_block=1",
        "train.epochs=3",
        "train.batch_size=8",
        "train.optimizer.learning_rate=0.01",
        "train.early_stopping.patience=10",
    ]
    return Config.load(None, items + list(extra))


@pytest.fixture
def small_config(tmp_path: Path):
    """``small``, writing to ``tmp_path / "run"`` unless told otherwise."""

    def make(data: Path, output: Path | None = None, extra: tuple[str, ...] = ()):
        return small(data, output or tmp_path / "run", extra)

    return make


@pytest.fixture(scope="session")
def references(tmp_path_factory):
    """The uninterrupted reference runs of tests/runs.py's commands (one per strategy, each
    trained once per session), in a folder holding their ``photos``."""
    from runs import References

    home = tmp_path_factory.mktemp("references")
    write_folder(home / "photos", per_class=40, size=16)
    return References(home)


@pytest.fixture(scope="session")
def bench_quick(tmp_path_factory):
    """The session's one ``imgtrain bench --quick`` (journeys/journey.py's ``bench_quick``), read
    by tests/journeys/test_commands.py and tests/test_bench.py. A fixture defined once, here:
    one imported into two modules would be two fixtures, and run twice."""
    from journeys.journey import bench_quick as run

    return run(tmp_path_factory)
