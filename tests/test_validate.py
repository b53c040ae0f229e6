import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_folder
from PIL import Image

from imgtrain.config import DataConfig, SplitConfig
from imgtrain.data.images import load
from imgtrain.data.sources import discover
from imgtrain.data.split import apply_split
from imgtrain.data.validate import BAD, CONVERT, OK, check_file, validate_catalog
from imgtrain.errors import UserError

PIXEL = (200, 30, 90)


def solid(mode_from_rgb: str, size=(12, 10)) -> Image.Image:
    return Image.new("RGB", size, PIXEL).convert(mode_from_rgb)


@pytest.mark.parametrize(
    "name, image, fmt, expected",
    [
        ("rgb.jpg", solid("RGB"), "JPEG", PIXEL),
        ("cmyk.jpg", solid("CMYK"), "JPEG", PIXEL),
        ("gray.jpg", solid("L"), "JPEG", None),
        ("rgba.png", solid("RGBA"), "PNG", PIXEL),
        ("palette.png", solid("P"), "PNG", None),
        ("pic.gif", solid("P"), "GIF", None),
        ("pic.bmp", solid("RGB"), "BMP", PIXEL),
    ],
)
def test_formats_decode_to_rgb(tmp_path: Path, name, image, fmt, expected):
    path = tmp_path / name
    image.save(path, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    assert check_file(str(path)).status == OK
    pixels = load(tf.constant(str(path)), [4, 4]).numpy()
    assert pixels.shape == (4, 4, 3)
    if expected is not None:
        np.testing.assert_allclose(pixels[2, 2], expected, atol=3)
    else:  # grey or palette: three equal-ish channels or a faithful palette colour
        assert pixels.min() >= 0 and pixels.max() <= 255


def test_sixteen_bit_png_scales_to_eight_bit(tmp_path: Path):
    a = np.full((6, 6), 65535 // 2, np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    assert check_file(str(tmp_path / "deep.png")).status == OK
    px = load(tf.constant(str(tmp_path / "deep.png")), [6, 6]).numpy()
    assert 120 <= px[0, 0, 0] <= 135 and px[0, 0, 0] == px[0, 0, 2]


def test_one_bit_bmp_is_converted(tmp_path: Path, image_folder: Path):
    bw = image_folder / "red" / "bw.bmp"
    Image.new("1", (8, 8), 1).save(bw)
    assert check_file(str(bw)).status == CONVERT
    cat = apply_split(discover(DataConfig(path=str(image_folder))), SplitConfig(), 0)
    cat = validate_catalog(cat, "fail", tmp_path / "cache", progress=False)
    converted = [e for e in cat.examples if e.key == "red/bw.bmp"][0]
    assert converted.path.endswith(".png") and Path(converted.path).exists()
    px = load(tf.constant(converted.path), [8, 8]).numpy()
    assert px.min() == 255  # white stays white


def _corrupt(folder: Path) -> tuple[Path, Path]:
    garbage = folder / "red" / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    good = io.BytesIO()
    solid("RGB", (64, 64)).save(good, "JPEG")
    truncated = folder / "green" / "truncated.jpg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    return garbage, truncated


def test_bad_images_fail_by_default(tmp_path: Path, image_folder: Path):
    garbage, truncated = _corrupt(image_folder)
    assert check_file(str(garbage)).status == BAD
    assert check_file(str(truncated)).status == BAD
    cat = apply_split(discover(DataConfig(path=str(image_folder))), SplitConfig(), 0)
    with pytest.raises(UserError, match=r"bad image .*(garbage|truncated).*on_bad_image=skip"):
        validate_catalog(cat, "fail", tmp_path / "cache", progress=False)


def test_bad_images_skipped_and_listed(tmp_path: Path, image_folder: Path):
    _corrupt(image_folder)
    cat = apply_split(discover(DataConfig(path=str(image_folder))), SplitConfig(), 0)
    cat = validate_catalog(cat, "skip", tmp_path / "cache", progress=False)
    assert sorted(s["path"] for s in cat.skipped) == ["green/truncated.jpg", "red/garbage.png"]
    assert len(cat.examples) == 36
    # The cache answers a second check without decoding again, with the same result.
    cat2 = apply_split(discover(DataConfig(path=str(image_folder))), SplitConfig(), 0)
    cat2 = validate_catalog(cat2, "skip", tmp_path / "cache", progress=False)
    assert sorted(s["path"] for s in cat2.skipped) == ["green/truncated.jpg", "red/garbage.png"]


def test_missing_file_in_manifest(tmp_path: Path, image_folder: Path):
    (tmp_path / "m.csv").write_text(f"path,label\n{image_folder}/red/red_000.png,r\n{tmp_path}/gone.png,g\n")
    cat = apply_split(discover(DataConfig(path=str(tmp_path / "m.csv"))), SplitConfig(1.0, 0.0, 0.0), 0)
    with pytest.raises(UserError, match="gone.png: file not found"):
        validate_catalog(cat, "fail", tmp_path / "cache", progress=False)


def test_one_class_and_empty_class(tmp_path: Path):
    write_folder(tmp_path / "one", per_class=3, classes={"only": (1, 2, 3)})
    cat = apply_split(discover(DataConfig(path=str(tmp_path / "one"))), SplitConfig(), 0)
    with pytest.raises(UserError, match="a classifier needs at least two"):
        validate_catalog(cat, "fail", tmp_path / "c1", progress=False)
    write_folder(tmp_path / "two", per_class=3)
    (tmp_path / "two" / "empty").mkdir()
    (tmp_path / "two" / "empty" / "notes.txt").write_text("no images here")
    cat = apply_split(discover(DataConfig(path=str(tmp_path / "two"))), SplitConfig(), 0)
    with pytest.raises(UserError, match="class 'empty' .* has no usable images"):
        validate_catalog(cat, "fail", tmp_path / "c2", progress=False)


def test_an_image_over_the_pixel_limit_says_so_and_how_to_fix_it(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from imgtrain.cli import main
    from imgtrain.data.validate import check_file

    big = tmp_path / "big.png"
    Image.new("RGB", (60, 50)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3,000 pixels: over the limit, under twice it
    result = check_file(str(big))
    assert result.status == "bad" and "3,000 pixels is over the 1,000-pixel limit" in result.reason
    assert "downscale it" in result.fix
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit: Pillow's error, not its warning
    assert "3,000 pixels is over the 100-pixel limit" in check_file(str(big)).reason

    from imgtrain.config import Config

    # No model is needed: the image is refused before one would be used.
    monkeypatch.setattr("imgtrain.predict.load_run", lambda _run: (None, ["a", "b"], Config()))
    assert main(["predict", "--run", str(tmp_path / "run"), str(big)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "over the 100-pixel limit" in err and "downscale it" in err
    assert "pass JPEG, PNG, BMP or GIF" not in err
