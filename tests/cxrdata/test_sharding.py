"""Host-independent input: what each input pipeline reads, and no order left to the runtime."""

from __future__ import annotations

import collections
import math
import warnings

import numpy as np
import pytest
import tensorflow as tf

import cxrdata
from tests.cxrdata.test_pipeline import _batches, _tf_config, _write_dataset

# Op name -> the index of its `cycle_length` input after the input dataset and captured arguments.
_INTERLEAVES = ("InterleaveDataset", "ParallelInterleaveDatasetV4", "ParallelInterleaveDatasetV3")


def _scopes(graph: tf.compat.v1.GraphDef):
    """Each node of `graph` and of every function in it, with the nodes of its scope by name."""
    for nodes in [list(graph.node)] + [list(f.node_def) for f in graph.library.function]:
        by_name = {n.name: n for n in nodes}
        for node in nodes:
            yield node, by_name


def _const(by_name: dict, name: str):
    """The value of a Const input (`name`, `name:0` or `name:output:0`), or None if not a Const."""
    node = by_name.get(name.split(":")[0].lstrip("^"))
    if node is None or node.op != "Const":
        return None
    return tf.make_ndarray(node.attr["value"].tensor).item()


def _order_shaping_values(*args, **kwargs) -> list[tuple[str, str, object]]:
    """(op, parameter, value) for every interleave cycle/block length and every `deterministic`
    of the pipeline `load(*args, **kwargs)` builds, as the caller wrote them.

    Traced into a graph, not built eagerly: an eager dataset serializes the cycle length TensorFlow
    resolved for this host, which hides an AUTOTUNE wherever it resolves to the value a library
    would pick (on this 2-core machine, 1: the unshuffled reader's own value).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dataset.options() in a graph
        graph = (
            tf.function(lambda: cxrdata.load(*args, **kwargs)._variant_tensor, autograph=False)
            .get_concrete_function()
            .graph
        )
    found = []
    for node, by_name in _scopes(graph.as_graph_def()):
        if node.op in _INTERLEAVES:
            first = 1 + len(node.attr["Targuments"].list.type)
            found.append((node.op, "cycle_length", _const(by_name, node.input[first])))
            found.append((node.op, "block_length", _const(by_name, node.input[first + 1])))
        if "deterministic" in node.attr:
            found.append((node.op, "deterministic", node.attr["deterministic"].s.decode()))
    return found


def _unset(values) -> list:
    """The values a host's runtime would decide: AUTOTUNE lengths, "default" determinism."""
    return [
        (op, name, value)
        for op, name, value in values
        if (name == "deterministic" and value != "true")
        or (name != "deterministic" and not (isinstance(value, int) and value > 0))
    ]


def _context(i: int, n: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(seed=1),
        dict(shuffle=False),
        dict(seed=1, repeat=True),
        dict(seed=1, balance="oversample"),
        dict(seed=1, input_context=_context(1, 2)),
        dict(seed=1, input_context=_context(0, 2), balance="oversample"),
        dict(seed=1, with_masks=True),
    ],
    ids=["shuffle", "no-shuffle", "repeat", "oversample", "input-context", "context-oversample", "masks"],
)
def test_no_order_shaping_value_is_left_to_the_runtime(raw, kwargs):
    """TensorFlow resolves an AUTOTUNE cycle length from the host's cores (ceil(cores / 3)), and a
    `deterministic` of "default" from options a caller may change: hosts would build other orders."""
    values = _order_shaping_values(raw[0], "train", batch_size=4, **kwargs)
    assert any(name == "cycle_length" for _, name, _ in values)
    assert _unset(values) == [], _unset(values)
    assert cxrdata.load(raw[0], "train", batch_size=4, **kwargs).options().deterministic is True


def test_the_png_and_cache_path_sets_its_order_too(png):
    values = _order_shaping_values(png[0], "train", batch_size=4, seed=1, cache="memory")
    assert len(values) >= 4 and _unset(values) == []


def test_deterministic_false_is_the_callers_explicit_choice(raw):
    values = _order_shaping_values(raw[0], "train", batch_size=4, seed=1, deterministic=False)
    assert {v[2] for v in values if v[1] == "deterministic"} == {"false"}


def _epochs(ds, n):
    return [[uid for batch in _batches(ds) for uid in batch] for _ in range(n)]


