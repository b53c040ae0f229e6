"""A run directory nothing corrupts: finished runs, other data, two processes, damaged checkpoints,
numbers that are not finite, writes that must be whole. The tests that need a trained run copy one
shared run of two one-step epochs (``two_epochs``); a kill past early stopping is
tests/journeys/test_resume.py's."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import small, write_folder
from PIL import Image

from imgtrain import atomic, rundir, runlock
from imgtrain.errors import UserError
from imgtrain.run import train_run

# One step an epoch: the 36 images' train split fits in one batch.
ONE_STEP = ("train.batch_size=64",)


def weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(run / "model.keras", compile=False).get_weights()


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run of two one-step epochs (ckpt-1 and ckpt-2), trained with a relative
    --output from its folder as the README writes it: (that folder, the run directory). Tests
    copy the folder (``copied``) before they change anything."""
    home = tmp_path_factory.mktemp("two_epochs")
    data = write_folder(home / "images")
    cwd = os.getcwd()
    os.chdir(home)
    try:
        train_run(small(data, Path("runs/x"), ONE_STEP + ("train.epochs=2",)), progress=False)
    finally:
        os.chdir(cwd)
    return home, home / "runs" / "x"


def copied(two_epochs: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """The shared run's folder copied for one test: (its images, its run directory)."""
    home = tmp_path / "home"
    shutil.copytree(two_epochs[0], home, symlinks=True)
    return home / "images", home / "runs" / "x"


@pytest.mark.slow
def test_resume_refuses_other_data(two_epochs, tmp_path):
    first, run = copied(two_epochs, tmp_path)
    other_classes = write_folder(tmp_path / "b", per_class=12, classes={"x": (1, 2, 3), "y": (200, 100, 0)})
    more_images = write_folder(tmp_path / "c", per_class=15)
    config = (run / "config.yaml").read_text()
    with pytest.raises(UserError, match="trained on other data: its classes were"):
        train_run(small(other_classes, run, ONE_STEP + ("train.epochs=3",)), progress=False)
    with pytest.raises(UserError, match="trained on other data: its train split had"):
        train_run(small(more_images, run, ONE_STEP + ("train.epochs=3",)), progress=False)
    changed = tmp_path / "changed"
    shutil.copytree(first, changed)
    victim = sorted(changed.rglob("*.png"))[0]
    Image.new("RGB", (8, 8), (9, 99, 199)).save(victim)  # the same name, other pixels
    with pytest.raises(
        UserError, match=rf"1 of its files changed since it started .*: {victim.parent.name}/{victim.name}\)"
    ):
        train_run(small(changed, run, ONE_STEP + ("train.epochs=3",)), progress=False)
    assert (run / "config.yaml").read_text() == config  # nothing rewritten by the refused runs
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)  # the same files elsewhere: data.path may change
    assert train_run(small(moved, run, ONE_STEP + ("train.epochs=3",)), progress=False)["epochs_completed"] == 3


