"""The Dockerfile built and run for real: ``make image-test`` (tests/image_check.py) under
pytest, where podman and debootstrap are installed and we are root (.ci/run installs them).

CI builds the image in the background from its first minute (``image_check.py --build-only``,
niced, so the suite comes first) and names it in ``IMGTRAIN_IMAGE_BUILD_LOG``; this test, which
conftest.py runs last, waits for that build and checks the image it made. Without that
variable the test builds the image itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from image_check import BUILT

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: debootstrap and the volume's group ownership need root"
    for tool in ("podman", "debootstrap"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            return f"{tool} is not installed (apt-get install podman debootstrap runc)"
    return None


def background_build(log: Path, pid: int, timeout: float) -> tuple[str, str]:
    """Wait for the background ``--build-only`` run to end: (what it printed, the tag it built)."""
    deadline = time.time() + timeout
    while True:
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
        text = log.read_text(errors="replace") if log.exists() else ""
        built = [line for line in text.splitlines() if line.startswith(f"{BUILT} ")]
        if built or not running:
            assert built, f"the background image build (pid {pid}) ended without the image:\n{text[-6000:]}"
            return text, built[-1][len(BUILT) :].strip()
        assert time.time() < deadline, f"the background image build is still running after {timeout:.0f} s"
        time.sleep(5)


@pytest.mark.timeout(3600)
def test_the_image_builds_trains_and_runs_horovod():
    why = missing()
    if why and os.environ.get("IMGTRAIN_REQUIRE_IMAGE_TEST"):
        pytest.fail(f"IMGTRAIN_REQUIRE_IMAGE_TEST is set, but {why}")
    if why:
        pytest.skip(why)
    cmd, before = [sys.executable, str(ROOT / "tests" / "image_check.py")], ""
    log, pid = os.environ.get("IMGTRAIN_IMAGE_BUILD_LOG"), os.environ.get("IMGTRAIN_IMAGE_BUILD_PID")
    if log and pid:
        before, tag = background_build(Path(log), int(pid), timeout=3000)
        cmd += ["--built", "--tag", tag]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3500)
    printed = before + out.stdout
    print(printed)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    steps = ("base image", "build", "version and user", "sshd config of the MPI nodes", "volume writable")
    for step in (*steps, "train in the container", "podman stop mid-training, then the same command"):
        assert f"image-test: {step}: ok" in printed
    assert "image-test: horovodrun -np 2 --gloo in the container: ok" in printed
    assert "image-test: passed" in printed
