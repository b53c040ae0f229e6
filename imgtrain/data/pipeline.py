"""The tf.data input pipeline: list -> shuffle -> shard -> decode/augment -> batch -> prefetch.

Files are shuffled as paths (cheap, so the whole list is shuffled, not a
window of it) with a seed that depends on the epoch, then decoded in a
parallel, order-preserving ``map``; only ``prefetch`` worth of images is ever
in memory. The order of batches is a pure function of (seed, epoch), which
is what lets a resumed run skip exactly the batches it already trained on.

Elements are ``(image, label, weight, real)``; training images are float32 on the 0..255
scale, or uint8 from the OpenCV path (``data.geometry``), which the training step casts.
Evaluation images are always float32. In a multi-worker run every
worker must take the same number of steps (each step is a collective), but
shards differ by up to one example; a worker whose shard runs out first is
padded with copies of one image whose ``real`` is 0, which the loop leaves out
of the loss, the gradients and every count. So each example is trained on
exactly once per epoch, on exactly one worker.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.autograph.core import ag_ctx  # tf.data has no public switch for AutoGraph

from imgtrain import seeds
from imgtrain.config import DataConfig
from imgtrain.data import augment as aug
from imgtrain.data import geometry, trained_keys
from imgtrain.data import resampler as resampler_kernel
from imgtrain.data.images import decode, eval_image, resize
from imgtrain.data.service import service_train
from imgtrain.data.sources import Example
from imgtrain.data.tfrecord import Opener, shard_records
from imgtrain.storage import stream, urls

AUTOTUNE = tf.data.AUTOTUNE


def as_written(build: Callable) -> Callable:
    """``build``, with the functions its datasets map traced as written: AutoGraph's rewriting
    of their source took about two seconds at the start of every process that builds a
    pipeline. They hold no Python control flow on tensors; one that did would fail to trace,
    loudly, never silently differ."""

    @functools.wraps(build)
    def built(*args, **kwargs):
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
            return build(*args, **kwargs)

    return built


@dataclass(frozen=True)
class Shard:
    """Which slice of every epoch this process reads (multi-worker runs)."""

    count: int = 1
    index: int = 0


def _options(deterministic: bool = True) -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = deterministic
    # Sharding is done explicitly by file, so tf.distribute must not re-shard.
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return opts


def _fetch(paths: tf.Tensor) -> tf.Tensor:
    """The bytes at each of ``paths``, read by fsspec's client (``storage.stream``): TensorFlow
    has no ``s3://``. An object array keeps them whole (NumPy's bytes type drops trailing zeros)."""

    def read(given: np.ndarray) -> np.ndarray:
        out = np.empty(len(given), dtype=object)
        out[:] = stream.read_many([p.decode() for p in given])
        return out

    data = tf.numpy_function(read, [paths], tf.string, stateful=False)
    data.set_shape(paths.shape)
    return data


def _readable(ds: tf.data.Dataset, examples: Sequence[Example]) -> tuple[tf.data.Dataset, Callable, str]:
    """``ds`` of ``(index, path, label, weight)`` made ready to decode: the read that turns its
    second component into bytes, and what that component then is (``given``, see ``_augmenter``).
    Files on disk are read by TensorFlow in the decoding map; streamed data (URLs) in a map of
    its own, ``PARALLEL_READS`` objects at a time, since each read waits on the network."""
    if not any(urls.is_url(e.path) for e in examples):
        return ds, tf.io.read_file, "path"
    fetched = ds.batch(stream.PARALLEL_READS).map(lambda i, p, y, w: (i, _fetch(p), y, w), num_parallel_calls=2)
    return fetched.unbatch(), tf.identity, "bytes"


def _tensors(examples: Sequence[Example]) -> tuple:
    return (
        tf.range(len(examples), dtype=tf.int64),
        tf.constant([e.path for e in examples], dtype=tf.string),
        tf.constant([e.label for e in examples], dtype=tf.int32),
        tf.constant([e.weight for e in examples], dtype=tf.float32),
    )


