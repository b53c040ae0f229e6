"""``imgtrain evaluate``: a finished run's exported model on the test split, report rewritten."""

from __future__ import annotations

import argparse

from imgtrain.commands.options import add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="evaluate a run's best model on the test split and rewrite its report",
        description="Evaluate the exported (best) model of a run on the test split; rewrites "
        "report.json, report.md, confusion_matrix.png and curves.png.",
    )
    e.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'imgtrain train'")
    e.add_argument("--data", metavar="PATH", help="evaluate on this data instead of the run's (same classes)")
    add_no_progress(e)


def run(args: argparse.Namespace) -> int:
    from imgtrain import rundir
    from imgtrain.evaluation import evaluate_run
    from imgtrain.storage.runplace import model_run

    with model_run(args.run, writes=True) as run:  # the rewritten report goes back to a bucket run
        report = evaluate_run(run.local, args.data, progress=not args.no_progress)
    print(f"test accuracy {report['accuracy']:.4f}; report: {run.shown(run.local / rundir.REPORT_JSON)}")
    return 0
