"""The storage seam against a real S3 server (SeaweedFS on 127.0.0.1): what reaches a bucket,
in which order, and the one line for a bucket that cannot be used. The journeys with real
trainings, kills and a second machine are in tests/journeys/test_buckets.py."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from buckets import READER, S3Server

from imgtrain.cli import main
from imgtrain.errors import UserError
from imgtrain.storage import places, stage, stream
from imgtrain.storage.mirror import RunMirror


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    server.filesystem().mkdir("runs")
    yield server
    server.stop()


@pytest.fixture
def as_user(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(places.CACHE_ENV, str(tmp_path / "cache"))
    return s3


def _save(manager: tf.train.CheckpointManager, var: tf.Variable, value: float, run: Path) -> None:
    var.assign(value)
    manager.save()
    (run / "history.csv").write_text(f"epoch\n{value}\n")


def _restored(url: str, local: Path) -> float:
    """What a resume on an empty machine restores from the bucket (NaN: nothing to resume)."""
    mirror = RunMirror(url, local)
    mirror.pull(lambda _m: None)
    var = tf.Variable(float("nan"))
    found = tf.train.latest_checkpoint(str(local / "checkpoints"))
    if found is None:
        return float("nan")
    tf.train.Checkpoint(v=var).restore(found).assert_existing_objects_matched()
    return float(var.numpy())


class _Cut(Exception):
    pass


def _cut_after(mirror: RunMirror, requests: int) -> None:
    """Make ``mirror``'s client fail at its request number ``requests`` (0-based): a kill there."""
    calls = {"n": 0}
    for name in ("put_file", "pipe_file", "rm_file"):
        real = getattr(mirror.fs, name)

        def call(*args, _real=real, _name=name, **kwargs):
            if calls["n"] == requests:
                raise _Cut(_name)
            calls["n"] += 1
            return _real(*args, **kwargs)

        setattr(mirror.fs, name, call)


def test_a_push_cut_at_any_request_leaves_the_last_checkpoint_or_the_new_one(as_user: S3Server, tmp_path: Path):
    """Every request of a push is a kill point (uploads, the state file, the old checkpoint's
    deletion): after each, a machine with an empty disk resumes from a whole checkpoint, the
    previous one until the state file names the new one."""
    first, second = tmp_path / "first", tmp_path / "second"
    var = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(v=var)  # one object: its save counter names ckpt-1, then ckpt-2
    _save(tf.train.CheckpointManager(checkpoint, str(first / "checkpoints"), max_to_keep=1), var, 1.0, first)
    shutil.copytree(first, second)
    manager = tf.train.CheckpointManager(checkpoint, str(second / "checkpoints"), max_to_keep=1)
    _save(manager, var, 2.0, second)  # max_to_keep=1: ckpt-1 is pruned here, still in the bucket
    seen = []
    for point in range(20):
        url, run = f"s3://runs/cut-{point}", tmp_path / f"run-{point}"
        shutil.copytree(first, run)
        RunMirror(url, run).push()
        shutil.rmtree(run / "checkpoints")
        shutil.copytree(second / "checkpoints", run / "checkpoints")
        shutil.copy2(second / "history.csv", run / "history.csv")
        mirror = RunMirror(url, run)
        _cut_after(mirror, point)
        try:
            mirror.push()
            done = True
        except _Cut:
            done = False
        seen.append(_restored(url, tmp_path / f"fresh-{point}"))
        assert seen[-1] in (1.0, 2.0), f"cut at request {point}: restored {seen[-1]}"
        if done:
            break
    assert done and len(seen) >= 6, f"a push of one checkpoint took {len(seen)} requests"
    assert seen == sorted(seen) and seen[0] == 1.0 and seen[-1] == 2.0, seen
    names = {p.rsplit("/", 1)[-1] for p in as_user.filesystem().find(f"runs/cut-{point}/checkpoints")}
    assert not any(n.startswith("ckpt-1.") for n in names), f"the pruned checkpoint stayed: {names}"


def test_a_local_copy_ahead_of_its_bucket_is_kept_and_sent(as_user: S3Server, tmp_path: Path):
    url = "s3://runs/ahead"
    run = tmp_path / "run"
    var = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=var), str(run / "checkpoints"), max_to_keep=2)
    _save(manager, var, 1.0, run)
    RunMirror(url, run).push()
    _save(manager, var, 2.0, run)  # not uploaded: the bucket was out of reach
    mirror = RunMirror(url, run)
    assert mirror.pending() == [
        "checkpoints/checkpoint",
        "checkpoints/ckpt-2.data-00000-of-00001",
        "checkpoints/ckpt-2.index",
        "history.csv",
    ]
    mirror.pull(lambda _m: None)  # the rerun on this machine
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-2")
    mirror.push()
    assert mirror.pending() == []
    assert _restored(url, tmp_path / "elsewhere") == 2.0


