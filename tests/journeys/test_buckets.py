"""Journey: data and runs in buckets, on real servers on 127.0.0.1 (SeaweedFS for ``s3://``,
fake-gcs-server for ``gs://``), with the README's commands from a user's folder: a run killed
at seeded moments (mid-upload included) and finished by the same command on other machines
with empty disks, ending with an uninterrupted run's weights; evaluate, predict and export
from the bucket run, from a finished run not yet uploaded (which the readers leave as it is)
and from a run training more epochs; the data streamed, not staged (on the second machine);
the bucket gone mid-run and back (on the third machine); two workers of
``launch/multiworker.py`` on one bucket; prepared shards streamed from the bucket, killed and
resumed elsewhere, and shared by two workers, as local shards train. (Every request of an
upload as a kill point, and the one-line refusals: tests/test_storage.py.)"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import signal
import socket
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from buckets import GcsServer, S3Server

from journeys import readme
from journeys.journey import MID_EPOCH, SMALL, User, make_home

pytestmark = pytest.mark.slow

TRAIN = readme.command("imgtrain train --data s3://my-bucket/photos --output s3://my-bucket/runs/photos")
EVALUATE = readme.command("imgtrain evaluate --run s3://my-bucket/runs/photos")
PREDICT = readme.command(
    "imgtrain predict --run s3://my-bucket/runs/photos photos/cat/1.jpg --output s3://my-bucket/predictions.csv"
).replace("photos/cat/1.jpg", "photos/red/red_000.png")
EXPORT = readme.command("imgtrain export --run s3://my-bucket/runs/photos --output s3://my-bucket/models/photos.tflite")
MULTIWORKER = readme.command(
    "python launch/multiworker.py --workers 2 -- imgtrain train --data gs://my-bucket/photos --output gs://my-bucket/runs/photos"  # noqa: E501
)
GCS_TRAIN = MULTIWORKER.split(" -- ", 1)[1]
RUN = f"{TRAIN} {SMALL} {MID_EPOCH} --epochs 3"


def bucket_user(home: Path, env: dict[str, str], photos: bool = True) -> User:
    """A user on a machine of their own: their folder, their empty local cache, the bucket's
    endpoint and credentials exported."""
    user = User(make_home(home, per_class=16 if photos else 0))
    user.env.update(env, IMGTRAIN_CACHE_DIR=str(home / "cache"))
    return user


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    fs = server.filesystem()
    fs.mkdir("my-bucket")
    photos = make_home(tmp_path_factory.mktemp("uploader"))  # the user's photos, uploaded once
    fs.put(str(photos / "photos"), "my-bucket/photos", recursive=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def whole(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted bucket run's run.json (data and run in the bucket)."""
    user = bucket_user(tmp_path_factory.mktemp("whole"), s3.env())
    user.ok(RUN.replace("runs/photos", "runs/whole"))
    return json.loads(s3.filesystem().cat("my-bucket/runs/whole/run.json"))


def _epochs(fs, run: str) -> list[int]:
    rows = csv.DictReader(io.StringIO(fs.cat(f"{run}/history.csv").decode()))
    return [int(r["epoch"]) for r in rows]


