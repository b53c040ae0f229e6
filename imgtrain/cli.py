"""Command line: the parser built from ``commands.COMMANDS``, and the one place errors are printed.

Every ``UserError`` raised anywhere below is printed here, once, as one line
on stderr, with exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import tempfile
from typing import Optional, Sequence

from imgtrain import __version__, stop
from imgtrain.commands import COMMANDS
from imgtrain.errors import (
    EXIT_NOT_UPLOADED,
    EXIT_PEER_LOST,
    EXIT_USER_ERROR,
    NotUploaded,
    PeerLost,
    Unreachable,
    UserError,
)
from imgtrain.storage.stream import lost_line

_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} .*"  # absl INFO lines (oneDNN notice, CPU feature guard)
    r"|To enable the following instructions: .*)$"
)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up INFO lines filtered out.

    TensorFlow's C++ logging prints INFO notices on import before
    ``TF_CPP_MIN_LOG_LEVEL`` takes effect (tensorflow/tensorflow#100442), which
    would bury imgtrain's one-line errors. stderr is captured during the import
    and everything except those notices is passed on. ``TF_CPP_MIN_LOG_LEVEL=0``
    turns the filter off.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:  # a usable temporary directory: _temporary_directory asked first
        os.dup2(buf.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except ImportError as exc:
            raise UserError(
                f"TensorFlow is not installed ({exc}); pip install 'imgtrain[cpu]' or 'imgtrain[gpu]'"
            ) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            kept = [
                line
                for line in buf.read().decode(errors="replace").splitlines()
                if line.strip() and not _IMPORT_NOISE.match(line)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what, and where to read more), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"imgtrain: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imgtrain",
        description="Train, evaluate, export and use image classifiers on TensorFlow, from a laptop to a cluster.",
    )
    parser.add_argument("--version", action="version", version=f"imgtrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    return COMMANDS[args.command].run(args)


def _temporary_directory() -> None:
    """TensorFlow and Keras need a writable temporary directory from their import on: with none
    (a full disk), one line says so instead of their traceback."""
    try:
        tempfile.gettempdir()
    except OSError:
        raise UserError(
            "no usable temporary directory: TMPDIR, /tmp and /var/tmp are full or not writable; "
            "free some space there or set TMPDIR to a folder with room, and run the same command again"
        ) from None


def _check_before_tensorflow(args: argparse.Namespace) -> None:
    """A command's checks that need no TensorFlow (its ``check``, when it has one): a mistyped
    flag or path is said before the 8-second import, not after it."""
    check = getattr(COMMANDS[args.command], "check", None)
    if check is not None:
        check(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``imgtrain`` command. Given ``argv`` (called from Python: a test, a notebook), the
    caller's signal handlers are back on return; as the process's own command (``argv``
    None), a signal after its outcome is settled ends the process quietly (``stop.exiting``)."""
    before = stop.handlers()
    code = _main(argv, own=argv is None)
    if argv is not None:
        stop.restore(before)
    return code


def entry() -> None:
    """The console script and ``python -m imgtrain``: ``main``, then out at once. The work is
    done and every file written whole; the interpreter's teardown (TensorFlow's included) would
    only add a window in which a signal, with Python's own handlers back, kills the process
    by default or prints a traceback."""
    code = main()
    logging.shutdown()
    stop.leave_now(code)


def _main(argv: Optional[Sequence[str]], own: bool) -> int:
    """The command's exit code. Once the outcome is known, and before its last line, a process
    running its own command (``own``) takes any further signal as the end (``stop.exiting``):
    a worker told to stop twice (a Ctrl-C, then its launcher's SIGTERM after another worker
    left) says one line and never a traceback from the teardown of what it was doing."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    line = ""
    try:
        stop.install_default()
        _temporary_directory()
        _check_before_tensorflow(args)
        _import_tensorflow_quietly()
        code = _dispatch(args)
    except BaseException as exc:  # noqa: BLE001 - every way out says one line, or re-raises
        if own:
            stop.leaving()
        code, line = _failed(args, exc)
    if own:
        stop.exiting(code)
    if line:
        print(line, file=sys.stderr)
    return code


def _failed(args: argparse.Namespace, exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line of a command that did not finish; anything else raises."""
    signum = stop.received()
    if isinstance(exc, stop.Stopped):
        return exc.exit_code, f"imgtrain: {str(exc) or stop.interrupted_line(args.command, exc.signum)}"
    if isinstance(exc, KeyboardInterrupt) or (signum and not isinstance(exc, (UserError, SystemExit))):
        # A stop that surfaced as another error: the handler ran inside TensorFlow's code.
        signum = signum or signal.SIGINT
        return 128 + signum, f"imgtrain: {stop.interrupted_line(args.command, signum)}"
    if isinstance(exc, UserError):
        return EXIT_USER_ERROR, f"imgtrain: error: {exc}"
    if isinstance(exc, PeerLost):
        return EXIT_PEER_LOST, f"imgtrain: {exc}"
    if isinstance(exc, Unreachable):
        return EXIT_NOT_UPLOADED, f"imgtrain: error: {exc}"
    if isinstance(exc, NotUploaded):
        return EXIT_NOT_UPLOADED, f"imgtrain: {exc}"
    damaged = _damaged_shard(exc)
    if damaged:
        return EXIT_USER_ERROR, f"imgtrain: error: {damaged}"
    lost = lost_line(exc)
    if lost:  # streamed data whose bucket stopped answering: try again, as for an upload
        return EXIT_NOT_UPLOADED, f"imgtrain: error: {lost}"
    where = disk_full(exc) if isinstance(exc, Exception) else None
    if where is None:
        raise exc
    where = where or f"into {_destination(args)}"
    after = " (a run resumes from its last complete checkpoint)" if args.command == "train" else ""
    return EXIT_USER_ERROR, (
        f"imgtrain: error: no space left on device writing {where}; free some space there and run the "
        f"same command again{after}"
    )


def _damaged_shard(exc: BaseException) -> Optional[str]:
    """The line for a prepared shard that failed its checksum as it was read, else None."""
    if type(exc).__name__ != "DataLossError":  # TensorFlow's; imported only when it is one
        return None
    from imgtrain.data.tfrecord import damaged_line

    return damaged_line(exc)


def _destination(args: argparse.Namespace) -> str:
    """Where the command writes, for a message about a write whose file the error did not name."""
    if getattr(args, "output", None):
        return args.output
    if args.command == "train":
        return "the run directory (the config's output)"
    return f"the run directory {getattr(args, 'run', '') or ''}".rstrip()


def disk_full(exc: BaseException) -> Optional[str]:
    """The path being written when ``exc`` is a full disk (OSError ENOSPC, or TensorFlow's word for
    it), '' when the error does not name it, else None."""
    import errno

    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(e.filename or "")
        text = str(e or "")
        if "No space left on device" in text or "Disk quota exceeded" in text:
            # TensorFlow: "... {{function_node ..._device_/job:...}} /path/ckpt-1_temp/part-...; No space left"
            match = re.search(r"\s(/[^\s;]+);\s*(?:No space left on device|Disk quota exceeded)", text)
            return match.group(1).split("_temp/")[0] if match else ""
    return None


if __name__ == "__main__":
    entry()