def test_staged_data_is_fetched_once_follows_the_bucket_and_fits_the_disk(
    as_user: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fs = as_user.filesystem()
    for name, body in {"a/1.png": b"one", "a/2.png": b"two", "b/3.png": b"three"}.items():
        fs.pipe_file(f"runs/data/{name}", body)
    said: list[str] = []
    local = stage.stage_folder("s3://runs/data", said.append)
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.png")) == ["a/1.png", "a/2.png", "b/3.png"]
    assert said and "staging 3 of 3" in said[0]
    stage.stage_folder("s3://runs/data", said.append)
    assert len(said) == 1, "staged again with nothing changed"
    spare = stage.SPARE_BYTES
    monkeypatch.setattr(stage, "SPARE_BYTES", 1 << 62)  # a disk too small for one more byte
    fs.pipe_file("runs/data/a/1.png", b"changed!")
    with pytest.raises(
        UserError, match=r"staging s3://runs/data needs 0\.00 GiB, plus \d+ GiB kept free for the run, and .* GiB free"
    ):
        stage.stage_folder("s3://runs/data", said.append)
    monkeypatch.setattr(stage, "SPARE_BYTES", spare)
    fs.pipe_file("runs/data/a/1.png", b"changed")
    fs.rm_file("runs/data/b/3.png")
    stage.stage_folder("s3://runs/data", said.append)
    assert "staging 1 of 2" in said[-1]
    assert (local / "a/1.png").read_bytes() == b"changed" and not (local / "b/3.png").exists()
    # Cut short (here: an object gone between the listing and its fetch), staging resumes where it
    # stopped: what it fetched whole is not fetched again. Each copy has its object's time.
    monkeypatch.setattr(stage, "BATCH", 1)
    for name in ("c/4.png", "c/5.png", "d/6.png"):
        fs.pipe_file(f"runs/data/{name}", name.encode())
    listing = stage.list_folder("s3://runs/data")
    fs.rm_file("runs/data/d/6.png")
    with pytest.raises(UserError):
        stage.stage_listing(listing, local, said.append)
    assert "staging 3 of 5" in said[-1]
    stage.stage_folder("s3://runs/data", said.append)
    assert "staging 3 of 5" in said[-1], "fetched again what the cut-short staging had fetched"
    assert (local / "c/5.png").read_bytes() == b"c/5.png"
    listing = stage.list_folder("s3://runs/data")
    assert {rel: stage.file_stamp(local / rel) for rel in listing.stamps} == listing.stamps


@pytest.mark.parametrize(
    "case",
    [
        "no credentials",
        "a missing bucket",
        "a read-only bucket",
        "s3fs not installed",
        "another scheme",
        "an endpoint without its scheme",
        "a name no bucket can have",
        "a name no bucket has today",
        "a server that is not a storage service",
        "a cache folder it cannot write",
    ],
)
def test_a_bucket_it_cannot_use_is_one_line_and_exit_2(
    case: str, as_user: S3Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
):
    output, expected = "s3://runs/refused", ""
    if case == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        expected = "no credentials to write the run to s3://runs/refused: set AWS_ACCESS_KEY_ID"
    elif case == "a missing bucket":
        output = "s3://no-such-bucket/run"
        expected = "the bucket no-such-bucket of s3://no-such-bucket/run does not exist: create it"
    elif case == "a read-only bucket":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER[0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER[1])
        expected = "access denied to write the run to s3://runs/refused"
    elif case == "an endpoint without its scheme":
        monkeypatch.setenv("AWS_ENDPOINT_URL", as_user.endpoint.removeprefix("http://"))
        expected = f"AWS_ENDPOINT_URL='{as_user.endpoint[7:]}' is not an endpoint URL; write it with its scheme"
    elif case == "a name no bucket can have":
        output = "s3://ab/run"
        expected = "output is s3://ab/run, and 'ab' cannot be a bucket's name: a name has 3 to 63 lowercase letters"
    elif case == "a name no bucket has today":  # S3's older buckets may have such names: the service decides
        output = "s3://Bad_Bucket/run"
        expected = "the bucket Bad_Bucket of s3://Bad_Bucket/run does not exist, and a bucket's name has 3 to 63"
    elif case == "a server that is not a storage service":
        server = _answering_404()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        expected = "answered Not Found to write the run to s3://runs/refused without naming a missing bucket: check"
    elif case == "a cache folder it cannot write":
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv(places.CACHE_ENV, str(tmp_path / "a-file" / "cache"))
        expected = "cannot write imgtrain's local copy of s3://runs/refused under"
    elif case == "s3fs not installed":
        monkeypatch.setitem(sys.modules, "s3fs", None)
        expected = "s3://runs/refused needs s3fs, which is not installed; pip install 'imgtrain[s3]'"
    else:
        output = "hdfs://cluster/run"
        expected = "output is hdfs://cluster/run, a hdfs:// URL; imgtrain reads and writes local paths, s3:// and gs://"
    data = tmp_path / "photos"
    for i in range(2):
        (data / "red").mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(data / "red" / f"{i}.png"), tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)))
    code = main(["train", "--data", str(data), "--output", output, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert expected in err[0], err[0]


def _answering_404():
    """An HTTP server on 127.0.0.1 that answers every request 404 (a web server, not storage)."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = answer

        def log_message(self, *_args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_uploads_a_killed_run_left_unfinished_are_aborted_and_only_its_own(as_user: S3Server, tmp_path: Path):
    fs = as_user.filesystem()
    for key in ("left/checkpoints/ckpt-3.data-00000-of-00001", "other/model.keras"):
        fs.call_s3("create_multipart_upload", Bucket="runs", Key=key)
    assert RunMirror("s3://runs/left", tmp_path / "run").abort_leftover_uploads() == 1
    assert [u["Key"] for u in fs.list_multipart_uploads("runs")] == ["other/model.keras"]


def test_a_second_writer_is_refused_until_the_lease_is_stale_or_its_process_gone(as_user: S3Server):
    from datetime import timedelta

    from imgtrain.errors import UserError
    from imgtrain.storage.lease import STALE_SECONDS, Lease
    from imgtrain.storage.urls import modified

    fs = as_user.filesystem()
    first, second = Lease(fs, "runs/leased", "s3://runs/leased"), Lease(fs, "runs/leased", "s3://runs/leased")
    first.take(None)
    renewed = modified(fs.info("runs/leased/.lease.json"))
    with pytest.raises(UserError, match=r"s3://runs/leased is in use by process \d+ on "):
        second.take(renewed + timedelta(seconds=5))
    second.take(renewed + timedelta(seconds=STALE_SECONDS + 1))  # not renewed for a minute: taken over
    with pytest.raises(UserError, match="is in use"):  # the new holder's lease is fresh
        first.take(modified(fs.info("runs/leased/.lease.json")) + timedelta(seconds=5))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    second.mine["pid"] = int(gone.stdout)  # the holder, on this host, has exited
    second.renew()
    first.take(renewed)
    first.release()
    assert not fs.exists("runs/leased/.lease.json")


def test_the_bench_reads_bucket_images_and_prepared_shards_against_local_disk(as_user: S3Server, tmp_path: Path):
    """The bench's bucket figures: images read as the two modes read them; prepared shards
    streamed from an empty cache and copied first, through the proxy that holds each request
    20 ms (a call through it takes at least that), each against local disk."""
    from conftest import write_folder

    from imgtrain.bench.buckets import bench_bucket_data, bench_bucket_shards
    from imgtrain.bench.latency import delayed
    from imgtrain.bench.report import format_table
    from imgtrain.bench.synthetic import QUICK

    fs = as_user.filesystem()
    for i in range(20):
        fs.pipe_file(f"runs/bench/c{i % 2}/{i}.jpg", bytes(2000))
    local, figures = bench_bucket_data("s3://runs/bench", tmp_path, lambda _m: None)
    assert figures["files"] == 20 and len(list(local.rglob("*.jpg"))) == 20
    for key in ("streamed", "staged_once"):
        assert figures[key]["images_per_sec"] > 0 and figures[key]["baseline_images_per_sec"] > 0, figures

    write_folder(tmp_path / "photos", per_class=24, size=32)
    assert main(["prepare", "--data", str(tmp_path / "photos"), "--output", str(tmp_path / "prep"),
                 "--shard-size-mb", "0.01", "--no-progress"]) == 0  # fmt: skip
    fs.put(str(tmp_path / "prep"), "runs/bench-prep", recursive=True)
    with delayed("s3://runs/bench-prep", 20):
        began = time.perf_counter()
        stream.client("s3://runs/bench-prep").info("runs/bench-prep/manifest.json")
        assert time.perf_counter() - began >= 0.02
        shards = bench_bucket_shards("s3://runs/bench-prep", QUICK, True, tmp_path / "b", lambda _m: None)
    assert os.environ["AWS_ENDPOINT_URL"] == as_user.endpoint  # the proxy's address was the block's only
    assert shards["shards"] > 1 and shards["records"]["transport_cpu_ms"] >= 0 and shards["images_per_pass"] == 256
    for key in ("pipeline", "records"):
        assert shards[key]["images_per_sec"] > 0 and shards[key]["baseline_images_per_sec"] > 0, shards
    assert 0 < shards["first_batch_seconds"]["streamed"] and 0 < shards["first_batch_seconds"]["copied_first"]
    assert "bucket.shards streamed (pipeline)" in format_table({"bucket": {"shards": shards}, "latency_ms": 20})


def test_a_manifest_and_prepared_shards_in_a_bucket_are_read_as_local_ones(
    as_user: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture
):
    from conftest import write_folder

    from imgtrain.config import Config
    from imgtrain.data.source import placed
    from imgtrain.data.sources import discover
    from imgtrain.data.tfrecord import is_prepared

    def on_disk(cfg: Config, progress: bool) -> Config:
        return placed(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stage="always")), progress)[0]

    fs = as_user.filesystem()
    photos = write_folder(tmp_path / "photos", per_class=4)
    fs.put(str(photos), "runs/manifest/images", recursive=True)
    rows = [f"images/{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(photos.rglob("*.png"))]
    fs.pipe_file("runs/manifest/labels.csv", ("path,label\n" + "\n".join(rows) + "\n").encode())
    cfg = on_disk(Config.load(None, ["data.path=s3://runs/manifest/labels.csv"]), progress=False)
    catalog = discover(cfg.data)
    assert len(catalog.examples) == 12 and catalog.class_names == ["blue", "green", "red"]
    assert all(Path(e.path).is_file() for e in catalog.examples)

    streamed = ["--set", "data.stage=never"]  # prepare reads the bucket's images as training would
    code = main(
        [
            "prepare",
            "--data",
            "s3://runs/manifest/labels.csv",
            "--output",
            "s3://runs/shards",
            *streamed,
            "--no-progress",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert fs.exists("runs/shards/manifest.json")
    assert out.strip().splitlines()[-1].startswith("prepared s3://runs/shards: 3 classes")  # the URL, not a copy
    assert is_prepared(on_disk(Config.load(None, ["data.path=s3://runs/shards"]), progress=False).data.path)

    fs.pipe_file("runs/bad.csv", b"path,label\n/etc/passwd,red\n")
    with pytest.raises(UserError, match="lists files by paths relative to it"):
        on_disk(Config.load(None, ["data.path=s3://runs/bad.csv"]), progress=False)


def test_prepared_shards_in_a_bucket_stream_through_a_bounded_cache_in_the_local_order(
    as_user: S3Server, tmp_path: Path
):
    """Prepared shards in a bucket are not copied before training: each is fetched as the
    pipeline opens it (and the next while it is read), the cache folder never holds more than
    its limit (sampled as two epochs are read with room for the 8 shards read at once and one
    more), the batches are those of the same shards on local disk, bit for bit; with room for
    every shard the second epoch fetches nothing; a limit that cannot hold the shards read at
    once is one line naming both sizes."""
    import threading

    from conftest import write_folder

    from imgtrain.config import Config
    from imgtrain.data import source
    from imgtrain.data.pipeline import EpochPlan, Shard

    write_folder(tmp_path / "photos", per_class=16, size=8)
    assert main(["prepare", "--data", str(tmp_path / "photos"), "--output", str(tmp_path / "prep"),
                 "--shard-size-mb", "0.0006", "--no-progress"]) == 0  # fmt: skip
    fs = as_user.filesystem()
    fs.put(str(tmp_path / "prep"), "runs/prep", recursive=True)
    sizes = sorted(p.stat().st_size for p in (tmp_path / "prep").glob("train-*.tfrecord"))
    assert len(sizes) > 9, sizes  # more shards than are read at once

    def batches(data: str, run: str, extra: tuple = ()) -> tuple[list, object]:
        cfg = Config.load(None, [f"data.path={data}", "data.image_size=[8,8]", *extra])
        src = source.get(cfg, tmp_path / run, progress=False)
        got = [
            [np.asarray(t).tobytes() for t in batch]
            for epoch in (0, 1)
            for batch in src.train_dataset(cfg.data, EpochPlan(5, epoch, 4))
        ]
        return got, src

    local, _ = batches(str(tmp_path / "prep"), "local")
    limit = 9 * sizes[-1] + 100
    peak, reading = [0], threading.Event()

    def sample(folder: Path) -> None:
        while not reading.is_set():
            files = list(folder.glob("*.tfrecord")) if folder.is_dir() else []
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], sum(p.stat().st_size for p in files))
            time.sleep(0.002)

    cfg = Config.load(None, ["data.path=s3://runs/prep"])
    folder = source.placed(cfg, progress=False)[1].root / ".streamed" / "worker-0-of-1"
    sampler = threading.Thread(target=sample, args=(folder,), daemon=True)
    sampler.start()
    try:
        streamed, src = batches("s3://runs/prep", "streamed", (f"data.shard_cache_gb={limit / 2**30!r}",))
    finally:
        reading.set()
        sampler.join()
    assert streamed == local
    cache = src.opener(Shard())
    assert 0 < peak[0] <= limit and cache.most_open == 8, (peak[0], limit, cache.most_open)
    # The second epoch fetched again all that the cache could not keep (the shards do not all
    # fit), and at most a few more: the padding reads a shard again, and the last ones fetch the
    # next epoch's first ones ahead (its order is another: those may still be in the cache).
    fetched = cache.fetched_bytes
    assert 2 * sum(sizes) - limit <= fetched <= 2 * sum(sizes) + 9 * sizes[-1], (fetched, sum(sizes), limit)

    roomy, src = batches("s3://runs/prep", "roomy", ("data.shard_cache_gb=1",))
    assert roomy == local and src.opener(Shard()).fetched_bytes <= sum(sizes)  # what the first read left is kept

    small = 8 * sizes[-1] / 2**30
    with pytest.raises(UserError, match=r"data.shard_cache_gb is 0\.00 GiB, but reading s3://runs/prep holds 9 of its"):
        batches("s3://runs/prep", "small", (f"data.shard_cache_gb={small!r}",))

    # A shard damaged in the bucket (same size, a record's bytes changed): one line naming its
    # URL, and its local copy removed so that the same command fetches it anew.
    from imgtrain.data.tfrecord import damaged_line

    bad = sorted((tmp_path / "prep").glob("train-*.tfrecord"))[1]
    data = bytearray(bad.read_bytes())
    data[40:44] = b"XXXX"
    fs.pipe(f"runs/prep/{bad.name}", bytes(data))
    with pytest.raises(tf.errors.DataLossError) as lost:
        batches("s3://runs/prep", "roomy", ("data.shard_cache_gb=1",))
    line = damaged_line(lost.value)
    assert line and line.startswith(f"prepared shard s3://runs/prep/{bad.name} is damaged (corrupted record"), line
    assert "local copy was removed" in line and not (folder / bad.name).exists()

    # The same shard gone from the bucket after the data was opened, mid-epoch: its fetch is
    # tried again, then the command's one line (exit 75) names it and says to run it again.
    cfg = Config.load(None, ["data.path=s3://runs/prep", "data.image_size=[8,8]", "data.shard_cache_gb=1"])
    src = source.get(cfg, tmp_path / "gone", progress=False)
    fs.rm(f"runs/prep/{bad.name}")
    began = time.monotonic()
    with pytest.raises(tf.errors.OpError) as gone:
        for _ in src.train_dataset(cfg.data, EpochPlan(5, 0, 4)):
            pass
    line = stream.lost_line(gone.value)
    assert line and line.startswith(f"s3://runs/prep/{bad.name}") and "Run the same command again" in line, line
    assert time.monotonic() - began < 30


def _streamed_and_staged(url: str, extra: list[str]) -> tuple:
    from imgtrain.config import Config
    from imgtrain.data.source import placed

    def config(stage: str) -> Config:
        return Config.load(None, [f"data.path={url}", f"data.stage={stage}", "data.image_size=[16,16]", *extra])

    cfg, streamed = placed(config("never"), progress=False)
    staged_cfg, none = placed(config("always"), progress=False)
    assert none is None and streamed is not None and not Path(staged_cfg.data.path).is_relative_to("s3:")
    return cfg, streamed, staged_cfg


def test_streamed_data_gives_the_staged_copys_examples_and_pixels_and_auto_streams_what_does_not_fit(
    as_user: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``data.stage=never`` reads the bucket as its staged copy would be read: the same examples,
    splits and pixels (odd names, a nested folder, a file TensorFlow cannot decode and a hidden
    file included), for a folder and a CSV manifest; ``auto`` streams data too big for the disk."""
    from conftest import write_folder
    from PIL import Image

    from imgtrain.cli import _failed, build_parser
    from imgtrain.data import fingerprint
    from imgtrain.data.pipeline import Shard, eval_dataset
    from imgtrain.data.source import FileSource, get, placed
    from imgtrain.data.sources import discover
    from imgtrain.storage import stream

    fs = as_user.filesystem()
    local = tmp_path / "photos"
    for split in ("train", "val", "test"):
        write_folder(local / split, per_class=3, fmt="mixed", seed=len(split))
    Image.new("1", (16, 16), 1).save(local / "train/red/one bit [1].bmp")  # converted to PNG by the check
    (local / "train/red/more").mkdir()
    (local / "train/red/red_000.png").rename(local / "train/red/more/nested.png")
    (local / "train/red/.hidden.png").write_bytes(b"not an image")
    fs.put(str(local), "runs/streamed/photos", recursive=True)
    rows = [f"photos/{p.relative_to(local).as_posix()},{p.parent.name}" for p in sorted(local.glob("train/*/[!.]*.*"))]
    fs.pipe_file("runs/streamed/labels.csv", ("path,label\n" + "\n".join(rows) + "\n").encode())

    for url in ("s3://runs/streamed/photos", "s3://runs/streamed/labels.csv"):
        cfg, streamed, staged_cfg = _streamed_and_staged(url, [])
        staged = discover(staged_cfg.data)
        assert [(e.key, e.label, e.split) for e in streamed.examples] == [
            (e.key, e.label, e.split) for e in staged.examples
        ]
        assert streamed.class_names == staged.class_names and streamed.root == url.rsplit("/", 1)[0] + (
            "" if url.endswith(".csv") else "/photos"
        )
        assert all(e.path.startswith("s3://runs/streamed/") for e in streamed.examples)
        source = get(cfg, tmp_path / f"run-{url[-3:]}", progress=False)
        assert isinstance(source, FileSource) and any(not e.path.startswith("s3://") for e in source.catalog.examples)
        twin = get(staged_cfg, tmp_path / f"staged-{url[-3:]}", progress=False)
        for split in ("train", "test") if not url.endswith(".csv") else ("train",):
            pixels = [eval_dataset(s.catalog.split(split), cfg.data, 8, Shard()) for s in (source, twin)]
            for a, b in zip(*pixels):
                np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        # Streamed or staged, the data's fingerprint is the same, contents included: a run may switch.
        assert fingerprint.compute(source) == fingerprint.compute(twin)

    # An object replaced under its name (as between a stop and its resume): the fingerprint, read
    # from the bucket or from its copy, names it.
    url = "s3://runs/streamed/photos"
    before = fingerprint.compute(get(_streamed_and_staged(url, [])[0], tmp_path / "before", progress=False))
    replaced = sorted(local.glob("train/green/*.png"))[0]
    Image.new("RGB", (16, 16), (1, 2, 3)).save(replaced)
    fs.put_file(str(replaced), f"runs/streamed/photos/train/green/{replaced.name}")
    for i, cfg in enumerate(_streamed_and_staged(url, [])[::2]):
        diff = fingerprint.differences(before, fingerprint.compute(get(cfg, tmp_path / f"after-{i}", progress=False)))
        assert (
            diff
            == f"1 of its files changed since it started (other size or modification time: train/green/{replaced.name})"
        )

    from imgtrain.config import Config

    said: list[str] = []
    with monkeypatch.context() as disk:
        disk.setattr(stage, "SPARE_BYTES", 1 << 62)  # a disk too small for the data
        disk.setattr("builtins.print", said.append)
        assert placed(Config.load(None, ["data.path=s3://runs/streamed/photos"]))[1] is not None
    assert said and said[0].startswith("reading s3://runs/streamed/photos from the bucket every epoch"), said
    url = "s3://runs/streamed/photos"
    with pytest.raises(UserError, match="data.stage=never reads images from .* but data.service"):
        placed(Config.load(None, [f"data.path={url}", "data.stage=never", "data.service=grpc://localhost:5000"]))

    # An image gone after the check ends the epoch at once, and the command in one line, exit 75.
    cfg, streamed, _ = _streamed_and_staged("s3://runs/streamed/photos", [])
    gone = streamed.split("test")[1].path
    fs.rm_file(gone.removeprefix("s3://"))
    with pytest.raises(tf.errors.OpError) as failed:
        list(eval_dataset(streamed.split("test"), cfg.data, 8, Shard()))
    stream._given_up.clear()  # this process reads on
    args = build_parser().parse_args(["train", "--data", "s3://runs/streamed/photos"])
    code, line = _failed(args, failed.value)
    assert code == 75 and line.startswith(f"imgtrain: error: {gone} is gone"), line
    assert "Run the same command again" in line and "\n" not in line


def test_images_and_a_warm_start_in_a_bucket_are_fetched_and_named_as_given(as_user: S3Server, tmp_path: Path):
    import keras

    from imgtrain.storage.runplace import local_model
    from imgtrain.storage.stage import local_inputs

    fs = as_user.filesystem()
    fs.pipe_file("runs/inputs/one.png", b"1")
    fs.pipe_file("runs/inputs/more/two.png", b"2")
    local, shown = local_inputs(["s3://runs/inputs/one.png", "s3://runs/inputs/more", "kept/as/given.png"], print)
    assert Path(local[0]).read_bytes() == b"1" and (Path(local[1]) / "two.png").read_bytes() == b"2"
    assert shown(local[0]) == "s3://runs/inputs/one.png"
    assert shown(str(Path(local[1]) / "two.png")) == "s3://runs/inputs/more/two.png"
    assert local[2] == shown(local[2]) == "kept/as/given.png"

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    fs.put_file(str(tmp_path / "m.keras"), "runs/models/m.keras")
    fetched = local_model("s3://runs/models/m.keras")
    loaded = keras.saving.load_model(fetched)
    assert np.array_equal(loaded.get_weights()[0], model.get_weights()[0])


def test_overwrite_removes_the_runs_outputs_from_the_bucket_and_nothing_else(as_user: S3Server, tmp_path: Path):
    fs = as_user.filesystem()
    written = ("run.json", "history.csv", "checkpoints/ckpt-1.index", "logs/train/events.out.tfevents.1.h.2.v2")
    for name in (*written, "notes.txt", "logs/notes.md"):
        fs.pipe_file(f"runs/replaced/{name}", b"x")
    said: list[str] = []
    RunMirror("s3://runs/replaced", tmp_path / "run").clear(said.append)
    assert sorted(p.split("runs/replaced/", 1)[1] for p in fs.find("runs/replaced")) == ["logs/notes.md", "notes.txt"]
    assert said == [
        "--overwrite: removed the earlier run's checkpoints, history.csv, logs, run.json from s3://runs/replaced",
        "--overwrite: left 1 file(s) in s3://runs/replaced that imgtrain did not write: logs/notes.md",
    ]


@pytest.mark.parametrize("given", ["nan", "inf", "-1", "soon", "1e9"])
def test_an_upload_wait_that_is_not_a_number_of_seconds_is_refused(given: str, monkeypatch: pytest.MonkeyPatch):
    from imgtrain.storage.runplace import WAIT_ENV, final_wait

    monkeypatch.setenv(WAIT_ENV, given)
    with pytest.raises(UserError, match=f"{WAIT_ENV}='{given}' is not a number of seconds from 0 to 86400"):
        final_wait()


def test_a_local_copy_of_a_run_since_replaced_in_its_bucket_gives_way_to_the_bucket(as_user: S3Server, tmp_path: Path):
    url, here, there = "s3://runs/replaced-elsewhere", tmp_path / "here", tmp_path / "there"
    var = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=var), str(here / "checkpoints"), max_to_keep=3)
    for value in (1.0, 2.0, 3.0):
        _save(manager, var, value, here)
    RunMirror(url, here).push()
    elsewhere = RunMirror(url, there)  # another machine: --overwrite, and one epoch of a new run
    elsewhere.clear(lambda _m: None)
    _save(
        tf.train.CheckpointManager(tf.train.Checkpoint(v=var), str(there / "checkpoints"), max_to_keep=3),
        var,
        9.0,
        there,
    )
    elsewhere.push()
    said: list[str] = []
    RunMirror(url, here).pull(said.append)  # this machine's copy is at ckpt-3, the bucket's at ckpt-1
    assert said[0] == f"{url} changed since this machine's copy of it was made: using the bucket's", said
    restored = tf.Variable(0.0)
    tf.train.Checkpoint(v=restored).restore(tf.train.latest_checkpoint(str(here / "checkpoints"))).expect_partial()
    assert float(restored.numpy()) == 9.0


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_bucket_url_without_a_trained_run_is_one_line_and_exit_2(
    command: str, as_user: S3Server, capsys: pytest.CaptureFixture
):
    as_user.filesystem().pipe_file("runs/untrained/config.yaml", b"seed: 1\n")
    code = main(
        [command, "--run", "s3://runs/untrained", "--no-progress"]
        if command == "evaluate"
        else [command, "--run", "s3://runs/untrained"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "s3://runs/untrained holds no trained model (model.keras)" in err[0], err[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--data", "s3://runs/missing.csv"], "s3://runs/missing.csv does not exist; check the URL"),
        (["train", "--data", "s3://runs/one/a.png"], "s3://runs/one/a.png is one file, not a folder; pass the folder"),
        (
            ["predict", "--run", "s3://runs/one", "s3://runs/one/b.png"],
            "s3://runs/one/b.png holds no files; pass an image",
        ),
    ],
    ids=["a missing manifest", "one image as the data", "a missing image to predict"],
)
def test_a_bucket_url_that_names_the_wrong_thing_is_one_line_and_exit_2(
    argv: list[str], expected: str, as_user: S3Server, capsys: pytest.CaptureFixture, tmp_path: Path
):
    """Where it is, what is wrong with it, and what to pass instead, in the command's words."""
    as_user.filesystem().pipe_file("runs/one/a.png", b"not read")
    if argv[0] == "train":
        argv = [*argv, "--output", str(tmp_path / "run"), "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert expected in err[0], err[0]


def test_the_storage_clients_retry_logs_are_not_printed(tmp_path: Path):
    """gcsfs logs each failed request's traceback (and its fallbacks) to Python's last-resort
    handler; imgtrain says what a failure means in its own one line instead. (A process of its
    own: under pytest, pytest's handlers would take the records.)"""
    script = (
        "import logging\n"
        "from imgtrain.storage import urls\n"
        "urls.filesystem('gs://b/x')\n"
        "logging.getLogger('gcsfs.retry').error('_request out of retries on exception: refused')\n"
        "logging.getLogger('gcsfs').warning('Could not determine bucket type, falling back')\n"
        "logging.getLogger('imgtrain.other').warning('still printed')\n"
    )
    env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stderr.strip() == "still printed", out.stderr


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _a_finished_run(run: Path, epochs: int, manager: tf.train.CheckpointManager, var: tf.Variable) -> None:
    """A run folder as a finished training leaves it (the model's bytes name its epochs)."""
    _save(manager, var, float(epochs), run)
    for name, text in {
        "config.yaml": "seed: 1\n",
        "class_names.json": '["a", "b"]',
        "model.keras": f"model after {epochs} epochs",
        "run.json": f'{{"epochs_completed": {epochs}}}',
        "report.json": f'{{"epochs": {epochs}}}',
        "mlflow.json": '{"run_id": "abc"}',
    }.items():
        (run / name).write_text(text)


def test_a_reader_never_writes_the_trainings_copy_nor_its_files_in_the_bucket(as_user: S3Server, tmp_path: Path):
    """evaluate, predict, export and --warm-start read a bucket run in a copy of their own: a
    training's copy whose uploads did not finish is read (newer) and left as it was, and the
    bucket stays as its training left it; while a training holds its copy, the bucket's model
    is read, and only what the reader wrote (its report, its export) goes back."""
    from imgtrain import runlock
    from imgtrain.storage.runplace import local_model, model_run, run_place

    url, fs = "s3://runs/read", as_user.filesystem()
    training = places.local_copy("runs", url)
    var = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=var), str(training / "checkpoints"), max_to_keep=1)
    _a_finished_run(training, 2, manager, var)
    RunMirror(url, training).push()
    _a_finished_run(training, 4, manager, var)  # finished on this machine; the bucket went away
    before, bucket_before = _files(training), {p: fs.cat(p) for p in fs.find("runs/read")}

    said: list[str] = []
    with model_run(url, said.append, writes=True) as run:
        assert (run.local / "model.keras").read_text() == "model after 4 epochs"
        (run.local / "report.json").write_text("the reader's report")
        (run.local / "export" / "keras").mkdir(parents=True)
        (run.local / "export" / "keras" / "m.keras").write_text("an export")
        shown = run.shown(run.local / "report.json")
    assert said[0].startswith(f"this machine's copy of {url} ({training}) holds ") and "reading that newer" in said[0]
    assert shown == str(run.local / "report.json"), shown  # stays here: the bucket's run is the older one
    assert _files(training) == before, "a reader changed the training's copy"
    assert {p: fs.cat(p) for p in fs.find("runs/read")} == bucket_before, "a reader wrote into the bucket"
    assert (local_model(url, said.append) / "model.keras").read_text() == "model after 4 epochs"

    RunMirror(url, training).push()  # the training's command, run again, uploads the rest
    assert fs.cat("runs/read/model.keras") == b"model after 4 epochs"
    _a_finished_run(training, 6, manager, var)  # a training holding its copy now
    said = []
    with runlock.hold(training):
        # A second training on this machine is refused naming the run as given, not its copy here.
        with pytest.raises(UserError, match=rf"^{url} is in use by imgtrain pid {os.getpid()}"):
            with run_place(url).training(True, False, lambda _agreed: None, said.append, 0.0):
                pass
        before = _files(training)
        with model_run(url, said.append, writes=True) as run:
            assert (run.local / "model.keras").read_text() == "model after 4 epochs"
            assert not (run.local / "export").exists(), "an earlier read's export was left in the copy"
            (run.local / "report.json").write_text("the reader's report")
            (run.local / "logs" / "test").mkdir(parents=True)
            (run.local / "logs" / "test" / "events.test").write_text("events")
            (run.local / "model.keras").write_text("a reader must not send this")
            shown = run.shown(run.local / "report.json")
        assert _files(training) == before, "a reader changed the training's copy"
    assert said == [
        f"{url} is training on this machine (imgtrain pid {os.getpid()} on {os.uname().nodename}): reading the "
        "model its bucket holds now, the last one that training finished before"
    ], said
    assert shown == f"{url}/report.json"
    assert fs.cat("runs/read/report.json") == b"the reader's report"
    assert fs.cat("runs/read/logs/test/events.test") == b"events"
    assert fs.cat("runs/read/model.keras") == b"model after 4 epochs"
    assert fs.cat("runs/read/run.json") == b'{"epochs_completed": 4}'


