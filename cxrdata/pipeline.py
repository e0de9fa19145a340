"""`load`: one split of a converted dataset as a fast `tf.data.Dataset`.

The pipeline follows the tf.data performance guide: shard files are read in
parallel (`interleave`), records are shuffled while still serialized, then
batched and parsed with one vectorized `parse_example` per batch. Images stay
uint8 end to end: they cross to the accelerator at a quarter of float32's size,
and the model casts and scales them. The stages live in `_reading`; which files
a pipeline reads, and how workers share a split, in `_sharding`; the tf.data
service in `_service`.

Shards are checked against the manifest twice: their sizes when `load` is
called (a truncated shard is named before anything is read), and their record
counts while reading (a shard that ends early raises instead of silently
shortening the epoch; a corrupt record raises TensorFlow's DataLossError).
Both checks cost nothing per record: a per-record or per-batch check function
in the reader would halve throughput. `cxr verify` (and `cxrmodels.train`,
when reading fails) names the damaged shard.
"""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import tensorflow as tf

from cxrdata import _reading, _service, _sharding
from cxrdata._load_config import LoadConfig, resolve_config
from cxrdata._sharding import Plan
from cxrdata.manifest import read_manifest
from cxrdata.records import feature_spec

AUTOTUNE = tf.data.AUTOTUNE
_OFF = tf.data.experimental.AutoShardPolicy.OFF


def load(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    repeat: bool = False,
    augment: keras.layers.Layer | None = None,
    label_mode: str = "categorical",
    balance: str | None = None,
    cache: str | os.PathLike | None = None,
    deterministic: bool | None = None,
    drop_remainder: bool = False,
    service: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    service_mode: str = "distributed_epoch",
    with_masks: bool = False,
    service_timeout: float = _service.DEFAULT_TIMEOUT,
    config: LoadConfig | None = None,
) -> tf.data.Dataset:
    """Loads one split of a converted dataset as batches of `(images, labels)`.

    Args:
        dataset_dir: a folder written by `cxrdata.convert` (`dataset.json` and shards).
        split: which split to read. Defaults to `"train"`.
        batch_size: examples per batch. Defaults to 32.
        shuffle: shuffle shard order and records. When False, records come in
            manifest order (shard by shard). Defaults to True.
        seed: seed for every shuffle and for class sampling; the same seed gives
            the same batches. Each new iteration of the dataset (each `Model.fit`
            epoch) gives a new order, in a sequence the seed fixes. Defaults to
            None (different every run).
        repeat: repeat forever (pass `steps_per_epoch` to `Model.fit`). Without
            `cache` the file list repeats before the record shuffle, so epochs
            blur (every record keeps the same rate). Defaults to False (one epoch
            per iteration: each record exactly once).
        augment: a Keras layer applied to each uint8 batch on the CPU as
            `augment(images, training=True)`, output rounded back to uint8; one
            batch at a time (a seeded layer gives the same batches) unless
            `deterministic=False`. On a GPU, put it in the model. Defaults to None.
        label_mode: `"categorical"` (one-hot float32 `[batch, num_classes]`)
            or `"int"` (int32 `[batch]`). Defaults to `"categorical"`.
        balance: `"oversample"` draws every class present in the split equally
            often (each class reads the shards on its own); an epoch holds as
            many examples as the split (or the input pipeline's share). None or
            `"none"` reads each record once. Defaults to None.
        cache: `"memory"`, or a file path prefix for `Dataset.cache` (one file
            cache per class, suffixed `-class{i}`, when oversampling): records
            are cached, PNGs decoded, in shard order on the first epoch, and
            reshuffled through the record buffer every epoch. Defaults to None.
        deterministic: False lets parallel reads and maps deliver out of order
            (faster; the order then depends on timing). Defaults to None, which
            is True: every order-shaping parameter is fixed by the library.
        drop_remainder: drop the last, smaller batch. Defaults to False.
        service: a tf.data service dispatcher, `"grpc://host:port"`, whose
            workers run the reading, parsing and augmentation. Defaults to None.
        input_context: for `Strategy.distribute_datasets_from_function`: read
            only this input pipeline's shard files (file `i` goes to pipeline
            `i % num_input_pipelines`), through `service` if given. Defaults to
            None (all files).
        service_mode: `"distributed_epoch"`: each shard file goes to one service
            worker, an epoch holds every record once (this process rebatches).
            `"parallel_epochs"`: every worker yields every record, so `n` workers
            make each epoch `n` times longer. Defaults to `"distributed_epoch"`.
        with_masks: also yield each image's lung mask: batches become `(images,
            labels, masks)`, masks uint8 `[batch, height, width, 1]` of 0 and 1,
            all 0 for a record without one. Not for `Model.fit`; takes no
            `augment`, `balance`, `cache` or `service`. Defaults to False.
        service_timeout: seconds to wait for the dispatcher to answer before
            raising ConnectionError. Defaults to 60.
        config: all of the above as one `LoadConfig` (then pass no other
            keyword). Defaults to None.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` (`(images, labels, masks)` with `with_masks`): images uint8
        `[batch, height, width, channels]`. Under a `tf.distribute` strategy it
        shards by file (by batch when there are fewer files than workers, or
        when oversampling; all workers then share one seed).

    Raises:
        ValueError: an argument is invalid or the split does not exist.
        TypeError: an argument has the wrong type.
        FileNotFoundError: the folder, its manifest or a shard is missing.
        ConnectionError: `service` did not answer within `service_timeout`.

    Example:
        >>> train = cxrdata.load("data/cxr", "train", batch_size=64, seed=1)  # doctest: +SKIP
        >>> model.fit(train, validation_data=cxrdata.load("data/cxr", "val", shuffle=False))  # doctest: +SKIP
    """
    passed = locals()  # the first statement: only the arguments are local yet
    keywords = {f.name: passed[f.name] for f in dataclasses.fields(LoadConfig)}
    return _load(dataset_dir, split, resolve_config(config, keywords))


