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


def _a_pid_that_is_gone() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_temporaries_of_a_process_that_is_gone_are_removed(tmp_path: Path):
    import os
    import time

    gone = _a_pid_that_is_gone()
    orphan_file = tmp_path / f".tmp-{gone}-0123abcd-model.keras"
    orphan_dir = tmp_path / f".tmp-{gone}-89abcdef-saved_model"
    mine = atomic.temp_sibling(tmp_path / "report.json")  # this process is alive
    for path in (orphan_file, mine, tmp_path / "model.keras", tmp_path / ".tmp-notes.txt"):
        path.write_text("x")
    orphan_dir.mkdir()
    (orphan_dir / "saved_model.pb").write_text("x")
    started = time.time() + 1
    newer = tmp_path / f".tmp-{gone}-fedcba98-history.csv"  # written after the run started: kept
    newer.write_text("x")
    os.utime(newer, (started + 5, started + 5))

    removed = atomic.remove_orphans(tmp_path, before=started)
    assert sorted(removed) == sorted([orphan_file.name, orphan_dir.name])
    assert not orphan_file.exists() and not orphan_dir.exists()
    for kept in (mine, newer, tmp_path / "model.keras", tmp_path / ".tmp-notes.txt"):
        assert kept.exists(), kept
    assert atomic.remove_orphans(tmp_path / "missing", before=started) == []