_RACER = """
import sys
from imgtrain.errors import UserError
from imgtrain.storage import urls
from imgtrain.storage.lease import Lease
from imgtrain.storage.urls import modified

for url in sys.stdin:
    url = url.strip()
    fs = urls.filesystem(url)
    lease = Lease(fs, urls.bare(url), url)
    fs.pipe_file(urls.bare(url) + "-clock-" + str(id(lease)), b"")  # the service's clock, as check_writable reads it
    now = modified(fs.info(urls.bare(url) + "-clock-" + str(id(lease))))
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        lease.take(now)
        print("took", flush=True)
    except UserError as exc:
        print("refused", exc, flush=True)
"""


def test_of_two_writers_released_at_the_same_instant_exactly_one_takes_the_lease(as_user: S3Server):
    """Two processes blocked on their input, released by one write to both, 20 times over: the
    service's create-if-absent lets exactly one hold each run (the other is told who holds it)."""
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ
        )
        for _ in range(2)
    ]
    try:
        for round_ in range(20):
            for racer in racers:
                racer.stdin.write(f"s3://runs/race-{round_}\n")
                racer.stdin.flush()
            assert [r.stdout.readline().strip() for r in racers] == ["ready", "ready"]
            for racer in racers:  # the barrier: both wait on this line
                racer.stdin.write("go\n")
            for racer in racers:
                racer.stdin.flush()
            said = sorted(r.stdout.readline().strip() for r in racers)
            assert said[1] == "took" and said[0].startswith("refused"), (round_, said)
            assert "is in use by process" in said[0] or "was taken by another process just now" in said[0], said
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()


