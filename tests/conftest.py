"""Shared fixtures: small real image datasets written to disk for each test that needs one."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 210)}


def _shared_values(item: pytest.Item) -> list[str]:
    """One key per value of this suite's module- or session-scoped fixtures that ``item`` uses
    (a module fixture is one value per module, a session fixture one per session)."""
    keys = []
    for name in item.fixturenames:
        defs = item._fixtureinfo.name2fixturedefs.get(name) or ()
        if not defs or defs[-1].scope == "function" or not defs[-1].baseid:  # no baseid: pytest's own
            continue
        module = item.nodeid.split("::")[0].removeprefix("tests/").removesuffix(".py")
        keys.append(name if defs[-1].scope == "session" else f"{module}:{name}")
    return keys


def _groups(items: list) -> dict[int, list]:
    """Items joined when they share a fixture's value, directly or through others (union-find)."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, item in enumerate(items):
        for key in _shared_values(item):
            parent[root(i)] = root(owner.setdefault(key, i))
    groups: dict[int, list] = {}
    for i, item in enumerate(items):
        groups.setdefault(root(i), []).append(item)
    return groups


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items: list) -> None:
    """Order and group the suite for ``pytest -n`` (pytest-xdist, ``--dist loadgroup``), which
    ``make test`` runs: tests that share a module or session fixture's value (a trained
    reference run, the one bench) are one group, which runs on one worker, so each value is
    still made once. Groups with more slow tests go first (the longest work starts first and the
    quick tests fill in at the end), and the image check last: in CI its build runs in the
    background meanwhile (test_image.py)."""
    groups = list(_groups(items).values())
    for group in groups:
        if len(group) > 1:
            name = _shared_values(group[0])[0]
            for item in group:
                item.add_marker(pytest.mark.xdist_group(name))

    def weight(group: list) -> tuple:
        image = any(item.nodeid.startswith("tests/test_image.py") for item in group)
        return image, -sum(item.get_closest_marker("slow") is not None for item in group)

    items[:] = [item for group in sorted(groups, key=weight) for item in group]


def pytest_collection_finish(session: pytest.Session) -> None:
    """On an xdist worker, the groups must have reached the scheduler, which reads them from
    the node ids (``test@group``). pytest 9.2's node ids ignore that (pytest-xdist#1386): every
    shared run would then be made once per worker, silently; say so instead."""
    if not getattr(session.config.option, "loadgroup", False):  # set by xdist under -n only
        return
    grouped = [item for item in session.items if item.get_closest_marker("xdist_group")]
    if grouped and "@" not in grouped[0].nodeid:
        raise pytest.UsageError(
            "pytest-xdist --dist loadgroup does not group tests with this pytest (pytest-xdist#1386); "
            "pip install 'pytest<9.2', as pyproject.toml's test extra pins it"
        )


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
    import tiny

    from imgtrain.config import Config

    items = [
        f"data.path={data}",
        f"output={output}",
        *tiny.overrides(),
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
    """The uninterrupted reference runs of tests/reference_runs.py's commands (one per strategy, each
    trained once per session), in a folder holding their ``photos``."""
    from reference_runs import CONFIG_FILE, ROOT, References

    home = tmp_path_factory.mktemp("references")
    write_folder(home / "photos", per_class=40, size=16)
    (home / "launch").symlink_to(ROOT / "launch")  # the README's launch/horovod.sh, relative
    (home / "cfg.yaml").write_text(CONFIG_FILE)
    return References(home)


@pytest.fixture(scope="session")
def bench_quick(tmp_path_factory):
    """The session's one ``imgtrain bench --quick`` (journeys/journey.py's ``bench_quick``), read
    by tests/journeys/test_commands.py and tests/test_bench.py. A fixture defined once, here:
    one imported into two modules would be two fixtures, and run twice."""
    from journeys.journey import bench_quick as run

    return run(tmp_path_factory)
