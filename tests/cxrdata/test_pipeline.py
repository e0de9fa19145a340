"""Tests for `cxrdata.load` and `cxrdata.class_weights` on tiny datasets written here."""

from __future__ import annotations

import collections
import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import cxrdata
from cxrdata.manifest import Manifest, SplitInfo, shard_name
from cxrdata.records import ShardWriter, serialize_example

CLASSES = ("normal", "pneumonia")
SIZE = 32
# Split name -> examples per class; train is imbalanced 3:1.
COUNTS = {"train": (30, 10), "val": (6, 6)}
SHARDS = {"train": 4, "val": 2}


def _image(uid: int) -> np.ndarray:
    """A 32x32 image whose first pixel is its id and whose columns differ (flips show)."""
    return ((np.arange(SIZE)[None, :] * 4 + uid) % 256).astype(np.uint8).repeat(SIZE, axis=0)


def _write_dataset(directory, encoding="raw", *, counts=None, shards=None, sort_labels=False):
    """Writes the dataset; returns {split: [(id, label), ...] in manifest order}.

    `counts` and `shards` default to COUNTS and SHARDS; `sort_labels` writes each split's
    records class by class (so some shards hold one class only) instead of shuffled.
    """
    counts_by_split, shards_by_split = counts or COUNTS, shards or SHARDS
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    splits, order, uid = {}, {}, 0
    for split, counts in counts_by_split.items():
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        if not sort_labels:
            rng.shuffle(labels)
        items = [(uid + i, int(label)) for i, label in enumerate(labels)]
        uid += len(items)
        shards, num_shards = [], shards_by_split[split]
        for index, part in enumerate(np.array_split(np.arange(len(items)), num_shards)):
            with ShardWriter(os.path.join(directory, shard_name(split, index, num_shards))) as w:
                for i in part:
                    image = _image(items[i][0])
                    data = (
                        image.tobytes() if encoding == "raw" else tf.io.encode_png(image[..., None]).numpy()
                    )
                    label = items[i][1]
                    w.write(
                        serialize_example(
                            image=data,
                            height=SIZE,
                            width=SIZE,
                            label=label,
                            class_name=CLASSES[label],
                            path=f"{items[i][0]}.png",
                        )
                    )
            shards.append(w.info)
        splits[split] = SplitInfo(counts=dict(zip(CLASSES, counts)), shards=tuple(shards))
        order[split] = items
    Manifest(
        class_names=CLASSES, image_shape=(SIZE, SIZE, 1), encoding=encoding, preprocessing={}, splits=splits
    ).write(directory)
    return order


@pytest.fixture
def fresh(tmp_path):
    """A dataset of its own, for tests that damage it."""
    _write_dataset(tmp_path / "data")
    return tmp_path / "data"


def _collect(ds):
    """(ids, labels as int, images) of a whole finite dataset."""
    ids, labels, images = [], [], []
    for x, y in ds:
        images.append(x.numpy())
        ids.extend(int(v) for v in x.numpy()[:, 0, 0, 0])
        y = y.numpy()
        labels.extend(y.argmax(axis=1) if y.ndim == 2 else y)
    return ids, [int(v) for v in labels], np.concatenate(images)


def test_element_spec_and_manifest_order_without_shuffle(raw):
    directory, order = raw
    ds = cxrdata.load(directory, "train", batch_size=8, shuffle=False)
    images, labels = ds.element_spec
    assert images.dtype == tf.uint8 and images.shape.as_list() == [None, SIZE, SIZE, 1]
    assert labels.dtype == tf.float32 and labels.shape.as_list() == [None, 2]
    assert ds.cardinality() == 5
    ids, got_labels, pixels = _collect(ds)
    assert ids == [uid for uid, _ in order["train"]]
    assert got_labels == [label for _, label in order["train"]]
    np.testing.assert_array_equal(pixels[3, ..., 0], _image(order["train"][3][0]))
    first = next(iter(ds))[1].numpy()
    assert set(first.sum(axis=1)) == {1.0}