def test_killed_anywhere_then_the_bucket_gone_then_the_same_command_on_other_machines(
    s3: S3Server, whole: dict, tmp_path: Path
):
    moments = random.Random(30)

    def a_seeded_moment_after(marker: str):
        """``when`` for ``interrupt``: up to 1.5 s after ``marker`` is printed (the steps that
        follow, a checkpoint, or its upload), and at the latest once the training restored its
        best weights: an epoch takes 0.2 s on a fast machine, and the next machine must still
        have some of the run to finish."""
        at: dict[str, float] = {}

        def when(out: str) -> bool:
            if marker in out and not at:
                at["t"] = time.monotonic() + moments.uniform(0.0, 1.5)
            return bool(at) and (time.monotonic() >= at["t"] or "restored the best weights" in out)

        return when

    def stop_the_server(out: str) -> bool:
        """``when`` that never signals: the server goes away once the run resumed (the data
        staged; what is left of the training, its evaluation and its uploads still to come)."""
        if "resuming from checkpoint" in out and s3.proc is not None:
            s3.stop()
        return False

    first = bucket_user(tmp_path / "first", s3.env())
    killed = first.interrupt(RUN, a_seeded_moment_after("epoch 1/3"))
    assert killed.code == -signal.SIGKILL, killed.out[-2000:]
    # Another machine, an empty disk too small for the data (so it is read from the bucket
    # each epoch), killed as it trains: its pixels are the staged ones, so the weights end the same.
    second = bucket_user(tmp_path / "second", s3.env(), photos=False)
    streamed = f"{RUN} --set data.stage=never"
    again = second.interrupt(streamed, a_seeded_moment_after("resuming from checkpoint"))
    assert "resuming from s3://my-bucket/runs/photos: fetched its checkpoint" in again.out, again.out[-2000:]
    assert again.code == -signal.SIGKILL, again.out[-2000:]
    assert not [p for p in (tmp_path / "second/cache").rglob("*.png")], "streamed data was staged"

    # A third machine resumes, then loses the bucket: training ends, what is not uploaded is
    # said, exit 75; the bucket back, the same command uploads the rest.
    third = bucket_user(tmp_path / "third", {**s3.env(), "IMGTRAIN_UPLOAD_WAIT": "2"}, photos=False)
    try:
        gone = third.interrupt(RUN, stop_the_server)
    finally:
        s3.start()
    assert "resuming from s3://my-bucket/runs/photos: fetched its checkpoint" in gone.out, gone.out[-3000:]
    assert gone.code == 75, gone.out[-3000:]
    assert "warning: cannot upload to s3://my-bucket/runs/photos" in gone.out, gone.out[-3000:]
    assert gone.last_line.startswith("imgtrain: ") and "run the same command again to upload them" in gone.last_line
    # Read before the rest is uploaded: the finished run on this machine is read, and nothing of
    # the training's (its copy, its files in the bucket) is written by the readers.
    read = third.ok(EVALUATE)
    assert "holds" in read.out and "its bucket does not (its uploads did not finish)" in read.out, read.out[-2000:]
    assert "/cache/reads/" in read.last_line, read.last_line  # the report stays on this machine
    exported = third.ok(EXPORT)
    assert exported.last_line.startswith("tflite: s3://my-bucket/models/photos.tflite"), exported.last_line
    done = third.ok(RUN)
    assert "nothing to train" in done.out, done.out[-2000:]
    assert done.last_line.endswith("report: s3://my-bucket/runs/photos/report.json"), done.last_line
    fs = s3.filesystem()
    summary = json.loads(fs.cat("my-bucket/runs/photos/run.json"))
    assert summary["replica_weight_fingerprints"] == whole["replica_weight_fingerprints"]
    assert _epochs(fs, "my-bucket/runs/photos") == [1, 2, 3]

    # One epoch more, tracked by MLflow, and an evaluation from another terminal while it trains
    # (the training held still meanwhile): the evaluation reads the model the bucket holds and
    # sends back its report; the training's copy, uploads, history and MLflow run are its own.
    read: dict = {}

    def evaluate_meanwhile(out: str) -> bool:
        if "continuing at epoch 4" in out and not read:
            (training,) = [p for p in psutil.Process().children(recursive=True) if "train" in p.cmdline()]
            training.suspend()
            try:
                read["result"] = third.ok(EVALUATE)
            finally:
                training.resume()
        return False

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's own local store: the run, tracked from here on
    tracked = f" --mlflow --set tracking.uri={store} --set tracking.experiment=buckets"
    more = third.interrupt(RUN.replace("--epochs 3", "--epochs 4") + tracked, evaluate_meanwhile)
    assert more.code == 0 and read, more.out[-3000:]
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("buckets").experiment_id])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
    said = read["result"]
    assert "s3://my-bucket/runs/photos is training on this machine" in said.out, said.out[-2000:]
    assert said.last_line.endswith("report: s3://my-bucket/runs/photos/report.json"), said.last_line
    assert _epochs(fs, "my-bucket/runs/photos") == [1, 2, 3, 4]
    assert json.loads(fs.cat("my-bucket/runs/photos/run.json"))["epochs_completed"] == 4
    first.ok(PREDICT)  # the user with the photo
    rows = list(csv.DictReader(io.StringIO(fs.cat("my-bucket/predictions.csv").decode())))
    assert len(rows) == 1 and rows[0]["path"].endswith("red_000.png"), rows
    assert fs.info("my-bucket/models/photos.tflite")["size"] > 0


