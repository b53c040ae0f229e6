"""The Dockerfile built and run for real: ``make image-test`` (tests/image_check.py) under
pytest, where podman and debootstrap are installed and we are root (.ci/run installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: debootstrap and the volume's group ownership need root"
    for tool in ("podman", "debootstrap"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            return f"{tool} is not installed (apt-get install podman debootstrap runc)"
    return None


@pytest.mark.timeout(3600)
def test_the_image_builds_trains_and_runs_horovod():
    why = missing()
    if why and os.environ.get("IMGTRAIN_REQUIRE_IMAGE_TEST"):
        pytest.fail(f"IMGTRAIN_REQUIRE_IMAGE_TEST is set, but {why}")
    if why:
        pytest.skip(why)
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "image_check.py")], capture_output=True, text=True, timeout=3500
    )
    print(out.stdout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    steps = ("base image", "build", "version and user", "sshd config of the MPI nodes", "volume writable")
    for step in (*steps, "train in the container"):
        assert f"image-test: {step}: ok" in out.stdout
    assert "image-test: horovodrun -np 2 --gloo in the container: ok" in out.stdout
    assert "image-test: passed" in out.stdout
