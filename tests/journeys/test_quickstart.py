"""Journey: the README's quick start, `make demo` twice, then its Python snippet."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from journeys import readme
from journeys.journey import REPO, VENV, User, make_home

pytestmark = pytest.mark.slow


def test_make_demo_twice_then_the_readme_snippet(tmp_path: Path) -> None:
    if not (VENV / ".installed").exists():
        pytest.skip(f"{VENV} was not made by 'make install' (no .installed stamp), so 'make demo' would reinstall")
    home = make_home(tmp_path / "home")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, home / name)  # copy2: the stamp stays newer than pyproject.toml
    user = User(home)

    first = user.ok(readme.command("make demo"), timeout=900)
    assert first.last_line.startswith("test accuracy "), first.last_line
    assert float(first.last_line.split()[2].rstrip(";")) >= 0.95
    report = home / "runs" / "digits" / "report.json"
    before = report.read_bytes()
    for name in ("model.keras", "saved_model", "report.html", "run.json", "config.yaml"):
        assert (home / "runs" / "digits" / name).exists(), name

    second = user.ok("make demo", timeout=300)
    assert "nothing to train" in second.out, second.text[-2000:]
    assert "epoch 1/" not in second.text and "cannot be read" not in second.text
    assert second.last_line == first.last_line
    assert report.read_bytes() == before

    (snippet,) = [b for b in readme.python_blocks() if "saved_model" in b]  # the SavedModel example, as written
    (home / "snippet.py").write_text(snippet)
    out = user.ok(".venv/bin/python snippet.py").out
    assert out.startswith("[b'") and "3" in out.split("]")[0], out
