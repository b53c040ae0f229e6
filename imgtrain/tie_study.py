"""``python -m imgtrain.tie_study``: which epoch's weights a run restores, under imgtrain's
rule (``early_stopping.BestRule``: a tie broken by the second metric, then the later epoch)
and under the first-tie rule of Keras, Lightning and timm, against the last epoch trained.

Each (data set, seed) trains once for all its epochs, early stopping off, keeping every
epoch's checkpoint; every epoch's weights are then evaluated on the test split. Early stopping
and the restored epoch are decided afterwards from the run's own history.csv by the very
``EarlyStopping`` class a run uses (and by the same with ties never winning, for the old
rule), with the config's patience, so the table measures the shipped rule. The cosine
schedules used here do not depend on those decisions (a plateau schedule would).

Data sets ship offline (``imgtrain.datasets``): the digits with the demo's config, the shapes
and the photo patches with imgtrain's defaults. ``--quick`` trains 2 epochs of 1 seed (tests).
The same command with the same ``--work`` again reuses the runs that finished there (a run
is resumed as imgtrain resumes any): the full study takes about 70 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from imgtrain.config import Config, EarlyStoppingConfig
from imgtrain.datasets import write_digits, write_patches, write_shapes
from imgtrain.train.early_stopping import IMPROVED, BestRule

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MONITORS = ("val_accuracy", "val_loss")
# (name, writer, config file or None, overrides): each trains its config's epochs
# A small validation split (10%), and a test split twice as large, so a test image is worth less.
SMALL_VAL = ("train.epochs=20", "data.image_size=[32,32]", "data.split.train=0.7", "data.split.test=0.2")
DATASETS: list[tuple[str, Callable[[Path], Path], Optional[str], tuple[str, ...]]] = [
    ("digits (make demo's config)", write_digits, "digits.yaml", ()),
    ("shapes (300 images, defaults)", lambda root: write_shapes(root, per_class=100), None, SMALL_VAL),
    ("photo patches (360 images, defaults)", write_patches, None, SMALL_VAL),
]


class FirstTie:
    """The old rule: an epoch is the best only when strictly better by more than min_delta."""

    def __init__(self, es: Any) -> None:
        self.es = es

    def update(self, epoch: int, logs: dict[str, float]) -> tuple[bool, bool]:
        es = self.es
        first_wins = BestRule(es.monitor, es.mode, es.min_delta)  # no second metric: a tie is never IMPROVED
        if first_wins.judge(logs, es.best, math.nan) == IMPROVED:
            es.best, es.best_epoch, es.wait = float(logs[es.monitor]), epoch, 0
            return True, False
        es.wait += 1
        return False, es.enabled and es.wait >= max(1, es.patience)


def decide(rows: list[dict[str, float]], monitor: str, patience: int, old: bool) -> tuple[int, int]:
    """(restored epoch, last epoch trained), 0-based, for a run with these history rows."""
    from imgtrain.train.early_stopping import EarlyStopping

    es = EarlyStopping.from_config(EarlyStoppingConfig(monitor=monitor, patience=patience))
    judge = FirstTie(es) if old else es
    for epoch, logs in enumerate(rows):
        _, stop = judge.update(epoch, logs)
        if stop:
            return es.best_epoch, epoch
    return es.best_epoch, len(rows) - 1


def train_once(cfg: Config) -> tuple[list[dict[str, float]], list[float]]:
    """Train ``cfg`` with every epoch kept; return its history rows and each epoch's test
    accuracy. Each epoch's validation is evaluated again from its checkpoint for the rows'
    standard errors (a history written before imgtrain logged them has none)."""
    import keras

    from imgtrain import history, rundir
    from imgtrain.models import build_model
    from imgtrain.run import prepare_data, train_run
    from imgtrain.train.assembly import split_dataset
    from imgtrain.train.checkpoint import read_model_weights
    from imgtrain.train.distribution import SingleDevice
    from imgtrain.train.eval_sums import evaluate_sums, make_eval_step, summarize

    train_run(cfg, progress=False, log=lambda _m: None)
    run = Path(cfg.output)
    rows = [{k: float(v) for k, v in r.items() if k != "phase" and v not in ("", None)} for r in history.read(run)]
    prep = prepare_data(cfg, run, progress=False)
    classes = len(prep.class_names)
    model = build_model(cfg.model, classes, cfg.data.image_size).model
    dist, tests = SingleDevice(), []
    step = make_eval_step(model, dist, classes, top_k=1)
    for epoch, row in enumerate(rows, start=1):
        read_model_weights(model, run / rundir.CHECKPOINTS / f"ckpt-{epoch}")
        logs = {}
        for split in ("val", "test"):
            data = lambda s=split: split_dataset(prep, cfg, dist, s, 64)  # noqa: E731
            logs[split] = summarize(evaluate_sums(model, dist, data, classes, 1, step=step), top_k=1)
        row.update({k: v for k, v in logs["val"].items() if k not in row})
        tests.append(float(logs["test"]["val_accuracy"]))
    keras.backend.clear_session()
    return rows, tests


def measure(work: Path, seeds: Sequence[int], quick: bool = False) -> list[dict[str, Any]]:
    """Train every (data set, seed) once; one row per epoch: its history and its test accuracy."""
    epochs = []
    for name, write, config, extra in DATASETS:
        data = write(work / "data" / name.split()[0])
        for seed in seeds:
            items = [f"data.path={data}", f"output={work / 'runs' / name.split()[0] / str(seed)}", f"seed={seed}"]
            items += [*extra, "train.early_stopping.enabled=false", "train.checkpoint.keep=1000"]
            items += ["export.saved_model=false"] + (["train.epochs=2"] if quick else [])
            cfg = Config.load(CONFIGS / config if config else None, items)
            patience = Config.load(CONFIGS / config if config else None, []).train.early_stopping.patience
            rows, tests = train_once(cfg)
            for row, test in zip(rows, tests):
                epochs.append({"data": name, "seed": seed, "patience": patience, **row, "test_accuracy": test})
    return epochs


def judged(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run and monitor: the epoch each rule restores, the last trained, and their test accuracy."""
    results = []
    runs = dict.fromkeys((e["data"], e["seed"]) for e in epochs)
    for name, seed in runs:
        rows = sorted((e for e in epochs if (e["data"], e["seed"]) == (name, seed)), key=lambda e: e["epoch"])
        tests = [float(r["test_accuracy"]) for r in rows]
        patience = int(rows[0]["patience"])
        for monitor in MONITORS:
            new, last = decide(rows, monitor, patience, old=False)
            old, _ = decide(rows, monitor, patience, old=True)
            results.append(
                {
                    "data": name,
                    "seed": seed,
                    "monitor": monitor,
                    "restored": new + 1,
                    "last": last + 1,
                    "first_tie": old + 1,
                    "test_restored": tests[new],
                    "test_last": tests[last],
                    "test_first_tie": tests[old],
                    "test_all_epochs": tests[-1],
                }  # fmt: skip
            )
    return results


