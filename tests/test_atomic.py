"""imgtrain.atomic: whole files or none, even with several writers of one file at once."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from imgtrain import atomic


def _write_many(args: tuple[str, int]) -> int:
    path, writer = args
    for i in range(200):
        atomic.write_json(Path(path), {"writer": writer, "i": i, "pad": "x" * 2000})
    return writer


def test_concurrent_writers_of_one_file_never_collide(tmp_path: Path):
    # What two workers of a multi-worker run do with the image-check cache.
    target = tmp_path / "checks.json"
    with ProcessPoolExecutor(2) as pool:
        assert sorted(pool.map(_write_many, [(str(target), 0), (str(target), 1)])) == [0, 1]
    assert json.loads(target.read_text())["i"] == 199  # a whole file from one of them
    assert [p.name for p in tmp_path.iterdir()] == ["checks.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "report.json"
    atomic.write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic.replacing(target) as tmp:
            tmp.write_text('{"half":')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_temporary_name_keeps_the_suffix(tmp_path: Path):
    # model.save() and PIL pick the format from the suffix.
    a, b = atomic.temp_sibling(tmp_path / "model.keras"), atomic.temp_sibling(tmp_path / "model.keras")
    assert a.suffix == ".keras" and a.parent == tmp_path and a != b and a.name.startswith(".")
