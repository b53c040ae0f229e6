"""Every bad input a user can make: one line on stderr, exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_folder

from imgtrain.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_one_line(rc: int, err: str, fragment: str) -> None:
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("imgtrain: error:"), err
    assert fragment in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(autouse=True)
def in_a_users_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command without --output writes runs/latest in the working directory: a folder of
    the test's own, so parallel tests never share one (nor write into the repository)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "img", per_class=4, size=8)


def base(folder: Path, tmp_path: Path) -> list[str]:
    return [
        "train",
        "--data",
        str(folder),
        "--output",
        str(tmp_path / "run"),
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--no-progress",
    ]


def test_missing_data_path(capsys, tmp_path):
    assert_one_line(
        *run_cli(capsys, "train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "r")), "does not exist"
    )


def test_a_mistyped_data_path_or_setting_is_said_before_tensorflow_loads(tmp_path):
    """``imgtrain train`` checks its flags, config and a local --data before importing
    TensorFlow (8 s on 2 cores), and ``prepare`` its numbers: the same one line, without the wait."""
    probe = "import sys; from imgtrain.cli import main; print(main(sys.argv[1:]), 'tensorflow' in sys.modules)"
    write_folder(tmp_path / "photos", per_class=2, size=8)
    for argv, said in (
        (["train", "--data", "phtos"], "data path"),
        (["train", "--data", "photos/red/red_000.png"], "is a file but not a .csv manifest"),
        (["train", "--data", "photos", "--set", "train.epochs=nan"], "must be an integer"),
        (["prepare", "--data", "photos", "--shard-size-mb", "nan"], "--shard-size-mb must be in (0, 65536]"),
        (["prepare", "--data", "photos", "--shard-size-mb", "1e400"], "--shard-size-mb must be in (0, 65536]"),
        (["prepare", "--data", "phtos"], "data path"),
        (["prepare", "--data", "photos", "--set", "data.split_seed=-1"], "data.split_seed must be an integer"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv, "--output", "runs/x"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.stdout.split() == ["2", "False"] and said in done.stderr, (done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_no_data_given(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "train", "--output", str(tmp_path / "r")), "no data given")


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line(*run_cli(capsys, "train", "--data", str(tmp_path / "empty")), "has no class subfolders")


def test_one_class(capsys, tmp_path):
    data = write_folder(tmp_path / "one", per_class=4, classes={"cats": (1, 2, 3)})
    assert_one_line(*run_cli(capsys, *base(data, tmp_path)), "a classifier needs at least two")


def test_unknown_model(capsys, folder, tmp_path):
    assert_one_line(*run_cli(capsys, *base(folder, tmp_path), "--model", "resnet"), "unknown model.name 'resnet'")


def test_unknown_optimizer(capsys, folder, tmp_path):
    assert_one_line(
        *run_cli(capsys, *base(folder, tmp_path), "--set", "train.optimizer.name=lamb"),
        "unknown train.optimizer.name 'lamb'",
    )


def test_unknown_config_key(capsys, folder, tmp_path):
    assert_one_line(
        *run_cli(capsys, *base(folder, tmp_path), "--set", "train.learning_rate=0.1"),
        "unknown config key 'train.learning_rate'",
    )


def test_malformed_yaml(capsys, folder, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 3\n")
    assert_one_line(*run_cli(capsys, *base(folder, tmp_path), "--config", str(cfg)), "is not valid YAML")


def test_malformed_csv(capsys, tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png\n")
    assert_one_line(*run_cli(capsys, "train", "--data", str(tmp_path / "m.csv")), "line 2 has 1 fields")


def test_label_missing_from_vocabulary(capsys, folder, tmp_path):
    (tmp_path / "m.csv").write_text(f"path,label\n{folder}/red/red_000.png,red\n{folder}/blue/blue_000.png,teal\n")
    assert_one_line(
        *run_cli(capsys, "train", "--data", str(tmp_path / "m.csv"), "--set", "data.label_vocabulary=[red, blue]"),
        "label 'teal'",
    )


def test_image_too_small_for_resnet(capsys, folder, tmp_path):
    assert_one_line(*run_cli(capsys, *base(folder, tmp_path), "--model", "resnet50"), "too small for resnet50")


def test_resnet_weights_file_missing(capsys, folder, tmp_path):
    argv = base(folder, tmp_path) + [
        "--model",
        "resnet50",
        "--image-size",
        "32",
        "--set",
        f"model.resnet50.weights={tmp_path}/w.h5",
    ]
    assert_one_line(*run_cli(capsys, *argv), "w.h5 does not exist")


def test_bad_image_with_fail_policy(capsys, folder, tmp_path):
    (folder / "red" / "x.png").write_bytes(b"nope")
    assert_one_line(*run_cli(capsys, *base(folder, tmp_path)), "bad image")


def test_warm_start_missing(capsys, folder, tmp_path):
    assert_one_line(*run_cli(capsys, *base(folder, tmp_path), "--warm-start", str(tmp_path / "other")), "--warm-start")


def test_argparse_mistakes_are_one_line(capsys):
    assert_one_line(*run_cli(capsys, "train", "--epochs", "many"), "invalid int value")


def test_evaluate_and_predict_need_a_run(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "evaluate", "--run", str(tmp_path)), "is not an imgtrain run")
    assert_one_line(*run_cli(capsys, "predict", "--run", str(tmp_path), str(tmp_path)), "has no model.keras")


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert "imgtrain 0." in capsys.readouterr().out
    for cmd in ("train", "evaluate", "predict"):
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert "--run" in out or "--data" in out


@pytest.mark.slow
def test_imagenet_weights_offline_is_one_line(tmp_path):
    """The real download path, with every proxy pointed at a closed local port: no network."""
    data = write_folder(tmp_path / "img", per_class=3, size=8)
    closed = "http://127.0.0.1:9"
    env = {
        **__import__("os").environ,
        "https_proxy": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "HTTP_PROXY": closed,
        "KERAS_HOME": str(tmp_path / "keras_home"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgtrain",
            "train",
            "--data",
            str(data),
            "--model",
            "resnet50",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "could not download the ImageNet weights" in proc.stderr and "model.resnet50.weights" in proc.stderr


def test_no_usable_temporary_directory_is_one_line(tmp_path):
    """A full disk under /tmp and /var/tmp (real tmpfs mounts, filled, in a mount namespace of
    the command's own): TensorFlow's import would fail in a traceback; the command says one line
    naming TMPDIR and exits 2."""
    script = (
        "mount -t tmpfs -o size=64k tmpfs /tmp && mount -t tmpfs -o size=64k tmpfs /var/tmp || exit 99; "
        "head -c 200000 /dev/zero > /tmp/fill 2>/dev/null; head -c 200000 /dev/zero > /var/tmp/fill 2>/dev/null; "
        f'cd /var/tmp && exec "{sys.executable}" -m imgtrain evaluate --run runs/none'
    )
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if done.returncode == 99 or "unshare:" in done.stderr:
        pytest.skip(f"cannot mount in a namespace of its own here (needs root): {done.stderr.strip()[:120]}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith("imgtrain: error: no usable temporary directory") and "TMPDIR" in line, line