def test_label_mode_int(raw):
    directory, order = raw
    ds = cxrdata.load(directory, "val", batch_size=5, shuffle=False, label_mode="int")
    assert ds.element_spec[1].dtype == tf.int32
    assert ds.element_spec[1].shape.as_list() == [None]
    ids, labels, _ = _collect(ds)
    assert labels == [label for _, label in order["val"]]


def test_shuffled_epoch_holds_every_record_once(raw):
    directory, order = raw
    ids, labels, _ = _collect(cxrdata.load(directory, "train", batch_size=7, seed=3))
    assert sorted(ids) == sorted(uid for uid, _ in order["train"])
    assert ids != [uid for uid, _ in order["train"]]
    assert dict(zip(ids, labels)) == dict(order["train"])


def test_same_seed_same_batches_and_other_seed_differs(raw):
    directory, _ = raw
    first = _collect(cxrdata.load(directory, "train", batch_size=8, seed=11))[0]
    again = _collect(cxrdata.load(directory, "train", batch_size=8, seed=11, deterministic=True))[0]
    other = _collect(cxrdata.load(directory, "train", batch_size=8, seed=12))[0]
    assert first == again
    assert first != other and sorted(first) == sorted(other)


def test_drop_remainder_gives_full_static_batches(raw):
    directory, _ = raw
    ds = cxrdata.load(directory, "train", batch_size=16, seed=0, drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [16, SIZE, SIZE, 1]
    assert ds.element_spec[1].shape.as_list() == [16, 2]
    assert ds.cardinality() == 2
    assert [x.shape[0] for x, _ in ds] == [16, 16]
    assert cxrdata.load(directory, "train", batch_size=16).cardinality() == 3


def test_repeat_runs_past_one_epoch(raw):
    directory, order = raw
    ds = cxrdata.load(directory, "train", batch_size=8, seed=0, repeat=True)
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    # Epochs blur (the file list repeats before the record shuffle), but every
    # record keeps coming at the same rate: 400 records are ten epochs of 40.
    ids, _, _ = _collect(ds.take(50))
    counts = collections.Counter(ids)
    assert set(counts) == {uid for uid, _ in order["train"]}
    assert all(8 <= c <= 12 for c in counts.values()), counts
    assert ids[:40] != ids[40:80]


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_cache_keeps_records_and_reshuffles(raw, tmp_path, kind):
    directory, order = raw
    cache = "memory" if kind == "memory" else str(tmp_path / "cache" / "train")
    if kind == "file":
        os.makedirs(tmp_path / "cache")
    ds = cxrdata.load(directory, "train", batch_size=8, seed=5, cache=cache)
    epoch1, labels1, _ = _collect(ds)
    epoch2, labels2, _ = _collect(ds)
    expected = sorted(uid for uid, _ in order["train"])
    assert sorted(epoch1) == expected and sorted(epoch2) == expected
    assert epoch1 != epoch2
    assert dict(zip(epoch2, labels2)) == dict(order["train"])
    if kind == "file":
        assert os.path.exists(cache + ".index")


def test_png_decodes_to_the_same_pixels_as_raw(raw, png):
    kwargs = dict(batch_size=8, shuffle=False)
    raw_ids, raw_labels, raw_pixels = _collect(cxrdata.load(raw[0], "train", **kwargs))
    png_ids, png_labels, png_pixels = _collect(cxrdata.load(png[0], "train", **kwargs))
    assert raw_ids == png_ids and raw_labels == png_labels
    np.testing.assert_array_equal(raw_pixels, png_pixels)
    ds = cxrdata.load(png[0], "train", batch_size=8, seed=1, cache="memory", label_mode="int")
    ids, labels, _ = _collect(ds)
    assert dict(zip(ids, labels)) == dict(png[1]["train"])


def test_png_oversampling_decodes(png):
    ds = cxrdata.load(png[0], "train", batch_size=8, seed=1, balance="oversample")
    ids, labels, pixels = _collect(ds)
    assert len(ids) == 40 and pixels.dtype == np.uint8
    assert all(dict(png[1]["train"])[uid] == label for uid, label in zip(ids, labels))


@pytest.mark.parametrize("cache", [None, "memory"])
def test_oversampling_draws_classes_evenly(raw, cache):
    directory, order = raw
    ds = cxrdata.load(
        directory, "train", batch_size=8, seed=2, balance="oversample", repeat=True, cache=cache
    )
    ids, labels, _ = _collect(ds.take(75))  # 600 examples
    share = np.bincount(labels, minlength=2) / len(labels)
    assert np.all(np.abs(share - 0.5) < 0.05), share
    assert all(dict(order["train"])[uid] == label for uid, label in zip(ids, labels))
    minority = {uid for uid, label in order["train"] if label == 1}
    assert minority <= set(ids)


def test_oversampling_epoch_is_the_split_size(raw):
    directory, _ = raw
    ds = cxrdata.load(directory, "train", batch_size=8, seed=2, balance="oversample")
    assert [x.shape[0] for x, _ in ds] == [8] * 5
    ds = cxrdata.load(directory, "train", batch_size=16, seed=2, balance="oversample", drop_remainder=True)
    assert len(list(ds)) == 2


def test_class_weights_values(raw):
    weights = cxrdata.class_weights(raw[0])
    assert weights.keys() == {0, 1}
    assert weights[0] == pytest.approx(40 / (2 * 30))
    assert weights[1] == pytest.approx(2.0)
    assert cxrdata.class_weights(raw[0], "val") == {0: 1.0, 1: 1.0}


class Invert(keras.layers.Layer):
    def call(self, images, training=None):
        return 255.0 - tf.cast(images, "float32")


def test_augment_layer_is_applied_and_dtype_kept(raw):
    directory, order = raw
    ds = cxrdata.load(directory, "val", batch_size=4, shuffle=False, augment=Invert())
    assert ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 1]
    _, _, pixels = _collect(ds)
    np.testing.assert_array_equal(pixels[0, ..., 0], 255 - _image(order["val"][0][0]))

    flip = keras.layers.RandomFlip("horizontal", seed=1)
    _, _, flipped = _collect(cxrdata.load(directory, "val", batch_size=4, shuffle=False, augment=flip))
    assert flipped.dtype == np.uint8
    outcomes = []
    for image, (uid, _) in zip(flipped[..., 0], order["val"]):
        if np.array_equal(image, _image(uid)):
            outcomes.append("same")
        else:
            np.testing.assert_array_equal(image, _image(uid)[:, ::-1])
            outcomes.append("flipped")
    assert "flipped" in outcomes


