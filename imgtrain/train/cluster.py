"""Cluster discovery: turn a scheduler's environment into ``TF_CONFIG``.

``MultiWorkerMirroredStrategy`` learns its peers from ``TF_CONFIG``. The
Kubeflow TFJob operator writes it; a plain Kubernetes Indexed Job does not,
but gives each pod everything needed to write it: its index
(``JOB_COMPLETION_INDEX``) and a stable DNS name
``<job-name>-<index>.<headless-service>`` for every pod. The manifest adds the
worker count, the service name and the job name as environment variables.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, MutableMapping

from imgtrain.config import CLUSTERS
from imgtrain.errors import UserError

DEFAULT_PORT = 12345


def k8s_indexed_job_tf_config(env: Mapping[str, str]) -> dict:
    """TF_CONFIG for pod ``JOB_COMPLETION_INDEX`` of an Indexed Job behind a headless Service.

    Needs ``JOB_COMPLETION_INDEX`` (set by Kubernetes), ``IMGTRAIN_WORKERS``
    (the Job's completions), ``IMGTRAIN_SERVICE`` (the headless Service, also
    the pod template's ``subdomain``) and ``IMGTRAIN_JOB_NAME`` (the Job's
    name, e.g. from the ``job-name`` label); ``IMGTRAIN_PORT`` defaults to 12345.
    """
    missing = [
        k
        for k in ("JOB_COMPLETION_INDEX", "IMGTRAIN_WORKERS", "IMGTRAIN_SERVICE", "IMGTRAIN_JOB_NAME")
        if not env.get(k)
    ]
    if missing:
        raise UserError(
            f"--cluster k8s-indexed-job needs the environment variable {missing[0]}; "
            "see k8s/multiworker-job for a Job that sets them"
        )
    try:
        index = int(env["JOB_COMPLETION_INDEX"])
        workers = int(env["IMGTRAIN_WORKERS"])
        port = int(env.get("IMGTRAIN_PORT") or DEFAULT_PORT)
    except ValueError:
        raise UserError("JOB_COMPLETION_INDEX, IMGTRAIN_WORKERS and IMGTRAIN_PORT must be integers") from None
    if workers < 1 or not 0 <= index < workers:
        raise UserError(
            f"JOB_COMPLETION_INDEX {index} is outside 0..{workers - 1} (IMGTRAIN_WORKERS={workers}); "
            "IMGTRAIN_WORKERS must equal the Job's completions"
        )
    job, service = env["IMGTRAIN_JOB_NAME"], env["IMGTRAIN_SERVICE"]
    namespace = env.get("IMGTRAIN_NAMESPACE")
    domain = f"{service}.{namespace}.svc" if namespace else service
    hosts = [f"{job}-{i}.{domain}:{port}" for i in range(workers)]
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def detect_cluster(env: Mapping[str, str]) -> str:
    """``auto``: an Indexed Job that declares its workers and has no TF_CONFIG yet."""
    if env.get("TF_CONFIG"):
        return "none"
    if env.get("JOB_COMPLETION_INDEX") and env.get("IMGTRAIN_WORKERS"):
        return "k8s-indexed-job"
    return "none"


def configure_cluster(kind: str, env: MutableMapping[str, str] = os.environ) -> str:
    """Write ``TF_CONFIG`` for ``kind`` (before the strategy is created); return the kind used."""
    if kind not in CLUSTERS:
        raise UserError(f"unknown --cluster '{kind}'; choose one of: {', '.join(CLUSTERS)}")
    chosen = detect_cluster(env) if kind == "auto" else kind
    if chosen == "k8s-indexed-job":
        env["TF_CONFIG"] = json.dumps(k8s_indexed_job_tf_config(env))
    return chosen
