"""The tf.data stages `load` assembles: read shards, decode, batch and parse, augment.

Every parameter that shapes the order of records is set here, never left to
the runtime: how many shard files are read at once (`CYCLE_LENGTH`; TensorFlow's
AUTOTUNE would pick ceil(cores / 3), another order on each kind of host), one
record per file in turn (`block_length=1`), and `deterministic` on every
parallel stage (a "default" would follow whatever options a caller sets). So
the same files and seed give the same stream on every host, which sharding
across workers relies on.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from cxrdata._sharding import Plan
from cxrdata.records import feature_spec

AUTOTUNE = tf.data.AUTOTUNE

# Shard files read at once when shuffling: enough to keep a disk or a bucket busy and to mix
# records of several files, and the same on every host.
CYCLE_LENGTH = 8

# The record shuffle buffer holds about this many bytes (split between the
# per-class buffers when oversampling), and between these many records.
_SHUFFLE_BUFFER_BYTES = 256 * 2**20
_MIN_SHUFFLE_BUFFER, _MAX_SHUFFLE_BUFFER = 256, 10_000


def read(
    plan: Plan,
    *,
    shuffle: bool,
    ordered: bool,
    seed=None,
    repeat: bool = False,
    cycle_length: int | None = None,
) -> tf.data.Dataset:
    """Serialized records of all the plan's shards, read in parallel.

    Unshuffled, shards are read one after another (a longer cycle would mix their
    records) unless `cycle_length` says otherwise.
    """
    files = tf.data.Dataset.from_tensor_slices((list(plan.paths), tf.constant(plan.records, dtype=tf.int64)))
    if shuffle:
        files = files.shuffle(len(plan.paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    if cycle_length is None:
        cycle_length = min(CYCLE_LENGTH, len(plan.paths)) if shuffle else 1
    return files.interleave(
        read_shard,
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=AUTOTUNE,  # how many run at once; with `ordered`, not the order
        deterministic=ordered,
    )


def read_shard(path: tf.Tensor, expected: tf.Tensor) -> tf.data.Dataset:
    """One shard's records; raises unless exactly `expected` come out.

    TFRecordDataset stops silently at a truncated end; the cardinality assertion
    (checked in C++, free per record) turns that into an error. A bad CRC raises
    DataLossError from the reader itself.
    """
    return tf.data.TFRecordDataset(path).apply(tf.data.experimental.assert_cardinality(expected))


def decode(ds: tf.data.Dataset, plan: Plan, ordered: bool) -> tf.data.Dataset:
    """Decodes PNG records one by one into `(image, label)`; raw ones wait for the batch."""
    if plan.encoding != "png":
        return ds
    spec = features()
    shape = plan.image_shape

    def decode_one(serialized):
        parsed = tf.io.parse_single_example(serialized, spec)
        image = tf.ensure_shape(tf.io.decode_png(parsed["image"], channels=shape[2]), shape)
        return image, parsed["label"]

    return ds.map(decode_one, num_parallel_calls=AUTOTUNE, deterministic=ordered)


def batch_fn(plan: Plan, label_mode: str, batch: int | None):
    """The per-batch map: parse raw records (vectorized), then shape the labels."""
    shape, num_classes, spec = plan.image_shape, plan.num_classes, features()

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
        parsed = tf.io.parse_example(serialized, spec)
        images = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), [-1, *shape])
        return finish(images, parsed["label"])

    return parse


def augment_fn(layer: keras.layers.Layer, batch_shape: list):
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


def seed_states(layer: keras.layers.Layer) -> list:
    """The state variables of the `keras.random.SeedGenerator`s a layer (or its sublayers) draws from."""
    return [v for v in layer.variables if v.name == "seed_generator_state"]


def has_label(label: int, decoded: bool):
    """A filter predicate: the record (serialized, or `(image, label)` decoded) is of class `label`."""
    if decoded:
        return lambda image, record_label: tf.equal(record_label, label)
    spec = {"label": feature_spec()["label"]}
    return lambda serialized: tf.equal(tf.io.parse_single_example(serialized, spec)["label"], label)


def features() -> dict:
    spec = feature_spec()
    return {"image": spec["image"], "label": spec["label"]}


def buffer_size(plan: Plan, decoded: bool, examples: int, streams: int = 1) -> int:
    """Records per shuffle buffer: `_SHUFFLE_BUFFER_BYTES` in all, at most `examples`."""
    h, w, c = plan.image_shape
    per_record = h * w * c if decoded else plan.stored_record_bytes
    size = _SHUFFLE_BUFFER_BYTES // streams // per_record
    size = min(_MAX_SHUFFLE_BUFFER, max(_MIN_SHUFFLE_BUFFER, size))
    return max(1, min(size, examples))


def cache_name(cache, suffix: str = "") -> str:
    return "" if cache == "memory" else os.fspath(cache) + suffix