def read_epochs(path: Path) -> list[dict[str, Any]]:
    """The rows ``--epochs-csv`` wrote: numbers back as numbers."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    whole = ("seed", "epoch", "patience")
    return [
        {k: (v if k == "data" else int(float(v)) if k in whole else float(v)) for k, v in r.items() if v != ""}
        for r in rows
    ]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _mean(rows: list[dict[str, Any]], key: str) -> str:
    return f"{sum(r[key] for r in rows) / len(rows):.4f}"


def table(results: list[dict[str, Any]]) -> str:
    """Per data set and monitor: the mean epochs trained (imgtrain's early stopping), mean test
    accuracy of the three choices, the worst gap of the restored epoch below the last, and the
    runs where the old rule lost accuracy."""
    lines = [
        "| data | monitor | runs | epochs trained | restored (imgtrain) | last epoch | first tie (old rule) "
        "| worst restored - last | old rule below restored |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = dict.fromkeys((r["data"], r["monitor"]) for r in results)
    for data, monitor in keys:
        rs = [r for r in results if r["data"] == data and r["monitor"] == monitor]

        worst = min(r["test_restored"] - r["test_last"] for r in rs)
        lost = [r["test_restored"] - r["test_first_tie"] for r in rs if r["test_first_tie"] < r["test_restored"]]
        lost_text = f"{len(lost)} run(s), by up to {max(lost) * 100:.2f} pt" if lost else "none"
        lines.append(
            f"| {data} | {monitor} | {len(rs)} | {sum(r['last'] for r in rs) / len(rs):.1f} "
            f"| {_mean(rs, 'test_restored')} | {_mean(rs, 'test_last')} | "
            f"{_mean(rs, 'test_first_tie')} | {worst * 100:+.2f} pt | {lost_text} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgtrain.tie_study", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per data set (1..100)")
    parser.add_argument("--work", type=Path, help="where data and runs go (a temporary folder if not given)")
    parser.add_argument("--csv", type=Path, help="also write every run's figures here")
    parser.add_argument("--epochs-csv", type=Path, help="also write every epoch's history and test accuracy here")
    parser.add_argument("--replay", type=Path, help="decide again from an --epochs-csv file, without training")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed: the figures then mean nothing")
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= 100:
        parser.error(f"--seeds must be 1 to 100, got {args.seeds}")
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    if args.replay:
        epochs = read_epochs(args.replay)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            epochs = measure(args.work or Path(tmp), seeds, args.quick)
    results = judged(epochs)
    if args.epochs_csv:
        write_csv(args.epochs_csv, epochs)
    if args.csv:
        write_csv(args.csv, results)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
