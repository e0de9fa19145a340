"""Tests for `cxr train --strategy multi-worker`: workers as separate processes on 127.0.0.1.

What a cluster trains is compared with ONE device trained on the same global batches: at each
step, the concatenation of the batches the workers read (reproduced below with the same
`cxrdata.load(input_context=...)` sharding), trained by `Model.fit` with the same class weights.
That is the single-device semantics the loop promises (`cxrmodels/training/multi_worker.py`):
BatchNorm statistics of the global batch, filler batches that add nothing, the loss and train
metrics weighted as `Model.fit` weights them, validation figures of the whole split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import cxrdata
from cxrmodels.training.multi_worker import check_cluster, cluster_from_env
from tests.loopback import free_ports

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds: a bound on every wait (a hang fails the test), far above what the runs take
# No augmentation: its random draws differ between one device and a cluster (not the data).
TINY = ["--filters", "4", "8", "8", "--dense-units", "8", "--augment", "none"]
MODEL_KWARGS = {"filters": (4, 8, 8), "dense_units": 8}
# Global batch 14, 7 per worker: `converted_dataset`'s 12 train shards give worker 0 21 records
# (3 batches) and worker 1 24 (4 batches, the last of 3), so each epoch ends with a step where
# worker 0 feeds an empty filler batch and the global batch holds worker 1's 3 records.
BATCH = 14
EPOCHS = 3
# Agreement with one device. The cluster and the reference run the same float32 arithmetic in
# another order (per-worker partial sums, then an all-reduce; synchronized BatchNorm's variance as
# E[x^2] - E[x]^2 where one device computes E[(x - mean)^2]), and Adam's normalized steps carry
# such differences further on weights whose true gradient is about 0 (a convolution's bias before
# BatchNorm). How far depends on the trajectory, so the reference measures it on its own: the same
# one-device run with the examples of each global batch reversed (`weights_floor`,
# `history_floor`). A run must be within NOISE_FACTOR times that, and never needs to be closer
# than the *_ATOL below. Measured on the 2-core test machine over the 12 steps here: the cluster
# at most 2.1e-5 from one device on a weight and 5.1e-5 on a history figure; the floor 2e-5 and
# 6e-6. The errors these tests guard against exceed the tolerances 7 to 500 times (measured): the
# loop before issue 20 (BatchNorm per worker, one-image filler batches) 0.11 on a weight after 4
# steps and 4e-3 on the first epoch's loss; one-image filler batches alone 0.035 and 3.4e-3;
# class-weighted train metrics 0.064 on the accuracy; per-worker BatchNorm with empty filler
# batches NaN.
NOISE_FACTOR = 10
WEIGHTS_ATOL = 2e-4
HISTORY_ATOL = 5e-4
# AUC counts predictions between 200 fixed thresholds: one prediction that the arithmetic's order
# moves across one of them moves the val AUC (4 positives, 6 negatives) by up to 1/24. Measured: 0.
AUC_ATOL = 0.05

# Loaded by every Python process started with the hook folder on PYTHONPATH (here: the workers),
# it injects the fault named by CXR_TEST_FAULT; nothing of the loop is replaced.
# - "disagree": each worker's local validation loss is shifted, downwards on worker 0 (it always
#   improves) and upwards on worker 1 (it never does); worker 1's own bookkeeping, where there is
#   one, also asks to stop after every epoch.
# - "inf": worker 1's gradients are infinite at every step; at exit every worker prints its
#   LossScaleOptimizer's loss scale.
_HOOK = """
import json, os
_fault = os.environ.get("CXR_TEST_FAULT")
if _fault and os.environ.get("TF_CONFIG"):
    _worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    import keras
    import tensorflow as tf

    if _fault == "disagree":
        _loss, _sign, _calls = keras.losses.CategoricalCrossentropy.__call__, (1.0 if _worker else -1.0), [0]

        def _shifted(self, *args, **kwargs):
            out = _loss(self, *args, **kwargs)
            if not tf.executing_eagerly():  # the traced train step; validation runs eagerly
                return out
            _calls[0] += 1
            print(f"cxr-test: local validation loss shifted by {_sign * 10 * _calls[0]:+g}", flush=True)
            return out + _sign * 10.0 * _calls[0]

        keras.losses.CategoricalCrossentropy.__call__ = _shifted
        try:
            from cxrmodels.training.bookkeeping import EpochBookkeeping
        except ImportError:
            EpochBookkeeping = None
        if _worker == 1 and EpochBookkeeping is not None:
            _end = EpochBookkeeping.on_epoch_end

            def _stop(self, epoch, logs=None):
                _end(self, epoch, logs)
                print(f"cxr-test: worker 1 asks to stop after epoch {epoch + 1}", flush=True)
                self.model.stop_training = True

            EpochBookkeeping.on_epoch_end = _stop

    if _fault == "inf":
        if _worker == 1:
            _gradient = tf.GradientTape.gradient

            def _infinite(self, target, sources, *args, **kwargs):
                grads = list(_gradient(self, target, sources, *args, **kwargs))
                print("cxr-test: worker 1's gradients made infinite", flush=True)
                return [grads[0] + float("inf")] + grads[1:]

            tf.GradientTape.gradient = _infinite
        import atexit, gc

        def _report():
            for o in gc.get_objects():
                if type(o).__name__ == "LossScaleOptimizer":
                    print(f"cxr-test: loss scale {float(o.dynamic_scale.numpy()):g}", flush=True)

        atexit.register(_report)
