"""horovodrun, with a worker's failure said in one line instead of horovodrun's traceback.

launch/horovod.sh runs this with horovodrun's own Python and arguments. When a worker exits
non-zero (told to stop: 130 or 143 after its checkpoint; or failed), horovodrun stops the
others and raises a RuntimeError naming the first one; this prints that as one line and
exits with the worker's code (a signal -N as 128 + N, as a shell reports it).
"""

from __future__ import annotations

import re
import sys


def main() -> int:
    from horovod.runner.launch import run_commandline

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