def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import time
from imgtrain import runlock
with runlock.hold({str(run)!r}):
    print("held", flush=True)
    time.sleep(30)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"is in use by imgtrain pid {holder.pid}"):
            with runlock.hold(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with runlock.hold(run):  # the kernel released the killed holder's lock
        pass


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back(two_epochs, tmp_path, capsys):
    images, run = copied(two_epochs, tmp_path)
    data_files = sorted((run / "checkpoints").glob("ckpt-2.data-*"))
    assert data_files
    data_files[0].write_bytes(data_files[0].read_bytes()[:10])  # truncated
    capsys.readouterr()
    summary = train_run(small(images, run, ONE_STEP + ("train.epochs=3",)), progress=False)
    out = capsys.readouterr().out
    assert "cannot be read" in out and "ckpt-1" in out
    assert summary["resumed_from_epoch"] == 1 and summary["epochs_completed"] == 3


def test_csv_weights_must_be_finite_and_not_all_zero(tmp_path, small_config):
    folder = write_folder(tmp_path / "img", per_class=4)
    files = sorted(folder.rglob("*.png"))
    for bad, message in (
        ("nan", "is not a finite number"),
        ("inf", "is not a finite number"),
        ("-1", "is not a finite number"),
    ):
        csv = tmp_path / f"{bad}.csv"
        csv.write_text(
            "path,label,weight\n"
            + "".join(f"{f},{f.parent.name},{bad if i == 3 else 1}\n" for i, f in enumerate(files))
        )
        with pytest.raises(UserError, match=message):
            train_run(small_config(csv, tmp_path / f"run-{bad}"), progress=False)
    zeros = tmp_path / "zeros.csv"
    zeros.write_text("path,label,weight\n" + "".join(f"{f},{f.parent.name},0\n" for f in files))
    with pytest.raises(UserError, match="every weight .* is 0"):
        train_run(small_config(zeros, tmp_path / "run-zero"), progress=False)


def test_csv_bom_and_duplicates(tmp_path):
    from imgtrain.run import prepare_data

    folder = write_folder(tmp_path / "img", per_class=6)
    files = sorted(folder.rglob("*.png"))
    rows = "".join(f"{f},{f.parent.name}\n" for f in files)
    csv = tmp_path / "bom.csv"
    csv.write_bytes(
        "\ufeffpath,label\n".encode("utf-8") + rows.encode() + f"{files[0]},{files[0].parent.name}\n".encode()
    )
    prep = prepare_data(small(csv, tmp_path / "run"), tmp_path / "run", progress=False)
    assert sum(prep.count(s) for s in ("train", "val", "test")) == len(files)  # the repeated line counted once
    assert any("more than once" in w for w in prep.warnings)  # what the run prints before training
    conflicting = tmp_path / "conflict.csv"
    conflicting.write_text("path,label\n" + rows + f"{files[0]},not-{files[0].parent.name}\n")
    with pytest.raises(UserError, match="twice with different entries"):
        train_run(small(conflicting, tmp_path / "run2"), progress=False)


def test_negative_or_nan_class_weights_and_learning_rates(image_folder, small_config, tmp_path):
    from imgtrain.config import Config

    for item in (
        "train.optimizer.learning_rate=.nan",
        "train.optimizer.learning_rate=.inf",
        "train.optimizer.learning_rate=-1",
    ):
        with pytest.raises(UserError, match="learning_rate must be a positive finite number"):
            Config.load(None, [item])
    with pytest.raises(UserError, match="class weights must be finite and >= 0"):
        train_run(small_config(image_folder, tmp_path / "r1", ("train.class_weights={red: -1}",)), progress=False)
    with pytest.raises(UserError, match="class weights must be finite and >= 0"):
        train_run(small_config(image_folder, tmp_path / "r2", ("train.class_weights={red: .nan}",)), progress=False)


def test_a_non_finite_loss_stops_the_run_naming_the_step(image_folder, small_config, tmp_path):
    run = tmp_path / "run"
    # Adam moves every weight by about the learning rate: step 1's loss is finite, step 2's is not.
    with pytest.raises(UserError, match=r"training loss became (nan|inf) at epoch 1, step 2"):
        train_run(
            small_config(image_folder, run, ("train.optimizer.learning_rate=1e30", "train.checkpoint.every_steps=1")),
            progress=False,
        )
    index = (run / "checkpoints" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-1"' in index  # step 1's checkpoint, none with NaN weights
    assert not (run / "run.json").exists()


def test_every_json_is_valid_json(tmp_path):
    path = tmp_path / "x.json"
    atomic.write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": 2.5})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == {
        "a": None,
        "b": [1.0, None],
        "c": 2.5,
    }


def test_predict_output_is_written_whole(tmp_path, monkeypatch):
    from imgtrain.predict import write_records

    out = tmp_path / "p.csv"
    out.write_text("old predictions\n")
    records = [{"path": "a.png", "top": [("cat", 0.9)]}]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import csv as csv_module

    monkeypatch.setattr(csv_module, "writer", full_disk)
    with pytest.raises(OSError):
        write_records(records, str(out))
    assert out.read_text() == "old predictions\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]  # no temporary left behind
    monkeypatch.undo()
    write_records(records, str(out))
    assert out.read_text().startswith("path,class_1,prob_1")
    write_records(records, str(tmp_path / "new" / "folder" / "p.csv"))  # made, as train's --output is
    assert (tmp_path / "new" / "folder" / "p.csv").read_text().startswith("path,class_1")
    with pytest.raises(UserError, match="cannot create the folder"):
        write_records(records, str(out / "below-a-file" / "p.csv"))


def test_prepare_removes_only_its_own_shards(tmp_path):
    from imgtrain.config import Config
    from imgtrain.prepare import prepare_dataset

    data = write_folder(tmp_path / "img", per_class=6)
    out = tmp_path / "out"
    cfg = Config.load(None, [f"data.path={data}"])
    prepare_dataset(cfg, out, progress=False, log=lambda _m: None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.tfrecord").write_bytes(b"user data")
    with pytest.raises(UserError, match="not empty and not an 'imgtrain prepare' output"):
        prepare_dataset(cfg, mine, progress=False, log=lambda _m: None)
    assert (mine / "precious.tfrecord").read_bytes() == b"user data"
    prepare_dataset(cfg, out, progress=False, log=lambda _m: None)  # a previous output is rewritten
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds notes.txt"):
        prepare_dataset(cfg, out, progress=False, log=lambda _m: None)


def test_a_truncated_shard_is_named(tmp_path):
    from imgtrain.config import Config
    from imgtrain.data.tfrecord import open_prepared
    from imgtrain.prepare import prepare_dataset

    data = write_folder(tmp_path / "img", per_class=6)
    out = tmp_path / "out"
    prepare_dataset(Config.load(None, [f"data.path={data}"]), out, progress=False, log=lambda _m: None)
    shard = sorted(out.glob("train-*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(UserError, match=f"prepared shard .*{shard.name} is .* bytes"):
        open_prepared(str(out))


def test_converted_images_follow_their_source(tmp_path):
    from PIL import Image

    from imgtrain.data.sources import Catalog, Example
    from imgtrain.data.validate import validate_catalog

    src = tmp_path / "a.bmp"
    Image.new("1", (8, 8), 1).save(src)  # 1-bit BMP: Pillow reads it, TensorFlow does not
    stat = os.stat(src)

    def converted() -> np.ndarray:
        cat = Catalog(
            ["a", "b"],
            [Example(str(src), "a.bmp", 0, 1.0, "train"), Example(str(src), "b.bmp", 1, 1.0, "train")],
            str(tmp_path),
            "folder",
        )
        cat = validate_catalog(cat, "fail", tmp_path / "cache", progress=False)
        return np.asarray(Image.open(cat.examples[0].path))

    assert converted().min() == 255
    Image.new("1", (8, 8), 0).save(src)  # changed in place, size and time kept
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert converted().max() == 0


@pytest.mark.slow
def test_predict_takes_what_train_converts(two_epochs, tmp_path):
    from PIL import Image

    from imgtrain.predict import predict_files

    odd = tmp_path / "odd.bmp"
    Image.new("1", (16, 16), 1).save(odd)
    records = predict_files(two_epochs[1], [str(odd)])
    assert len(records) == 1 and math.isclose(sum(records[0]["probabilities"]), 1.0, rel_tol=1e-4)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"bus": 4, "car": 4, "train": 4}, None),  # a class named train
        ({"train/cat": 4, "train/dog": 4, "bird": 4}, "mixes split folders (train/) with the class folder 'bird'"),
    ],
)
def test_split_named_class_folders(tmp_path, layout, message):
    from imgtrain.config import Config
    from imgtrain.data.sources import discover

    rng = np.random.default_rng(0)
    for folder, n in layout.items():
        (tmp_path / "d" / folder).mkdir(parents=True)
        for i in range(n):
            from PIL import Image

            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "d" / folder / f"{i}.png")
    cfg = Config.load(None, [f"data.path={tmp_path / 'd'}"])
    if message is None:
        assert discover(cfg.data).class_names == ["bus", "car", "train"]
    else:
        with pytest.raises(UserError, match=re.escape(message)):
            discover(cfg.data)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--seed", "-1"], "seed must be an integer from 0"),
        (["--set", "model.cnn.kernel_size=0"], "kernel_size >= 1"),
        (["--image-size", "100000"], "larger than 4096 pixels"),
    ],
)
def test_bad_numbers_are_one_line(capsys, tmp_path, argv, fragment):
    from imgtrain.cli import main

    data = write_folder(tmp_path / "img", per_class=4, size=8)
    rc = main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and fragment in err, err


