"""Command line: argument parsing only. Flags become a ``Config``; ``run`` does the work.

Every ``UserError`` raised anywhere below is printed here, once, as one line
on stderr, with exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from imgtrain import __version__
from imgtrain.config import MODELS
from imgtrain.errors import EXIT_USER_ERROR, UserError

EPILOG_TRAIN = """examples:
  imgtrain train --data photos/ --model cnn --epochs 20 --output runs/photos
  imgtrain train --config configs/digits.yaml --set train.optimizer.name=sgd --set data.augment.rotation=10
  imgtrain train --data labels.csv --model dnn --set model.dnn.hidden_units=[512,256]
  imgtrain train --data tfds:cifar10 --model efficientnetv2_b0 --image-size 224
  imgtrain train --config configs/transfer-small-data.yaml --data photos/   # presets: see configs/

Running the same command again on an existing --output resumes from its last checkpoint."""


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
    with tempfile.TemporaryFile() as buf:
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

    t = sub.add_parser(
        "train",
        help="train a classifier (resumes an existing run directory)",
        description="Train a classifier: data -> model -> training -> test report -> export.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", metavar="CFG.yaml", help="YAML config file; flags and --set override it")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value (YAML syntax), repeatable, e.g. --set train.optimizer.name=sgd",
    )
    t.add_argument(
        "--data",
        metavar="PATH",
        help="image folder (one subfolder per class, optionally train/val/test), "
        "CSV manifest path,label[,weight], or tfds:NAME",
    )
    t.add_argument("--model", metavar="NAME", help=f"model architecture: {', '.join(MODELS)} (default cnn)")
    t.add_argument("--epochs", type=int, metavar="N", help="maximum number of epochs")
    t.add_argument("--batch-size", type=int, metavar="N", help="images per batch per replica")
    t.add_argument(
        "--image-size", type=int, nargs="+", metavar="PX", help="side, or height width, images are resized to"
    )
    t.add_argument("--output", metavar="RUN_DIR", help="run directory: checkpoints, logs, report, exports")
    t.add_argument("--seed", type=int, help="seed for splits, shuffling, augmentation and initialisation")
    t.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="deterministic TensorFlow ops: same seed, same weights (slower)",
    )
    t.add_argument(
        "--warm-start", metavar="PATH", help="start from another run's weights (run dir, .keras or .weights.h5)"
    )
    t.add_argument(
        "--strategy",
        metavar="NAME",
        help="auto (default), single, mirrored, multiworker or horovod; auto picks horovod under "
        "horovodrun, multiworker with a multi-task TF_CONFIG, mirrored with several GPUs",
    )
    t.add_argument(
        "--cluster",
        metavar="KIND",
        help="where TF_CONFIG comes from: auto (default), none, or k8s-indexed-job (built from "
        "JOB_COMPLETION_INDEX, IMGTRAIN_WORKERS, IMGTRAIN_SERVICE, IMGTRAIN_JOB_NAME)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")

    e = sub.add_parser(
        "evaluate",
        help="evaluate a run's best model on the test split and rewrite its report",
        description="Evaluate the exported (best) model of a run on the test split; rewrites "
        "report.json, report.md, confusion_matrix.png and curves.png.",
    )
    e.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'imgtrain train'")
    e.add_argument("--data", metavar="PATH", help="evaluate on this data instead of the run's (same classes)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser(
        "prepare",
        help="check an image folder or CSV manifest once and write TFRecord shards",
        description="Check, split and write a dataset as sharded TFRecord files per split plus "
        "manifest.json; 'imgtrain train --data DIR' reads the result.",
    )
    r.add_argument("--data", required=True, metavar="PATH", help="image folder or CSV manifest")
    r.add_argument("--output", required=True, metavar="DIR", help="directory for the shards and manifest.json")
    r.add_argument("--shard-size-mb", type=float, default=100.0, metavar="MB", help="target shard size (default 100)")
    r.add_argument(
        "--config", metavar="CFG.yaml", help="config whose data section (split, vocabulary, on_bad_image) applies"
    )
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set data.on_bad_image=skip",
    )
    r.add_argument("--seed", type=int, help="seed of the hash split (default: the config's)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    b = sub.add_parser(
        "bench",
        help="measure pipeline and training speed against baselines",
        description="Measure the input pipeline (and the same with only its crop) against the JPEG decode "
        "ceiling, the training loop "
        "against model.fit, and peak memory against a 10x smaller epoch; print a table.",
    )
    b.add_argument("--data", metavar="FOLDER", help="an image folder to measure on (default: generated JPEGs)")
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: checks every figure is produced in under a minute; not a measurement",
    )
    b.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="NAME",
        help="model(s) to time: cnn and/or resnet50 (default: both)",
    )
    b.add_argument("--jit-compile", action="store_true", help="also time XLA against the same run without")
    b.add_argument(
        "--mixed-precision",
        action="store_true",
        help="also time mixed precision (bfloat16 on CPU, float16 on GPU) against float32",
    )

    p = sub.add_parser(
        "predict",
        help="classify image files or folders with a trained run",
        description="Print the top-k classes and probabilities for each image, or write CSV/JSON.",
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by 'imgtrain train'")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="how many classes to show per image (default 5)")
    p.add_argument("--output", metavar="FILE", help="write predictions to FILE.csv or FILE.json instead of a table")
    return parser


def config_from_args(args: argparse.Namespace):
    from imgtrain.config import Config, set_value

    cfg = Config.load(args.config, args.overrides)
    flags = {
        "data.path": args.data,
        "model.name": args.model,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "data.image_size": args.image_size,
        "output": args.output,
        "seed": args.seed,
        "deterministic": args.deterministic,
        "train.warm_start": args.warm_start,
        "train.strategy": args.strategy,
        "train.cluster": args.cluster,
    }
    for key, value in flags.items():
        if value is not None:
            cfg = set_value(cfg, key, value, where="the command line")
    cfg.validate()
    return cfg


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from imgtrain.run import train_run

        cfg = config_from_args(args)
        summary = train_run(cfg, progress=not args.no_progress)
        if summary.get("report"):
            print(f"test accuracy {summary['test_accuracy']:.4f}; report: {summary['report']}")
        return 0
    if args.command == "prepare":
        from imgtrain.config import Config, set_value
        from imgtrain.prepare import prepare_dataset

        cfg = set_value(Config.load(args.config, args.overrides), "data.path", args.data, where="the command line")
        if args.seed is not None:
            cfg = set_value(cfg, "seed", args.seed, where="the command line")
        cfg.validate()
        prepare_dataset(cfg, Path(args.output), args.shard_size_mb, progress=not args.no_progress)
        return 0
    if args.command == "bench":
        import json as _json

        from imgtrain.bench import format_table, run_bench

        models = args.models or ["cnn", "resnet50"]
        unknown = [m for m in models if m not in ("cnn", "resnet50")]
        if unknown:
            raise UserError(f"bench --model {unknown[0]} is not cnn or resnet50")
        result = run_bench(args.data, args.quick, models, args.jit_compile, args.mixed_precision)
        print(format_table(result))
        if args.json:
            Path(args.json).write_text(_json.dumps(result, indent=2) + "\n")
            print(f"figures written to {args.json}")
        return 0
    if args.command == "evaluate":
        from imgtrain.run import evaluate_run

        report = evaluate_run(Path(args.run), args.data, progress=not args.no_progress)
        print(f"test accuracy {report['accuracy']:.4f}; report: {Path(args.run) / 'report.json'}")
        return 0
    if args.command == "predict":
        from imgtrain.predict import predict_files, write_records

        if args.top_k < 1:
            raise UserError("--top-k must be at least 1")
        records = predict_files(Path(args.run), args.paths, top_k=args.top_k)
        write_records(records, args.output)
        return 0
    raise AssertionError(args.command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        _import_tensorflow_quietly()
        return _dispatch(args)
    except UserError as exc:
        print(f"imgtrain: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("imgtrain: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only a full disk is turned into one line here
        where = disk_full(exc)
        if where is None:
            raise
        print(
            f"imgtrain: error: no space left on device writing {where}; free some space and run the same "
            "command again (a run resumes from its last complete checkpoint)",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR


def disk_full(exc: BaseException) -> Optional[str]:
    """The path being written when ``exc`` is a full disk (OSError ENOSPC, or TensorFlow's word for
    it), else None."""
    import errno

    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(e.filename or "a file")
        text = str(e or "")
        if "No space left on device" in text or "Disk quota exceeded" in text:
            # TensorFlow: "... {{function_node ..._device_/job:...}} /path/ckpt-1_temp/part-...; No space left"
            match = re.search(r"\s(/[^\s;]+);\s*(?:No space left on device|Disk quota exceeded)", text)
            return match.group(1).split("_temp/")[0] if match else "a file"
    return None


if __name__ == "__main__":
    sys.exit(main())
