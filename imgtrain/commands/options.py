"""Flags shared by several commands, defined once."""

from __future__ import annotations

import argparse


def add_config_flags(parser: argparse.ArgumentParser, config_help: str, set_help: str) -> None:
    """``--config CFG.yaml`` and repeatable ``--set SECTION.KEY=VALUE``."""
    parser.add_argument("--config", metavar="CFG.yaml", help=config_help)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=set_help
    )


def add_no_progress(parser: argparse.ArgumentParser, help_text: str = "no progress bars") -> None:
    parser.add_argument("--no-progress", action="store_true", help=help_text)
