"""Check every image before training, and apply the ``on_bad_image`` policy.

A corrupt file found in epoch 7 wastes six epochs; one found here costs a
second. Each file is opened and fully decoded with Pillow (which notices
truncation that TensorFlow's JPEG decoder lets through) and then with
``tf.io.decode_image``, the decoder the pipeline uses. A file Pillow reads but
TensorFlow cannot (1-bit BMP, for one) is converted once to PNG in a cache
folder (named by a hash of the source's bytes), so the pipeline stays a pure
TensorFlow graph. Check results are cached by each file's stamp (size and modification time,
``stage.stamp``), so a resumed run does not check again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from PIL import Image
from tqdm import tqdm

from imgtrain import atomic
from imgtrain.data.sources import Catalog, Example
from imgtrain.errors import UserError
from imgtrain.storage import stage, stream, urls

OK, CONVERT, BAD = "ok", "convert", "bad"


@dataclass
class CheckResult:
    status: str
    reason: str = ""
    mode: str = ""
    fix: str = ""  # what the user does about a BAD file, when it is more than "use another file"


def _too_large(exc: Exception) -> CheckResult:
    """Pillow's decompression-bomb guard: the file is fine, only too large to decode safely."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    pixels = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(pixels.group(1)):,} pixels" if pixels else "its size"
    return CheckResult(
        BAD,
        f"{size} is over the {limit:,}-pixel limit Pillow decodes safely",
        fix=f"downscale it to at most {limit / 1e6:.0f} megapixels",
    )


def _source(path: str) -> Union[str, io.BytesIO]:
    """What Pillow opens: the file, or the bytes of an object in a bucket (streamed data)."""
    return io.BytesIO(stream.read(path)) if urls.is_url(path) else path