def _load(dataset_dir: str | os.PathLike, split: str, cfg: LoadConfig) -> tf.data.Dataset:
    """`load` with its options checked."""
    _check_cluster(cfg)
    plan = _sharding.plan(dataset_dir, split)
    if cfg.input_context is not None:
        plan = _sharding.pipeline_share(plan, cfg.input_context)
        if cfg.oversample:
            _check_share_classes(plan)
    if cfg.service is not None:
        _service.wait_for_dispatcher(cfg.service, cfg.service_timeout)
    if cfg.with_masks:
        return _with_masks(plan, cfg)
    cfg, policy = _for_cluster(cfg, plan, dataset_dir)
    augment = (
        None if cfg.augment is None else _reading.augment_fn(cfg.augment, [cfg.batch_size, *plan.image_shape])
    )
    if cfg.service is None:
        ds = _batches(plan, cfg, cfg.seed, augment)
    else:
        ds = _served(plan, cfg, augment)
    options = tf.data.Options()
    options.deterministic = cfg.ordered
    options.experimental_distribute.auto_shard_policy = policy
    return ds.prefetch(AUTOTUNE).with_options(options)


def _batches(plan: Plan, cfg: LoadConfig, seed, augment, *, served: bool = False) -> tf.data.Dataset:
    """One epoch of finished batches (endless with `repeat` or when served for rebatching).

    `seed` is a Python int, None, or (under the service) the epoch's seed tensor.
    Served in `distributed_epoch` mode, each worker batches only its share of
    the files: batch size, `drop_remainder` and the epoch length are the client's.
    """
    whole = not (served and cfg.rebatch)
    drop = cfg.drop_remainder and whole
    steps = _steps(plan, cfg)
    if cfg.oversample:
        ds = _oversampled(plan, cfg, seed, drop)
        if whole and not cfg.repeat:
            ds = ds.take(max(steps, 1))
    else:
        ds = _records(plan, cfg, seed, drop)
        if whole and not cfg.repeat:
            # Keras can then size its progress bar from the first epoch on.
            ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    parse = _reading.batch_fn(plan, cfg.label_mode, cfg.batch_size if drop else None)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=cfg.ordered)
    if augment is not None:
        fn, compiled = augment
        # The layer's random state advances once per call, so parallel calls would
        # draw in a racy order and break "same seed, same batches". Compiled by XLA,
        # one call at a time is as fast (XLA spreads each call over the cores);
        # uncompiled layers run in parallel only when determinism is waived.
        if compiled or cfg.ordered:
            ds = ds.map(fn)
        else:
            ds = ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds


def _served(plan: Plan, cfg: LoadConfig, augment) -> tf.data.Dataset:
    """The pipeline run by the tf.data service's workers, a new seed each epoch (see `_service`)."""
    ds = _service.distribute_epochs(
        lambda seed: _batches(plan, cfg, seed, augment, served=True),
        cfg.service,
        cfg.service_mode,
        cfg.seed,
        states=_reading.seed_states(cfg.augment) if cfg.augment is not None else (),
    )
    if cfg.rebatch:
        ds = ds.rebatch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
        if not cfg.repeat:
            steps = _steps(plan, cfg)
            if cfg.oversample:
                steps = max(steps, 1)
                ds = ds.take(steps)
            ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds


