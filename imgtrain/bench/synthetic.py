"""What the benchmark measures on: its sizes, generated JPEGs, and a folder's examples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from imgtrain.config import DataConfig


@dataclass
class BenchSizes:
    pipeline_images: int  # 224x224 JPEGs for the input pipeline
    train_images: dict  # 32x32 JPEGs per model for the training loop
    memory_small: int
    memory_large: int
    epochs: int  # timed epochs after one warm-up epoch; the best one counts
    batch_size: int
    rounds: int  # interleaved repetitions of each measurement and its baseline
    peer_images: int = 1200  # 320x240 JPEGs for the peers, and as many at photo size (500x375)


# On a shared 2-core machine one epoch can run 20% slow for reasons outside the
# process (model.fit and imgtrain's loop alike: ResNet-50 epochs come out near
# 100 or near 120 images/s, at random); the best of several timed epochs is the
# figure that repeats.
FULL = BenchSizes(
    pipeline_images=3000,
    train_images={"cnn": 4000, "resnet50": 1024},
    memory_small=2000,
    memory_large=20000,
    epochs=3,
    batch_size=32,
    rounds=3,
)
QUICK = BenchSizes(
    pipeline_images=96,
    train_images={"cnn": 48, "resnet50": 32},
    memory_small=32,
    memory_large=320,
    epochs=1,
    batch_size=16,
    rounds=1,
    peer_images=64,
)


def write_jpegs(root: Path, count: int, size, classes: int = 10, seed: int = 0) -> Path:
    """Synthetic but JPEG-realistic images: smooth colour fields plus noise and shapes, per class.
    ``size``: a side, or (height, width)."""
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    for i in range(count):
        c = i % classes
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([np.sin((xx * (c + 1) + yy) * 3 + p) for p in phase], -1) * 80 + 128
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def examples_of(folder: Path, limit: Optional[int] = None):
    from imgtrain.data.sources import discover
    from imgtrain.data.split import apply_split

    cfg = DataConfig(path=str(folder))
    cfg.split.train, cfg.split.val, cfg.split.test = 1.0, 0.0, 0.0
    cat = apply_split(discover(cfg), cfg.split, 0)
    ex = cat.examples[:limit] if limit else cat.examples
    return cat, ex


def balanced(examples, count: int, classes: int):
    """The first ``count`` examples taken round-robin over classes."""
    by_class: dict[int, list] = {}
    for e in examples:
        by_class.setdefault(e.label, []).append(e)
    out = []
    for i in range(count):
        bucket = by_class.get(i % classes, [])
        if i // classes < len(bucket):
            out.append(bucket[i // classes])
    return out
