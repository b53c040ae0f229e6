"""``imgtrain prepare``: check, split and write a dataset once as TFRecord shards."""

from __future__ import annotations

import argparse

from imgtrain.commands.options import add_config_flags, add_no_progress
from imgtrain.config import Config, in_range
from imgtrain.config_parse import set_value
from imgtrain.data.sources import check_local_path

MAX_SHARD_MB = 65536.0  # 64 GiB: a streamed reader holds 9 shards on its disk at once


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "prepare",
        help="check an image folder or CSV manifest once and write TFRecord shards",
        description="Check, split and write a dataset as sharded TFRecord files per split plus "
        "manifest.json; 'imgtrain train --data DIR' reads the result.",
    )
    r.add_argument("--data", required=True, metavar="PATH", help="image folder or CSV manifest")
    r.add_argument("--output", required=True, metavar="DIR", help="directory for the shards and manifest.json")
    r.add_argument("--shard-size-mb", type=float, default=100.0, metavar="MB", help="target shard size (default 100)")
    add_config_flags(
        r,
        "config whose data section (split, vocabulary, on_bad_image) applies",
        "override a config value, e.g. --set data.on_bad_image=skip",
    )
    r.add_argument("--seed", type=int, help="seed of the hash split (default: the config's)")
    add_no_progress(r)


def _config(args: argparse.Namespace) -> Config:
    """The config prepare applies: the file's and --set's, with --data and --seed, checked."""
    cfg = set_value(Config.load(args.config, args.overrides), "data.path", args.data, where="the command line")
    if args.seed is not None:
        cfg = set_value(cfg, "seed", args.seed, where="the command line")
    return cfg.checked()


def check(args: argparse.Namespace) -> None:
    """Numbers out of range, the config and a local --data, said before TensorFlow loads."""
    in_range("--shard-size-mb", args.shard_size_mb, 0.0, MAX_SHARD_MB, low_open=True)
    check_local_path(_config(args).data.path)


def run(args: argparse.Namespace) -> int:
    from imgtrain.data.tfrecord import MANIFEST
    from imgtrain.prepare import prepare_dataset
    from imgtrain.storage.runplace import output_path

    said: list[str] = []  # its summary, said once the shards are where the user named (uploaded)
    with output_path(args.output, last=(MANIFEST,)) as output:  # shards for a bucket: here, then uploaded
        prepare_dataset(_config(args), output, args.shard_size_mb, not args.no_progress, said.append, args.output)
    print(*said, sep="\n")
    return 0