@pytest.mark.parametrize("pipelines", [2, 3])
def test_input_pipelines_read_disjoint_files_that_cover_the_split_every_epoch(raw, pipelines):
    directory, order = raw
    shard_of = {uid: i // 10 for i, (uid, _) in enumerate(order["train"])}  # 4 shards of 10
    every = sorted(shard_of)
    per_epoch = [[] for _ in range(3)]
    for i in range(pipelines):
        ds = cxrdata.load(directory, "train", batch_size=3, seed=5, input_context=_context(i, pipelines))
        records = sum(1 for s in shard_of.values() if s % pipelines == i)
        assert ds.cardinality() == math.ceil(records / 3)
        epochs = _epochs(ds, 3)
        for epoch, ids in zip(per_epoch, epochs):
            assert {shard_of[uid] for uid in ids} == set(range(i, 4, pipelines))  # file i::n
            assert len(ids) == len(set(ids)) == records
            epoch.extend(ids)
        assert epochs[0] != epochs[1] != epochs[2]  # re-iterating reshuffles ...
        again = cxrdata.load(directory, "train", batch_size=3, seed=5, input_context=_context(i, pipelines))
        assert _epochs(again, 3) == epochs  # ... in a sequence the seed fixes, on any host
    for ids in per_epoch:
        assert sorted(ids) == every  # disjoint, and together the whole split once


def test_input_pipelines_with_drop_remainder_give_full_batches(raw):
    directory, _ = raw
    for i in range(2):
        ds = cxrdata.load(
            directory, "train", batch_size=6, seed=5, drop_remainder=True, input_context=_context(i, 2)
        )
        assert ds.element_spec[0].shape.as_list()[0] == 6
        assert [len(b) for b in _batches(ds)] == [6, 6, 6]  # 20 records each: 2 dropped


def test_oversampling_balances_classes_within_each_pipelines_share(raw):
    directory, order = raw
    labels = dict(order["train"])
    for i in range(2):
        ds = cxrdata.load(
            directory,
            "train",
            batch_size=8,
            seed=2,
            balance="oversample",
            repeat=True,
            input_context=_context(i, 2),
        )
        ids = [uid for batch in _batches(ds.take(75)) for uid in batch]  # 600 draws
        assert {uid // 10 for uid in ids} <= set(range(i, 4, 2))
        share = np.bincount([labels[uid] for uid in ids], minlength=2) / len(ids)
        assert np.all(np.abs(share - 0.5) < 0.06), (i, share)


def test_oversampling_refuses_a_share_that_lacks_a_class(tmp_path):
    # Records written class by class: train shards 0-2 hold class 0 only, shard 3 class 1 only.
    order = _write_dataset(tmp_path, counts={"train": (30, 10)}, shards={"train": 4}, sort_labels=True)
    labels = [label for _, label in order["train"]]
    assert set(labels[:10]) == set(labels[20:30]) == {0}  # pipeline 0 of 2 reads shards 0 and 2
    with pytest.raises(
        ValueError, match=r"input pipeline 0 of 2 \(2 of 4 shard files\) hold no record of class 1"
    ):
        cxrdata.load(
            tmp_path, "train", batch_size=4, seed=1, balance="oversample", input_context=_context(0, 2)
        )
    # The other pipeline holds both classes and draws them evenly.
    other = cxrdata.load(
        tmp_path, "train", batch_size=4, seed=1, balance="oversample", input_context=_context(1, 2)
    )
    drawn = collections.Counter(labels[uid] for batch in _batches(other.repeat().take(100)) for uid in batch)
    assert set(drawn) == {0, 1} and abs(drawn[0] - drawn[1]) < 0.15 * 400


def test_data_sharding_workers_agree_whatever_deterministic_says(raw, monkeypatch):
    """The DATA fallback keeps every n-th batch of each worker's copy of the stream."""
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    directory, order = raw
    _tf_config(monkeypatch, 2)
    seen = []
    for i in range(2):
        kwargs = dict(batch_size=4, balance="oversample", deterministic=False)
        assert _unset(_order_shaping_values(directory, "train", **kwargs)) == []
        ds = cxrdata.load(directory, "train", **kwargs)
        seen.append(_batches(_AutoShardDataset(ds, num_workers=2, index=i)))
    whole = _batches(cxrdata.load(directory, "train", batch_size=4, balance="oversample"))
    assert seen == [whole[0::2], whole[1::2]]
