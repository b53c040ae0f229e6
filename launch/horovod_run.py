"""horovodrun, with a worker's failure said in one line instead of horovodrun's traceback, and
stopped when launch/horovod.sh dies.

launch/horovod.sh runs this with horovodrun's own Python and arguments. When a worker exits
non-zero (told to stop: 130 or 143 after its checkpoint; or failed), horovodrun stops the
others and raises a RuntimeError naming the first one; this prints that as one line and
exits with the worker's code (a signal -N as 128 + N, as a shell reports it).
"""

from __future__ import annotations

import os
import re
import sys


def _die_with_parent() -> None:
    """SIGTERM to this process when launch/horovod.sh dies, however it dies (Linux's
    PR_SET_PDEATHSIG): horovodrun, in a session of its own, then stops its workers as it does
    on any SIGTERM, instead of running on unsupervised."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    from horovod.runner.launch import run_commandline

    _die_with_parent()
    # The workers are told that stop signals come from launch/horovod.sh, which waits for them,
    # so they do not warn about horovodrun's own 5 s limit (imgtrain/train/distribution.py).
    os.environ["IMGTRAIN_STOP_FORWARDED"] = "1"

    try:
        run_commandline()
    except RuntimeError as exc:
        found = re.search(r"Process name: (\S+)\s+Exit code: (-?\d+)", str(exc))
        if not found:
            raise
        rank, code = found.group(1), int(found.group(2))
        code = code if code > 0 else 128 - code
        print(f"horovodrun: worker {rank} exited with code {code}; the others were stopped", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