"""


def _env(
    tf_config: dict | None = None, *, hook: pathlib.Path | None = None, fault: str | None = None
) -> dict:
    paths = [str(ROOT)] + ([str(hook)] if hook else []) + [os.environ.get("PYTHONPATH", "")]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CXR_TEST_FAULT")}
    env |= {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(paths).rstrip(os.pathsep)}
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if fault:
        (hook / "sitecustomize.py").write_text(_HOOK)
        env["CXR_TEST_FAULT"] = fault
    return env


def _start_workers(dataset, outs, *, epochs, logs, args=(), fault=None):
    """Starts one `cxr train --strategy multi-worker` per folder in `outs` (worker i writes to outs[i])."""
    hosts = [f"127.0.0.1:{p}" for p in free_ports(len(outs))]
    hook = None
    if fault:
        hook = logs / "hook"
        hook.mkdir(exist_ok=True)
    procs = []
    for i, out in enumerate(outs):
        argv = [sys.executable, "-m", "cxrmodels.cli", "train", str(dataset), "--out", str(out)]
        argv += ["--epochs", str(epochs), "--strategy", "multi-worker", *TINY, *args]
        if "--batch-size" not in args:
            argv += ["--batch-size", "16"]
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        log = open(logs / f"worker{i}.log", "ab")  # noqa: SIM115  closed with the process
        env = _env(tf_config, hook=hook, fault=fault)
        procs.append((subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log), log))
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


def _run_cluster(dataset, outs, *, epochs, logs, args=(), fault=None) -> list[str]:
    """Runs the workers to the end; returns their logs."""
    procs = _start_workers(dataset, outs, epochs=epochs, logs=logs, args=args, fault=fault)
    try:
        _wait(procs, logs)
    finally:
        _kill(procs)
    return [(logs / f"worker{i}.log").read_text() for i in range(len(outs))]


def _history(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _load(run):
    from cxrmodels.models import load_model

    return load_model(os.path.join(run, "model.keras"), compile=False)


_FIGURE = re.compile(r"\b(val_\w+): (-?\d+\.\d+(?:e[+-]\d+)?)")


def _printed_validation(log: str) -> list[dict[str, float]]:
    """The validation figures of each epoch line Keras' progress bar printed (`val_loss: 0.6911`)."""
    return [
        {k: float(v) for k, v in _FIGURE.findall(line)} for line in log.splitlines() if "val_loss: " in line
    ]


def _initial_model(dataset, num_classes: int):
    import keras

    import cxrmodels

    keras.utils.set_random_seed(0)  # the run's --seed
    shape = tuple(cxrdata.read_manifest(dataset).image_shape)
    return cxrmodels.create_model("seed_cnn", input_shape=shape, num_classes=num_classes, **MODEL_KWARGS)


# --- one device on the cluster's global batches --------------------------------------------------------


