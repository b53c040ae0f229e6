"""``imgtrain bench``: pipeline, training and memory figures against same-process baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imgtrain.errors import UserError

MODELS = ("cnn", "resnet50")  # what the training benchmark can time
# --quick checks that every figure is produced: one model's training row shows the loop works;
# ResNet-50's build and tracing alone took 77 of a quick run's 156 s.
QUICK_MODELS = ("cnn",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="measure pipeline and training speed against baselines",
        description="Measure the input pipeline (and the same with only its crop) against the JPEG decode "
        "ceiling, the training loop against model.fit, and peak memory against a 10x smaller epoch; "
        "print a table.",
    )
    b.add_argument(
        "--data",
        metavar="FOLDER",
        help="an image folder to measure on, or its s3:// or gs:// URL: then also the bucket read each epoch "
        "and staged once, against local disk (default: generated JPEGs)",
    )
    b.add_argument(
        "--upload",
        metavar="URL",
        help="also time training with its run uploaded under this s3:// or gs:// prefix (removed after), "
        "against the same run kept local",
    )
    b.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="hold every request to the bucket this long (a delaying proxy to the server that AWS_ENDPOINT_URL "
        "or STORAGE_EMULATOR_HOST names): a server on this machine measured as a far one (default 0)",
    )
    b.add_argument(
        "--bucket-only",
        action="store_true",
        help="only the bucket figures of --data URL and --upload URL, not the pipeline, training and memory ones",
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, and the cnn alone unless --model says otherwise: checks every figure is produced "
        "in about a minute; not a measurement",
    )
    b.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="NAME",
        help=f"model(s) to time: {' and/or '.join(MODELS)} (default: all; with --quick: cnn)",
    )
    b.add_argument("--jit-compile", action="store_true", help="also time XLA against the same run without")
    b.add_argument(
        "--mixed-precision",
        action="store_true",
        help="also time mixed precision (bfloat16 on CPU, float16 on GPU) against float32",
    )


def run(args: argparse.Namespace) -> int:
    from imgtrain.bench import format_table, run_bench
    from imgtrain.storage.urls import check, is_url

    models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise UserError(f"bench --model {unknown[0]} is not one of: {', '.join(MODELS)}")
    for given in (args.data, args.upload):
        check(given, "bench --data/--upload")
    if args.upload and not is_url(args.upload):
        raise UserError(f"bench --upload {args.upload} is not a bucket URL; pass s3://BUCKET/PREFIX or gs://...")
    if not 0 <= args.latency_ms <= 10_000:  # also refuses nan and inf
        raise UserError(f"bench --latency-ms {args.latency_ms} must be between 0 and 10000")
    if (args.bucket_only or args.latency_ms) and not (is_url(args.data) or args.upload):
        raise UserError("bench --bucket-only and --latency-ms measure a bucket: pass --data s3://... or --upload")
    result = run_bench(
        args.data,
        args.quick,
        models,
        args.jit_compile,
        args.mixed_precision,
        upload=args.upload,
        latency_ms=args.latency_ms,
        bucket_only=args.bucket_only,
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0