def test_a_bucket_that_never_answers_or_freezes_ends_each_command_in_its_time(
    s3: S3Server, whole: dict, tmp_path: Path
):
    """An endpoint that accepts connections and never answers (a hung gateway): the train
    command ends in one line, exit 75, within 90 s. SeaweedFS frozen (SIGSTOP) mid-run: a SIGTERM
    ends it with its stop line and 143 within 30 s; frozen again, the run trains to its end and
    says what is not uploaded, exit 75, within 40 s of its last epoch; the server back, the same
    command uploads and the bucket holds the uninterrupted run's weights."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshakes; nothing ever reads or answers
        mute = bucket_user(
            tmp_path / "mute", {**s3.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        )
        began = time.monotonic()
        hung = mute.run(RUN, timeout=300)
        took = time.monotonic() - began
    assert hung.code == 75 and len(hung.err.strip().splitlines()) == 1, hung.text[-2000:]
    assert "did not answer in time to write the run to s3://my-bucket/runs/photos" in hung.last_line, hung.last_line
    assert took < 90, took

    user = bucket_user(tmp_path / "frozen", {**s3.env(), "IMGTRAIN_UPLOAD_WAIT": "10"})
    run = RUN.replace("runs/photos", "runs/frozen")
    moments: dict[str, float] = {}

    def freeze_then_stop(out: str) -> bool:
        if "epoch 1/3" in out and "frozen" not in moments:
            s3.proc.send_signal(signal.SIGSTOP)
            moments["frozen"] = time.monotonic()
        if time.monotonic() - moments.get("frozen", math.inf) > 1:
            moments["stopped"] = time.monotonic()
            return True
        return False

    try:
        stopped = user.interrupt(run, freeze_then_stop, sig=signal.SIGTERM)
        took = time.monotonic() - moments["stopped"]
    finally:
        s3.proc.send_signal(signal.SIGCONT)
    assert stopped.code == 143 and "imgtrain: stopped by SIGTERM" in stopped.out, stopped.out[-2000:]
    assert took < 30, took

    def freeze_at_the_last_epoch(out: str) -> bool:
        if "epoch 3/3" in out and "ended" not in moments:
            s3.proc.send_signal(signal.SIGSTOP)
            moments["ended"] = time.monotonic()
        return False

    # A run of its own: the stopped one may have trained all its epochs in the second before
    # its SIGTERM (its uploads waiting on the frozen server), leaving no epoch 3 to freeze at.
    run = RUN.replace("runs/photos", "runs/frozen-end")
    try:
        frozen = user.interrupt(run, freeze_at_the_last_epoch)
        took = time.monotonic() - moments["ended"]
    finally:
        s3.proc.send_signal(signal.SIGCONT)
    assert frozen.code == 75 and "run the same command again to upload them" in frozen.out, frozen.out[-2000:]
    assert "checkpoints/" in frozen.last_line and "not in s3://my-bucket/runs/frozen-end" in frozen.last_line
    assert took < 40, took
    done = user.ok(run)
    assert "nothing to train" in done.out and "uploaded to s3://my-bucket/runs/frozen-end" in done.out, done.out[-2000:]
    summary = json.loads(s3.filesystem().cat("my-bucket/runs/frozen-end/run.json"))
    assert summary["replica_weight_fingerprints"] == whole["replica_weight_fingerprints"]


def test_prepared_shards_stream_from_the_bucket_killed_resumed_elsewhere_and_shared_by_two_workers(
    s3: S3Server, tmp_path: Path
):
    """The README's ``imgtrain prepare`` (run twice: refused or redone, never half), a training on
    the local shards and its evaluate from another folder; the shards uploaded, a training that
    streams them, SIGKILLed mid-epoch and resumed on another machine's empty disk, ends with the
    weights of the training on local shards; two workers of ``launch/multiworker.py`` streaming
    them end as two workers on local shards do, each having fetched its own training shards only."""
    user = bucket_user(tmp_path / "user", s3.env())
    prepare = readme.command(".venv/bin/imgtrain prepare --data photos/ --output photos-tfrecord/")
    prepare += " --shard-size-mb 0.004 --no-progress"
    user.ok(prepare)
    again = user.run(prepare)
    assert again.code in (0, 1, 2) and (user.cwd / "photos-tfrecord/manifest.json").exists(), again.text[-2000:]
    fs = s3.filesystem()
    fs.put(str(user.cwd / "photos-tfrecord"), "my-bucket/prepared", recursive=True)
    manifest = json.loads((user.cwd / "photos-tfrecord/manifest.json").read_text())
    files = {split: [s["file"] for s in manifest["splits"][split]["shards"]] for split in manifest["splits"]}
    sizes = {p.name: p.stat().st_size for p in (user.cwd / "photos-tfrecord").glob("*.tfrecord")}
    assert len(files["train"]) >= 4, files

    train = f".venv/bin/imgtrain train --model cnn {SMALL} {MID_EPOCH} --epochs 2"
    local = user.ok(f"{train} --data photos-tfrecord/ --output runs/local")
    assert local.last_line.startswith("test accuracy "), local.last_line
    (user.cwd / "elsewhere").mkdir()
    evaluated = user.ok("../.venv/bin/imgtrain evaluate --run ../runs/local", cwd=user.cwd / "elsewhere")
    # The run recorded where its shards are: the same test split, the same accuracy.
    assert evaluated.last_line.split(";")[0] == local.last_line.split(";")[0], evaluated.text[-2000:]
    streamed = f"{train} --data s3://my-bucket/prepared --output s3://my-bucket/runs/prepared"
    killed = user.interrupt(streamed, lambda out: "epoch 1/2" in out)
    assert killed.code == -signal.SIGKILL, killed.out[-2000:]
    elsewhere = bucket_user(tmp_path / "elsewhere", s3.env(), photos=False)
    resumed = elsewhere.ok(streamed)
    assert (
        "streaming s3://my-bucket/prepared" in resumed.out
        and "resuming from s3://my-bucket/runs/prepared" in resumed.out
    )
    summary = json.loads(fs.cat("my-bucket/runs/prepared/run.json"))
    assert summary["replica_weight_fingerprints"] == fingerprints(user.cwd / "runs/local")

    two = (
        "python launch/multiworker.py --workers 2 -- imgtrain train {SMALL} --epochs 1 --data {data} --output runs/two"
    )
    user.ok(two.format(SMALL=SMALL, data="photos-tfrecord"))
    third = bucket_user(tmp_path / "third", s3.env(), photos=False)
    third.ok(two.format(SMALL=SMALL, data="s3://my-bucket/prepared"))
    summary = json.loads((third.cwd / "runs/two/run.json").read_text())
    assert summary["replica_weight_fingerprints"] == fingerprints(user.cwd / "runs/two")
    for i in (0, 1):
        own = sum(sizes[f] for f in files["train"][i::2])
        evaluated = sum(sizes[f] for split in ("val", "test") for f in files.get(split, []))
        assert own <= summary["streamed_bytes"][f"worker_{i}"] <= own + evaluated, (summary["streamed_bytes"], own)


def fingerprints(run_dir: Path) -> list[int]:
    return json.loads((run_dir / "run.json").read_text())["replica_weight_fingerprints"]


@pytest.fixture
def gcs(tmp_path: Path):
    server = GcsServer(tmp_path).start()
    yield server
    server.stop()


def test_two_workers_train_from_a_gcs_bucket_into_it_and_resume_from_it_elsewhere(gcs: GcsServer, tmp_path: Path):
    user = bucket_user(tmp_path / "home", gcs.env())
    fs = gcs.filesystem()
    fs.mkdir("my-bucket")
    fs.put(str(user.cwd / "photos"), "my-bucket/photos", recursive=True)
    # The first epoch on the user's own machine, one process accumulating the two workers'
    # global batch; then two workers, on another machine's empty disk, each restore from the
    # bucket and train on with the run's batch.
    user.ok(f"{GCS_TRAIN} {SMALL} --epochs 1 --set train.accumulate=2")
    other = bucket_user(tmp_path / "other", gcs.env(), photos=False)
    more = other.ok(f"{MULTIWORKER} {SMALL} --epochs 2")
    assert more.out.count("1 epoch(s) done, continuing at epoch 2") == 1, more.out[-3000:]  # the chief's line
    assert "resized: 1 -> 2 replica(s)" in more.out and "global batch 16 (kept)" in more.out, more.out[-3000:]
    summary = json.loads(fs.cat("my-bucket/runs/photos/run.json"))
    assert summary["strategy"] == "multiworker" and summary["replicas_in_sync"], summary
    assert _epochs(fs, "my-bucket/runs/photos") == [1, 2]
    assert "ckpt-" in fs.cat("my-bucket/runs/photos/checkpoints/checkpoint").decode()
