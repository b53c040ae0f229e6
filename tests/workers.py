"""Finding the imgtrain worker processes a launcher started, as a person does with ``ps``: by
the rank their environment gives them (Horovod's HOROVOD_RANK, or TF_CONFIG's task index)."""

from __future__ import annotations

import json
from typing import Optional

import psutil

ITS_GROUP = -2  # as a rank: the launcher's whole process group, as a terminal's Ctrl-C reaches it


def rank_of(process: psutil.Process) -> Optional[int]:
    """The worker index of an imgtrain process, or None (not a worker, or gone)."""
    try:
        environ, argv = process.environ(), " ".join(process.cmdline())
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return None
    if "imgtrain" not in argv or ("--output" not in argv and "--config" not in argv):
        return None
    if "HOROVOD_RANK" in environ:
        return int(environ["HOROVOD_RANK"])
    if "TF_CONFIG" in environ:
        return int(json.loads(environ["TF_CONFIG"])["task"]["index"])
    return None


def worker(launcher_pid: int, rank: int) -> psutil.Process:
    """The imgtrain process of ``rank`` under a launcher."""
    top = psutil.Process(launcher_pid)
    for process in [top, *top.children(recursive=True)]:
        if rank_of(process) == rank:
            return process
    raise AssertionError(f"no rank-{rank} worker under {launcher_pid}")
