"""One-pass geometry: the same pictures as the two-pass path it replaced, within interpolation
error, and reduced-scale JPEG decoding close to decoding at full size."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from imgtrain import seeds as seed_streams
from imgtrain.config import AugmentConfig
from imgtrain.data import augment as aug
from imgtrain.data import geometry
from imgtrain.data.images import resize

GEOMETRIC = AugmentConfig(horizontal_flip=True, vertical_flip=True, rotation=20, zoom=0.2, translate=0.2)


def photo(h: int = 300, w: int = 400) -> tf.Tensor:
    """Smooth gradients plus mild noise: what interpolation error on real photos looks like."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 / w, yy * 255 / h, 128 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)], -1)
    return tf.constant(np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8))


def two_pass(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig, size) -> np.ndarray:
    """The path before: crop and resize, then flips and the affine on the resized image."""
    base = aug.random_resized_crop(image, seed, cfg, size) if cfg.random_resized_crop else resize(image, size)
    return aug.augment(base, seed_streams.draws(seed), cfg, cfg.fill_mode).numpy()


def seeds(n: int = 6):
    return [seed_streams.example(1, tf.constant(0), tf.constant(i)) for i in range(n)]


def test_without_affine_it_is_crop_resize_and_flip():
    image = photo()
    for cfg in (AugmentConfig(), AugmentConfig(horizontal_flip=True, vertical_flip=True, random_resized_crop=True)):
        for s in seeds():
            one, two = geometry.from_image(image, s, cfg, [96, 128]).numpy(), two_pass(image, s, cfg, [96, 128])
            np.testing.assert_array_equal(one, two)  # the same ops, the same seeds


@pytest.mark.parametrize("crop", [False, True])
def test_one_pass_matches_two_passes_within_interpolation_error(crop: bool):
    image = photo()
    cfg = AugmentConfig(**{**GEOMETRIC.__dict__, "random_resized_crop": crop, "crop_scale": [0.5, 1.0]})
    for s in seeds():
        one = geometry.from_image(image, s, cfg, [112, 112]).numpy()
        two = two_pass(image, s, cfg, [112, 112])
        assert one.shape == two.shape == (112, 112, 3)
        # The borders differ where the two fill differently (the resized image's edge against
        # the source's); the interior differs by one interpolation fewer.
        inner = (slice(20, 92), slice(20, 92))
        assert np.abs(one[inner] - two[inner]).mean() < 3.0  # a wrong map differs by tens
        assert one.min() >= 0 and one.max() <= 255


def test_same_seed_same_image_and_seeds_differ():
    image = photo()
    s = seeds()[0]
    np.testing.assert_array_equal(
        geometry.from_image(image, s, GEOMETRIC, [64, 64]), geometry.from_image(image, s, GEOMETRIC, [64, 64])
    )
    outs = [geometry.from_image(image, t, GEOMETRIC, [64, 64]).numpy() for t in seeds()]
    assert len({o.tobytes() for o in outs}) == len(outs)


@pytest.mark.parametrize("resampler", ["tensorflow", "opencv"])
@pytest.mark.parametrize("size", [[64, 64], [100, 150]])
def test_reduced_scale_jpeg_decoding_stays_close_to_full_decoding(size, resampler: str):
    if resampler == "opencv":
        pytest.importorskip("cv2")
    image = photo(480, 640)
    encoded = tf.io.encode_jpeg(image, quality=95)
    for cfg in (AugmentConfig(), AugmentConfig(random_resized_crop=True, crop_scale=[0.5, 1.0]), GEOMETRIC):
        for s in seeds(4):
            fast = geometry.from_bytes(encoded, s, cfg, size, resampler).numpy().astype(np.float32)
            full = geometry.from_image(tf.io.decode_jpeg(encoded, channels=3), s, cfg, size).numpy()
            inner = (slice(8, size[0] - 8), slice(8, size[1] - 8))
            assert np.abs(fast[inner] - full[inner]).mean() < 3.0, cfg  # averaging vs point sampling


