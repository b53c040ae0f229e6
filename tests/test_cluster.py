import json
import re

import pytest

from imgtrain.errors import UserError
from imgtrain.train.cluster import configure_cluster, detect_cluster, jobset_tf_config, k8s_indexed_job_tf_config
from imgtrain.train.distribution import detect_strategy

JOB_ENV = {
    "JOB_COMPLETION_INDEX": "1",
    "IMGTRAIN_WORKERS": "3",
    "IMGTRAIN_SERVICE": "imgtrain-workers",
    "IMGTRAIN_JOB_NAME": "imgtrain-multiworker",
}


def test_indexed_job_tf_config():
    cfg = k8s_indexed_job_tf_config(JOB_ENV)
    assert cfg == {
        "cluster": {"worker": [f"imgtrain-multiworker-{i}.imgtrain-workers:12345" for i in range(3)]},
        "task": {"type": "worker", "index": 1},
    }


def test_indexed_job_port_and_namespace():
    cfg = k8s_indexed_job_tf_config({**JOB_ENV, "IMGTRAIN_PORT": "2000", "IMGTRAIN_NAMESPACE": "ml"})
    assert cfg["cluster"]["worker"][2] == "imgtrain-multiworker-2.imgtrain-workers.ml.svc:2000"


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"IMGTRAIN_SERVICE": ""}, "needs the environment variable IMGTRAIN_SERVICE"),
        ({"JOB_COMPLETION_INDEX": "3"}, "outside 0..2"),
        ({"IMGTRAIN_WORKERS": "two"}, "must be integers"),
    ],
)
def test_indexed_job_bad_env(change, fragment):
    with pytest.raises(UserError, match=fragment):
        k8s_indexed_job_tf_config({**JOB_ENV, **change})


def test_auto_detection_writes_tf_config():
    env = dict(JOB_ENV)
    assert detect_cluster(env) == "k8s-indexed-job"
    assert configure_cluster("auto", env) == "k8s-indexed-job"
    assert json.loads(env["TF_CONFIG"])["task"]["index"] == 1
    # An existing TF_CONFIG (a TFJob's) wins; outside a Job nothing happens.
    assert configure_cluster("auto", {**JOB_ENV, "TF_CONFIG": "{}"}) == "none"
    plain: dict[str, str] = {}
    assert configure_cluster("auto", plain) == "none" and "TF_CONFIG" not in plain
    with pytest.raises(UserError, match="unknown --cluster"):
        configure_cluster("slurm", {})


def test_strategy_auto_detection(monkeypatch):
    for key in ("TF_CONFIG", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert detect_strategy() == "single"
    monkeypatch.setenv("TF_CONFIG", json.dumps(k8s_indexed_job_tf_config(JOB_ENV)))
    assert detect_strategy() == "multiworker"
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})
    )
    assert detect_strategy() == "single"
    monkeypatch.setenv("HOROVOD_RANK", "0")
    assert detect_strategy() == "horovod"


def test_strategy_and_cluster_tables_match_config():
    from imgtrain.config import CLUSTERS as CONFIG_CLUSTERS
    from imgtrain.config import STRATEGIES
    from imgtrain.train.cluster import CLUSTERS
    from imgtrain.train.distribution import STRATEGY_CLASSES

    assert set(STRATEGIES) == {"auto", *STRATEGY_CLASSES}
    assert CLUSTERS is CONFIG_CLUSTERS  # one list


# A Kubeflow Trainer v2 TrainJob "imgtrain" on its runtime's replicated job "node": what the
# runtime's downward API and the TrainJob's env give pod 2 of 4.
JOBSET_ENV = {
    "JOB_COMPLETION_INDEX": "2",
    "IMGTRAIN_WORKERS": "4",
    "IMGTRAIN_JOBSET": "imgtrain",
    "IMGTRAIN_REPLICATED_JOB": "node",
    "IMGTRAIN_JOB_INDEX": "0",
}


def test_jobset_tf_config_follows_the_trainjob_pod_names():
    cfg = jobset_tf_config(JOBSET_ENV)
    # JobSet's host names, as Trainer v2's JAX plugin names its coordinator: <trainjob>-node-0-<i>.<trainjob>
    assert cfg == {
        "cluster": {"worker": [f"imgtrain-node-0-{i}.imgtrain:12345" for i in range(4)]},
        "task": {"type": "worker", "index": 2},
    }