def _records(plan: Plan, cfg: LoadConfig, seed, drop: bool) -> tf.data.Dataset:
    """Batches of serialized (or, cached PNG, decoded) records, each record once per epoch."""
    # Without a cache, repeating the (reshuffled) file list before the record
    # shuffle keeps its buffer full across epochs instead of draining and
    # refilling it at each boundary, as the tf.data guide describes.
    repeat_files = cfg.repeat and not cfg.cache
    ds = _reading.read(
        plan, shuffle=cfg.shuffle and not cfg.cache, ordered=cfg.ordered, seed=seed, repeat=repeat_files
    )
    decoded = bool(cfg.cache) and plan.encoding == "png"
    if cfg.cache:
        ds = _reading.decode(ds, plan, cfg.ordered).cache(_reading.cache_name(cfg.cache))
    if cfg.shuffle:
        ds = ds.shuffle(_reading.buffer_size(plan, decoded, plan.num_examples), seed=seed)
    if cfg.repeat and not repeat_files:
        ds = ds.repeat()
    if not decoded:
        ds = _reading.decode(ds, plan, cfg.ordered)
    return ds.batch(cfg.batch_size, drop_remainder=drop)


def _oversampled(plan: Plan, cfg: LoadConfig, seed, drop: bool) -> tf.data.Dataset:
    """Endless batches drawing each class present in the split with equal probability."""
    classes = [c for c, n in enumerate(plan.class_counts) if n > 0]
    decoded = bool(cfg.cache) and plan.encoding == "png"
    streams = []
    for c in classes:
        # Each class has its own seeds, so the class streams are not in lockstep.
        class_seed = None if seed is None else seed * 1009 + c + 1
        ds = _reading.read(plan, shuffle=cfg.shuffle and not cfg.cache, ordered=cfg.ordered, seed=class_seed)
        if decoded:
            ds = _reading.decode(ds, plan, cfg.ordered)
        ds = ds.filter(_reading.has_label(c, decoded))
        if cfg.cache:
            ds = ds.cache(_reading.cache_name(cfg.cache, f"-class{c}"))
        if cfg.shuffle:
            size = _reading.buffer_size(plan, decoded, plan.class_counts[c], streams=len(classes))
            ds = ds.shuffle(size, seed=class_seed)
        streams.append(ds.repeat())
    ds = tf.data.Dataset.sample_from_datasets(
        streams, weights=[1.0 / len(streams)] * len(streams), seed=seed, rerandomize_each_iteration=True
    )
    if not decoded:
        ds = _reading.decode(ds, plan, cfg.ordered)
    return ds.batch(cfg.batch_size, drop_remainder=drop)


def _with_masks(plan: Plan, cfg: LoadConfig) -> tf.data.Dataset:
    """Batches of `(images, labels, masks)`, each record parsed on its own (masks are optional)."""
    spec = {k: feature_spec()[k] for k in ("image", "label", "mask")}
    shape, num_classes = plan.image_shape, plan.num_classes

    def parse(serialized):
        f = tf.io.parse_single_example(serialized, spec)
        if plan.encoding == "png":
            image = tf.io.decode_png(f["image"], channels=shape[2])
        else:
            image = tf.reshape(tf.io.decode_raw(f["image"], tf.uint8), shape)
        mask = tf.cond(
            tf.strings.length(f["mask"]) > 0,
            lambda: tf.io.decode_png(f["mask"], channels=1),
            lambda: tf.zeros([*shape[:2], 1], tf.uint8),
        )
        mask = tf.cast(tf.ensure_shape(mask, [*shape[:2], 1]) > 127, tf.uint8)
        label = f["label"]
        if cfg.label_mode == "categorical":
            label = tf.one_hot(label, num_classes, dtype=tf.float32)
        else:
            label = tf.cast(label, tf.int32)
        return tf.ensure_shape(image, shape), label, mask

    ds = _reading.read(plan, shuffle=cfg.shuffle, ordered=cfg.ordered, seed=cfg.seed, repeat=cfg.repeat)
    if cfg.shuffle:
        ds = ds.shuffle(_reading.buffer_size(plan, False, plan.num_examples), seed=cfg.seed)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=cfg.ordered)
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    options = tf.data.Options()
    options.deterministic = cfg.ordered
    options.experimental_distribute.auto_shard_policy = (
        _OFF if cfg.input_context is not None else _sharding.shard_policy(len(plan.paths), plan.split)
    )
    return ds.prefetch(AUTOTUNE).with_options(options)


