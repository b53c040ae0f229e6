"""Cluster discovery: turn a scheduler's environment into ``TF_CONFIG``.

``MultiWorkerMirroredStrategy`` learns its peers from ``TF_CONFIG``. The
Kubeflow TFJob operator writes it; nothing else on Kubernetes does, but every
indexed pod has what is needed to write it: its index (``JOB_COMPLETION_INDEX``)
and a stable DNS name for every pod, which the manifest's environment names:

- ``k8s-indexed-job``: a plain Indexed Job behind a headless Service; pod ``i`` is
  ``<job-name>-<i>.<service>``.
- ``jobset``: a JobSet (what Kubeflow Trainer v2 runs a ``TrainJob`` on), which has
  no TensorFlow plugin to write ``TF_CONFIG``; pod ``i`` of job ``j`` of replicated
  job ``r`` is ``<jobset>-<r>-<j>-<i>.<subdomain>``, the subdomain being the
  JobSet's name unless its network says otherwise. A TrainJob's JobSet is named
  after the TrainJob and its trainer is replicated job ``node``, one Job of
  ``numNodes`` pods: ``<trainjob>-node-0-<i>.<trainjob>``.

Every kind needs ``IMGTRAIN_WORKERS`` (a pod cannot read its Job's completions);
``IMGTRAIN_PORT`` defaults to 12345 and ``IMGTRAIN_NAMESPACE`` makes the names
fully qualified.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, MutableMapping

from imgtrain.config import CLUSTERS
from imgtrain.errors import UserError

DEFAULT_PORT = 12345


def _require(env: Mapping[str, str], kind: str, names: tuple[str, ...], example: str) -> None:
    missing = [k for k in names if not env.get(k)]
    if missing:
        raise UserError(f"--cluster {kind} needs the environment variable {missing[0]}; see {example}")


def _index_workers_port(env: Mapping[str, str]) -> tuple[int, int, int]:
    try:
        index = int(env["JOB_COMPLETION_INDEX"])
        workers = int(env["IMGTRAIN_WORKERS"])
        port = int(env.get("IMGTRAIN_PORT") or DEFAULT_PORT)
    except ValueError:
        raise UserError("JOB_COMPLETION_INDEX, IMGTRAIN_WORKERS and IMGTRAIN_PORT must be integers") from None
    if workers < 1 or not 0 <= index < workers:
        raise UserError(
            f"JOB_COMPLETION_INDEX {index} is outside 0..{workers - 1} (IMGTRAIN_WORKERS={workers}); "
            "IMGTRAIN_WORKERS must equal the number of pods (the Job's completions, the TrainJob's numNodes)"
        )
    if not 0 < port < 65536:
        raise UserError(f"IMGTRAIN_PORT must be 1-65535, got {port}")
    return index, workers, port


def _tf_config(env: Mapping[str, str], pod: Callable[[int], str], domain: str) -> dict:
    index, workers, port = _index_workers_port(env)
    namespace = env.get("IMGTRAIN_NAMESPACE")
    if namespace:
        domain = f"{domain}.{namespace}.svc"
    hosts = [f"{pod(i)}.{domain}:{port}" for i in range(workers)]
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def k8s_indexed_job_tf_config(env: Mapping[str, str]) -> dict:
    """TF_CONFIG for pod ``JOB_COMPLETION_INDEX`` of an Indexed Job behind a headless Service.

    Needs ``JOB_COMPLETION_INDEX`` (set by Kubernetes), ``IMGTRAIN_WORKERS``
    (the Job's completions), ``IMGTRAIN_SERVICE`` (the headless Service, also
    the pod template's ``subdomain``) and ``IMGTRAIN_JOB_NAME`` (the Job's
    name, e.g. from the ``job-name`` label).
    """
    names = ("JOB_COMPLETION_INDEX", "IMGTRAIN_WORKERS", "IMGTRAIN_SERVICE", "IMGTRAIN_JOB_NAME")
    _require(env, "k8s-indexed-job", names, "k8s/multiworker-job for a Job that sets them")
    job = env["IMGTRAIN_JOB_NAME"]
    return _tf_config(env, lambda i: f"{job}-{i}", env["IMGTRAIN_SERVICE"])


def jobset_tf_config(env: Mapping[str, str]) -> dict:
    """TF_CONFIG for pod ``JOB_COMPLETION_INDEX`` of one Job of a JobSet (a Trainer v2 TrainJob).

    Needs ``JOB_COMPLETION_INDEX``, ``IMGTRAIN_WORKERS`` (the TrainJob's numNodes) and
    ``IMGTRAIN_JOBSET`` (the label ``jobset.sigs.k8s.io/jobset-name``); optional
    ``IMGTRAIN_REPLICATED_JOB`` (label ``jobset.sigs.k8s.io/replicatedjob-name``, default
    ``node``), ``IMGTRAIN_JOB_INDEX`` (label ``jobset.sigs.k8s.io/job-index``, default 0)
    and ``IMGTRAIN_SUBDOMAIN`` (the JobSet's ``network.subdomain``, default its name).
    """
    names = ("JOB_COMPLETION_INDEX", "IMGTRAIN_WORKERS", "IMGTRAIN_JOBSET")
    _require(env, "jobset", names, "k8s/trainjob-multiworker for a runtime that sets them")
    jobset = env["IMGTRAIN_JOBSET"]
    replicated = env.get("IMGTRAIN_REPLICATED_JOB") or "node"
    job_index = env.get("IMGTRAIN_JOB_INDEX") or "0"
    if not job_index.isdigit():
        raise UserError(f"IMGTRAIN_JOB_INDEX must be a non-negative integer, got '{job_index}'")
    return _tf_config(
        env, lambda i: f"{jobset}-{replicated}-{int(job_index)}-{i}", env.get("IMGTRAIN_SUBDOMAIN") or jobset
    )


# Kinds that write TF_CONFIG, with what ``auto`` looks for (besides JOB_COMPLETION_INDEX and
# IMGTRAIN_WORKERS): the first kind whose variable is set is the one used.
BUILDERS: dict[str, tuple[Callable[[Mapping[str, str]], dict], str]] = {
    "jobset": (jobset_tf_config, "IMGTRAIN_JOBSET"),
    "k8s-indexed-job": (k8s_indexed_job_tf_config, "IMGTRAIN_SERVICE"),
}


def detect_cluster(env: Mapping[str, str]) -> str:
    """``auto``: an indexed pod that declares its workers and has no TF_CONFIG yet."""
    if env.get("TF_CONFIG") or not (env.get("JOB_COMPLETION_INDEX") and env.get("IMGTRAIN_WORKERS")):
        return "none"
    for kind, (_, marker) in BUILDERS.items():
        if env.get(marker):
            return kind
    return "k8s-indexed-job"  # says which variable is missing


def configure_cluster(kind: str, env: MutableMapping[str, str] = os.environ) -> str:
    """Write ``TF_CONFIG`` for ``kind`` (before the strategy is created); return the kind used."""
    if kind not in CLUSTERS:
        raise UserError(f"unknown --cluster '{kind}'; choose one of: {', '.join(CLUSTERS)}")
    chosen = detect_cluster(env) if kind == "auto" else kind
    if chosen in BUILDERS:
        env["TF_CONFIG"] = json.dumps(BUILDERS[chosen][0](env))
    return chosen
