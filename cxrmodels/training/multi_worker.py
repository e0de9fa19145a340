"""`train(..., strategy="multi-worker")`: one model trained by several processes or machines.

The cluster is described the usual way, by `TF_CONFIG` in each process. With
TensorFlow 2.16 and Keras 3, `Model.fit` under `MultiWorkerMirroredStrategy`
fails (keras-team/keras#20585: "ValueError: Attempt to convert a value
(PerReplica:{...}) with an unsupported type ... to a Tensor."), so the steps of
an epoch run in this module's loop: `strategy.run` of one train step, the
gradients all-reduced by the Keras optimizer. Everything else is the
single-process core's: `plan_run`, `open_session` (model, compile, resume), the
`EpochBookkeeping` callback (history, early stopping, best weights, backup)
driven through a `keras.callbacks.CallbackList` with Keras' progress bar, and
`lifecycle.finish`.

What it means: what one device would do on the same global batches (at each
step, the concatenation of the batches every replica read), which
`tests/cxrmodels/test_multi_worker.py` checks against `Model.fit` on one device:

- BatchNormalization layers are synchronized across replicas (their moments
  are all-reduced), so every replica normalizes with the statistics of the
  global batch and keeps the same moving averages. Saved models hold them
  unsynchronized (`cxrmodels.save_model`): the file loads as an ordinary model.
- Input is sharded by file (`cxrdata.load(input_context=...)`): each record is
  read by one worker once per epoch. A worker's replicas (its devices) take a
  per-replica batch each from its pipeline, so a step reads `batch_size`
  records in all, whatever the number of devices. A worker whose files run out
  first feeds empty batches, which add nothing to gradients, BatchNorm
  statistics (synchronized moments count the examples of every replica; an
  empty batch's own moments would be NaN) or metrics, so all take the same
  number of steps (the collectives need it).
- The loss is the mean over the global batch of the per-example losses
  weighted by class weights (`Model.fit`'s loss with `class_weight`); train
  metrics are those of the gathered global batch, unweighted, as `Model.fit`
  computes `compile(metrics=...)`.
- Validation is sharded across workers (every W-th record) and its metric
  states are summed across workers, so every worker holds, prints and records
  the figures of the whole split; early stopping, best weights and checkpoints
  follow them, and the chief's stop decision is broadcast each epoch, so all
  workers leave the loop together.
- Under `mixed_float16` the finiteness of the gradients is one verdict for the
  cluster (all-reduced before the optimizer sees them): every worker applies
  or skips a step and lowers the loss scale together.
- Only the chief (task "chief", or "worker" 0 without one) writes the run
  folder and holds its lock, as single-process training does; a rerun of every
  worker resumes from the chief's last committed epoch, which the chief
  broadcasts.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import keras

from cxrdata.utils.output_dir import lock_output_dir
from cxrmodels.models.saving import all_layers
from cxrmodels.training.lifecycle import TrainResult, finish, prepare_run_dir
from cxrmodels.training.plan import RunPlan
from cxrmodels.training.session import dtype_policy, open_session


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster that `TF_CONFIG` describes."""

    num_workers: int
    task_type: str | None
    task_index: int
    _has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        return self.task_type in (None, "chief") or (
            self.task_type == "worker" and self.task_index == 0 and not self._has_chief
        )

    @property
    def worker_index(self) -> int:
        """0 for the chief, then the workers in order."""
        if self.task_type == "worker" and self._has_chief:
            return self.task_index + 1
        return self.task_index