def test_ratio_is_the_largest_that_keeps_the_output_size():
    assert int(geometry._ratio(tf.constant([480, 640]), [64, 64])) == 4  # 8 would leave 60 rows
    assert int(geometry._ratio(tf.constant([480, 640]), [224, 224])) == 2
    assert int(geometry._ratio(tf.constant([300, 300]), [224, 224])) == 1
    assert int(geometry._ratio(tf.constant([4000, 4000]), [224, 224])) == 8


@pytest.mark.parametrize("fill_mode", ["reflect", "constant", "nearest", "wrap"])
def test_opencv_makes_the_pixels_tensorflow_makes(fill_mode: str):
    """OpenCV's warpAffine from the same matrix: uint8 out, so within half a level of
    TensorFlow's float kernel, except along wrap's seams (TensorFlow repeats the image with a
    period one pixel short of its size; OpenCV with its size)."""
    pytest.importorskip("cv2")
    image = photo(240, 320)
    cfg = AugmentConfig(**{**GEOMETRIC.__dict__, "fill_mode": fill_mode, "random_resized_crop": True})
    for s in seeds(8):
        tf_pixels = geometry.from_image(image, s, cfg, [224, 224], "tensorflow").numpy()
        cv_pixels = geometry.from_image(image, s, cfg, [224, 224], "opencv").numpy()
        assert cv_pixels.dtype == np.uint8 and cv_pixels.shape == (224, 224, 3)
        off = np.abs(cv_pixels.astype(np.float32) - tf_pixels)
        if fill_mode == "wrap":
            assert (off > 0.51).any(-1).mean() < 0.03, (off > 0.51).any(-1).mean()
        else:
            assert off.max() <= 0.51 and off.mean() < 0.35, (off.max(), off.mean())
        again = geometry.from_image(image, s, cfg, [224, 224], "opencv").numpy()
        np.testing.assert_array_equal(cv_pixels, again)  # seeded: the same image every time


@pytest.mark.parametrize("cfg", [AugmentConfig(), AugmentConfig(random_resized_crop=True, horizontal_flip=True)])
def test_opencv_crops_and_flips_as_tensorflow_resizes_and_flips(cfg: AugmentConfig):
    """Without rotation, zoom or shift OpenCV still does the one pass (window map and flips as
    one matrix) where TensorFlow resizes, then flips: the same pixels within a level (the
    window's edge rows read the source's next pixel where TensorFlow repeats the edge)."""
    pytest.importorskip("cv2")
    image = photo(240, 320)
    for s in seeds(6):
        tf_pixels = geometry.from_image(image, s, cfg, [96, 128], "tensorflow").numpy()
        cv_pixels = geometry.from_image(image, s, cfg, [96, 128], "opencv").numpy().astype(np.float32)
        off = np.abs(cv_pixels - tf_pixels)
        assert off[1:-1, 1:-1].max() <= 1.0 and off.mean() < 0.35, (off[1:-1, 1:-1].max(), off.mean())


@pytest.mark.parametrize("brightness,contrast", [(0.2, 0.0), (0.0, 0.3), (0.2, 0.3)])
def test_tone_in_the_opencv_call_matches_tensorflows_brightness_and_contrast(brightness: float, contrast: float):
    """Brightness and contrast as one lookup table in the resampling call, with the draws
    ``photometric`` takes: within a level of TensorFlow's float path (which is not rounded),
    and saturated at 0 and 255 as its clip is."""
    pytest.importorskip("cv2")
    image = photo(240, 320)
    cfg = AugmentConfig(**{**GEOMETRIC.__dict__, "brightness": brightness, "contrast": contrast})
    saturated = 0
    for s in seeds(8):
        photo_seed = seed_streams.draws(s)
        want = aug.photometric(geometry.from_image(image, s, cfg, [112, 112], "tensorflow"), photo_seed, cfg).numpy()
        got = geometry.from_image(image, s, cfg, [112, 112], "opencv", tone=True).numpy()
        off = np.abs(got.astype(np.float32) - want)
        assert off.max() <= 1.2 and off.mean() < 0.5, (off.max(), off.mean())
        saturated += int((got == 255).sum() + (got == 0).sum())
    assert saturated > 0  # the draws did reach the ends, so the clip was exercised


