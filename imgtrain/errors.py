"""The one exception type a user can cause.

Anything the person running imgtrain can fix themselves (a wrong path, a typo
in a config key, an image that will not decode) is raised as ``UserError``
where it is detected. The CLI prints it once, on one line, and exits with
code 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input: one line that says what, where and how to fix it."""

    def __init__(self, message: str) -> None:
        # Collapse to a single line: the CLI contract is one line per error.
        super().__init__(" ".join(str(message).split()))
