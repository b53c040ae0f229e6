#!/usr/bin/env python3
"""Build the imgtrain image with podman and run it as the manifests do (``make image-test``).

No Docker daemon and no registry are reachable on the build machines, so the base is made
here: a ``minbase`` debootstrap of the suite this machine's apt sources name, imported as
``localhost/imgtrain-base:<suite>`` (kept between runs). The Dockerfile is built unchanged
but for its build arguments (the CPU variant on that base in place of the CUDA/Ubuntu ones);
a CA bundle on this machine is passed as the ``ca_bundle`` build secret, for proxies that
intercept TLS. Then, each step timed:

- ``imgtrain --version`` is the project's version; the user is 1000:1000; the MPI nodes'
  sshd configuration is valid for that user;
- the volume is writable as the manifests mount it (group 1000, setgid, read-only root
  filesystem with /tmp an emptyDir, the config mounted read-only);
- a tiny dataset trains inside the container to a ``report.json``, logged to MLflow's default
  store in the working directory (``/data/mlflow.db``);
- ``horovodrun -np 2 --gloo`` inside the container trains to a ``run.json`` with world size 2.

Exit 0 when every check passes; otherwise one line says which failed, after the output of
the command that failed.

``--build-only`` builds and keeps the image; ``--built`` checks an image built so. CI starts
the build in the background before anything else (it downloads and compiles for many
minutes, mostly while the suite runs) and tests/test_image.py checks the result at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILT = "image-test: built"  # the last line of --build-only, once the image is there
TIMES: list[tuple[str, float]] = []


class Failed(Exception):
    pass


def run(cmd: list[str], step: str, timeout: float = 1800, **kw) -> str:
    """Run ``cmd``; its combined output, or Failed naming ``step``."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        raise Failed(f"{step}: `{' '.join(cmd[:6])} ...` exited {out.returncode}")
    return out.stdout + out.stderr


def timed(step: str):
    def wrap(fn):
        def inner(*a, **kw):
            start = time.monotonic()
            result = fn(*a, **kw)
            TIMES.append((step, time.monotonic() - start))
            print(f"image-test: {step}: ok ({TIMES[-1][1]:.0f} s)", flush=True)
            return result

        return inner

    return wrap