@dataclass(frozen=True)
class EpochPlan:
    """Which epoch of which run this worker reads, and how: what every training source needs."""

    seed: int
    epoch: int
    batch_size: int
    shard: Shard = Shard()
    # Examples of the epoch already trained over all workers (a mid-epoch resume): a prefix of
    # the epoch's order for sources ordered by example; else this many split evenly by worker.
    skip_examples: int = 0
    multiple: int = 1  # micro-batches this worker feeds per step (replicas x accumulation)

    def worker_skip(self) -> int:
        """What this worker skips of its own share (sources that shard before they order)."""
        return self.skip_examples // max(1, self.shard.count)


@as_written
def decoded_images(examples: Sequence[Example], size: Sequence[int]) -> tf.data.Dataset:
    """``data.cache``'s training images: ``(index, image at the output size, label, weight)``,
    decoded once and kept in memory (crops then come from the resized image). The cache lives
    in this dataset object, so a source builds it once per run and hands it to every epoch
    (``DataSource.kept``): a dataset rebuilt each epoch would fill a new cache each epoch."""
    ds, read, _ = _readable(tf.data.Dataset.from_tensor_slices(_tensors(examples)), examples)
    ds = ds.map(lambda i, p, y, w: (i, eval_image(decode(read(p)), size), y, w), num_parallel_calls=AUTOTUNE)
    return kept_as_uint8(ds, 1)


def kept_as_uint8(ds: tf.data.Dataset, image: int) -> tf.data.Dataset:
    """``ds`` kept in memory (``data.cache``) with its elements' ``image`` component as uint8,
    a quarter of float32's bytes, and read back as float32: the pixels rounded to whole levels,
    as photographs' are (OpenCV's training path rounds them too)."""

    def swap(element: tuple, to: tf.DType) -> tuple:
        x = element[image]
        x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), to) if to == tf.uint8 else tf.cast(x, to)
        return (*element[:image], x, *element[image + 1 :])

    kept = ds.map(lambda *e: swap(e, tf.uint8), num_parallel_calls=AUTOTUNE, deterministic=True).cache()
    return kept.map(lambda *e: swap(e, tf.float32), num_parallel_calls=AUTOTUNE, deterministic=True)


@as_written
def train_dataset(
    examples: Sequence[Example], cfg: DataConfig, plan: EpochPlan, decoded: Optional[tf.data.Dataset] = None
) -> tf.data.Dataset:
    """One epoch of augmented training batches ``(image, label, weight, real)`` for this worker;
    with ``data.cache``, read from ``decoded`` (``decoded_images``) when given."""
    seed, epoch, shard, skipped = plan.seed, plan.epoch, plan.shard, min(plan.skip_examples, len(examples))
    n = len(examples)
    if cfg.service:
        return _service_train(examples, cfg, plan)
    if cfg.cache:
        ds = decoded if decoded is not None else decoded_images(examples, cfg.image_size)
    else:
        ds = tf.data.Dataset.from_tensor_slices(_tensors(examples))
    ds = ds.shuffle(max(n, 1), seed=seeds.shuffle(seed, epoch), reshuffle_each_iteration=False)
    # The rest of the epoch's order strided over this start's workers: on any number of them,
    # each example of the epoch once.
    if skipped:
        ds = ds.skip(skipped)
    if shard.count > 1:
        ds = ds.shard(shard.count, shard.index)
    given = "decoded"
    if not cfg.cache:
        ds, _, given = _readable(ds, examples)  # read after the skip and the shard: only what is trained

    augmenter = _augmenter(cfg, seed, epoch, given)
    rest = n - skipped
    return _finish_train(
        ds, augmenter, plan, shard_size(rest, shard), shard_size(rest, Shard(shard.count, 0)), _filler(examples, cfg)
    )


def _service_train(examples: Sequence[Example], cfg: DataConfig, plan: EpochPlan) -> tf.data.Dataset:
    """This worker's epoch through a tf.data service (``data/service.py`` says what it keeps)."""
    n, shard = len(examples), plan.shard
    order = np.random.default_rng(seeds.shuffle(plan.seed, plan.epoch)).permutation(n)
    rest = order[min(plan.skip_examples, n) :]
    mine = rest[shard.index :: shard.count]
    prepare = _augmenter(cfg, plan.seed, plan.epoch, "path").per_example  # TensorFlow's path: per example
    ds = service_train(examples, mine, prepare, cfg.service, plan.batch_size, cfg.service_timeout)
    _, target = padded_batches(
        shard_size(len(rest), shard), shard_size(len(rest), Shard(shard.count, 0)), plan.batch_size, plan.multiple
    )
    filler = _filler(examples, cfg).take(1).map(lambda x, y, w, r: (x, y, w, tf.zeros_like(r))).batch(1).repeat()
    return (
        ds.batch(plan.batch_size)
        .concatenate(filler)
        .take(target)
        .prefetch(AUTOTUNE)
        .with_options(_options(deterministic=False))
    )