def _worker_batches(dataset, epoch: int, *, workers: int, batch_size: int, seed: int = 0) -> list[list]:
    """The batches each worker reads in `epoch`: `cxrdata.load` with the loop's per-epoch seed and sharding."""
    import tensorflow as tf

    per_worker = batch_size // workers
    return [
        list(
            cxrdata.load(
                dataset,
                "train",
                batch_size=per_worker,
                shuffle=True,
                seed=seed * 100_003 + epoch,  # the loop's epoch seed: a resumed run reads the same
                input_context=tf.distribute.InputContext(workers, i, workers),
            ).as_numpy_iterator()
        )
        for i in range(workers)
    ]


def _global_batches(parts: list[list], *, reverse: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Step j's global batch: the concatenation of each worker's j-th batch (none once its data ran out).

    `reverse` reverses the order of its examples: the same mathematics, float32 sums in another order.
    """
    steps = max(len(p) for p in parts)
    batches = [
        tuple(np.concatenate([p[j][n] for p in parts if j < len(p)]) for n in range(2)) for j in range(steps)
    ]
    return [(x[::-1], y[::-1]) for x, y in batches] if reverse else batches


def one_device_run(dataset, *, epochs: int, batch_size: int, workers: int = 2):
    """`Model.fit` on one device over the global batches a cluster of `workers` trains on.

    Returns a namespace: `rows` (the history row of each epoch), `weights` (after each epoch),
    `fillers` (how many worker batches were fillers: a worker out of data at that step), and the
    arithmetic's own noise on this trajectory: `weights_floor` and `history_floor`, the largest
    differences (AUC aside) from the same run with the examples of each global batch reversed.
    """
    import keras

    keras.utils.set_random_seed(0)  # first, as `train` does: `cxrdata.load(seed=...)` orders otherwise
    parts = [
        _worker_batches(dataset, epoch, workers=workers, batch_size=batch_size) for epoch in range(epochs)
    ]
    run, reordered = (
        _fit_one_device(dataset, [_global_batches(p, reverse=reverse) for p in parts], batch_size)
        for reverse in (False, True)
    )
    run.fillers = sum(max(len(p) for p in epoch) - len(p) for epoch in parts for p in epoch)
    run.weights_floor = max(
        float(np.max(np.abs(a - b)))
        for e in range(epochs)
        for a, b in zip(run.weights[e], reordered.weights[e])
    )
    run.history_floor = max(
        abs(row[k] - other[k]) for row, other in zip(run.rows, reordered.rows) for k in row if "auc" not in k
    )
    return run


def _fit_one_device(dataset, batches: list[list], batch_size: int):
    """One `Model.fit` call over the epochs' `batches` (validation and class weights as `train` has them).

    One call with `steps_per_epoch`: a `fit` call per epoch would not do, as each one that ends its
    input at the end of the data adds one to the optimizer's iteration count (Keras 3.15 runs the
    data-independent `iterations.assign_add` of the step whose `get_next` fails), which changes
    Adam's bias correction from the next step on.
    """
    import keras
    import tensorflow as tf

    from cxrmodels.metrics.clinical import positive_class_index
    from cxrmodels.metrics.keras_metrics import default_metrics

    manifest = cxrdata.read_manifest(dataset)
    k = manifest.num_classes
    net = _initial_model(dataset, k)
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=default_metrics(k, positive_index=positive_class_index(manifest.class_names)),
    )
    assert len({len(epoch) for epoch in batches}) == 1, "epochs of different lengths"
    spec = (tf.TensorSpec([None, *manifest.image_shape], tf.uint8), tf.TensorSpec([None, k], tf.float32))
    weights = []
    history = net.fit(
        tf.data.Dataset.from_generator(
            lambda: (b for epoch in batches for b in epoch), output_signature=spec
        ),
        steps_per_epoch=len(batches[0]),
        epochs=len(batches),
        validation_data=cxrdata.load(dataset, "val", batch_size=batch_size, shuffle=False),
        class_weight=cxrdata.class_weights(dataset),
        shuffle=False,
        callbacks=[
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(net.get_weights()))
        ],
        verbose=0,
    )
    rows = [{name: values[e] for name, values in history.history.items()} for e in range(len(batches))]
    return types.SimpleNamespace(rows=rows, weights=weights)


@pytest.fixture(scope="module")
def cluster(converted_dataset, tmp_path_factory):
    """2 workers, seed_cnn (BatchNorm), class weights, filler batches; the chief's run and both logs."""
    tmp = tmp_path_factory.mktemp("cluster")
    chief, other = tmp / "run", tmp / "worker1_run"
    args = ["--batch-size", str(BATCH), "--balance", "class-weight", "--patience", "10"]
    logs = _run_cluster(converted_dataset, [chief, other], epochs=EPOCHS, logs=tmp, args=args)
    return types.SimpleNamespace(run=chief, other=other, logs=logs)