def test_encoded_jpegs_decode_and_resample_the_same_through_opencv():
    """OpenCV decodes the whole JPEG with libjpeg-turbo's accurate IDCT and resamples from it:
    TensorFlow's path from the same decode, within a level (OpenCV's fixed-point weights), but
    for a crop's edge rows, where TensorFlow's resize repeats the window's edge."""
    pytest.importorskip("cv2")
    encoded = tf.io.encode_jpeg(photo(240, 320), quality=95)
    decoded = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
    for cfg in (
        AugmentConfig(**{**GEOMETRIC.__dict__, "random_resized_crop": True}),
        AugmentConfig(random_resized_crop=True, horizontal_flip=True),
    ):
        for s in seeds(4):
            a = geometry.from_image(decoded, s, cfg, [224, 224], "tensorflow").numpy()
            b = geometry.from_bytes(encoded, s, cfg, [224, 224], "opencv").numpy()
            off = np.abs(a - b)
            assert b.dtype == np.uint8 and off[1:-1, 1:-1].max() <= 1.0 and off.mean() < 0.35


@pytest.mark.parametrize("crop", [False, True])
def test_a_batch_renders_what_each_image_renders(crop: bool, tmp_path):
    """The pipeline's batched OpenCV path (bytes and draws per example, one NumPy call per
    batch, every format through cv2.imdecode) makes the pixels the per-image path makes."""
    pytest.importorskip("cv2")
    from PIL import Image

    cfg = AugmentConfig(**{**GEOMETRIC.__dict__, "random_resized_crop": crop, "brightness": 0.2, "contrast": 0.2})
    encoded = []
    for k, fmt in enumerate(["JPEG", "PNG", "JPEG", "BMP", "GIF"]):
        h, w = (480, 640) if k == 2 else (240, 320)  # 480x640 decodes at half scale
        path = tmp_path / f"{k}.{fmt.lower()}"
        Image.fromarray(photo(h, w).numpy()).save(path, fmt)
        encoded.append(path.read_bytes())
    ss = seeds(len(encoded))
    params = tf.stack([geometry.encoded_params(tf.constant(e), s, cfg) for e, s in zip(encoded, ss)])
    batch = geometry.render_batch(tf.constant(encoded), params, cfg, [224, 224], True).numpy()
    assert batch.dtype == np.uint8 and batch.shape == (5, 224, 224, 3)
    for k, (e, s) in enumerate(zip(encoded, ss)):
        one = geometry.from_bytes(tf.constant(e), s, cfg, [224, 224], "opencv", tone=True).numpy()
        np.testing.assert_array_equal(batch[k], one, err_msg=f"image {k}")


def test_a_format_opencv_cannot_read_is_decoded_by_pillow(monkeypatch, tmp_path):
    """An OpenCV build without a decoder for a format that validation accepted (older builds
    have no GIF) still renders it: Pillow decodes it, to the pixels TensorFlow decodes."""
    cv2 = pytest.importorskip("cv2")
    from PIL import Image

    path = tmp_path / "a.gif"
    Image.fromarray(photo(60, 80).numpy()).save(path)
    encoded = path.read_bytes()
    cfg = AugmentConfig(**{**GEOMETRIC.__dict__, "brightness": 0.2})
    params = geometry.encoded_params(tf.constant(encoded), seeds(1)[0], cfg)[None]
    want = geometry.render_batch(tf.constant([encoded]), params, cfg, [32, 32], True).numpy()

    class NoGif:
        def __getattr__(self, name):
            return getattr(cv2, name)

        def imdecode(self, data, flags):
            return None if bytes(data[:3]) == b"GIF" else cv2.imdecode(data, flags)

    monkeypatch.setattr(geometry, "_cv2", lambda: NoGif())
    got = geometry.render_batch(tf.constant([encoded]), params, cfg, [32, 32], True).numpy()
    np.testing.assert_array_equal(got, want)


