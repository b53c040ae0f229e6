"""Journey: a command that worked from one folder works from any. The run directory moved or
copied elsewhere, names with spaces and non-ASCII letters, a config file in another folder."""

from __future__ import annotations

import shlex
import shutil

import pytest
import yaml

from journeys import readme
from journeys.journey import MID_EPOCH, REPO, SMALL, TRAIN, User, fingerprint

pytestmark = pytest.mark.slow


def test_a_run_directory_moved_then_used_from_its_new_place(trained_copy: User) -> None:
    user = trained_copy  # runs/photos: the README's train command, 3 epochs
    (user.cwd / "archive").mkdir()
    shutil.move(str(user.cwd / "runs/photos"), str(user.cwd / "archive/photos"))

    assert user.ok(".venv/bin/imgtrain evaluate --run archive/photos").last_line.startswith("test accuracy ")
    user.ok(".venv/bin/imgtrain predict --run archive/photos photos/ --output moved.csv")
    assert (user.cwd / "moved.csv").stat().st_size > 0
    user.ok(".venv/bin/imgtrain export --run archive/photos --format keras --output exported")
    assert any((user.cwd / "exported").iterdir())
    more = user.ok(f"{TRAIN} {SMALL} {MID_EPOCH} --epochs 4 --output archive/photos")  # TRAINED's settings
    assert "3 epoch(s) done, continuing at epoch 4" in more.out, more.text[-2000:]
    assert not (user.cwd / "runs/photos").exists(), "the resume wrote to the old place"


def test_a_run_directory_copied_to_another_machine_folder(
    trained_copy: User, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """As when a run is copied off a cluster volume: another user folder, the data beside it.
    (predict and export from a run in a new place: the moved run's journey above.)"""
    user = trained_copy  # runs/photos: the README's train command, 3 epochs
    other = User(tmp_path_factory.mktemp("other"))
    (other.cwd / ".venv").symlink_to(user.cwd / ".venv")
    shutil.copytree(user.cwd / "runs/photos", other.cwd / "copied run")
    shutil.copytree(user.cwd / "photos", other.cwd / "photos")
    shutil.rmtree(user.cwd / "runs")  # nothing left where the run was made
    shutil.move(str(user.cwd / "photos"), str(user.cwd / "photos-gone"))

    run = shlex.quote("copied run")
    assert other.ok(f".venv/bin/imgtrain evaluate --run {run} --data photos/").last_line.startswith("test accuracy ")
    more = other.ok(
        f".venv/bin/imgtrain train --data photos/ --model cnn --output {run} {SMALL} {MID_EPOCH} --epochs 4"
    )
    assert "continuing at epoch 4" in more.out, more.text[-2000:]


def test_a_config_file_in_another_folder_with_relative_paths_and_names_with_spaces(user: User) -> None:
    """The rule (README and --help): relative paths are relative to the working directory. Flags
    override the config, with names that have spaces and non-ASCII letters: the run is the same
    one, then evaluated, predicted from and found finished under those names."""
    help_text = user.ok(".venv/bin/imgtrain train --help").out
    assert "relative to the working directory" in " ".join(help_text.split())
    assert "relative to the working directory" in " ".join((REPO / "README.md").read_text().split())

    (user.cwd / "configs").mkdir()
    cfg = {
        "seed": 3,
        "output": "runs/cfg",
        "data": {"path": "photos", "image_size": [16, 16]},
        "model": {"name": "cnn", "cnn": {"filters": [8], "convs_per_block": 1}},
        "train": {"epochs": 2, "batch_size": 8},
    }
    (user.cwd / "configs/small.yaml").write_text(yaml.safe_dump(cfg))
    first = user.ok(".venv/bin/imgtrain train --config configs/small.yaml --no-progress")
    assert (user.cwd / "runs/cfg/report.json").exists(), first.text[-2000:]
    assert not (user.cwd / "configs/runs").exists() and not (user.cwd / "configs/photos").exists()
    recorded = yaml.safe_load((user.cwd / "runs/cfg/config.yaml").read_text())
    assert recorded["output"] == str(user.cwd / "runs/cfg") and recorded["data"]["path"] == str(user.cwd / "photos")

    # the README's form: cfg.yaml in the working directory, imgtrain on PATH; the same images
    # in a folder whose name has spaces and accents, a run directory named alike
    (user.cwd / "cfg.yaml").write_text(yaml.safe_dump({**cfg, "output": "runs/x"}))
    shutil.copytree(user.cwd / "photos", user.cwd / "mes photos été")
    data, run = shlex.quote("mes photos été/"), shlex.quote("runs/Ünïcode run 1")
    names = f"--data {data} --output {run} --no-progress"
    user.ok(readme.command("imgtrain train --config cfg.yaml") + f" {names}")
    assert fingerprint(user.cwd / "runs/Ünïcode run 1") == fingerprint(user.cwd / "runs/cfg")
    assert (user.cwd / "runs/Ünïcode run 1/report.html").exists() and not (user.cwd / "runs/x").exists()
    user.ok(f".venv/bin/imgtrain evaluate --run {run}")
    out = user.ok(f".venv/bin/imgtrain predict --run {run} {data} --output 'prédictions ü.json'")
    assert (user.cwd / "prédictions ü.json").exists(), out.text[-2000:]

    # from a subfolder, the same config names that subfolder's photos/ and runs/
    sub = user.cwd / "sub"
    sub.mkdir()
    missing = user.run("../.venv/bin/imgtrain train --config ../configs/small.yaml --no-progress", cwd=sub)
    assert missing.code != 0 and "photos" in missing.last_line and "Traceback" not in missing.text
    assert missing.err.strip().splitlines() == [missing.last_line], missing.err  # one line, all of stderr
