"""One module per command, each with ``add_parser(subparsers)`` and ``run(args) -> int``.

``COMMANDS`` is the one table of them: the CLI builds its parser and dispatches from it.
A command module imports TensorFlow-heavy modules inside ``run``, so ``--help`` and a
usage mistake answer at once.
"""

from __future__ import annotations

from types import ModuleType

from imgtrain.commands import bench, evaluate, export, predict, prepare, train

COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "evaluate": evaluate,
    "prepare": prepare,
    "bench": bench,
    "predict": predict,
    "export": export,
}