def test_output_that_is_a_file_and_config_not_utf8(capsys, tmp_path):
    from imgtrain.cli import main

    data = write_folder(tmp_path / "img", per_class=4, size=8)
    (tmp_path / "file").write_text("x")
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "file"), "--epochs", "1"]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_bytes(b"seed: 1\n# \xff\xfe caf\xe9\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--data", str(data)]) == 2
    assert "is not UTF-8" in capsys.readouterr().err


def test_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    import errno

    from imgtrain import cli

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "history.csv"))

    monkeypatch.setattr(cli, "_dispatch", full)
    assert cli.main(["train", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on device writing" in err and "history.csv" in err


def test_a_batch_that_cannot_fit_is_refused_before_any_work():
    from imgtrain.config import Config
    from imgtrain.train.assembly import check_fits_in_memory

    big = Config.load(None, ["data.image_size=4000", "train.batch_size=64"])
    with pytest.raises(UserError, match="needs at least .* GiB for one training step"):
        check_fits_in_memory(big, memory_bytes=24 * 2**30)
    check_fits_in_memory(Config.load(None, ["data.image_size=224"]), memory_bytes=24 * 2**30)
    dnn = Config.load(None, ["model.name=dnn", "data.image_size=2048", "model.dnn.hidden_units=[4096]"])
    with pytest.raises(UserError, match="needs at least"):
        check_fits_in_memory(dnn, memory_bytes=24 * 2**30)


def small_disk(path: Path, size: str) -> Path:
    """A tmpfs of ``size`` mounted at ``path`` (the caller unmounts it); skips where mounting
    needs a root this process is not."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()[:120]}")
    return path


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_and_the_rerun_completes(tmp_path):
    """The run directory on a 2 MB tmpfs: the first checkpoint (about 4.6 MB) cannot be written."""
    disk = small_disk(tmp_path / "disk", "2m")
    try:
        data = write_folder(tmp_path / "img", per_class=10, size=16)
        cmd = [
            sys.executable,
            "-m",
            "imgtrain",
            "train",
            "--data",
            str(data),
            "--output",
            str(disk / "run"),
            "--image-size",
            "16",
            "--epochs",
            "2",
            "--no-progress",
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        full = subprocess.run(cmd, env=env, capture_output=True, text=True)
        errors = [line for line in full.stderr.splitlines() if line.startswith("imgtrain: error:")]
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
        assert len(errors) == 1 and f"no space left on device writing {disk / 'run' / 'checkpoints'}" in errors[0]
        leftovers = [p for p in (disk / "run").rglob("*") if "_temp" in p.name or p.name.startswith(".tmp-")]
        assert not leftovers
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads((disk / "run" / "run.json").read_text())["epochs_completed"] == 2
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
def test_resume_from_a_relative_output_in_another_working_directory(two_epochs, tmp_path, monkeypatch):
    """The README writes --output runs/x: the checkpoint index's names must not be joined twice
    (the shared run was trained with that relative --output; this resumes it from a copy)."""
    images, _ = copied(two_epochs, tmp_path)
    monkeypatch.chdir(tmp_path / "home")
    summary = train_run(small(images, Path("runs/x"), ONE_STEP + ("train.epochs=3",)), progress=False)
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_completed"] == 3


@pytest.mark.slow
def test_a_checkpoint_listed_but_missing_is_named_as_missing(two_epochs, tmp_path, capsys):
    images, run = copied(two_epochs, tmp_path)
    for f in (run / "checkpoints").glob("ckpt-2.*"):
        f.unlink()
    capsys.readouterr()
    summary = train_run(small(images, run, ONE_STEP + ("train.epochs=3",)), progress=False)
    out = capsys.readouterr().out
    assert f"checkpoint {run / 'checkpoints' / 'ckpt-2'} is listed in the index but its files are missing" in out
    assert summary["resumed_from_epoch"] == 1


@pytest.mark.slow
def test_a_rerun_removes_what_a_killed_write_left(two_epochs, tmp_path, capsys):
    images, run = copied(two_epochs, tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = run / f".tmp-{int(gone.stdout)}-0a1b2c3d-model.keras"  # as a SIGKILL mid-save leaves it
    shutil.copy(run / "model.keras", left)
    os.utime(left, (1, 1))
    capsys.readouterr()
    train_run(small(images, run, ONE_STEP + ("train.epochs=2",)), progress=False)
    assert not left.exists()
    assert f"removed 1 temporary file(s) an interrupted run left in {run}: {left.name}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_finished_run_is_replaced_only_when_asked(two_epochs, tmp_path, capsys):
    """Another setup is refused, with or without checkpoints to resume from; --overwrite
    replaces the run and leaves the user's own files."""
    images, run = copied(two_epochs, tmp_path)
    # --overwrite can leave nothing of the earlier run: everything a run writes is in rundir.OUTPUTS
    written = {p.name for p in run.iterdir()} - {rundir.DATA_CACHE, rundir.LOCK}
    assert written <= set(rundir.OUTPUTS), written - set(rundir.OUTPUTS)
    assert rundir.SAVED_MODEL not in written and rundir.MODEL in written  # tiny's export.saved_model=false
    with pytest.raises(UserError, match=r"holds a run trained with model.cnn.filters.*or --overwrite to replace it"):
        train_run(small(images, run, ONE_STEP + ("train.epochs=2", "model.cnn.filters=[4]")), progress=False)
    shutil.rmtree(run / "checkpoints")
    before = {name: (run / name).read_bytes() for name in ("model.keras", "config.yaml", "report.json")}
    other = small(images, run, ONE_STEP + ("train.epochs=1", "model.name=dnn"))
    with pytest.raises(
        UserError,
        match=r"holds a finished run \(model.keras, run.json, report.json\) with no "
        r"checkpoints to resume from.*--overwrite to replace it",
    ):
        train_run(other, progress=False)
    assert {name: (run / name).read_bytes() for name in before} == before

    (run / "notes.txt").write_text("the user's own file")
    (run / "logs" / "notes.md").write_text("the user's own file, among TensorBoard's")
    # Inside the run's folders, --overwrite knows every file a run writes, and only those.
    files = [p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()]
    assert rundir.overwritten(files)[1] == ["logs/notes.md"]
    capsys.readouterr()
    summary = train_run(other, progress=False, overwrite=True)
    said = capsys.readouterr().out
    assert "--overwrite: removed the earlier run's" in said
    assert f"--overwrite: left 1 file(s) in {run} that imgtrain did not write: logs/notes.md" in said, said
    assert (run / "logs" / "notes.md").exists()
    assert summary["epochs_completed"] == 1 and summary.get("resumed_from_epoch") is None
    assert (run / "model.keras").read_bytes() != before["model.keras"]
    assert "dnn" in (run / "config.yaml").read_text()
    assert (run / "notes.txt").read_text() == "the user's own file"


def test_a_write_that_names_no_file_names_the_destination(capsys, tmp_path, monkeypatch):
    import errno

    from imgtrain import cli

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write through an open file raises it

    monkeypatch.setattr(cli, "_dispatch", full)
    assert cli.main(["predict", "--run", "runs/x", "photos/", "--output", "out/p.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on device writing into out/p.csv" in err
    assert "checkpoint" not in err  # training's advice is for training
    with pytest.raises(OSError) as raised, atomic.replacing(tmp_path / "report.json") as tmp:
        with open(tmp, "w") as f:
            f.write("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.filename == str(tmp_path / "report.json")


@pytest.mark.slow
def test_predict_onto_a_real_full_disk_names_the_file(two_epochs, tmp_path):
    copied(two_epochs, tmp_path)
    tmp_path = tmp_path / "home"  # the run is runs/x, its images are images/
    disk = small_disk(tmp_path / "disk", "64k")
    try:
        with open(disk / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 1024)
            except OSError:
                pass  # the disk is full
        cmd = [sys.executable, "-m", "imgtrain", "predict", "--run", "runs/x", "images", "--output", "disk/p.csv"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        full = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
        errors = [line for line in full.stderr.splitlines() if line.startswith("imgtrain: error:")]
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
        assert len(errors) == 1 and "no space left on device writing disk/p.csv" in errors[0], errors
        assert "checkpoint" not in errors[0]
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no half-written file left
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
def test_the_resampler_is_recorded_and_a_resume_keeps_it_or_says_why_not(tmp_path, monkeypatch):
    """auto becomes the kernel the run used, in config.yaml; a resume where OpenCV is gone, or
    told the other kernel, is refused in one line instead of switching kernels silently."""
    pytest.importorskip("cv2")
    from imgtrain.data import geometry

    images = write_folder(tmp_path / "images")
    flips = ONE_STEP + ("data.augment.horizontal_flip=true",)
    train_run(small(images, tmp_path / "run", flips + ("train.epochs=1",)), progress=False)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "resampler: opencv" in saved and "resampler: auto" not in saved
    with pytest.raises(UserError, match="data.augment.resampler='opencv', not 'tensorflow'"):
        train_run(small(images, tmp_path / "run", flips + ("data.augment.resampler=tensorflow",)), progress=False)
    monkeypatch.setattr(geometry, "_cv2", lambda: None)  # as on a machine without OpenCV
    with pytest.raises(
        UserError,
        match=r"^this run resamples with OpenCV \(its config.yaml\), but OpenCV is not installed here; "
        r"pip install opencv-python-headless$",
    ):
        train_run(small(images, tmp_path / "run", flips), progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved


def _remove_while_written(folder: Path) -> None:
    """``rm -rf`` racing the run's own writes: a file it adds mid-walk leaves the folder "not
    empty", as a user's ``rm -rf`` would; like the user, remove again until it is gone."""
    for _ in range(100):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"{folder} kept coming back: the run rebuilds its removed directory")


@pytest.mark.slow
def test_a_run_directory_removed_under_the_run_ends_it_in_one_line(tmp_path):
    """``rm -rf`` of the run directory while it trains: the run notices at its next checkpoint,
    says so in one line and exits 2, instead of rebuilding the folder and finishing without
    its config, fingerprint and lock."""
    import tiny

    write_folder(tmp_path / "photos", per_class=24)
    argv = [sys.executable, "-m", "imgtrain", "train", "--data", "photos", "--output", "runs/x", "--epochs", "30"]
    argv += ["--no-progress", *tiny.flags().split()]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            _remove_while_written(tmp_path / "runs/x")
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "runs/x was removed or replaced while this run trained in it" in err, err
    assert "epoch 30/" not in out and not (tmp_path / "runs/x/run.json").exists()
