"""The exceptions a run ends with on purpose, and their exit codes.

Anything the person running imgtrain can fix themselves (a wrong path, a typo
in a config key, an image that will not decode) is raised as ``UserError``
where it is detected. The CLI prints it once, on one line, and exits with
code 2. A run that finished but could not reach its bucket raises ``NotUploaded``: one
line, exit 75 (try again); so does a bucket that cannot be reached (``Unreachable``) and a
run whose streamed data stopped answering mid-epoch.
A worker whose collective failed because another worker is gone raises
``PeerLost``: one line, exit 138, which schedulers retry. Every other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
# 128 + SIGUSR1, a signal no launcher here sends: Kubeflow's ExitCode restart policy retries
# 128 and above (below is permanent); the Indexed Job and JobSet overlays ignore it as a preemption.
EXIT_PEER_LOST = 138
# EX_TEMPFAIL: the run is whole on this machine but not yet in its bucket; the same command uploads it.
EXIT_NOT_UPLOADED = 75


class UserError(Exception):
    """A problem with the user's input: one line that says what, where and how to fix it."""

    def __init__(self, message: str) -> None:
        # Collapse to a single line: the CLI contract is one line per error.
        super().__init__(" ".join(str(message).split()))


class PeerLost(Exception):
    """Another worker is gone (its node crashed, its pod was killed) and this one's collective
    failed: neither this worker's fault nor the input's. The last complete checkpoint stands."""


class NotUploaded(Exception):
    """The run's bucket could not be reached at the end: the local copy holds what is missing
    there, and the same command, run again on this machine, uploads it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class Unreachable(Exception):
    """A bucket did not answer (refused, or silent past its deadline) before the run could go
    on: nothing is lost, and the same command, once it answers, carries on (exit 75)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class LeaseLost(NotUploaded):
    """Another process took over a bucket run while this one's lease went unrenewed: this run
    writes nothing more there (exit 75, as for a bucket out of reach)."""