def _finish_train(
    ds: tf.data.Dataset,
    augmenter: Augmenter,
    plan: EpochPlan,
    mine_n: int,
    most_n: int,
    filler: tf.data.Dataset,
    skip: int = 0,
) -> tf.data.Dataset:
    """Augment in parallel, batch, pad to the step count every worker shares, prefetch.
    ``mine_n``/``most_n`` count this worker's and the largest worker's examples from the
    epoch's start (``skip`` batches of them already trained) or from the skip (``skip`` 0)."""
    if trained_keys.folder() is not None:  # the test hook: each batch carries its examples' keys
        ds, filler = _with_keys(ds, augmenter, plan.batch_size, filler)
    else:
        ds = ds.map(augmenter.per_example, num_parallel_calls=AUTOTUNE, deterministic=True).batch(plan.batch_size)
        if augmenter.per_batch is not None:
            ds = ds.map(augmenter.per_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
        # OpenCV's path keeps batches uint8 (a quarter of the bytes to copy and to send to the
        # device; the training step casts); on_device adds the draws. The pads follow.
        filler = _like(filler, ds)
    mine, target = padded_batches(mine_n, most_n, plan.batch_size, plan.multiple)
    ds = _pad(ds, filler, (target - skip) - max(0, mine - skip))
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _with_keys(
    ds: tf.data.Dataset, augmenter: Augmenter, batch_size: int, filler: tf.data.Dataset
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """``_finish_train``'s batches with the examples' keys (``trained_keys``), and its pads."""
    ds = ds.map(
        lambda i, *rest: (augmenter.per_example(i, *rest), i), num_parallel_calls=AUTOTUNE, deterministic=True
    ).batch(batch_size)
    if augmenter.per_batch is not None:
        per_batch = augmenter.per_batch
        ds = ds.map(lambda e, k: (per_batch(*e), k), num_parallel_calls=AUTOTUNE, deterministic=True)
    plain = ds.map(lambda e, k: e)
    filler = _like(filler, plain).map(lambda *e: trained_keys.keyed(e, tf.constant(trained_keys.PAD)))
    return ds.map(trained_keys.keyed), filler


@dataclass(frozen=True)
class Augmenter:
    """The training transform: ``per_example`` on elements ``(index, x, label, weight)`` and,
    where the work is done per batch, ``per_batch`` on the batched results; both end in
    ``(image, label, weight, real)`` batches."""

    per_example: Callable
    per_batch: Optional[Callable] = None


def _augmenter(cfg: DataConfig, seed: int, epoch: int, given: str) -> Augmenter:
    """The training transform for elements ``(index, x, label, weight)``.

    ``x`` is a path (``given="path"``), encoded bytes (``"bytes"``), a decoded
    image of any size (``"raw"``, from TFDS) or one already resized to the
    target size (``"decoded"``, the in-memory cache). On OpenCV's path, with
    brightness and contrast the only per-pixel ops, encoded images are decoded and
    augmented a batch at a time (``geometry.render_batch``).
    """
    if cfg.augment.on_device:
        host = dataclasses.replace(cfg, augment=geometry.on_host(cfg.augment))
        return _with_draws(_augmenter(host, seed, epoch, given), seed, epoch)
    size, acfg = cfg.image_size, cfg.augment
    geometric = geometry.is_geometric(acfg)
    resampler = resampler_kernel.used(cfg)
    # OpenCV's path also does brightness/contrast, and its images stay uint8 up to the batch.
    fused = resampler == "opencv" and aug.fusable(acfg)
    tone = fused and bool(acfg.brightness or acfg.contrast)

    if fused and given in ("path", "bytes"):

        def per_example(i, x, y, w):
            encoded = tf.io.read_file(x) if given == "path" else x
            return encoded, geometry.encoded_params(encoded, seeds.example(seed, epoch, i), acfg), y, w

        def per_batch(encoded, params, y, w):
            return geometry.render_batch(encoded, params, acfg, size, tone), y, w, tf.ones_like(w)

        return Augmenter(per_example, per_batch)

    def prepare(i, x, y, w):
        s = seeds.example(seed, epoch, i)
        if given == "decoded" and not geometric:
            image = x  # the cache holds images at the output size already
        elif given in ("decoded", "raw"):
            image = geometry.from_image(x, s, acfg, size, resampler, tone) if geometric else resize(x, size)
        else:  # encoded: JPEGs decoded only in the crop window, at reduced scale when it is large
            encoded = tf.io.read_file(x) if given == "path" else x
            image = geometry.from_bytes(encoded, s, acfg, size, resampler, tone)
        if not fused:  # the seed geometry's draws come from, so brightness and contrast draw alike
            image = aug.photometric(tf.cast(image, tf.float32), seeds.draws(s), acfg)
        image.set_shape([size[0], size[1], 3])
        return image, y, w, tf.constant(1.0)

    return Augmenter(prepare)


def _with_draws(host: Augmenter, seed: int, epoch: int) -> Augmenter:
    """``data.augment.on_device``: ``host``'s images (cropped and resized) paired with each
    example's draws, ``((image, draws), label, weight, real)``, for ``geometry.augment_batch``
    in the training step. The draws are those the pipeline's own path takes."""
    if host.per_batch is not None:  # OpenCV's batched path: the draws lead each example's params

        def per_batch(encoded, params, y, w):
            images, y, w, real = host.per_batch(encoded, params, y, w)
            return (images, params[:, geometry.DRAWS]), y, w, real

        return Augmenter(host.per_example, per_batch)

    def per_example(i, x, y, w):
        image, y, w, real = host.per_example(i, x, y, w)
        u = aug.draws(seeds.draws(seeds.example(seed, epoch, i)))
        return (image, u), y, w, real

    return Augmenter(per_example)


def _images_dtype(ds: tf.data.Dataset) -> tf.DType:
    spec = ds.element_spec[0]
    return (spec[0] if isinstance(spec, tuple) else spec).dtype


def _like(filler: tf.data.Dataset, ds: tf.data.Dataset) -> tf.data.Dataset:
    """The one-image pads in the structure and dtype of ``ds``'s training batches."""
    if _images_dtype(ds) == tf.uint8:
        filler = filler.map(lambda x, y, w, r: (tf.saturate_cast(tf.round(x), tf.uint8), y, w, r))
    if isinstance(ds.element_spec[0], tuple):  # on_device: any draws do, the pads count for nothing
        filler = filler.map(lambda x, y, w, r: ((x, tf.fill([8], 0.75)), y, w, r))
    return filler


def _filler(examples: Sequence[Example], cfg: DataConfig) -> tf.data.Dataset:
    first = examples[:1]
    ds, read, _ = _readable(tf.data.Dataset.from_tensor_slices(_tensors(first)), first)
    return ds.map(lambda i, p, y, w: (eval_image(decode(read(p)), cfg.image_size, cfg.eval_crop()), y, w, 1.0))


@as_written
def eval_images(examples: Sequence[Example], cfg: DataConfig, shard: Shard = Shard()) -> tf.data.Dataset:
    """This worker's ``(image, label, weight, real)`` of a split in file order, kept in memory
    with ``data.cache`` (built once per run, as ``decoded_images`` is)."""
    size, crop = cfg.image_size, cfg.eval_crop()
    ds = tf.data.Dataset.from_tensor_slices(_tensors(examples))
    if shard.count > 1:
        ds = ds.shard(shard.count, shard.index)
    ds, read, _ = _readable(ds, examples)
    ds = ds.map(
        lambda i, p, y, w: (eval_image(decode(read(p)), size, crop), y, w, tf.constant(1.0)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return kept_as_uint8(ds, 0) if cfg.cache else ds


@as_written
def eval_dataset(
    examples: Sequence[Example],
    cfg: DataConfig,
    batch_size: int,
    shard: Shard = Shard(),
    multiple: int = 1,
    images: Optional[tf.data.Dataset] = None,
) -> tf.data.Dataset:
    """Batches in file order, no augmentation: what validation, test and predict see; read
    from ``images`` (``eval_images`` of the same shard) when given."""
    ds = images if images is not None else eval_images(examples, cfg, shard)
    mine, target = batches(len(examples), batch_size, shard, multiple)
    ds = _pad(ds.batch(batch_size), _filler(examples, cfg), target - mine)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def shard_size(n: int, shard: Shard) -> int:
    return (n - shard.index + shard.count - 1) // shard.count if n > shard.index else 0


def batches(n: int, batch_size: int, shard: Shard = Shard(), multiple: int = 1) -> tuple[int, int]:
    """(batches this worker's shard fills, batches every worker yields after padding).

    The padded count is the largest shard's (shard 0), rounded up to a multiple
    of the replicas each worker feeds per step.
    """
    return padded_batches(shard_size(n, shard), shard_size(n, Shard(shard.count, 0)), batch_size, multiple)


def padded_batches(mine_examples: int, most_examples: int, batch_size: int, multiple: int = 1) -> tuple[int, int]:
    mine = -(-mine_examples // batch_size)
    most = -(-most_examples // batch_size)
    return mine, -(-most // multiple) * multiple


def steps_per_epoch(n: int, batch_size: int, shard: Shard = Shard(), multiple: int = 1) -> int:
    """Training steps per epoch: the same on every worker."""
    return batches(n, batch_size, shard, multiple)[1] // multiple


def _pad(ds: tf.data.Dataset, filler: tf.data.Dataset, count: int) -> tf.data.Dataset:
    """Append ``count`` one-image batches that count for nothing (``real`` = 0)."""
    if count <= 0:
        return ds
    pad = filler.take(1).map(lambda x, y, w, r, *key: (x, y, w, tf.zeros_like(r), *key)).batch(1).repeat(count)
    return ds.concatenate(pad)


# -- TFDS: streamed by TFDS, with the same decode/augment as files --------------------


@as_written
def tfds_train_dataset(source: tf.data.Dataset, count: int, cfg: DataConfig, plan: EpochPlan) -> tf.data.Dataset:
    """Training batches from a TFDS ``(image, label)`` stream, shuffled in a seeded window."""
    seed, epoch, shard, skip = plan.seed, plan.epoch, plan.shard, plan.worker_skip()
    ds = source.enumerate().map(lambda i, pair: (i, to_rgb(pair[0]), tf.cast(pair[1], tf.int32), tf.constant(1.0)))
    if shard.count > 1:
        ds = ds.shard(shard.count, shard.index)
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seeds.shuffle(seed, epoch), reshuffle_each_iteration=False)
    if skip:
        ds = ds.skip(skip)
    return _finish_train(
        ds,
        _augmenter(cfg, seed, epoch, "raw"),
        plan,
        shard_size(count, shard),
        shard_size(count, Shard(shard.count, 0)),
        _tfds_plain(source, cfg),
        skip // plan.batch_size,
    )


def _tfds_plain(source: tf.data.Dataset, cfg: DataConfig) -> tf.data.Dataset:
    size = cfg.image_size
    crop = cfg.eval_crop()
    return source.map(
        lambda x, y: (eval_image(to_rgb(x), size, crop), tf.cast(y, tf.int32), tf.constant(1.0), tf.constant(1.0)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


@as_written
def tfds_eval_dataset(
    source: tf.data.Dataset, count: int, cfg: DataConfig, batch_size: int, shard: Shard = Shard(), multiple: int = 1
) -> tf.data.Dataset:
    ds = source
    if shard.count > 1:
        ds = ds.shard(shard.count, shard.index)
    mine, target = batches(count, batch_size, shard, multiple)
    ds = _pad(_tfds_plain(ds, cfg).batch(batch_size), _tfds_plain(source, cfg), target - mine)
    return ds.prefetch(AUTOTUNE).with_options(_options())


# -- prepared TFRecord shards: sharded by file, read with parallel interleave ------------------


def shards_open_at_once(files: int) -> int:
    """How many shards the reader of ``files`` shards has open at once (its interleave's cycle)."""
    return max(1, min(8, files))


def epoch_shards(files: Sequence[str], shard: Shard, seed: int, epoch: int) -> list[str]:
    """The training shards worker ``shard`` reads in ``epoch``, in the order it reads them: the
    same shards every epoch (dealt round-robin, so its count of examples is fixed), in an order
    drawn per epoch (``seeds.shard_order``), so an interleave's cycle groups other shards each time."""
    mine = list(files)[shard.index :: shard.count]
    return [mine[i] for i in seeds.shard_order(seed, epoch, len(mine))]


def _records(files: Sequence[str], shard: Shard, opener: Optional[Opener] = None) -> tf.data.Dataset:
    """``shard``'s records of ``files`` (whole files per worker: sequential reads), each read
    locally or, streamed, through ``opener``."""
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shard.count > 1:
        ds = ds.shard(shard.count, shard.index)
    # Streamed shards are opened one after another (a parallel interleave opens up to three
    # cycles of shards ahead, which a bounded cache cannot hold); the order is the same.
    return ds.interleave(
        lambda f: shard_records(f, opener),
        cycle_length=shards_open_at_once(len(files)),
        block_length=1,
        num_parallel_calls=AUTOTUNE if opener is None else None,
        deterministic=True if opener is None else None,
    ).map(tfrecord_parse, num_parallel_calls=AUTOTUNE)


def tfrecord_parse(record: tf.Tensor) -> tuple:
    from imgtrain.data.tfrecord import parse

    return parse(record)


@as_written
def tfrecord_train_dataset(
    files: Sequence[str],
    worker_counts: Sequence[int],
    cfg: DataConfig,
    plan: EpochPlan,
    opener: Optional[Opener] = None,
) -> tf.data.Dataset:
    """Training batches from prepared shards (streamed ones through ``opener``): this worker's
    shards in the epoch's order (``epoch_shards``), interleaved, through the seeded shuffle
    window. Each example's pixels are those the folder gives it (its record keeps its position,
    which seeds its augmentation); the order is the shards' own."""
    seed, epoch, shard, skip = plan.seed, plan.epoch, plan.shard, plan.worker_skip()
    mine_n, most_n = worker_counts[shard.index], max(worker_counts)
    ds = _records(epoch_shards(files, shard, seed, epoch), Shard(), opener)
    ds = ds.shuffle(
        max(1, min(mine_n, max(cfg.shuffle_buffer, 1))), seed=seeds.shuffle(seed, epoch), reshuffle_each_iteration=False
    )
    if skip:
        ds = ds.skip(skip)
    filler = _decoded_records(files[:1], cfg, opener=opener)
    augmenter = _augmenter(cfg, seed, epoch, "bytes")
    return _finish_train(ds, augmenter, plan, mine_n, most_n, filler, skip // plan.batch_size)


def _decode_resize(encoded: tf.Tensor, cfg: DataConfig) -> tf.Tensor:
    return eval_image(decode(encoded), cfg.image_size, cfg.eval_crop())


def _decoded_records(
    files: Sequence[str], cfg: DataConfig, shard: Shard = Shard(), opener: Optional[Opener] = None
) -> tf.data.Dataset:
    """``(image, label, weight, real)`` of ``shard``'s records, decoded as evaluation sees them."""
    return _records(files, shard, opener).map(
        lambda i, b, y, w: (_decode_resize(b, cfg), y, w, tf.constant(1.0)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


@as_written
def tfrecord_eval_images(
    files: Sequence[str], cfg: DataConfig, shard: Shard = Shard(), opener: Optional[Opener] = None
) -> tf.data.Dataset:
    """``eval_images`` from prepared shards: this worker's files, decoded, kept with ``data.cache``."""
    ds = _decoded_records(files, cfg, shard, opener)
    return kept_as_uint8(ds, 0) if cfg.cache else ds


@as_written
def tfrecord_eval_dataset(
    files: Sequence[str],
    worker_counts: Sequence[int],
    cfg: DataConfig,
    batch_size: int,
    shard: Shard = Shard(),
    multiple: int = 1,
    images: Optional[tf.data.Dataset] = None,
    opener: Optional[Opener] = None,
) -> tf.data.Dataset:
    """``eval_dataset`` from prepared shards; ``images`` is ``tfrecord_eval_images`` of ``shard``."""
    ds = images if images is not None else tfrecord_eval_images(files, cfg, shard, opener)
    mine, target = padded_batches(worker_counts[shard.index], max(worker_counts), batch_size, multiple)
    filler = _decoded_records(files[:1], cfg, opener=opener)
    ds = _pad(ds.batch(batch_size), filler, target - mine)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """TFDS images may be grayscale or RGBA; the models always see three channels."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image