def test_augment_with_random_affine(raw):
    pytest.importorskip("cxrdata.layers.random_affine")
    directory, order = raw
    ds = cxrdata.load(
        directory, "val", batch_size=4, shuffle=False, augment=cxrdata.RandomAffine(rotation=10, seed=1)
    )
    _, _, pixels = _collect(ds)
    assert pixels.dtype == np.uint8 and pixels.shape == (12, SIZE, SIZE, 1)
    originals = np.stack([_image(uid) for uid, _ in order["val"]])[..., None]
    assert not np.array_equal(pixels, originals)


def test_mirrored_strategy_iterates(raw):
    directory, _ = raw
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    ds = cxrdata.load(directory, "train", batch_size=8, seed=0)
    assert ds.options().experimental_distribute.auto_shard_policy == (
        tf.data.experimental.AutoShardPolicy.FILE
    )
    seen = sum(int(x.shape[0]) for x, _ in strategy.experimental_distribute_dataset(ds))
    assert seen == 40


def test_file_sharding_gives_each_worker_whole_shards(raw):
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    directory, order = raw
    ds = cxrdata.load(directory, "train", batch_size=4, seed=0)
    ids = [_collect(_AutoShardDataset(ds, num_workers=2, index=i))[0] for i in range(2)]
    shard_of = {uid: i // 10 for i, (uid, _) in enumerate(order["train"])}  # 4 shards of 10
    shards = [{shard_of[uid] for uid in worker} for worker in ids]
    assert sorted(ids[0] + ids[1]) == sorted(shard_of)
    assert len(shards[0]) == len(shards[1]) == 2 and not shards[0] & shards[1]


def test_fewer_files_than_workers_falls_back_to_data(raw, monkeypatch):
    workers = [f"localhost:{port}" for port in range(5000, 5003)]
    monkeypatch.setenv(
        "TF_CONFIG",
        '{"cluster": {"worker": %s}, "task": {"type": "worker", '
        '"index": 0}}' % str(workers).replace("'", '"'),
    )
    with pytest.warns(UserWarning, match="2 shard files for 3 workers"):
        ds = cxrdata.load(raw[0], "val", batch_size=4)
    assert ds.options().experimental_distribute.auto_shard_policy == (
        tf.data.experimental.AutoShardPolicy.DATA
    )


def start_local_service(num_workers: int = 1):
    """A dispatcher and `num_workers` workers in this process, on free loopback ports.

    Keep the returned servers referenced while the service is in use; they stop when garbage
    collected. (`tests/cxrdata/test_service.py` runs them as separate processes.)
    """
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target[len("grpc://") :]
    workers = [
        service.WorkerServer(service.WorkerConfig(dispatcher_address=address, port=0))
        for _ in range(num_workers)
    ]
    return dispatcher, workers


def test_tf_data_service_yields_every_record_once(raw):
    directory, order = raw
    dispatcher, workers = start_local_service()
    ds = cxrdata.load(directory, "train", batch_size=8, seed=0, service=dispatcher.target)
    assert ds.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 1]
    ids, labels, pixels = _collect(ds)
    assert sorted(ids) == sorted(uid for uid, _ in order["train"])
    assert dict(zip(ids, labels)) == dict(order["train"])
    assert pixels.dtype == np.uint8
    del workers


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(batch_size=0), ValueError, "`batch_size` must be an integer >= 1. Received: batch_size=0"),
        (dict(batch_size=2.0), TypeError, "Received: batch_size=2.0"),
        (dict(augment=lambda x: x), TypeError, "`augment` must be a Keras layer .* of type function"),
        (dict(label_mode="binary"), ValueError, "`label_mode` must be one of .*'binary'"),
        (dict(balance="undersample"), ValueError, "`balance` must be one of .*'undersample'"),
        (dict(service="localhost:5050"), ValueError, "grpc://host:port.*'localhost:5050'"),
        (dict(cache="/no/such/folder/cache"), FileNotFoundError, "/no/such/folder"),
    ],
)
def test_bad_arguments(raw, kwargs, error, message):
    with pytest.raises(error, match=message):
        cxrdata.load(raw[0], **kwargs)