@pytest.fixture(scope="module")
def one_device(converted_dataset):
    return one_device_run(converted_dataset, epochs=EPOCHS, batch_size=BATCH)


def _assert_weights_like(run, reference) -> None:
    """The run's model (its best epoch's weights) is the reference's after the same epoch."""
    best = json.loads((run / "config.json").read_text())["results"]["best_epoch"]
    losses = [row["val_loss"] for row in reference.rows]
    assert best == 1 + int(np.argmin(losses)), f"the reference's best epoch differs: {losses}"
    net = _load(run)
    atol = max(WEIGHTS_ATOL, NOISE_FACTOR * reference.weights_floor)
    # BatchNorm's moving statistics included: the global batch's, never a filler's.
    for variable, got, want in zip(net.weights, net.get_weights(), reference.weights[best - 1], strict=True):
        difference = float(np.max(np.abs(got - want)))
        assert difference <= atol, f"{variable.path}: max |run - one device| = {difference:.3g} > {atol:.3g}"


def _assert_history_like(run, reference, keys) -> None:
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(len(reference.rows)))
    tolerance = max(HISTORY_ATOL, NOISE_FACTOR * reference.history_floor)
    for epoch, (row, ref) in enumerate(zip(rows, reference.rows, strict=True)):
        for key in keys:
            atol = AUC_ATOL if key.endswith("auc") else tolerance
            assert float(row[key]) == pytest.approx(ref[key], abs=atol), f"epoch {epoch + 1}: {key}"


@pytest.mark.slow
def test_two_workers_end_with_the_weights_of_one_device_on_the_same_global_batches(cluster, one_device):
    assert one_device.fillers > 0  # the premise: some steps had a worker out of data (an empty filler)
    _assert_weights_like(cluster.run, one_device)


@pytest.mark.slow
def test_train_metrics_are_weighted_as_model_fit_weights_them(cluster, one_device):
    # Model.fit weights the loss by the class weights, not `compile(metrics=...)`.
    _assert_history_like(
        cluster.run, one_device, ("loss", "accuracy", "precision", "recall", "specificity", "auc")
    )


@pytest.mark.slow
def test_validation_is_the_whole_split_sharded_and_every_worker_prints_the_same(cluster, one_device):
    printed = [_printed_validation(log) for log in cluster.logs]
    assert printed[0] == printed[1], f"the workers printed different validation figures: {printed}"
    rows = _history(cluster.run)
    assert len(printed[0]) == len(rows) == EPOCHS
    for figures, row in zip(printed[0], rows, strict=True):  # history.csv holds what was printed
        assert set(figures) == {k for k in row if k.startswith("val_")}
        for key, value in figures.items():  # Keras prints 4 decimals
            assert value == pytest.approx(float(row[key]), abs=5e-5, rel=5e-4), key
    # The figures are the whole split's, as one device computes them.
    assert set(rows[0]) == {"epoch"} | set(one_device.rows[0])
    _assert_history_like(cluster.run, one_device, [k for k in one_device.rows[0] if k.startswith("val_")])


@pytest.mark.slow
def test_only_the_chief_writes_and_the_saved_model_is_an_ordinary_one(cluster):
    import keras

    assert (
        not cluster.other.exists()
    )  # the other worker wrote nothing (its folder would be on its own machine)
    assert {"model.keras", "history.csv", "learning_curves.png", "config.json"} <= set(
        os.listdir(cluster.run)
    )
    assert "backup" not in os.listdir(cluster.run)
    config = json.loads((cluster.run / "config.json").read_text())
    assert config["finished"] is True and config["training"]["strategy"] == "multi-worker"
    norms = [
        layer for layer in _load(cluster.run).layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) == 3 and not any(layer.synchronized for layer in norms)


