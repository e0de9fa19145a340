"""Tests for `cxr train --strategy multi-worker`: workers as separate processes on 127.0.0.1."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import cxrdata
from cxrmodels.training.multi_worker import check_cluster, cluster_from_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds: a bound on every wait, far above what the runs take
# No augmentation: its random draws advance per replica thread in one process but per worker in a
# cluster, so with it the reference below would see other transforms (not other data).
TINY = ["--filters", "4", "8", "8", "--dense-units", "8", "--augment", "none"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(tf_config: dict | None = None) -> dict:
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start_workers(dataset, outs, *, epochs, logs):
    """Starts one `cxr train --strategy multi-worker` per folder in `outs` (worker i writes to outs[i])."""
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(len(outs))]
    procs = []
    for i, out in enumerate(outs):
        argv = [
            sys.executable,
            "-m",
            "cxrmodels.cli",
            "train",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            str(epochs),
            "--batch-size",
            "16",
            "--strategy",
            "multi-worker",
            "--quiet",
            *TINY,
        ]
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        log = open(logs / f"worker{i}.log", "ab")  # noqa: SIM115  closed with the process
        procs.append((subprocess.Popen(argv, cwd=ROOT, env=_env(tf_config), stdout=log, stderr=log), log))
    return procs


def _wait(procs, logs) -> None:
    deadline = time.monotonic() + TIMEOUT
    for i, (proc, _) in enumerate(procs):
        try:
            code = proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {i} hung:\n{(logs / f'worker{i}.log').read_text()[-3000:]}")
        assert code == 0, f"worker {i} exited {code}:\n{(logs / f'worker{i}.log').read_text()[-3000:]}"


def _kill(procs) -> None:
    for proc, log in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()


def _history(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _weights(run):
    from cxrmodels.models import load_model

    return load_model(os.path.join(run, "model.keras"), compile=False).get_weights()


# One process with two replicas (two logical CPUs) running the same loop, each replica with its own
# input pipeline (file i to replica i % 2): the same batches, the same all-reduce, so the same weights.
REFERENCE = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cxrmodels.training import multi_worker
multi_worker._create_strategy = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
import cxrmodels
cxrmodels.train(sys.argv[1], out=sys.argv[2], epochs=int(sys.argv[3]), batch_size=16, verbose=0, augment="none",
                strategy="multi-worker", model_kwargs={"filters": (4, 8, 8), "dense_units": 8})
"""


@pytest.mark.slow
def test_two_workers_train_the_reference_model_and_only_the_chief_writes(converted_dataset, tmp_path):
    chief, other = tmp_path / "run", tmp_path / "worker1_run"
    procs = _start_workers(converted_dataset, [chief, other], epochs=2, logs=tmp_path)
    try:
        _wait(procs, tmp_path)
    finally:
        _kill(procs)
    reference = tmp_path / "reference"
    subprocess.run(
        [sys.executable, "-c", REFERENCE, str(converted_dataset), str(reference), "2"],
        cwd=ROOT,
        env=_env(),
        check=True,
        timeout=TIMEOUT,
        capture_output=True,
    )

    assert not other.exists()  # the other worker wrote nothing (its folder would be on its own machine)
    assert {"model.keras", "history.csv", "learning_curves.png", "config.json"} <= set(os.listdir(chief))
    assert "backup" not in os.listdir(chief)
    config = json.loads((chief / "config.json").read_text())
    assert config["finished"] is True and config["training"]["strategy"] == "multi-worker"
    rows, expected = _history(chief), _history(reference)
    assert (
        list(rows[0])
        == list(expected[0])
        == [
            "epoch",
            "accuracy",
            "auc",
            "loss",
            "precision",
            "recall",
            "specificity",
            "val_accuracy",
            "val_auc",
            "val_loss",
            "val_precision",
            "val_recall",
            "val_specificity",
        ]
    )
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row, ref in zip(rows, expected):
        for key in row:
            assert float(row[key]) == pytest.approx(float(ref[key]), abs=1e-5), key
    for got, want in zip(_weights(chief), _weights(reference), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def _train_images(dataset, context=None):
    ds = cxrdata.load(dataset, "train", batch_size=8, shuffle=True, seed=1, input_context=context)
    return [
        hashlib.sha1(image.tobytes()).hexdigest() for images, _ in ds.as_numpy_iterator() for image in images
    ]


def test_file_sharding_reads_each_record_once_per_epoch(converted_dataset):
    import tensorflow as tf

    everything = _train_images(converted_dataset)
    assert len(set(everything)) == len(everything) > 0  # phantoms are distinct
    parts = [_train_images(converted_dataset, tf.distribute.InputContext(2, i, 2)) for i in range(2)]
    assert all(parts) and sorted(parts[0] + parts[1]) == sorted(everything)
    assert not set(parts[0]) & set(parts[1])


def test_too_few_shards_or_a_bad_tf_config_are_refused(converted_dataset, monkeypatch):
    manifest = cxrdata.read_manifest(converted_dataset)
    shards = len(manifest.splits["train"].shards)
    workers = [f"127.0.0.1:{2000 + i}" for i in range(shards + 1)]
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 1}})
    )
    assert not cluster_from_env().is_chief
    with pytest.raises(ValueError, match=f"it has {shards} for {shards + 1} workers.*smaller --shard-size"):
        check_cluster(manifest, 16)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="`TF_CONFIG` must be JSON"):
        cluster_from_env()
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}
        ),
    )
    assert not cluster_from_env().is_chief and cluster_from_env().num_workers == 2


def _committed_history(run) -> list[dict]:
    """The rows of the epochs committed to the backup, as history.csv writes them."""
    history = json.loads((run / "backup" / "state.json").read_text())["history"]
    return [{k: str(v[i]) for k, v in history.items()} for i in range(len(history["epoch"]))]


def _saved_epoch(run) -> int:
    try:
        return json.loads((run / "backup" / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not there yet, or being written
        return 0


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_epoch_when_all_rerun(converted_dataset, tmp_path):
    chief, other = tmp_path / "run", tmp_path / "worker1_run"
    procs = _start_workers(converted_dataset, [chief, other], epochs=4, logs=tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _saved_epoch(chief) and procs[0][0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _saved_epoch(chief), (tmp_path / "worker0.log").read_text()[-3000:]
        procs[1][0].send_signal(signal.SIGKILL)  # the other worker dies mid-epoch; the chief is stopped too
    finally:
        _kill(procs)
    saved = _saved_epoch(chief)
    assert 1 <= saved < 4 and not json.loads((chief / "config.json").read_text())["finished"]
    before = _committed_history(chief)  # history.csv is derived from it, maybe not written yet

    procs = _start_workers(converted_dataset, [chief, other], epochs=4, logs=tmp_path)
    try:
        _wait(procs, tmp_path)
    finally:
        _kill(procs)
    rows = _history(chief)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # each epoch once
    assert rows[:saved] == before[:saved]  # the epochs done before the kill were not retrained
    config = json.loads((chief / "config.json").read_text())
    assert config["finished"] is True and config["results"]["resumed_from"] == saved
    assert not other.exists() and not (chief / "backup").exists()