def test_folder_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="cxr convert"):
        cxrdata.load(tmp_path)


def test_unknown_split_lists_the_splits(raw):
    with pytest.raises(ValueError, match="Available splits: train, val. Received: split='test'"):
        cxrdata.load(raw[0], "test")
    with pytest.raises(ValueError, match="Available splits: train, val"):
        cxrdata.class_weights(raw[0], "test")


def test_missing_shard_is_named(fresh):
    name = shard_name("train", 2, 4)
    os.remove(fresh / name)
    with pytest.raises(FileNotFoundError, match=f"{name}.*missing"):
        cxrdata.load(fresh)


def test_shard_of_wrong_size_is_named_before_reading(fresh):
    name = shard_name("train", 1, 4)
    with open(fresh / name, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=f"{name}' is 100 bytes but the manifest lists"):
        cxrdata.load(fresh)


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_damaged_shard_fails_iteration_never_silently(fresh, how, shuffle):
    name = shard_name("train", 1, 4)
    ds = cxrdata.load(fresh, batch_size=4, shuffle=shuffle, seed=0)  # checked sizes: all fine
    _damage(fresh / name, how)
    # a shard cut short fails its record count; a flipped byte fails its CRC
    with pytest.raises(
        (tf.errors.FailedPreconditionError, tf.errors.DataLossError),
        match="expected to contain 10 elements|corrupted record",
    ):
        _collect(ds)
    # and the next load names it before reading
    if how == "truncate":
        with pytest.raises(ValueError, match=re.escape(name)):
            cxrdata.load(fresh)


