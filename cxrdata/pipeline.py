"""`load`: one split of a converted dataset as a fast `tf.data.Dataset`.

The pipeline follows the tf.data performance guide: shard files are read in
parallel (`interleave`), records are shuffled while still serialized, then
batched and parsed with one vectorized `parse_example` per batch. Images stay
uint8 end to end: they cross to the accelerator at a quarter of float32's size,
and the model casts and scales them.

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
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass

import keras
import tensorflow as tf

from cxrdata import _service
from cxrdata.manifest import read_manifest
from cxrdata.records import feature_spec
from cxrdata.utils.argument_validation import check_seed

LABEL_MODES = ("categorical", "int")
BALANCE_MODES = (None, "none", "oversample")
AUTOTUNE = tf.data.AUTOTUNE

# The record shuffle buffer holds about this many bytes (split between the
# per-class buffers when oversampling), and between these many records.
_SHUFFLE_BUFFER_BYTES = 256 * 2**20
_MIN_SHUFFLE_BUFFER, _MAX_SHUFFLE_BUFFER = 256, 10_000


@dataclass(frozen=True)
class _Plan:
    """What the pipeline needs to know about one split, taken from the manifest."""

    paths: tuple[str, ...]
    records: tuple[int, ...]
    image_shape: tuple[int, int, int]
    encoding: str
    class_counts: tuple[int, ...]
    stored_record_bytes: int

    @property
    def num_examples(self) -> int:
        return sum(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


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
) -> tf.data.Dataset:
    """Loads one split of a converted dataset as batches of `(images, labels)`.

    Args:
        dataset_dir: a folder written by `cxrdata.convert` (`dataset.json` and shards).
        split: which split to read. Defaults to `"train"`.
        batch_size: examples per batch. Defaults to 32.
        shuffle: shuffle shard order and records. When False, records come in
            manifest order (shard by shard). Defaults to True.
        seed: seed for every shuffle and for class sampling; the same seed gives
            the same batches. Defaults to None (different every run).
        repeat: repeat forever (pass `steps_per_epoch` to `Model.fit`). Without
            `cache` the file list repeats before the record shuffle, so epochs
            blur: within `steps_per_epoch` a record may come twice before
            another comes once (every record keeps the same rate). Defaults to
            False (one epoch per iteration: each record exactly once).
        augment: a Keras layer applied to each uint8 batch on the CPU as
            `augment(images, training=True)`; float output is rounded back to
            uint8. Batches go through it one at a time (so a seeded layer gives
            the same batches) unless `deterministic=False`. On a GPU, put the
            layer in the model instead. Defaults to None.
        label_mode: `"categorical"` (one-hot float32 `[batch, num_classes]`)
            or `"int"` (int32 `[batch]`). Defaults to `"categorical"`.
        balance: `"oversample"` draws every class present in the split equally
            often (minority classes repeat; each class reads the shards on its
            own); one epoch then holds as many examples as the split. None or
            `"none"` reads each record once. Defaults to None.
        cache: `"memory"`, or a file path prefix for `Dataset.cache` (one file
            cache per class, suffixed `-class{i}`, when oversampling): records
            are cached, PNGs decoded, in shard order on the first epoch, and
            reshuffled through the record buffer every epoch. Defaults to None.
        deterministic: whether parallel reads and maps keep their order.
            Defaults to None (tf.data's default, which is deterministic).
        drop_remainder: drop the last, smaller batch. Defaults to False.
        service: a tf.data service dispatcher, `"grpc://host:port"`, whose
            workers run the reading, parsing and augmentation. Defaults to
            None (this process does it).
        service_mode: `"distributed_epoch"`: the dispatcher hands each shard
            file to one worker, so an epoch holds every record once whatever
            the number of workers (this process rebatches what they send; the
            order across workers is not reproducible). `"parallel_epochs"`:
            every worker yields every record, so `n` workers make each epoch
            `n` times longer. Defaults to `"distributed_epoch"`.
        input_context: for `Strategy.distribute_datasets_from_function`:
            read only this input pipeline's shard files (file `i` goes to
            pipeline `i % num_input_pipelines`), so each record is read by
            one pipeline per epoch. Defaults to None (all files).
        with_masks: also yield each image's lung mask (see `cxr convert`'s
            masks): batches become `(images, labels, masks)`, masks uint8
            `[batch, height, width, 1]` of 0 and 1, all 0 for a record without a
            mask. Not for `Model.fit`, which would take the masks for sample
            weights; `augment`, `balance` and `cache` are refused with it.
            Defaults to False.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` (`(images, labels, masks)` with `with_masks`): images uint8
        `[batch, height, width, channels]`. Under a `tf.distribute` strategy it
        shards by file (by batch when there are fewer files than workers, or
        when oversampling; all workers then share one seed, so each batch goes
        to one worker).

    Raises:
        ValueError: an argument is invalid or the split does not exist.
        TypeError: an argument has the wrong type.
        FileNotFoundError: the folder, its manifest or a shard is missing.

    Example:
        >>> train = cxrdata.load("data/cxr", "train", batch_size=64, seed=1)  # doctest: +SKIP
        >>> val = cxrdata.load("data/cxr", "val", shuffle=False)  # doctest: +SKIP
        >>> model.fit(train, validation_data=val)  # doctest: +SKIP
    """
    _check_args(
        batch_size=batch_size,
        seed=seed,
        augment=augment,
        label_mode=label_mode,
        balance=balance,
        cache=cache,
        deterministic=deterministic,
    )
    _service.check_service(service, service_mode)
    # Dynamically sharded, each service worker batches only its share: the epoch
    # length and `drop_remainder` are applied here, after the service.
    if not isinstance(with_masks, bool):
        raise TypeError(f"`with_masks` must be True or False. Received: with_masks={with_masks!r}")
    if with_masks and (
        augment is not None or balance not in (None, "none") or cache is not None or service is not None
    ):
        raise ValueError(
            "`with_masks=True` reads images with their masks as stored: it takes no `augment`, "
            f"`balance`, `cache` or `service`. Received: augment={augment!r}, balance={balance!r}, "
            f"cache={cache!r}, service={service!r}"
        )
    rebatch = service is not None and service_mode == "distributed_epoch"
    if rebatch and cache is not None:
        raise ValueError(
            f"`cache` cannot be used with `service_mode='distributed_epoch'`: each service worker "
            f"would cache only the files it was handed in the first epoch. Use "
            f"service_mode='parallel_epochs' with one worker, or no cache. Received: cache={cache!r}"
        )
    plan = _plan(dataset_dir, split)
    if input_context is not None:
        plan = _pipeline_plan(plan, input_context, split)
    if with_masks:
        return _with_masks(
            plan,
            split,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            repeat=repeat,
            label_mode=label_mode,
            deterministic=deterministic,
            drop_remainder=drop_remainder,
        )
    policy = None
    if service is None and input_context is None:
        policy = _shard_policy(len(plan.paths), split, balance)
        if policy == tf.data.experimental.AutoShardPolicy.DATA and _num_input_workers() > 1:
            # Each worker keeps every n-th batch of its own copy of the stream: the
            # copies must agree batch for batch, or records are lost and repeated.
            seed = _shared_seed(dataset_dir, split) if seed is None else seed
            deterministic = None

    n = plan.num_examples
    steps = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    worker_drop = drop_remainder and not rebatch
    if balance == "oversample":
        ds = _oversampled(
            plan,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            cache=cache,
            deterministic=deterministic,
            drop_remainder=worker_drop,
        )
        if not repeat and not rebatch:
            ds = ds.take(max(steps, 1))
    else:
        # Without a cache, repeating the (reshuffled) file list before the record
        # shuffle keeps its buffer full across epochs instead of draining and
        # refilling it at each boundary, as the tf.data guide describes.
        repeat_files = repeat and not cache
        ds = _read(
            plan, shuffle=shuffle and not cache, deterministic=deterministic, seed=seed, repeat=repeat_files
        )
        decoded = bool(cache) and plan.encoding == "png"
        if cache:
            ds = _decode(ds, plan, deterministic).cache(_cache_name(cache))
        if shuffle:
            ds = ds.shuffle(_buffer_size(plan, decoded, n), seed=seed)
        if repeat and not repeat_files:
            ds = ds.repeat()
        if not decoded:
            ds = _decode(ds, plan, deterministic)
        ds = ds.batch(batch_size, drop_remainder=worker_drop)
        if not repeat and not rebatch:
            # Keras can then size its progress bar from the first epoch on.
            ds = ds.apply(tf.data.experimental.assert_cardinality(steps))

    ds = ds.map(
        _batch_fn(plan, label_mode, batch_size if worker_drop else None),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if augment is not None:
        fn, compiled = _augment_fn(augment, [batch_size, *plan.image_shape])
        # The layer's random state advances once per call, so parallel calls would
        # draw in a racy order and break "same seed, same batches". Compiled by XLA,
        # one call at a time is as fast (XLA spreads each call over the cores);
        # uncompiled layers run in parallel only when determinism is waived.
        sequential = compiled or deterministic is not False
        ds = ds.map(fn, num_parallel_calls=None if sequential else AUTOTUNE, deterministic=deterministic)
    options = tf.data.Options()
    if input_context is not None:  # this pipeline already reads only its own files
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    elif service is not None:
        ds = _service.distribute(ds, service, service_mode)
        if rebatch:
            ds = ds.rebatch(batch_size, drop_remainder=drop_remainder)
            if not repeat:
                ds = (
                    ds.take(max(steps, 1))
                    if balance == "oversample"
                    else ds.apply(tf.data.experimental.assert_cardinality(steps))
                )
        # The service already spreads the work; the client holds no files to shard.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    else:
        options.experimental_distribute.auto_shard_policy = policy
    return ds.prefetch(AUTOTUNE).with_options(options)


def _with_masks(
    plan: _Plan, split: str, *, batch_size, shuffle, seed, repeat, label_mode, deterministic, drop_remainder
) -> tf.data.Dataset:
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
        if label_mode == "categorical":
            label = tf.one_hot(label, num_classes, dtype=tf.float32)
        else:
            label = tf.cast(label, tf.int32)
        return tf.ensure_shape(image, shape), label, mask

    ds = _read(plan, shuffle=shuffle, deterministic=deterministic, seed=seed, repeat=repeat)
    if shuffle:
        ds = ds.shuffle(_buffer_size(plan, False, plan.num_examples), seed=seed)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = _shard_policy(len(plan.paths), split)
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


def _check_args(*, batch_size, seed, augment, label_mode, balance, cache, deterministic) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    check_seed(seed)
    if augment is not None and not isinstance(augment, keras.layers.Layer):
        raise TypeError(
            f"`augment` must be a Keras layer (for example `cxrdata.RandomAffine(...)`) or None. "
            f"Received: augment={augment!r} of type {type(augment).__name__}"
        )
    if label_mode not in LABEL_MODES:
        raise ValueError(f"`label_mode` must be one of {LABEL_MODES}. Received: label_mode={label_mode!r}")
    if balance not in BALANCE_MODES:
        raise ValueError(f"`balance` must be one of {BALANCE_MODES}. Received: balance={balance!r}")
    if deterministic is not None and not isinstance(deterministic, bool):
        raise TypeError(
            f"`deterministic` must be True, False or None. Received: deterministic={deterministic!r}"
        )
    if cache is not None:
        if not isinstance(cache, (str, os.PathLike)) or not os.fspath(cache):
            raise ValueError(
                f"`cache` must be 'memory', a file path prefix, or None. Received: cache={cache!r}"
            )
        parent = os.path.dirname(os.path.abspath(os.fspath(cache)))
        if cache != "memory" and not os.path.isdir(parent):
            raise FileNotFoundError(
                f"`cache` must be a path in an existing folder; {parent!r} does not exist. "
                f"Received: cache={cache!r}"
            )


def _plan(dataset_dir: str | os.PathLike, split: str) -> _Plan:
    """Reads the manifest and checks that every shard of `split` is there at its size."""
    dataset_dir = os.fspath(dataset_dir)
    manifest = read_manifest(dataset_dir)
    info = manifest.split(split)
    if manifest.encoding not in ("raw", "png"):
        raise ValueError(
            f"Unknown image encoding {manifest.encoding!r} in {dataset_dir!r}: "
            f"expected 'raw' or 'png'. Upgrade cxr."
        )
    if not info.shards:
        raise ValueError(f"Split {split!r} of {dataset_dir!r} has no shards.")
    paths = tuple(os.path.join(dataset_dir, s.name) for s in info.shards)
    for shard, path in zip(info.shards, paths):
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Shard {path!r} is listed in the manifest but missing. Check the dataset with "
                f"`cxr verify {dataset_dir}`, or convert it again."
            ) from None
        if size != shard.size:
            raise ValueError(
                f"Shard {path!r} is {size} bytes but the manifest lists {shard.size}: it is "
                f"truncated or was replaced. Check the dataset with `cxr verify {dataset_dir}`."
            )
    records = sum(s.records for s in info.shards)
    return _Plan(
        paths=paths,
        records=tuple(s.records for s in info.shards),
        image_shape=tuple(manifest.image_shape),
        encoding=manifest.encoding,
        class_counts=tuple(info.counts.get(name, 0) for name in manifest.class_names),
        stored_record_bytes=max(1, sum(s.size for s in info.shards) // max(records, 1)),
    )


def _pipeline_plan(plan: _Plan, context: tf.distribute.InputContext, split: str) -> _Plan:
    """The part of `plan` that input pipeline `context.input_pipeline_id` reads: every n-th file."""
    i, n = context.input_pipeline_id, context.num_input_pipelines
    if len(plan.paths) < n:
        raise ValueError(
            f"Split {split!r} has {len(plan.paths)} shard files for {n} input pipelines (workers): "
            f"each needs at least one file. Convert again with a smaller --shard-size."
        )
    return dataclasses.replace(plan, paths=plan.paths[i::n], records=plan.records[i::n])


def _read(
    plan: _Plan, *, shuffle: bool, deterministic: bool | None, seed=None, repeat: bool = False
) -> tf.data.Dataset:
    """Serialized records of all shards, read in parallel."""
    files = tf.data.Dataset.from_tensor_slices((list(plan.paths), tf.constant(plan.records, dtype=tf.int64)))
    if shuffle:
        files = files.shuffle(len(plan.paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    # Unshuffled, shards are read one after another: a larger cycle would mix their records.
    return files.interleave(
        _read_shard,
        cycle_length=None if shuffle else 1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def _read_shard(path: tf.Tensor, expected: tf.Tensor) -> tf.data.Dataset:
    """One shard's records; raises unless exactly `expected` come out.

    TFRecordDataset stops silently at a truncated end; the cardinality assertion
    (checked in C++, free per record) turns that into an error. A bad CRC raises
    DataLossError from the reader itself.
    """
    return tf.data.TFRecordDataset(path).apply(tf.data.experimental.assert_cardinality(expected))


def _decode(ds: tf.data.Dataset, plan: _Plan, deterministic: bool | None) -> tf.data.Dataset:
    """Decodes PNG records one by one into `(image, label)`; raw ones wait for the batch."""
    if plan.encoding != "png":
        return ds
    spec = _features()
    shape = plan.image_shape

    def decode(serialized):
        features = tf.io.parse_single_example(serialized, spec)
        image = tf.ensure_shape(tf.io.decode_png(features["image"], channels=shape[2]), shape)
        return image, features["label"]

    return ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def _batch_fn(plan: _Plan, label_mode: str, batch: int | None):
    """The per-batch map: parse raw records (vectorized), then shape the labels."""
    shape, num_classes, spec = plan.image_shape, plan.num_classes, _features()

    def finish(images, labels):
        images.set_shape([batch, *shape])
        if label_mode == "categorical":
            labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
            labels.set_shape([batch, num_classes])
        else:
            labels = tf.cast(labels, tf.int32)
            labels.set_shape([batch])
        return images, labels

    if plan.encoding == "png":
        return finish

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        images = tf.reshape(tf.io.decode_raw(features["image"], tf.uint8), [-1, *shape])
        return finish(images, features["label"])

    return parse


def _augment_fn(layer: keras.layers.Layer, batch_shape: list):
    """The augment map `(fn, compiled)`: `layer` on each uint8 batch, by XLA when it can be.

    On the CPU, XLA runs `RandomAffine` about 4 times faster than the plain
    graph of its ops. A layer with an op that XLA cannot compile (Keras'
    RandomRotation, RandomZoom and RandomTranslation rest on
    ImageProjectiveTransformV3) is found here, once, and runs uncompiled.
    """

    def apply(images):
        out = layer(images, training=True)
        if out.dtype != tf.uint8:
            # Most Keras image layers compute in float; keep the uint8 contract.
            if out.dtype.is_floating:
                out = tf.round(out)
            out = tf.saturate_cast(out, tf.uint8)
        return out

    run = tf.function(apply, jit_compile=True)
    try:
        # Lowers to XLA's HLO without running: fails on an op without an XLA kernel.
        run.experimental_get_compiler_ir(tf.TensorSpec(batch_shape, tf.uint8))(stage="hlo")
        compiled = True
    except (ValueError, TypeError, tf.errors.OpError):
        run, compiled = apply, False

    def augment(images, labels):
        out = run(images)
        out.set_shape(images.shape)
        return out, labels

    return augment, compiled


def _oversampled(
    plan: _Plan, *, batch_size, shuffle, seed, cache, deterministic, drop_remainder
) -> tf.data.Dataset:
    """Endless batches drawing each class present in the split with equal probability."""
    classes = [c for c, n in enumerate(plan.class_counts) if n > 0]
    decoded = bool(cache) and plan.encoding == "png"
    streams = []
    for c in classes:
        # Each class has its own seeds, so the class streams are not in lockstep.
        class_seed = None if seed is None else seed * 1009 + c + 1
        ds = _read(plan, shuffle=shuffle and not cache, deterministic=deterministic, seed=class_seed)
        if decoded:
            ds = _decode(ds, plan, deterministic)
        ds = ds.filter(_has_label(c, decoded))
        if cache:
            ds = ds.cache(_cache_name(cache, f"-class{c}"))
        if shuffle:
            size = _buffer_size(plan, decoded, plan.class_counts[c], streams=len(classes))
            ds = ds.shuffle(size, seed=class_seed)
        streams.append(ds.repeat())
    ds = tf.data.Dataset.sample_from_datasets(
        streams, weights=[1.0 / len(streams)] * len(streams), seed=seed, rerandomize_each_iteration=True
    )
    if not decoded:
        ds = _decode(ds, plan, deterministic)
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def _has_label(label: int, decoded: bool):
    if decoded:
        return lambda image, record_label: tf.equal(record_label, label)
    spec = {"label": feature_spec()["label"]}
    return lambda serialized: tf.equal(tf.io.parse_single_example(serialized, spec)["label"], label)


def _features() -> dict:
    spec = feature_spec()
    return {"image": spec["image"], "label": spec["label"]}


def _buffer_size(plan: _Plan, decoded: bool, examples: int, streams: int = 1) -> int:
    """Records per shuffle buffer: `_SHUFFLE_BUFFER_BYTES` in all, at most `examples`."""
    h, w, c = plan.image_shape
    per_record = h * w * c if decoded else plan.stored_record_bytes
    size = _SHUFFLE_BUFFER_BYTES // streams // per_record
    size = min(_MAX_SHUFFLE_BUFFER, max(_MIN_SHUFFLE_BUFFER, size))
    return max(1, min(size, examples))


def _cache_name(cache, suffix: str = "") -> str:
    return "" if cache == "memory" else os.fspath(cache) + suffix


def _shard_policy(
    num_files: int, split: str, balance: str | None = None
) -> tf.data.experimental.AutoShardPolicy:
    """FILE sharding across workers, or DATA when there are fewer files than workers.

    Oversampling reads the files once per class (`sample_from_datasets` over
    several sources), which FILE sharding cannot split: it shards by DATA.
    """
    workers = _num_input_workers()
    if balance == "oversample":
        return tf.data.experimental.AutoShardPolicy.DATA
    if num_files < workers:
        warnings.warn(
            f"Split {split!r} has {num_files} shard files for {workers} workers, so each worker "
            f"reads every file and keeps 1/{workers} of the batches (AutoShardPolicy.DATA, in "
            f"order, with one seed for all workers). Convert with at least {workers} shards per "
            f"split to shard by file.",
            stacklevel=3,
        )
        return tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.experimental.AutoShardPolicy.FILE


def _shared_seed(dataset_dir, split: str) -> int:
    """A seed every worker of the TF_CONFIG cluster derives alike (the same in every run)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    key = json.dumps(
        [cluster, os.path.basename(os.path.abspath(os.fspath(dataset_dir))), split], sort_keys=True
    )
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") >> 1


def _num_input_workers() -> int:
    """Workers in the multi-worker cluster described by TF_CONFIG (1 without one)."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except (ValueError, AttributeError):
        return 1
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))
