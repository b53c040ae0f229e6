"""``imgtrain prepare``: check a folder or CSV manifest once and write it as TFRecord shards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from imgtrain.config import Config
from imgtrain.data.source import placed
from imgtrain.data.sources import discover, is_tfds
from imgtrain.data.split import apply_split
from imgtrain.data.tfrecord import check_output_dir, is_prepared, write_prepared
from imgtrain.data.validate import validate_catalog
from imgtrain.errors import UserError
from imgtrain.storage import urls


def prepare_dataset(
    cfg: Config,
    output: Path,
    shard_mb: float = 100.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    shown: Optional[str] = None,
) -> dict:
    """Discover, split and check ``cfg.data.path`` exactly as training would, then write shards
    to ``output``; its summary line names the output as ``shown`` (the URL a local copy is for)."""
    if is_tfds(cfg.data.path):
        raise UserError("prepare reads image folders and CSV manifests; TFDS datasets are already prepared by TFDS")
    if is_prepared(cfg.data.path):
        raise UserError(f"{cfg.data.path} is already a prepared dataset; pass it to 'imgtrain train --data'")
    output = Path(output)
    source = cfg.data.path if urls.is_url(cfg.data.path) else str(Path(str(cfg.data.path)).resolve())
    if output.resolve() == Path(str(cfg.data.path)).resolve():
        raise UserError("--output must be a new directory, not the data folder itself")
    check_output_dir(output)
    start = time.time()
    local, streamed = placed(cfg, progress)  # data in a bucket: its local copy, or read from the bucket
    catalog = streamed if streamed is not None else discover(local.data)
    apply_split(catalog, cfg.data.split, cfg.effective_split_seed)
    catalog = validate_catalog(catalog, cfg.data.on_bad_image, output / ".checks", progress=progress)
    converted = sum(1 for e in catalog.examples if "/.checks/converted/" in e.path.replace("\\", "/"))
    manifest = write_prepared(
        catalog,
        output,
        shard_mb,
        extra={
            "source": source,
            "split_seed": cfg.effective_split_seed,
            "fractions": {"train": cfg.data.split.train, "val": cfg.data.split.val, "test": cfg.data.split.test},
            "checks": {
                "decoded_with": ["Pillow (full decode, truncation check)", "tf.io.decode_image"],
                "policy": cfg.data.on_bad_image,
                "converted_to_png": converted,
                "skipped": catalog.skipped,
            },
        },
        split_seed=cfg.effective_split_seed,
        progress=progress,
    )
    counts = ", ".join(
        f"{s} {v['count']} ({len(v['shards'])} shard{'s' if len(v['shards']) != 1 else ''})"
        for s, v in manifest["splits"].items()
    )
    log(
        f"prepared {shown or output}: {len(manifest['class_names'])} classes; {counts}; "
        f"{len(catalog.skipped)} skipped, {converted} converted; {time.time() - start:.1f}s"
    )
    return manifest
