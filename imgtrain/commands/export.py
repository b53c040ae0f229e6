"""``imgtrain export``: a finished run's model in another format, read back and checked."""

from __future__ import annotations

import argparse

from imgtrain.errors import UserError

# The choices, kept beside the parser so --help needs no TensorFlow; a test checks they are
# export.FORMATS' keys.
FORMAT_NAMES = ("saved_model", "keras", "tflite", "tflite-int8", "onnx", "mlflow")


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="write a run's model as saved_model, keras, tflite, tflite-int8, onnx or mlflow",
        description="Write a finished run's model in another format (default under RUN_DIR/export/FORMAT), "
        "then read it back with that format's own reader and report its top-1 agreement with the run's "
        "model on the test images, and its size.",
    )
    e.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'imgtrain train'")
    e.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        metavar="F",
        help=", ".join(FORMAT_NAMES) + " (default: the one --output's suffix names: .keras, .tflite, .onnx)",
    )
    e.add_argument(
        "--output",
        metavar="DIR|FILE",
        help="a folder, or a file named with the format's suffix (default RUN_DIR/export/FORMAT)",
    )
    e.add_argument(
        "--version", type=int, default=1, metavar="N", help="saved_model: the TF Serving version directory (default 1)"
    )
    e.add_argument("--no-check", action="store_true", help="skip reading the export back on the test images")


def run(args: argparse.Namespace) -> int:
    from imgtrain.export import export_run
    from imgtrain.storage.runplace import model_run, output_path

    if args.version < 1:
        raise UserError(f"--version must be a positive integer (TF Serving's version folder), got {args.version}")
    # Without --output the export goes into the run (RUN_DIR/export/FORMAT): a bucket run gets it back.
    with model_run(args.run, writes=args.output is None) as run, output_path(args.output) as output:
        result = export_run(run.local, args.format, output, args.version, check=not args.no_check)
    where = args.output if args.output and output == result.path else run.shown(result.path)
    line = f"{result.format}: {where} ({result.size_bytes / 2**20:.2f} MiB)"
    if result.images_checked:
        line += (
            f"; read back with {result.reader}: top-1 agreement with the run's model "
            f"{result.agreement:.2%} on {result.images_checked} test images"
        )
    print(line)
    return 0
