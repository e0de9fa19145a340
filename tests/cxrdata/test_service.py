"""`load(..., service=...)` against a real tf.data service: a dispatcher and workers as processes."""

from __future__ import annotations

import contextlib
import math
import select
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import cxrdata
from tests.cxrdata.test_pipeline import _batches, _write_dataset, start_local_service
from tests.loopback import free_ports

# One tf.data service server per process, on the loopback port it is given; says "ready", then serves.
_SERVER = """
import sys
import tensorflow as tf
service = tf.data.experimental.service
role, port, dispatcher = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if role == "dispatcher":
    server = service.DispatchServer(service.DispatcherConfig(port=port))
else:
    server = service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher, port=port))
print("ready", flush=True)
server.join()
"""
_START_TIMEOUT = 180  # seconds for the server processes to import TensorFlow and start, all at once


@contextlib.contextmanager
def _services(*workers: int):
    """One dispatcher per entry of `workers`, with that many workers, each server its own process.

    All processes start at once (a worker waits for its dispatcher); yields the dispatchers' addresses.
    """
    ports = iter(free_ports(len(workers) + sum(workers)))
    procs, targets = [], []
    try:
        for n in workers:
            address = f"localhost:{next(ports)}"
            targets.append("grpc://" + address)
            for role in ["dispatcher"] + ["worker"] * n:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            _SERVER,
                            role,
                            str(next(ports) if role == "worker" else address.split(":")[1]),
                            address,
                        ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                )
        deadline = time.monotonic() + _START_TIMEOUT
        for proc in procs:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a tf.data service server did not start (exit code {proc.poll()})")
        yield targets
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def services():
    """A dispatcher with one worker, and another with two."""
    with _services(1, 2) as targets:
        yield targets


@pytest.fixture(scope="module")
def one_worker(services):
    return services[0]


@pytest.fixture(scope="module")
def two_workers(services):
    return services[1]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    directory = tmp_path_factory.mktemp("raw")
    return directory, _write_dataset(directory, "raw")


def _ids(ds) -> list[int]:
    return [uid for batch in _batches(ds) for uid in batch]


def _context(i: int, n: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n)


@pytest.mark.slow
def test_each_iteration_is_a_new_epoch_order_that_the_seed_fixes(raw, one_worker):
    """As `Model.fit` iterates the dataset again each epoch: every record once, in a new order."""
    directory, order = raw
    every = sorted(uid for uid, _ in order["train"])
    ds = cxrdata.load(directory, "train", batch_size=8, seed=3, service=one_worker)
    epochs = [_ids(ds) for _ in range(3)]
    assert all(sorted(epoch) == every for epoch in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
    # With one service worker the order is reproducible: the same seed, the same epochs.
    again = cxrdata.load(directory, "train", batch_size=8, seed=3, service=one_worker)
    assert [_ids(again) for _ in range(3)] == epochs
    other = cxrdata.load(directory, "train", batch_size=8, seed=4, service=one_worker)
    assert _ids(other) != epochs[0]


@pytest.mark.slow
def test_drop_remainder_drops_other_records_each_epoch(raw, one_worker):
    directory, order = raw
    every = {uid for uid, _ in order["train"]}
    ds = cxrdata.load(directory, "train", batch_size=16, seed=0, service=one_worker, drop_remainder=True)
    dropped = []
    for _ in range(4):
        batches = _batches(ds)
        assert [len(b) for b in batches] == [16, 16]
        seen = {uid for batch in batches for uid in batch}
        assert len(seen) == 32
        dropped.append(frozenset(every - seen))
    assert len(set(dropped)) > 1, dropped  # not the same 8 records left out every epoch


@pytest.mark.slow
def test_augmentation_draws_move_on_with_the_epochs(raw, one_worker):
    """The workers copy the layer's random state at each epoch's start: it must not be the same copy."""
    directory, _ = raw

    def epochs(n):
        layer = cxrdata.RandomAffine(rotation=30, seed=1)
        ds = cxrdata.load(
            directory, "val", batch_size=4, shuffle=False, augment=layer, seed=2, service=one_worker
        )
        return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(n)]

    first = epochs(2)
    assert first[0].shape == (12, 32, 32, 1) and not np.array_equal(first[0], first[1])
    assert all(np.array_equal(a, b) for a, b in zip(first, epochs(2)))  # one worker: reproducible


