"""Deterministic train/val/test assignment from a hash of each file's key.

Each file's split is a pure function of (seed, relative path, label), so a file
never moves when others are added or removed, and a run can be repeated
exactly. Every class is cut by the same fractions, which makes the split
stratified in expectation; classes too small to reach every split are
reported by the validation step, not silently rebalanced (rebalancing would
move files between splits when the dataset grows).
"""

from __future__ import annotations

import hashlib

from imgtrain.config import SplitConfig
from imgtrain.data.sources import Catalog


def unit_hash(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on the seed and the key."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(u: float, fractions: SplitConfig) -> str:
    if u < fractions.train:
        return "train"
    if u < fractions.train + fractions.val:
        return "val"
    return "test"


def apply_split(catalog: Catalog, fractions: SplitConfig, seed: int) -> Catalog:
    """Give every example without a split one; examples that have one keep it.

    When the source is pre-split but lacks val or test, those are carved out of
    train with the same hash (so e.g. a folder with only train/ and test/ still
    gets a validation set for early stopping).
    """
    present = {e.split for e in catalog.examples if e.split}
    if not present:
        for e in catalog.examples:
            e.split = assign_split(unit_hash(seed, e.key), fractions)
        return catalog
    missing = [s for s in ("val", "test") if s not in present]
    if missing:
        # Re-normalise: the train share is split between train and the missing splits.
        share = {s: getattr(fractions, s) for s in missing}
        total = fractions.train + sum(share.values())
        for e in catalog.examples:
            if e.split is None:
                e.split = "train"
            if e.split != "train":
                continue
            u = unit_hash(seed, e.key) * total
            edge = fractions.train
            if u < edge:
                continue
            for s in missing:
                edge += share[s]
                if u < edge:
                    e.split = s
                    break
    for e in catalog.examples:
        if e.split is None:
            e.split = "train"
    return catalog
