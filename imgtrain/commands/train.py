"""``imgtrain train``: flags and config become one run (resumed when the run directory has one)."""

from __future__ import annotations

import argparse

from imgtrain.commands.options import add_config_flags, add_no_progress
from imgtrain.config import MODELS, Config
from imgtrain.config_parse import set_value
from imgtrain.data.sources import check_local_path

EPILOG = """examples:
  imgtrain train --data photos/ --model cnn --epochs 20 --output runs/photos
  imgtrain train --config configs/digits.yaml --set train.optimizer.name=sgd --set data.augment.rotation=10
  imgtrain train --data labels.csv --model dnn --set model.dnn.hidden_units=[512,256]
  imgtrain train --data tfds:cifar10 --model efficientnetv2_b0 --image-size 224
  imgtrain train --config configs/transfer-small-data.yaml --data photos/   # presets: see configs/
  MLFLOW_TRACKING_URI=http://mlflow.internal:5000 imgtrain train --data photos/ --mlflow

Running the same command again on an existing --output resumes from its last checkpoint.
Relative paths (--data, --output, --warm-start, and data.path, output, data.tfds.data_dir and
train.warm_start in a --config file) are relative to the working directory, not to the config
file; the run's config.yaml records them as absolute paths."""

# flag (argparse dest) -> the config key it sets; a flag left out keeps the config's value
FLAG_KEYS = {
    "data": "data.path",
    "model": "model.name",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "image_size": "data.image_size",
    "output": "output",
    "seed": "seed",
    "deterministic": "deterministic",
    "warm_start": "train.warm_start",
    "strategy": "train.strategy",
    "cluster": "train.cluster",
    "mlflow": "tracking.mlflow",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a classifier (resumes an existing run directory)",
        description="Train a classifier: data -> model -> training -> test report -> export.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(
        t,
        "YAML config file; flags and --set override it",
        "override any config value (YAML syntax), repeatable, e.g. --set train.optimizer.name=sgd",
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
    _add_where_flags(t)
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in RUN_DIR instead of resuming it or refusing: its files are removed, "
        "and with them the whole of checkpoints/, logs/ and export/ (anything else kept there too)",
    )
    add_no_progress(t, "no progress bars (logs only)")


def _add_where_flags(t: argparse.ArgumentParser) -> None:
    """Where the run trains (strategy, cluster) and where it is logged beyond its directory."""
    t.add_argument(
        "--strategy",
        metavar="NAME",
        help="auto (default), single, mirrored, multiworker or horovod; auto picks horovod under "
        "horovodrun, multiworker with a multi-task TF_CONFIG, mirrored with several GPUs",
    )
    t.add_argument(
        "--cluster",
        metavar="KIND",
        help="where TF_CONFIG comes from: auto (default), none, k8s-indexed-job (an Indexed Job: "
        "JOB_COMPLETION_INDEX, IMGTRAIN_WORKERS, IMGTRAIN_SERVICE, IMGTRAIN_JOB_NAME) or jobset (a JobSet, "
        "e.g. a Kubeflow Trainer v2 TrainJob: JOB_COMPLETION_INDEX, IMGTRAIN_WORKERS, IMGTRAIN_JOBSET)",
    )
    t.add_argument(
        "--mlflow",
        action="store_true",
        default=None,
        help="log params, metrics, the report and the model to MLflow: the server in MLFLOW_TRACKING_URI "
        "(or tracking.uri), else MLflow's local store in the working directory (needs imgtrain[mlflow])",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then --config, then --set, then the named flags; normalised and validated."""
    cfg = Config.load(args.config, args.overrides)
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            cfg = set_value(cfg, key, value, where="the command line")
    return cfg.checked().with_absolute_paths()


def check(args: argparse.Namespace) -> None:
    """What is wrong with the flags, config and a local --data, said before TensorFlow loads."""
    check_local_path(config_from_args(args).data.path)


def run(args: argparse.Namespace) -> int:
    from imgtrain.run import train_run

    summary = train_run(config_from_args(args), progress=not args.no_progress, overwrite=args.overwrite)
    if summary.get("report"):
        print(f"test accuracy {summary['test_accuracy']:.4f}; report: {summary['report']}")
    return 0
