"""``make demo``: a real dataset that ships offline, trained, evaluated and reported.

scikit-learn bundles 1,797 real 8x8 handwritten digits (the UCI optical
recognition set). They are written once as a PNG class-folder dataset, the
format users bring, and trained with ``configs/digits.yaml`` through the same
code path as ``imgtrain train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgtrain.datasets import write_digits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and evaluate imgtrain on scikit-learn's bundled digits.")
    parser.add_argument("--data", default="data/digits", help="where to write the PNG dataset")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "digits.yaml"))
    parser.add_argument("--output", default="runs/digits")
    args, rest = parser.parse_known_args(argv)
    root = write_digits(Path(args.data))
    print(f"dataset: {root} (scikit-learn digits as PNG class folders)")
    from imgtrain.cli import main as cli_main

    return cli_main(["train", "--config", args.config, "--data", str(root), "--output", args.output, *rest])


if __name__ == "__main__":
    sys.exit(main())
