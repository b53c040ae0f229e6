"""``imgtrain predict``: the top-k classes of image files or folders, as a table, CSV or JSON."""

from __future__ import annotations

import argparse

from imgtrain.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files or folders with a trained run",
        description="Print the top-k classes and probabilities for each image, or write CSV/JSON.",
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'imgtrain train'")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="how many classes to show per image (default 5)")
    p.add_argument("--output", metavar="FILE", help="write predictions to FILE.csv or FILE.json instead of a table")


def run(args: argparse.Namespace) -> int:
    from imgtrain.predict import predict_files, write_records
    from imgtrain.storage.runplace import model_run, output_path
    from imgtrain.storage.stage import local_inputs

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    paths, shown = local_inputs(args.paths)  # images in a bucket: fetched first
    with model_run(args.run) as run:
        records = predict_files(run.local, paths, top_k=args.top_k)
    for record in records:
        record["path"] = shown(record["path"])
    with output_path(args.output) as output:
        write_records(records, str(output) if output is not None else None)
    if args.output:
        print(f"wrote {len(records)} prediction(s) to {args.output}")
    return 0
