"""TFDS datasets as an imgtrain source: ``--data tfds:NAME``.

TFDS does the downloading, preparing and reading; this module only picks the
splits, the class names and the example counts the training loop needs.
Without network access a dataset that is not already in ``data_dir`` cannot
be prepared, and that is said plainly instead of as a download traceback.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Iterator, Optional

import tensorflow as tf

from imgtrain.config import TfdsConfig
from imgtrain.errors import UserError


@dataclass
class TfdsData:
    name: str
    class_names: list[str]
    splits: dict[str, tf.data.Dataset]  # (image uint8, label int)
    counts: dict[str, int]


def load_tfds(name: str, cfg: TfdsConfig) -> TfdsData:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=cfg.data_dir)
    except Exception as exc:  # TFDS raises several types for unknown names
        raise UserError(
            f"unknown TFDS dataset '{name}' ({type(exc).__name__}); check the name at tensorflow.org/datasets/catalog"
        ) from None
    try:
        if cfg.download and not builder.is_prepared():
            _check_reachable(name, cfg)
            with _quiet_retries():
                builder.download_and_prepare()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"TFDS dataset '{name}' is not in {cfg.data_dir or '~/tensorflow_datasets'} and could not be downloaded "
            f"({type(exc).__name__}); run once with network access or set data.tfds.data_dir to a prepared copy"
        ) from None
    if not cfg.download and not builder.is_prepared():  # TFDS would blame the split instead
        raise UserError(
            f"TFDS dataset '{name}' is not prepared in {cfg.data_dir or '~/tensorflow_datasets'} and "
            "data.tfds.download is false; set data.tfds.download=true (needs network access once) "
            "or data.tfds.data_dir to a folder that holds it"
        )
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise UserError(
            f"TFDS dataset '{name}' has no (image, label) supervised keys; "
            "imgtrain needs an image classification dataset"
        )
    label_feature = builder.info.features[keys[1]]
    names = list(getattr(label_feature, "names", []) or [])
    if not names:
        raise UserError(f"TFDS dataset '{name}' has no class names for '{keys[1]}'; it is not a classification dataset")
    wanted = {"train": cfg.train_split, "val": cfg.val_split, "test": cfg.test_split}
    splits: dict[str, tf.data.Dataset] = {}
    counts: dict[str, int] = {}
    for role, split in wanted.items():
        if not split:
            continue
        try:
            ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        except (ValueError, KeyError, AssertionError) as exc:
            raise UserError(
                f"TFDS dataset '{name}' has no split '{split}' for {role} ({str(exc).splitlines()[0][:120]}); "
                f"set data.tfds.{role}_split"
            ) from None
        splits[role] = ds
        counts[role] = _count(builder, split, ds)
    return TfdsData(name, names, splits, counts)


# TFDS fetches a prepared dataset from this bucket first (then the dataset's own URLs). Without
# network access its retries (GCS's, then urllib3's) took 218 s before the download failed.
PROBE_URL = "https://storage.googleapis.com/tfds-data/"
PROBE_SECONDS = 10.0


def _check_reachable(name: str, cfg: TfdsConfig) -> None:
    """One request, proxies from the environment honoured, before TFDS's retries: any HTTP
    answer will do; no answer is one line now."""
    try:
        urllib.request.urlopen(urllib.request.Request(PROBE_URL, method="HEAD"), timeout=PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return  # the host answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"TFDS dataset '{name}' is not in {cfg.data_dir or '~/tensorflow_datasets'} and cannot be downloaded: "
            f"{urllib.parse.urlsplit(PROBE_URL).netloc} did not answer ({reason}); run once with network access "
            "(HTTPS_PROXY is honoured) or set data.tfds.data_dir to a prepared copy"
        ) from None


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    """urllib3 logs each retry as a warning; the outcome is said once, by this module."""
    logger = logging.getLogger("urllib3")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _count(builder, split: str, ds: tf.data.Dataset) -> int:
    try:
        return int(builder.info.splits[split].num_examples)
    except Exception:
        card = int(ds.cardinality())
        if card >= 0:
            return card
        return int(ds.reduce(0, lambda n, _: n + 1))


def tfds_name(path: Optional[str]) -> str:
    return str(path)[len("tfds:") :]