@pytest.mark.slow
@pytest.mark.parametrize("balance", [None, "oversample"])
def test_two_workers_every_epoch_holds_every_record_once_in_a_new_order(raw, two_workers, balance):
    directory, order = raw
    ds = cxrdata.load(directory, "train", batch_size=8, seed=1, service=two_workers, balance=balance)
    assert ds.cardinality() == 5
    epochs = [_batches(ds) for _ in range(3)]
    assert all([len(b) for b in batches] == [8] * 5 for batches in epochs)
    ids = [[uid for batch in batches for uid in batch] for batches in epochs]
    if balance is None:
        assert all(sorted(epoch) == sorted(uid for uid, _ in order["train"]) for epoch in ids)
    assert ids[0] != ids[1] != ids[2]


@pytest.mark.slow
@pytest.mark.parametrize("balance", [None, "oversample"])
def test_service_with_input_context_serves_each_pipelines_own_files(raw, two_workers, balance):
    """Each pipeline sends its own file share through the service; `drop_remainder` still holds."""
    directory, order = raw
    shard_of = {uid: i // 10 for i, (uid, _) in enumerate(order["train"])}  # 4 shards of 10
    seen = []
    for i in range(2):
        ds = cxrdata.load(
            directory,
            "train",
            batch_size=6,
            seed=2,
            service=two_workers,
            input_context=_context(i, 2),
            drop_remainder=True,
            balance=balance,
        )
        assert ds.cardinality() == 3  # 20 records each: 3 full batches of 6, 2 records dropped
        batches = _batches(ds.take(10))  # an endless dataset would give 10
        assert [len(b) for b in batches] == [6, 6, 6]
        ids = [uid for batch in batches for uid in batch]
        assert {shard_of[uid] for uid in ids} <= {i, i + 2}
        if balance is None:
            assert len(set(ids)) == 18
        seen.append(set(ids))
    if balance is None:
        assert not seen[0] & seen[1]


def test_service_timeout_is_checked_and_defaults_to_a_minute(raw):
    from cxrdata.pipeline import LoadConfig

    assert LoadConfig().service_timeout == 60
    with pytest.raises(
        ValueError, match=r"`service_timeout` must be a number > 0\. Received: service_timeout=0"
    ):
        cxrdata.load(raw[0], service="grpc://localhost:5050", service_timeout=0)
    with pytest.raises(
        TypeError, match=r"`service_timeout` must be a number > 0\. Received: service_timeout='1'"
    ):
        cxrdata.load(raw[0], service="grpc://localhost:5050", service_timeout="1")


@pytest.mark.parametrize("with_context", [False, True])
def test_an_unreachable_dispatcher_is_an_error_never_a_silent_local_fallback(raw, with_context):
    kwargs = dict(input_context=_context(0, 2)) if with_context else {}
    start = time.monotonic()
    with pytest.raises(
        ConnectionError, match=r"No tf\.data service dispatcher answered at 'grpc://localhost:1' within 2 s"
    ):
        cxrdata.load(raw[0], batch_size=4, service="grpc://localhost:1", service_timeout=2, **kwargs)
    assert time.monotonic() - start < 60  # the documented bound, far above the 2 s asked for


def test_service_without_input_context_in_a_cluster_is_refused(raw, monkeypatch):
    """Each worker of a TF_CONFIG cluster would read the whole split: every record n times an epoch."""
    from tests.cxrdata.test_pipeline import _tf_config

    _tf_config(monkeypatch, 2)
    with pytest.raises(ValueError, match="input_context"):
        cxrdata.load(raw[0], service="grpc://localhost:1", service_timeout=1)


def test_the_steps_of_a_service_epoch_are_known_to_keras(raw):
    """Keras sizes its progress bar, and `fit` iterates the dataset again, from the cardinality."""
    directory, _ = raw
    dispatcher, workers = start_local_service(1)
    ds = cxrdata.load(directory, "train", batch_size=16, seed=0, service=dispatcher.target)
    assert ds.cardinality() == math.ceil(40 / 16)
    del workers