def check_file(path: str) -> CheckResult:
    """Decode one file with Pillow and TensorFlow; say whether it is usable as is."""
    import tensorflow as tf

    try:
        encoded = stream.read(path) if urls.is_url(path) else None
    except FileNotFoundError:
        return CheckResult(BAD, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if encoded is None else io.BytesIO(encoded)) as im:
                im.verify()
            with Image.open(path if encoded is None else io.BytesIO(encoded)) as im:
                im.load()
                mode = im.mode
                if im.width < 1 or im.height < 1:
                    return CheckResult(BAD, "image has no pixels")
    except FileNotFoundError:
        return CheckResult(BAD, "file not found")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return _too_large(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        return CheckResult(BAD, f"cannot decode: {str(exc).splitlines()[0][:160] or type(exc).__name__}")
    try:
        tf.io.decode_image(tf.io.read_file(path) if encoded is None else encoded, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return CheckResult(CONVERT, "TensorFlow cannot decode this variant; converted to PNG", mode)
    return CheckResult(OK, "", mode)


def convert_to_png(path: str, out: Path) -> None:
    """Write an RGB PNG of ``path`` (alpha composited on white) atomically."""
    with Image.open(_source(path)) as im:
        im.seek(0)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            rgb = bg
        else:
            rgb = im.convert("RGB")
    with atomic.replacing(out) as tmp:
        rgb.save(tmp, "PNG")


def _signature(path: str, stamps: dict[str, str]) -> Optional[str]:
    """What says a file is unchanged since its check: its ``stage.stamp`` (an object's from its
    listing, a file's from its size and time); None when it cannot be read."""
    return stamps[path] if path in stamps else stage.file_stamp(path)


def _content_digest(path: str) -> str:
    """The converted copy is named by the source's bytes: a source changed in place (even with
    its size and time kept) gets a new copy instead of the stale one."""
    h = hashlib.sha256()
    if urls.is_url(path):
        h.update(stream.read(path))
        return h.hexdigest()[:20]
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


def validate_catalog(
    catalog: Catalog,
    policy: str,
    cache_dir: Path,
    progress: bool = True,
    workers: Optional[int] = None,
) -> Catalog:
    """Check all files; drop (``skip``) or refuse (``fail``) the bad ones.

    Also refuses datasets that cannot train a classifier: fewer than two
    classes, or a class without training images.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / "checks.json"
    stamps = catalog.stamps
    results = _check_all(catalog.examples, _read_cache(cache_file), stamps, progress, workers)
    kept: list[Example] = []
    skipped: list[dict[str, str]] = []
    new_cache: dict[str, dict] = {}
    for ex, res in results:
        sig = _signature(ex.path, stamps)
        ex.stamp = sig or ""
        if sig is not None:
            new_cache[ex.path] = {
                "sig": sig,
                "status": res.status,
                "reason": res.reason,
                "mode": res.mode,
                "fix": res.fix,
            }
        if res.status == BAD:
            if policy == "fail":
                raise UserError(
                    f"bad image {ex.path}: {res.reason}; {res.fix or 'remove or fix it'}, "
                    "or set data.on_bad_image=skip to leave it out"
                )
            skipped.append({"path": ex.key, "reason": res.reason})
            continue
        kept.append(_converted(ex, cache_dir) if res.status == CONVERT else ex)
    atomic.write_json(cache_file, new_cache, indent=None)

    catalog.examples = kept
    catalog.skipped = skipped
    check_classes(catalog)
    return catalog


def _read_cache(cache_file: Path) -> dict[str, dict]:
    """Earlier verdicts by path; an unreadable cache only costs a re-check."""
    try:
        return json.loads(cache_file.read_text()) if cache_file.exists() else {}
    except (OSError, ValueError):
        return {}


def _check_all(
    examples: list[Example], cache: dict[str, dict], stamps: dict[str, str], progress: bool, workers: Optional[int]
) -> list[tuple[Example, CheckResult]]:
    """Every example's verdict, in order: from the cache when the file is unchanged, else checked
    on a thread pool (decoding releases the GIL)."""

    def run(ex: Example) -> tuple[Example, CheckResult]:
        sig = _signature(ex.path, stamps)
        hit = cache.get(ex.path)
        if sig is not None and hit and hit.get("sig") == sig:
            return ex, CheckResult(hit["status"], hit.get("reason", ""), hit.get("mode", ""), hit.get("fix", ""))
        return ex, check_file(ex.path)

    threads = workers or min(8, (os.cpu_count() or 1) * 2)
    if stamps:  # streamed: each check waits on the network first
        threads = max(threads, stream.PARALLEL_READS)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        it = pool.map(run, examples)
        return list(
            tqdm(it, total=len(examples), desc="checking images", unit="img", disable=not progress, leave=False)
        )


def _converted(ex: Example, cache_dir: Path) -> Example:
    """``ex`` pointing at a PNG copy TensorFlow can decode, named by the source's content."""
    out = cache_dir / "converted" / f"{_content_digest(ex.path)}_{Path(ex.path).stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        convert_to_png(ex.path, out)
    return Example(str(out), ex.key, ex.label, ex.weight, ex.split, ex.stamp)


def check_classes(catalog: Catalog) -> None:
    """Refuse data that cannot train a classifier, naming the class at fault."""
    if len(catalog.class_names) < 2:
        found = catalog.class_names[0] if catalog.class_names else "none"
        raise UserError(
            f"data in {catalog.root} has {len(catalog.class_names)} class ({found}); a classifier needs at least two, "
            "one subfolder (or label) per class"
        )
    counts = Counter(e.label for e in catalog.examples)
    empty = [n for i, n in enumerate(catalog.class_names) if counts[i] == 0]
    if empty:
        raise UserError(f"class '{empty[0]}' in {catalog.root} has no usable images; add images or remove the class")
    train_counts = Counter(e.label for e in catalog.examples if e.split == "train")
    no_train = [n for i, n in enumerate(catalog.class_names) if train_counts[i] == 0]
    if no_train:
        raise UserError(
            f"class '{no_train[0]}' in {catalog.root} has no training images after the split; "
            "add images to it or raise data.split.train"
        )
