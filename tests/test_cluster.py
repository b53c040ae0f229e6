import json

import pytest

from imgtrain.errors import UserError
from imgtrain.train.cluster import configure_cluster, detect_cluster, k8s_indexed_job_tf_config
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