def cluster_from_env() -> Cluster:
    """Reads `TF_CONFIG` (no variable: one worker, the chief).

    Raises:
        ValueError: `TF_CONFIG` is not JSON of the usual form.
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        return Cluster(num_workers=1, task_type=None, task_index=0)
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        task_type, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(
            '`TF_CONFIG` must be JSON such as {"cluster": {"worker": ["host1:port", '
            '"host2:port"]}, "task": {"type": "worker", "index": 0}}. '
            f"Received: TF_CONFIG={text!r} ({e})"
        ) from None
    if task_type not in ("chief", "worker") or workers < 1:
        raise ValueError(
            '`TF_CONFIG` must list the workers in "cluster" and give this process\'s '
            f'"task" type "worker" (or "chief") and index. Received: TF_CONFIG={text!r}'
        )
    return Cluster(
        num_workers=workers, task_type=task_type, task_index=index, _has_chief=bool(cluster.get("chief"))
    )


def check_cluster(manifest, batch_size: int) -> Cluster:
    """The cluster, checked against the dataset and batch size before anything is written.

    Raises:
        ValueError: fewer train shard files than workers, or a batch size the
            workers cannot split evenly.
    """
    cluster = cluster_from_env()
    shards = len(manifest.splits["train"].shards)
    if shards < cluster.num_workers:
        raise ValueError(
            f"Multi-worker training shards the input by file, so the train split needs at least one "
            f"shard file per worker: it has {shards} for {cluster.num_workers} workers. Convert the "
            f"dataset again with a smaller --shard-size (`cxr convert SRC DATA --shard-size MB`)."
        )
    if batch_size % cluster.num_workers:
        raise ValueError(
            f"`batch_size` (global) must be a multiple of the number of workers, "
            f"{cluster.num_workers}. Received: batch_size={batch_size}"
        )
    return cluster


def _create_strategy():
    """The strategy of the loop (the tests put a one-process reference here)."""
    import tensorflow as tf  # deferred: `import cxrmodels` does not import TensorFlow

    return tf.distribute.MultiWorkerMirroredStrategy()


def train_multi_worker(plan: RunPlan, *, start: float) -> TrainResult | None:
    """Runs `train` over the cluster; the chief returns the run's `TrainResult`, the others None."""
    config = plan.config
    if config.balance == "oversample":
        raise ValueError(
            "`balance='oversample'` is not offered with strategy='multi-worker' (it samples endlessly, so "
            "records cannot be sharded once per epoch). Use balance='class-weight'. Received: balance='oversample'"
        )
    cluster = check_cluster(plan.manifest, config.batch_size)
    strategy = _create_strategy()  # first: it configures the collectives before other TF work
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"`batch_size` (global) must be a multiple of the {strategy.num_replicas_in_sync} replicas. "
            f"Received: batch_size={config.batch_size}"
        )
    chief = cluster.is_chief
    with contextlib.ExitStack() as stack, dtype_policy(config.mixed_precision):
        state = _prepare_on_the_chief(stack, plan, strategy) if chief else _wait_for_the_chief(strategy)
        session = open_session(plan, strategy=strategy, state=state, writer=chief)
        synchronize_batch_norm(session.net, strategy.num_replicas_in_sync > 1)
        from cxrmodels.training._distributed_loop import Loop  # deferred: TensorFlow

        loop = Loop(strategy, session, cluster)
        loop.take_chiefs_state()
        loop.run_epochs()
        val = loop.val_predictions() if chief else None
        if not chief:
            return None
        return finish(
            config.out,
            session.net,
            session.run_config,
            session.state,
            val_predictions=val,
            resumed_from=session.resumed_from,
            start=start,
        )


def _prepare_on_the_chief(stack: contextlib.ExitStack, plan: RunPlan, strategy):
    """Locks and prepares RUN, then tells the workers whether it could (a refusal stops them all)."""
    from cxrmodels.training._distributed_loop import everyone_ok  # deferred: TensorFlow

    try:
        stack.enter_context(lock_output_dir(plan.config.out, what="training run"))
        state = prepare_run_dir(plan.config, plan.run_config())
    except BaseException:
        everyone_ok(strategy, False)  # the workers wait for this answer: they leave instead of hanging
        raise
    everyone_ok(strategy, True)
    return state


def _wait_for_the_chief(strategy) -> None:
    """Waits for the chief to prepare RUN; raises if it refused (its own output says why)."""
    from cxrmodels.training._distributed_loop import everyone_ok  # deferred: TensorFlow

    if not everyone_ok(strategy, True):
        raise RuntimeError(
            "The chief (worker 0) refused this run, so this worker stops too: its output says why "
            "(a finished run, a folder in use or with other files...)."
        )
    return None


def synchronize_batch_norm(net: keras.Model, on: bool) -> int:
    """Sets `synchronized` on every BatchNormalization layer of `net` (nested ones too); returns their count.

    Synchronized layers all-reduce their batch moments across replicas, so the
    statistics are the global batch's. `cxrmodels.save_model` saves them
    unsynchronized: a saved model loads as an ordinary one.
    """
    count = 0
    for layer in all_layers(net):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = on
            count += 1
    return count