def test_jobset_defaults_subdomain_namespace_and_port():
    env = {k: v for k, v in JOBSET_ENV.items() if k not in ("IMGTRAIN_REPLICATED_JOB", "IMGTRAIN_JOB_INDEX")}
    assert jobset_tf_config(env)["cluster"]["worker"][0] == "imgtrain-node-0-0.imgtrain:12345"
    custom = {**JOBSET_ENV, "IMGTRAIN_SUBDOMAIN": "net", "IMGTRAIN_NAMESPACE": "ml", "IMGTRAIN_PORT": "2222"}
    custom["IMGTRAIN_REPLICATED_JOB"], custom["IMGTRAIN_JOB_INDEX"] = "workers", "1"
    assert jobset_tf_config(custom)["cluster"]["worker"][3] == "imgtrain-workers-1-3.net.ml.svc:2222"


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"IMGTRAIN_JOBSET": ""}, "--cluster jobset needs the environment variable IMGTRAIN_JOBSET"),
        ({"IMGTRAIN_WORKERS": ""}, "needs the environment variable IMGTRAIN_WORKERS"),
        ({"JOB_COMPLETION_INDEX": "4"}, "outside 0..3"),
        ({"IMGTRAIN_JOB_INDEX": "-1"}, "IMGTRAIN_JOB_INDEX must be a non-negative integer"),
        ({"IMGTRAIN_PORT": "70000"}, "IMGTRAIN_PORT must be 1-65535"),
    ],
)
def test_jobset_bad_env(change, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        jobset_tf_config({**JOBSET_ENV, **change})


def test_auto_detects_a_jobset_pod():
    env = dict(JOBSET_ENV)
    assert detect_cluster(env) == "jobset"
    assert configure_cluster("auto", env) == "jobset"
    assert json.loads(env["TF_CONFIG"])["cluster"]["worker"][2] == "imgtrain-node-0-2.imgtrain:12345"
    assert configure_cluster("jobset", dict(JOBSET_ENV)) == "jobset"


def test_every_cluster_kind_has_a_builder():
    from imgtrain.config import CLUSTERS
    from imgtrain.train.cluster import BUILDERS

    assert set(CLUSTERS) == {"auto", "none", *BUILDERS}


# What each strategy's collectives raise when another worker is gone (as measured: MWMS's
# coordination service after a peer's SIGKILL, Horovod's ops after a rank left).
LOST = {
    "multiworker": (
        "Graph execution error:\n\nCollective ops is aborted by: Error reported from /job:worker/task:1: "
        "The following tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1",
        "worker 1",
    ),
    "horovod": (
        "Graph execution error:\n\nHorovod has been shut down. This was caused by an exception on one of the ranks",
        "another worker",
    ),
}


@pytest.mark.parametrize("strategy", list(LOST))
def test_a_lost_peer_is_its_own_exit_code_and_one_line(strategy, monkeypatch, capsys, tmp_path):
    """A worker whose collective failed because another worker vanished (a node crash: no
    SIGTERM, no launcher) exits 138, which the Kubernetes overlays retry without counting it
    (k8s/), with one line that says so; any other error is left alone."""
    import tensorflow as tf

    from imgtrain import cli, run
    from imgtrain.errors import EXIT_PEER_LOST
    from imgtrain.train import distribution

    message, gone = LOST[strategy]
    kind = distribution.MultiWorker if strategy == "multiworker" else distribution.Horovod
    error = (tf.errors.UnavailableError if strategy == "multiworker" else tf.errors.UnknownError)(None, None, message)
    assert kind.lost_peer(None, error) == gone
    assert kind.lost_peer(None, tf.errors.InvalidArgumentError(None, None, "Incompatible shapes")) is None
    assert distribution.SingleDevice().lost_peer(error) is None

    class Worker(distribution.SingleDevice):  # worker 0 of 2, whose step fails as measured
        rank, world_size, is_chief = 0, 2, True

        def lost_peer(self, exc):
            return kind.lost_peer(self, exc)

    def step_fails(*_args):
        raise error

    monkeypatch.setattr(run, "_train_locked", step_fails)
    monkeypatch.setattr(run, "make_distribution", lambda _name: Worker())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    assert cli.main(["train", "--data", "photos", "--output", "runs/x"]) == EXIT_PEER_LOST == 138
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"imgtrain: worker 0 of 2 lost {gone}, which stopped answering") and "\n" not in err, err
    assert "start every worker again with the same command" in err