def class_weights(dataset_dir: str | os.PathLike, split: str = "train") -> dict[int, float]:
    """Per-class loss weights that balance a split, for `Model.fit(class_weight=...)`.

    Uses the "balanced" formula `n / (k * n_c)` (as scikit-learn does) on the
    manifest's counts, without reading shards: `n` examples, `k` classes
    present, `n_c` examples of class `c`. A class absent from the split gets 0.

    Args:
        dataset_dir: a folder written by `cxrdata.convert`.
        split: the split whose counts to balance. Defaults to `"train"`.

    Returns:
        `{class_index: weight}` for every class in the manifest.

    Raises:
        FileNotFoundError: the folder or its manifest is missing.
        ValueError: the split does not exist or holds no examples.

    Example:
        >>> model.fit(train, class_weight=cxrdata.class_weights("data/cxr"))  # doctest: +SKIP
    """
    manifest = read_manifest(dataset_dir)
    info = manifest.split(split)
    counts = [info.counts.get(name, 0) for name in manifest.class_names]
    present = sum(1 for c in counts if c > 0)
    if not present:
        raise ValueError(f"Split {split!r} of {os.fspath(dataset_dir)!r} holds no examples.")
    n = sum(counts)
    return {i: (n / (present * c) if c else 0.0) for i, c in enumerate(counts)}


# --- cluster rules ----------------------------------------------------------------------


def _check_cluster(cfg: LoadConfig) -> None:
    """Refuses what would read each record once per worker in a TF_CONFIG cluster."""
    workers = _sharding.num_input_workers()
    if cfg.service is not None and cfg.input_context is None and workers > 1:
        raise ValueError(
            f"`service` without `input_context` in a cluster of {workers} workers (TF_CONFIG): every "
            f"worker would read the whole split each epoch through the service. Build the dataset in "
            f"`strategy.distribute_datasets_from_function` and pass its `input_context`. "
            f"Received: service={cfg.service!r}, input_context=None"
        )


def _check_share_classes(plan: Plan) -> None:
    """Raises unless every class of the split has a record in this input pipeline's files.

    The manifest counts classes per split, not per file, so this reads: up to
    64 files at once, one record of each in turn, until the first record of
    each class (all of the share for a class it lacks).
    """
    for c, count in enumerate(plan.class_counts):
        if not count:
            continue
        with tf.init_scope():  # eagerly, also when `load` is traced into a tf.function
            records = _reading.read(plan, shuffle=False, ordered=True, cycle_length=min(len(plan.paths), 64))
            found = next(iter(records.filter(_reading.has_label(c, False)).take(1)), None)
        if found is None:
            i, n = plan.share
            raise ValueError(
                f"`balance='oversample'` draws every class of split {plan.split!r} equally often, but "
                f"the files of input pipeline {i} of {n} ({len(plan.paths)} of {plan.split_files} shard "
                f"files) hold no record of class {c} ({plan.class_names[c]!r}), so its batches cannot be "
                f"balanced. Convert with a smaller --shard-size (more, smaller files spread every class "
                f"over the workers), or balance with class weights instead."
            )


def _for_cluster(
    cfg: LoadConfig, plan: Plan, dataset_dir
) -> tuple[LoadConfig, tf.data.experimental.AutoShardPolicy]:
    """The auto-shard policy for a strategy that shards the dataset itself, and the config it needs.

    A pipeline of `input_context` or of the service holds no files to shard
    again. Sharded by DATA, each worker keeps every n-th batch of its own copy
    of the stream: the copies must agree batch for batch, so all workers share
    one seed and keep order, or records would be lost and repeated.
    """
    if cfg.service is not None or cfg.input_context is not None:
        return cfg, _OFF
    policy = _sharding.shard_policy(len(plan.paths), plan.split, cfg.balance)
    if policy == tf.data.experimental.AutoShardPolicy.DATA and _sharding.num_input_workers() > 1:
        seed = _sharding.shared_seed(dataset_dir, plan.split) if cfg.seed is None else cfg.seed
        cfg = dataclasses.replace(cfg, seed=seed, deterministic=True)
    return cfg, policy


def _steps(plan: Plan, cfg: LoadConfig) -> int:
    """Batches per epoch."""
    n = plan.num_examples
    return n // cfg.batch_size if cfg.drop_remainder else math.ceil(n / cfg.batch_size)