def test_damaged_shard_fails_oversampling(fresh):
    name = shard_name("train", 3, 4)
    ds = cxrdata.load(fresh, batch_size=4, seed=0, balance="oversample", repeat=True)
    _damage(fresh / name, "flip")
    with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
        _collect(ds.take(100))


def _drop_last_record(path):
    """Cuts a shard at a record boundary, so only the manifest's count can tell."""
    data, offset, ends = path.read_bytes(), 0, []
    while offset < len(data):
        offset += 8 + 4 + int.from_bytes(data[offset : offset + 8], "little") + 4
        ends.append(offset)
    path.write_bytes(data[: ends[-2]])


@pytest.mark.parametrize("repeat", [False, True])
def test_shard_missing_its_last_record_is_caught(fresh, repeat):
    ds = cxrdata.load(fresh, batch_size=4, seed=0, repeat=repeat)
    if not repeat:
        assert sorted(_collect(ds)[0]) == list(range(40))
    _drop_last_record(fresh / shard_name("train", 2, 4))
    with pytest.raises(
        tf.errors.FailedPreconditionError, match="expected to contain 10 elements but contained only 9"
    ):
        _collect(ds.take(40) if repeat else ds)


def test_augmented_batches_are_reproducible_with_seeds(raw):
    directory, _ = raw

    def batches():
        layer = cxrdata.RandomAffine(rotation=15, zoom=0.2, width_shift=0.2, height_shift=0.2, seed=7)
        ds = cxrdata.load(directory, batch_size=4, seed=3, repeat=True, augment=layer)
        return [x.numpy() for x, _ in ds.take(25)]

    first, second = batches(), batches()
    assert all((a == b).all() for a, b in zip(first, second))
    assert any((a != first[0]).any() for a in first[1:])


def _batches(ds):
    """The ids of each batch of a finite dataset, as tuples."""
    return [tuple(int(v) for v in x.numpy()[:, 0, 0, 0]) for x, _ in ds]


@pytest.mark.parametrize("balance", [None, "oversample"])
def test_tf_data_service_two_workers_epoch_holds_every_record_once(raw, balance):
    directory, order = raw
    dispatcher, workers = start_local_service(2)
    ds = cxrdata.load(directory, "train", batch_size=8, seed=0, service=dispatcher.target, balance=balance)
    batches = _batches(ds)
    # Each worker batches its own share; this process rebatches to full batches.
    assert [len(b) for b in batches] == [8] * 5
    ids = [uid for batch in batches for uid in batch]
    if balance is None:
        assert sorted(ids) == sorted(uid for uid, _ in order["train"])
    dropped = cxrdata.load(
        directory, "train", batch_size=16, seed=0, service=dispatcher.target, drop_remainder=True
    )
    assert dropped.element_spec[0].shape.as_list() == [16, SIZE, SIZE, 1]
    assert [len(b) for b in _batches(dropped)] == [16, 16]  # 40 records: only 8 dropped, once
    # parallel_epochs stays available: every worker yields every record.
    parallel = cxrdata.load(
        directory, "train", batch_size=8, seed=0, service=dispatcher.target, service_mode="parallel_epochs"
    )
    assert collections.Counter(_collect(parallel)[0]) == {uid: 2 for uid, _ in order["train"]}
    del workers


def test_service_mode_and_cache_are_checked(raw, tmp_path):
    with pytest.raises(ValueError, match="`service_mode` must be one of .* Received: service_mode='x'"):
        cxrdata.load(raw[0], service="grpc://localhost:5050", service_mode="x")
    with pytest.raises(ValueError, match="`cache` cannot be used with `service_mode='distributed_epoch'`"):
        cxrdata.load(raw[0], service="grpc://localhost:5050", cache="memory")


