"""The README's shell commands, read from its fenced blocks: the journeys' source.

A journey takes its command with ``command(text)``, which fails when the README no longer
holds that command word for word. ``NOT_RUNNABLE`` lists, with the reason, the commands that
cannot run on this project's machines; ``test_readme_commands`` fails when the README holds a
command that is in neither place.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

NOT_RUNNABLE = {
    "make test": "the suite itself (CI runs it); not re-run inside the suite",
    "horovodrun -np 4 -H localhost:4 imgtrain train --config cfg.yaml": "four processes need four GPUs "
    "(the journeys run -np 2 on this host)",
    'TF_CONFIG=\'{"cluster": {"worker": ["node0:12345", "node1:12345"]}, "task": {"type": "worker", '
    '"index": 1}}\' imgtrain train --config cfg.yaml --output /shared/runs/x': "needs two nodes",
    "launch/horovod.sh -np 8 -H node0:4,node1:4 -- imgtrain train --config cfg.yaml": "needs two GPU nodes",
    "launch/horovod.sh -np 8 --hostfile hosts.txt -- imgtrain train --config cfg.yaml": "needs GPU nodes",
    "docker build -t imgtrain:0.1.0 .": "no Docker engine here (make image-test builds the CPU image with podman)",
    "docker build -t imgtrain:0.1.0-cpu --build-arg VARIANT=cpu --build-arg BUILD_BASE=ubuntu:22.04 "
    "--build-arg RUNTIME_BASE=ubuntu:22.04 .": "no Docker engine here (make image-test builds it with podman)",
    'docker run --gpus all -v "$PWD/work:/data" imgtrain:0.1.0 train --data /data/images --output /data/runs/x': (
        "no Docker engine or GPU here (make image-test runs the image with podman)"
    ),
    "docker run imgtrain:0.1.0 --version": "no Docker engine here (make image-test runs --version with podman)",
}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)


def commands() -> list[str]:
    """Every command of the README's ```sh blocks: continuation lines joined, comments dropped,
    whitespace made single (quoted text kept as written)."""
    found = []
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            if normal(line):
                found.append(normal(line))
    return found


def normal(line: str) -> str:
    """A command line without its trailing comment, with single spaces between words (quotes
    kept as written; no README command has a '#' inside quotes)."""
    code = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
    return " ".join(code.split())


def command(text: str) -> str:
    """``text``, which must be one of the README's commands."""
    if text not in commands():
        raise AssertionError(f"the README no longer holds the command {text!r}; update the journey with it")
    return text


def python_blocks() -> list[str]:
    return _blocks("python")