def apt_source() -> tuple[str, str]:
    """(mirror, suite) of this machine's first Debian source, one-line or deb822."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        text = f.read_text() if f.is_file() else ""
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            return m.group(1), m.group(2)
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and "URIs" in fields and "Suites" in fields:
                if "security" not in fields["URIs"]:
                    return fields["URIs"].split()[0], fields["Suites"].split()[0]
    raise Failed("base: no Debian source in /etc/apt; set IMGTRAIN_BASE_IMAGE to a local image instead")


def limits() -> list[str]:
    """Podman raises open files and processes to its own defaults, which a sandbox without
    CAP_SYS_RESOURCE refuses: ask for this process's own soft limits, at most 16,384
    processes (plenty for horovodrun and its workers; some sandboxes refuse more even
    below their own hard limit)."""
    out = []
    for name, kind, cap in (("nofile", resource.RLIMIT_NOFILE, 1 << 20), ("nproc", resource.RLIMIT_NPROC, 1 << 14)):
        soft = resource.getrlimit(kind)[0]
        value = cap if soft == resource.RLIM_INFINITY else min(soft, cap)
        out += ["--ulimit", f"{name}={value}:{value}"]
    return out


class Podman:
    def __init__(self) -> None:
        self.exe = shutil.which("podman") or "podman"
        self.runtime: list[str] = []

    def __call__(self, *args: str, step: str, timeout: float = 1800, **kw) -> str:
        return run([self.exe, *self.runtime, *args], step, timeout, **kw)

    def choose_runtime(self, image: str) -> str:
        """The first OCI runtime that can start a container here (crun needs cgroup v2 or v1
        alone; runc also takes the hybrid layout some sandboxes have)."""
        for runtime in ([], ["--runtime", "runc"], ["--runtime", "crun"]):
            probe = [self.exe, *runtime, "run", "--rm", "--network", "none", *limits(), image, "true"]
            if subprocess.run(probe, capture_output=True).returncode == 0:
                self.runtime = runtime
                return runtime[1] if runtime else "default"
        raise Failed("podman cannot start a container here (tried its default runtime, runc and crun)")


@timed("base image")
def base_image(podman: Podman) -> str:
    given = os.environ.get("IMGTRAIN_BASE_IMAGE")
    if given:
        return given
    mirror, suite = apt_source()
    name = f"localhost/imgtrain-base:{suite}"
    if subprocess.run([podman.exe, "image", "exists", name]).returncode == 0:
        return name
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run([debootstrap, "--variant=minbase", suite, str(rootfs), mirror], "base: debootstrap")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run([podman.exe, "import", "-", name], "base: podman import", stdin=tar.stdout)
        tar.wait()
    return name


@timed("build")
def build(podman: Podman, base: str, tag: str) -> None:
    args = ["build", "--network", "host", *limits(), "-t", tag, "-f", str(ROOT / "Dockerfile")]
    for arg in ("VARIANT=cpu", f"BUILD_BASE={base}", f"RUNTIME_BASE={base}"):
        args += ["--build-arg", arg]
    if CA_BUNDLE.is_file():
        args += ["--secret", f"id=ca_bundle,src={CA_BUNDLE}"]
    podman(*args, str(ROOT), step="build", timeout=3600)


def container(
    podman: Podman,
    tag: str,
    data: Path,
    config: Path,
    *argv: str,
    entrypoint: str = "",
    read_only: bool = True,
    step: str,
) -> str:
    """``tag`` run as the multiworker pods are: read-only root (as the Job and the Trainer v2
    runtime set it; the MPI launchers do not), /tmp an emptyDir, the data volume at /data, the
    config read-only at /etc/imgtrain, no network."""
    opts = ["run", "--rm", "--network", "none", "--tmpfs", "/tmp", *limits()]
    if read_only:
        opts.append("--read-only")
    opts += ["-v", f"{data}:/data", "-v", f"{config}:/etc/imgtrain:ro"]
    opts += ["-e", "KERAS_HOME=/data/.keras", "-e", "MPLCONFIGDIR=/tmp/matplotlib"]
    if entrypoint:
        opts += ["--entrypoint", entrypoint]
    return podman(*opts, tag, *argv, step=step)


def volume(root: Path) -> tuple[Path, Path]:
    """The data volume as Kubernetes hands it to a pod with fsGroup 1000, and the config."""
    sys.path.insert(0, str(ROOT))
    from imgtrain.datasets import write_shapes

    data, config = root / "data", root / "config"
    write_shapes(data / "images", per_class=12, size=32)
    config.mkdir()
    # The suite's tiny training: what is checked is the image, not the model. (Imported here:
    # the background build runs this file with the system's python3, before the venv exists.)
    import tiny
    import yaml

    settings = {"data": {"path": "/data/images"}, "model": {"name": "cnn"}, "train": {"epochs": 2, "batch_size": 8}}
    (config / "config.yaml").write_text(yaml.safe_dump(tiny.merged(tiny.config(), settings)))
    for path in [data, *data.rglob("*")]:
        os.chown(path, 0, 1000)
        path.chmod(0o2775 if path.is_dir() else 0o664)
    config.chmod(0o755)
    return data, config


@timed("version and user")
def check_identity(podman: Podman, tag: str, version: str) -> None:
    out = podman("run", "--rm", "--network", "none", *limits(), tag, "--version", step="imgtrain --version")
    if version not in out:
        raise Failed(f"imgtrain --version printed {out.strip()!r}, not version {version}")
    ids = podman("run", "--rm", *limits(), "--entrypoint", "sh", tag, "-c", "id -u; id -g", step="id").split()
    if ids[:2] != ["1000", "1000"]:
        raise Failed(f"the image runs as {':'.join(ids[:2])}, not 1000:1000 as the manifests' securityContext says")


@timed("sshd config of the MPI nodes")
def check_sshd(podman: Podman, tag: str) -> None:
    """The MPI nodes run sshd as user 1000 on port 2222 from the config the image writes."""
    opts = ["run", "--rm", "--network", "none", *limits(), "--entrypoint", "/usr/sbin/sshd", tag]
    podman(*opts, "-t", "-f", "/home/imgtrain/.sshd/sshd_config", step="sshd -t")


@timed("volume writable")
def check_volume(podman: Podman, tag: str, data: Path, config: Path) -> None:
    probe = (
        "touch /data/.probe && mkdir -p /data/runs && rm /data/.probe && touch /tmp/x && cat /etc/imgtrain/config.yaml"
    )
    container(podman, tag, data, config, "-c", probe, entrypoint="sh", step="volume")


@timed("train in the container")
def check_train(podman: Podman, tag: str, data: Path, config: Path) -> dict:
    args = ["train", "--config", "/etc/imgtrain/config.yaml", "--output", "/data/runs/single", "--no-progress"]
    args += ["--set", "data.augment.rotation=10"]  # rotations resampled by OpenCV, which the image ships
    args += ["--mlflow"]  # MLflow's default store in the working directory, /data
    out = container(podman, tag, data, config, *args, step="train")
    if "resampled by opencv" not in out:
        raise Failed(f"training in the container did not resample with OpenCV; it printed:\n{out[-1500:]}")
    if "tracking: logged to MLflow run" not in out or not (data / "mlflow.db").is_file():
        raise Failed(f"training in the container did not log to MLflow in /data; it printed:\n{out[-1500:]}")
    report = data / "runs" / "single" / "report.json"
    if not report.is_file():
        raise Failed(f"training in the container wrote no {report}")
    return json.loads(report.read_text())


@timed("horovodrun -np 2 --gloo in the container")
def check_horovod(podman: Podman, tag: str, data: Path, config: Path) -> dict:
    args = ["-np", "2", "-H", "localhost:2", "--gloo", "imgtrain", "train", "--config", "/etc/imgtrain/config.yaml"]
    args += ["--output", "/data/runs/horovod", "--strategy", "horovod", "--no-progress"]
    # As the MPI launchers run: horovodrun keeps a cache in $HOME, so their root is writable.
    container(podman, tag, data, config, *args, entrypoint="horovodrun", read_only=False, step="horovodrun")
    summary = data / "runs" / "horovod" / "run.json"
    if not summary.is_file():
        raise Failed(f"horovodrun in the container wrote no {summary}")
    found = json.loads(summary.read_text())
    if found.get("world_size") != 2:
        raise Failed(f"horovodrun -np 2 trained with world size {found.get('world_size')}, not 2")
    return found


@timed("podman stop mid-training, then the same command")
def check_stop(podman: Podman, tag: str, data: Path, config: Path) -> str:
    """``podman stop`` sends SIGTERM to the entrypoint (tini, which passes it on): imgtrain
    writes a checkpoint where it stands and exits 143; the same command again resumes."""
    run_dir, name = data / "runs" / "stopped", "imgtrain-stop-check"
    args = ["train", "--config", "/etc/imgtrain/config.yaml", "--output", "/data/runs/stopped", "--no-progress"]
    # Batch 2 and a checkpoint every step: about 15 steps an epoch, each slowed by its save, so
    # three epochs outlast the time podman takes to stop the container, and the resume is short.
    args += ["--epochs", "3", "--batch-size", "2", "--set", "train.checkpoint.every_steps=1"]
    opts = ["run", "-d", "--name", name, "--network", "none", "--tmpfs", "/tmp", "--read-only", *limits()]
    opts += ["-v", f"{data}:/data", "-v", f"{config}:/etc/imgtrain:ro", "-e", "MPLCONFIGDIR=/tmp/matplotlib"]
    subprocess.run([podman.exe, *podman.runtime, "rm", "-f", name], capture_output=True)
    podman(*opts, tag, *args, step="stop: start")
    try:
        index, deadline = run_dir / "checkpoints" / "checkpoint", time.time() + 600
        while not (index.is_file() and '"ckpt-2"' in index.read_text()):
            if time.time() > deadline:
                raise Failed("the stopped container wrote no second checkpoint in 10 minutes")
            time.sleep(0.05)
        podman("stop", "-t", "60", name, step="stop: podman stop")
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name, step="stop: exit code").strip()
        logs = podman("logs", name, step="stop: logs")
    finally:
        subprocess.run([podman.exe, *podman.runtime, "rm", "-f", name], capture_output=True)
    stopped = [line for line in logs.splitlines() if "stopped by SIGTERM" in line]
    if code != "143" or not stopped or "checkpoint written" not in stopped[0]:
        raise Failed(f"podman stop: exit code {code}, not 143 with a checkpoint; the logs end:\n{logs[-1500:]}")
    again = container(podman, tag, data, config, *args, step="stop: the same command again")
    if "resuming from checkpoint" not in again or not (run_dir / "run.json").is_file():
        raise Failed(f"the same command after podman stop did not resume; it printed:\n{again[-1500:]}")
    return stopped[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", default="localhost/imgtrain:test-cpu")
    p.add_argument("--keep", action="store_true", help="keep the built image (default: removed afterwards)")
    p.add_argument(
        "--build-only", action="store_true", help=f"build the image as --tag, keep it, print '{BUILT}', check nothing"
    )
    p.add_argument("--built", action="store_true", help="check the image --tag an earlier --build-only made")
    args = p.parse_args(argv)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    podman = Podman()
    try:
        if os.geteuid() != 0:
            raise Failed("must run as root (debootstrap, and the volume's group as Kubernetes sets it)")
        base = base_image(podman)
        print(f"image-test: OCI runtime: {podman.choose_runtime(base)}", flush=True)
        if not args.built:
            build(podman, base, args.tag)
        if args.build_only:
            print(f"{BUILT} {args.tag}", flush=True)
            return 0
        size = int(podman("image", "inspect", "--format", "{{.Size}}", args.tag, step="inspect").strip())
        check_identity(podman, args.tag, version)
        check_sshd(podman, args.tag)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            data, config = volume(Path(tmp))
            check_volume(podman, args.tag, data, config)
            report = check_train(podman, args.tag, data, config)
            check_horovod(podman, args.tag, data, config)
            stop_line = check_stop(podman, args.tag, data, config)
    except (Failed, subprocess.TimeoutExpired) as exc:
        print(f"image-test: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not (args.keep or args.build_only):
            subprocess.run([podman.exe, "rmi", "-f", args.tag], capture_output=True)
    print(f"image-test: image {args.tag}: {size / 2**20:,.0f} MiB")
    print(f"image-test: test accuracy in the container {report.get('accuracy', report.get('test', {}))}")
    print(f"image-test: podman stop: {stop_line.strip()}")
    for step, seconds in TIMES:
        print(f"image-test: {step:45s} {seconds:7.1f} s")
    print("image-test: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