def _tf_config(monkeypatch, workers):
    cluster = [f"localhost:{port}" for port in range(5000, 5000 + workers)]
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": 0}})
    )


def _worker_batches(ds, workers, index):
    """The batches worker `index` of `workers` gets when a strategy auto-shards `ds`."""
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    return _batches(_AutoShardDataset(ds, num_workers=workers, index=index))


@pytest.mark.parametrize("seed", [None, 4])
def test_oversampling_shards_across_workers(raw, monkeypatch, seed):
    directory, order = raw
    _tf_config(monkeypatch, 2)

    def load():
        return cxrdata.load(directory, "train", batch_size=4, seed=seed, balance="oversample")

    # Each worker builds its own pipeline, as each process of a cluster does; together
    # they hold each batch of the one stream once.
    whole = _batches(load())
    assert len(whole) == 10
    assert [_worker_batches(load(), 2, i) for i in range(2)] == [whole[0::2], whole[1::2]]
    labels = dict(order["train"])
    assert {labels[uid] for batch in whole for uid in batch} == {0, 1}


@pytest.mark.parametrize("deterministic", [None, False])
def test_fewer_files_than_workers_every_record_once_without_seed(raw, monkeypatch, deterministic):
    directory, order = raw
    _tf_config(monkeypatch, 5)  # 4 train shards for 5 workers
    seen = []
    for i in range(5):
        with pytest.warns(UserWarning, match="4 shard files for 5 workers"):
            ds = cxrdata.load(directory, "train", batch_size=2, deterministic=deterministic)
        seen += [uid for batch in _worker_batches(ds, 5, i) for uid in batch]
    assert sorted(seen) == sorted(uid for uid, _ in order["train"])


def test_augment_layer_without_xla_gives_same_batches_with_same_seed(raw):
    directory, _ = raw

    def batches():
        layer = keras.layers.RandomRotation(0.2, seed=7)
        ds = cxrdata.load(directory, batch_size=2, seed=3, augment=layer)
        return np.concatenate([x.numpy() for x, _ in ds])

    first = batches()
    assert all(np.array_equal(first, batches()) for _ in range(3))


def test_load_config_gives_the_batches_of_the_same_keywords(raw):
    import dataclasses

    from cxrdata.pipeline import LoadConfig

    directory, _ = raw
    config = LoadConfig(batch_size=8, seed=11, label_mode="int")
    assert _batches(cxrdata.load(directory, "train", config=config)) == _batches(
        cxrdata.load(directory, "train", batch_size=8, seed=11, label_mode="int")
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 2
    with pytest.raises(ValueError, match="either as `config` or as keywords, not both.* seed=3"):
        cxrdata.load(directory, "train", config=config, seed=3)
    with pytest.raises(TypeError, match="`config` must be a LoadConfig or None"):
        cxrdata.load(directory, "train", config={"batch_size": 8})


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(shuffle="yes"), TypeError, "`shuffle` must be True or False. Received: shuffle='yes'"),
        (dict(seed=-1), ValueError, "`seed` must be an integer >= 0 or None. Received: seed=-1"),
        (dict(seed=1.5), TypeError, "Received: seed=1.5"),
        (dict(deterministic=1), TypeError, "`deterministic` must be True, False or None"),
        (
            dict(cache=1),
            TypeError,
            "`cache` must be 'memory', a file path prefix, or None. Received: cache=1",
        ),
        (dict(cache=""), ValueError, "`cache` must be 'memory', a file path prefix, or None"),
        (dict(input_context=(0, 2)), TypeError, "`input_context` must be a tf.distribute.InputContext"),
        (dict(with_masks=True, balance="oversample"), ValueError, "`with_masks=True` reads images"),
    ],
)
def test_options_are_checked_before_any_file_is_read(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        cxrdata.load(tmp_path / "no-such-dataset", **kwargs)  # a missing folder would say FileNotFoundError