def test_the_lease_is_renewed_by_its_own_heartbeat_and_a_lost_one_stops_the_writes(as_user: S3Server):
    """Renewed while a push hangs (its heartbeat is not the upload's): a second machine is
    refused throughout. Taken over while its holder was stalled, the holder learns it at its
    next beat, pushes nothing more, and the command ends in one line, exit 75."""
    import threading
    import time
    from datetime import timedelta

    from imgtrain.cli import _failed
    from imgtrain.errors import LeaseLost
    from imgtrain.storage.lease import STALE_SECONDS, Lease
    from imgtrain.storage.runplace import RunPlace
    from imgtrain.storage.uploader import Uploader
    from imgtrain.storage.urls import modified

    fs, path = as_user.filesystem(), "runs/beating/.lease.json"
    first = Lease(fs, "runs/beating", "s3://runs/beating", renew_seconds=0.2)
    first.take(None)
    taken = modified(fs.info(path))
    mirror = RunMirror("s3://runs/beating", as_user.root / "unused")
    pushes, hanging, release = [], threading.Event(), threading.Event()

    def a_push_that_hangs() -> int:
        pushes.append(time.monotonic())
        hanging.set()
        release.wait(30)
        return 0

    mirror.push = a_push_that_hangs
    place = RunPlace(mirror.local, mirror, Uploader(mirror, lambda _m: None, first), first)
    place.saved()
    assert hanging.wait(10)
    time.sleep(1.5)  # the push still hangs
    fs.invalidate_cache()
    renewed = modified(fs.info(path))
    assert renewed > taken, "the lease was not renewed while a push hung"
    with pytest.raises(UserError, match="is in use by process"):
        Lease(fs, "runs/beating", "s3://runs/beating").take(renewed + timedelta(seconds=1))
    release.set()

    other = Lease(fs, "runs/beating", "s3://runs/beating")
    other.take(renewed + timedelta(seconds=STALE_SECONDS + 1))  # as if the first had stalled a minute
    end = time.monotonic() + 20  # a beat's request may wait on a loaded server
    while not first.lost and time.monotonic() < end:
        time.sleep(0.1)
    assert first.lost and f"taken over by process {os.getpid()}" in first.lost, first.lost
    with pytest.raises(LeaseLost) as lost:
        place.saved()
    code, line = _failed(dataclasses.make_dataclass("Args", ["command"])("train"), lost.value)
    assert code == 75 and line.startswith("imgtrain: s3://runs/beating was taken over by") and "\n" not in line
    with pytest.raises(LeaseLost):
        place.close(finished=True)
    assert len(pushes) == 1, "the holder that lost the lease pushed again"
    assert other.mine["token"] in fs.cat(path).decode(), "the holder that lost the lease wrote it again"
    other.release()


def test_the_end_of_a_run_waits_for_a_hung_upload_no_longer_than_its_deadline(as_user: S3Server, tmp_path: Path):
    """A frozen server (a request with no answer, no error) holds the run's end for
    IMGTRAIN_UPLOAD_WAIT at most; then what is not uploaded is said."""
    import threading
    import time

    from imgtrain.storage.uploader import Uploader

    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch\n1\n")
    mirror, answered = RunMirror("s3://runs/hung", run), threading.Event()
    mirror.push = lambda: answered.wait(60)
    uploader = Uploader(mirror, lambda _m: None)
    uploader.soon()
    time.sleep(0.3)  # the push hangs
    began = time.monotonic()
    left = uploader.close(1.0)
    waited = time.monotonic() - began
    answered.set()
    assert waited < 3 and left == ["history.csv"], (waited, left)
