"""Real image datasets that need no network, written as the class folders users bring.

- ``write_digits``: scikit-learn's 1,797 handwritten 8x8 digits (UCI), as PNG.
- ``write_patches``: crops of scikit-learn's two sample photographs, by band.
- ``write_shapes``: coloured circles, squares and triangles of random size,
  position and colour on noise, as a mix of PNG and JPEG. Small on purpose:
  it is the "a few dozen images per class" folder on which a model's defaults
  either generalise or do not.

All are pure functions of their arguments (the shapes and crops of a seed), and write
a ``.complete`` marker last, so a folder interrupted half-way is rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def write_digits(root: Path) -> Path:
    """Write sklearn's digits as root/<digit>/<index>.png (once; kept if complete)."""
    from sklearn.datasets import load_digits

    root = Path(root)
    marker = root / ".complete"
    if marker.exists():
        return root
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image / 16.0 * 255.0).astype(np.uint8)  # 0..16 grey levels -> 8-bit
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    marker.write_text(f"{len(digits.images)} images\n")
    return root


def shape_image(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One shape of random size, centre and colour on grey noise."""
    background = np.full(3, 128)
    noise = rng.normal(0, 12, (size, size, 3))
    canvas = Image.fromarray(np.clip(background[None, None, :] + noise, 0, 255).astype(np.uint8), "RGB")
    colour = rng.integers(0, 256, 3)
    while np.abs(colour - background).sum() < 150:  # keep the shape visible against the grey noise
        colour = rng.integers(0, 256, 3)
    r = rng.uniform(0.25, 0.45) * size
    cx, cy = rng.uniform(r, size - r, 2)
    draw = ImageDraw.Draw(canvas)
    fill = tuple(int(c) for c in colour)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; one of {SHAPES}")
    return canvas


def write_shapes(root: Path, per_class: int = 40, size: int = 32, seed: int = 0) -> Path:
    """Write root/<shape>/<i>.png|jpg: ``per_class`` images of each shape, every third one a JPEG."""
    root = Path(root)
    marker = root / ".complete"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = shape_image(kind, rng, size)
            if i % 3 == 2:
                image.save(root / kind / f"{kind}_{i:03d}.jpg", quality=90)
            else:
                image.save(root / kind / f"{kind}_{i:03d}.png")
    marker.write_text(f"{per_class * len(SHAPES)} images\n")
    return root


PATCH_REGIONS = 3  # horizontal bands of each photograph, one class each


def write_patches(root: Path, per_class: int = 60, size: int = 32, seed: int = 0) -> Path:
    """Write root/<photo>-<band>/<i>.png: crops of scikit-learn's two sample photographs (a
    temple in China, a flower), ``PATCH_REGIONS`` horizontal bands of each a class, each crop
    48 to 96 pixels square at a random place in its band, resized to ``size``. Real photo
    texture in six classes, some of them alike (sky, foliage): where a small validation split
    does not saturate at once."""
    from sklearn.datasets import load_sample_images

    root = Path(root)
    marker = root / ".complete"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    photos = load_sample_images()
    for name, photo in zip(("china", "flower"), photos.images):
        height = photo.shape[0] // PATCH_REGIONS
        for band in range(PATCH_REGIONS):
            folder = root / f"{name}-{band}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                side = int(rng.integers(48, 97))
                top = band * height + int(rng.integers(0, max(1, height - side)))
                left = int(rng.integers(0, photo.shape[1] - side))
                crop = Image.fromarray(photo[top : top + side, left : left + side])
                crop.resize((size, size), Image.BILINEAR).save(folder / f"{i:03d}.png")
    marker.write_text(f"{per_class * 2 * PATCH_REGIONS} images\n")
    return root