# One process with two replicas (two logical CPUs): what a worker with two GPUs runs. Its replicas take
# turns at its one input pipeline; BatchNorm statistics and the loss are the global batch's.
TWO_DEVICES = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cxrmodels.training import multi_worker
multi_worker._create_strategy = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
import cxrmodels
cxrmodels.train(sys.argv[1], out=sys.argv[2], epochs=int(sys.argv[3]), batch_size=int(sys.argv[4]), verbose=0,
                augment="none", balance="class-weight", patience=10, strategy="multi-worker",
                model_kwargs={"filters": (4, 8, 8), "dense_units": 8})
"""


@pytest.mark.slow
def test_a_worker_with_two_devices_trains_what_one_device_trains(converted_dataset, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-c", TWO_DEVICES, str(converted_dataset), str(run), str(EPOCHS), str(BATCH)]
    done = subprocess.run(argv, cwd=ROOT, env=_env(), timeout=TIMEOUT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # 45 records, 7 a replica: the last step's second replica has an empty filler batch.
    reference = one_device_run(converted_dataset, epochs=EPOCHS, batch_size=BATCH, workers=1)
    _assert_weights_like(run, reference)
    _assert_history_like(run, reference, list(reference.rows[0]))


@pytest.mark.slow
def test_workers_leave_the_loop_together_when_their_local_validation_losses_disagree(
    converted_dataset, tmp_path
):
    chief = tmp_path / "run"
    args = ["--batch-size", str(BATCH), "--patience", "1"]
    logs = _run_cluster(
        converted_dataset,
        [chief, tmp_path / "other"],
        epochs=EPOCHS,
        logs=tmp_path,
        args=args,
        fault="disagree",
    )
    assert "shifted by -10" in logs[0] and "shifted by +10" in logs[1]  # the fault was injected
    assert "worker 1 asks to stop after epoch 1" in logs[1]
    rows = _history(chief)
    printed = [_printed_validation(log) for log in logs]
    # Worker 1 wanted to stop after epoch 1; the cluster followed the chief, with one set of figures.
    assert len(rows) >= 2 and len(printed[0]) == len(printed[1]) == len(rows)
    assert printed[0] == printed[1]


@pytest.mark.slow
def test_an_infinite_gradient_on_one_worker_is_skipped_by_every_worker(converted_dataset, tmp_path):
    chief = tmp_path / "run"
    epochs = 2
    args = ["--batch-size", str(BATCH), "--mixed-precision", "float16"]
    logs = _run_cluster(
        converted_dataset, [chief, tmp_path / "other"], epochs=epochs, logs=tmp_path, args=args, fault="inf"
    )
    assert "gradients made infinite" in logs[1]
    # Every step of the run was skipped, by both: the loss scale halved at each (2**15 at the start),
    # and the trainable weights are the initial ones.
    steps = len(_global_batches(_worker_batches(converted_dataset, 0, workers=2, batch_size=BATCH)))
    scales = [re.findall(r"cxr-test: loss scale (\S+)", log) for log in logs]
    assert scales == [[f"{2.0**15 / 2 ** (steps * epochs):g}"]] * 2
    net = _load(chief)
    initial = _initial_model(converted_dataset, 2)
    for got, want in zip(net.trainable_weights, initial.trainable_weights, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.path)


def test_a_second_chief_is_refused_while_one_holds_the_run(converted_dataset, tmp_path, monkeypatch):
    import tensorflow as tf

    import cxrmodels
    from cxrdata.utils.output_dir import OutputFolderBusyError, lock_output_dir
    from cxrmodels.training import multi_worker

    run = tmp_path / "run"
    tf_config = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    # This process is the chief of a one-worker cluster; the default strategy stands in for the
    # collective one, which would configure TensorFlow for the whole test process.
    monkeypatch.setattr(multi_worker, "_create_strategy", tf.distribute.get_strategy)
    with lock_output_dir(run, what="training run"):  # the first chief
        with pytest.raises(OutputFolderBusyError, match="is being written by process"):
            cxrmodels.train(
                converted_dataset,
                out=run,
                epochs=1,
                batch_size=BATCH,
                strategy="multi-worker",
                augment="none",
                verbose=0,
                model_kwargs=MODEL_KWARGS,
            )
        assert os.listdir(run) == [".cxr.lock"]  # nothing written


@pytest.mark.slow
def test_a_chief_that_refuses_the_run_stops_every_worker(converted_dataset, tmp_path):
    outs = [tmp_path / "run", tmp_path / "worker1"]
    outs[0].mkdir()
    (outs[0] / "thesis.tex").write_text("mine")  # the chief refuses a folder that holds other files
    procs = _start_workers(converted_dataset, outs, epochs=1, logs=tmp_path)
    try:
        codes = []
        for i, (proc, _) in enumerate(procs):
            try:
                codes.append(proc.wait(timeout=TIMEOUT))
            except subprocess.TimeoutExpired:  # a worker must never wait for a chief that left
                pytest.fail(f"worker {i} hung:\n{(tmp_path / f'worker{i}.log').read_text()[-3000:]}")
    finally:
        _kill(procs)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [2, 1], logs
    assert "holds no training run" in logs[0]
    # Before: "failed: UnavailableError: ... Collective ops is aborted by: Socket closed" (and a chief
    # that stays alive, as in a notebook, left it waiting in its first collective).
    assert "The chief (worker 0) refused this run" in logs[1]
    assert sorted(os.listdir(outs[0])) == ["thesis.tex"]  # nothing written


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


def test_each_worker_validates_its_own_share_of_the_split(converted_dataset):
    from cxrmodels.training._distributed_loop import Loop

    config = types.SimpleNamespace(dataset=converted_dataset, batch_size=BATCH)
    everything = [
        hashlib.sha1(image.tobytes()).hexdigest()
        for images, _ in cxrdata.load(converted_dataset, "val", batch_size=BATCH, shuffle=False)
        for image in images.numpy()
    ]
    shares = [
        [
            hashlib.sha1(image.tobytes()).hexdigest()
            for images, _ in Loop._validation_batches(
                types.SimpleNamespace(config=config, workers=2, worker=i)
            )
            for image in images.numpy()
        ]
        for i in range(2)
    ]
    # Disjoint and the whole split: summing the workers' metric states counts each record once.
    assert sorted(shares[0] + shares[1]) == sorted(everything) and not set(shares[0]) & set(shares[1])
    assert abs(len(shares[0]) - len(shares[1])) <= 1


def test_nested_batch_norm_layers_are_synchronized_and_saved_unsynchronized(tmp_path):
    import keras

    from cxrmodels.models import load_model, save_model
    from cxrmodels.training.multi_worker import synchronize_batch_norm

    # A backbone inside the model, as the transfer models hold theirs.
    backbone = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()],
        name="backbone",
    )
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2)(
        keras.layers.Flatten()(keras.layers.BatchNormalization()(backbone(inputs)))
    )
    net = keras.Model(inputs, outputs)
    norms = [backbone.layers[-1], net.layers[2]]
    assert synchronize_batch_norm(net, True) == 2 and all(layer.synchronized for layer in norms)
    save_model(net, tmp_path / "model.keras")
    assert all(layer.synchronized for layer in norms)  # still synchronized for training
    loaded = load_model(tmp_path / "model.keras", compile=False)
    assert [layer.synchronized for layer in [loaded.get_layer("backbone").layers[-1], loaded.layers[2]]] == [
        False,
        False,
    ]


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
    procs = _start_workers(converted_dataset, [chief, other], epochs=4, logs=tmp_path, args=["--quiet"])
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

    _run_cluster(converted_dataset, [chief, other], epochs=4, logs=tmp_path, args=["--quiet"])
    rows = _history(chief)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # each epoch once
    assert rows[:saved] == before[:saved]  # the epochs done before the kill were not retrained
    config = json.loads((chief / "config.json").read_text())
    assert config["finished"] is True and config["results"]["resumed_from"] == saved
    assert not other.exists() and not (chief / "backup").exists()