def test_the_resampler_chosen(monkeypatch):
    from imgtrain.config import DataConfig
    from imgtrain.data import resampler
    from imgtrain.errors import UserError

    pytest.importorskip("cv2")
    one = lambda v: [v]  # noqa: E731  (one process: its own value is everyone's)
    cfg = DataConfig(augment=GEOMETRIC)
    service = DataConfig(augment=GEOMETRIC, service="grpc://localhost:5000")
    assert resampler.used(cfg) == "opencv" and resampler.decide(cfg, None, one)[0].augment.resampler == "opencv"
    assert resampler.used(service) == "tensorflow"  # service workers run no Python
    explicit_tf = DataConfig(augment=AugmentConfig(**{**GEOMETRIC.__dict__, "resampler": "tensorflow"}))
    assert resampler.used(explicit_tf) == "tensorflow"
    assert resampler.decide(cfg, None, one)[1] == []
    assert resampler.decide(cfg, "tensorflow", one)[0].augment.resampler == "tensorflow"  # a resume keeps it
    monkeypatch.setattr(geometry, "_cv2", lambda: None)  # as where OpenCV is not installed
    decided, warnings = resampler.decide(cfg, None, one)
    assert decided.augment.resampler == "tensorflow" and warnings == [
        "OpenCV is not installed, so TensorFlow resamples the augmentation, several times slower; "
        "pip install opencv-python-headless"
    ]
    assert resampler.decide(explicit_tf, None, one)[1] == []
    explicit_cv = DataConfig(augment=AugmentConfig(**{**GEOMETRIC.__dict__, "resampler": "opencv"}))
    with pytest.raises(UserError, match="OpenCV is not installed; pip install opencv-python-headless"):
        resampler.used(explicit_cv)


def test_the_chiefs_resampler_is_every_workers_or_all_refuse(monkeypatch):
    """A worker decides as the chief did, whatever it has itself; a chief's OpenCV that a
    worker lacks stops every worker with the same line (none is left in a collective)."""
    from imgtrain.config import DataConfig
    from imgtrain.data import resampler
    from imgtrain.errors import UserError

    pytest.importorskip("cv2")
    cfg = DataConfig(augment=GEOMETRIC)
    chief_says_tf = lambda v: [0.0, v]  # noqa: E731  (rank 0 chose TensorFlow, this is rank 1)
    assert resampler.decide(cfg, None, chief_says_tf)[0].augment.resampler == "tensorflow"
    monkeypatch.setattr(geometry, "_cv2", lambda: None)  # this worker, rank 1, has no OpenCV
    chief_has_cv = lambda v: [1.0, v]  # noqa: E731
    with pytest.raises(UserError, match=r"resamples with OpenCV, but OpenCV is not installed on worker\(s\) 1;"):
        resampler.decide(cfg, None, chief_has_cv)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "JPEG", "WEBP"])
def test_the_size_a_crop_is_drawn_from_is_the_decoded_size_read_from_the_header(fmt):
    """``images.shape_of`` gives what ``decode`` gives, in every mode a file comes in; for PNG,
    BMP, WebP and JPEG from the header alone: a file whose pixel data is cut off still has its
    size, so the random crop's window costs no second decode (a GIF's canvas is its largest
    frame: decoded)."""
    import io
    import struct

    from PIL import Image

    from imgtrain.data.images import decode, shape_of

    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 13), (333, 501)]:
        for mode in ("RGB", "L", "RGBA", "P") if fmt != "JPEG" else ("RGB", "L"):
            out = io.BytesIO()
            extra = {"lossless": mode == "P"} if fmt == "WEBP" else {}  # WebP's three headers: VP8, VP8L, VP8X
            Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).convert(mode).save(out, fmt, **extra)
            data = out.getvalue()
            assert shape_of(tf.constant(data)).numpy().tolist() == decode(tf.constant(data)).shape.as_list()
            if fmt != "GIF" and (h, w) == (333, 501):
                assert shape_of(tf.constant(data[: len(data) // 2])).numpy().tolist() == [h, w, 3]
    if fmt == "BMP":  # a top-down bitmap says so with a negative height
        top_down = bytearray(data)
        top_down[22:26] = struct.pack("<i", -333)
        assert shape_of(tf.constant(bytes(top_down))).numpy().tolist() == [333, 501, 3]
