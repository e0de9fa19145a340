"""The steps of an epoch under a multi-worker strategy: the one part the two training loops do not share.

`Loop.run_epochs` drives the session's callbacks (`EpochBookkeeping`, Keras'
progress bar, TensorBoard on the chief) exactly as `Model.fit` would, around
its own train steps, validation and cluster-wide decisions. See
`cxrmodels.training.multi_worker` for the semantics.
"""

from __future__ import annotations

import functools
import math
import os

import keras
import numpy as np
import tensorflow as tf

import cxrdata
from cxrmodels.metrics.keras_metrics import default_metrics
from cxrmodels.runs import run_folder
from cxrmodels.training.session import Session

_EPOCH_SEED_STRIDE = 100_003  # the input seed of epoch e: seed * stride + e (a resumed run reads the same)


class Loop:
    """The distributed train step, the sharded input and the cluster-wide figures of one run."""

    def __init__(self, strategy: tf.distribute.Strategy, session: Session, cluster):
        self.strategy, self.session, self.cluster = strategy, session, cluster
        plan = session.plan
        self.config, self.net = plan.config, session.net
        self.optimizer = self.net.optimizer
        self.workers, self.worker = cluster.num_workers, cluster.worker_index
        k = plan.num_classes
        self.train_metrics = _metrics(k, plan.positive)
        self.val_metrics = _metrics(k, plan.positive)
        weights = cxrdata.class_weights(plan.dataset) if self.config.balance == "class-weight" else None
        self.class_weights = tf.constant([weights[i] if weights else 1.0 for i in range(k)], tf.float32)
        self.shape, self.num_classes = tuple(plan.data_shape), k
        self.records = [s.records for s in plan.manifest.splits["train"].shards]
        self.loss_fn = keras.losses.CategoricalCrossentropy(reduction=None)
        self._step = None  # traced once, for the input's element spec (see `_train_epoch`)
        self._predict = tf.function(
            lambda x: tf.cast(self.net(x, training=False), tf.float32), reduce_retracing=True
        )
        self._update = tf.function(_update, reduce_retracing=True)
        self._reducers = {}  # chief_only -> the tf.function of `_reduce`

    # --- input ----------------------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """The steps of every worker: enough for the one with the most records, `batch_size / workers` a step."""
        per_worker = self.config.batch_size // self.workers
        return max(math.ceil(sum(self.records[i :: self.workers]) / per_worker) for i in range(self.workers))

    def _dataset_fn(self, epoch: int):
        config, steps = self.config, self.steps_per_epoch()
        local_replicas = self.strategy.num_replicas_in_sync // self.workers  # this worker's devices

        def make(context: tf.distribute.InputContext):
            # Each of the worker's replicas takes the next batch of its pipeline at every step, so the
            # batches are per replica: a step reads the worker's next `batch_size / workers` records
            # whatever its number of devices, and the global batch is `batch_size`.
            ds = cxrdata.load(
                config.dataset,
                "train",
                batch_size=context.get_per_replica_batch_size(config.batch_size),
                shuffle=True,
                seed=config.seed * _EPOCH_SEED_STRIDE + epoch,
                augment=self.session.augment,
                input_context=context,
            )
            # Empty batches after this pipeline's records: no gradient, BatchNorm statistics or metric.
            empty = (
                tf.zeros([0, *self.shape], tf.uint8),
                tf.zeros([0, self.num_classes], tf.float32),
            )
            return ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat()).take(steps * local_replicas)

        return make

    def _distributed(self, epoch: int):
        return self.strategy.distribute_datasets_from_function(self._dataset_fn(epoch))

    # --- one train step ---------------------------------------------------------------------------------

    def _train_step(self, x, y):
        net, optimizer = self.net, self.optimizer
        scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_fn(x, y):
            ctx = tf.distribute.get_replica_context()
            count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
            weights = tf.gather(self.class_weights, tf.argmax(y, axis=-1))
            with tf.GradientTape() as tape:
                pred = tf.cast(net(x, training=True), tf.float32)
                per_example = self.loss_fn(y, pred) * weights
                # The mean over the global batch, as Model.fit's over one batch ("sum_over_batch_size").
                loss = tf.reduce_sum(per_example) / tf.maximum(count, 1.0)
                if net.losses:
                    loss += tf.add_n([tf.cast(v, tf.float32) for v in net.losses]) / ctx.num_replicas_in_sync
                scaled = optimizer.scale_loss(loss) if scaling else loss
            grads = tape.gradient(scaled, net.trainable_variables)
            if scaling:
                grads = _one_finiteness_verdict(ctx, grads)
            optimizer.apply(grads, net.trainable_variables)  # all-reduces (sums) the gradients
            return y, pred, per_example

        results = self.strategy.run(replica_fn, args=(x, y))
        return [self.strategy.gather(t, axis=0) for t in results]

    # --- epochs -----------------------------------------------------------------------------------------

    def run_epochs(self) -> None:
        """The epochs the run has left, with the session's callbacks; every worker leaves together."""
        session, config = self.session, self.config
        callbacks = [session.bookkeeping]
        if self.cluster.is_chief:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(config.out, run_folder.LOGS_DIR)))
        steps = self.steps_per_epoch()
        calls = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=session.verbose != 0,
            model=self.net,
            verbose=session.verbose,
            epochs=config.epochs,
            steps=steps,
        )
        if session.done:
            session.bookkeeping.restore_best()
            return
        self.net.stop_training = False
        calls.on_train_begin()
        for epoch in range(session.state.epoch, config.epochs):
            calls.on_epoch_begin(epoch)
            logs = self._train_epoch(epoch, calls)
            logs |= {f"val_{k}": v for k, v in self._validate().items()}
            calls.on_epoch_end(epoch, logs)
            # One decision for the cluster: the chief's.
            self.net.stop_training = bool(self.broadcast([float(self.net.stop_training)])[0])
            if self.net.stop_training:
                break
        calls.on_train_end()

    def _train_epoch(self, epoch: int, calls) -> dict[str, float]:
        for m in self.train_metrics:
            m.reset_state()
        batches = self._distributed(epoch)
        if self._step is None:
            # One trace for every batch size, the empty batches included: a worker that traced again
            # for a new shape would number its collectives differently from the others.
            self._step = tf.function(self._train_step, input_signature=batches.element_spec)
        for step, (x, y) in enumerate(batches):
            calls.on_train_batch_begin(step)
            y_all, pred, losses = self._step(x, y)
            self._update(self.train_metrics, y_all, pred, losses)
            calls.on_train_batch_end(step, {m.name: float(m.result()) for m in self.train_metrics})
        return {m.name: float(m.result()) for m in self.train_metrics}

    def _validation_batches(self):
        """This worker's share of the "val" split: every W-th record, so the workers' shares are disjoint."""
        ds = cxrdata.load(self.config.dataset, "val", batch_size=self.config.batch_size, shuffle=False)
        return ds.unbatch().shard(self.workers, self.worker).batch(self.config.batch_size)

    def _validate(self) -> dict[str, float]:
        """Validation metrics over the whole split: each worker's share, the metric states summed."""
        for m in self.val_metrics:
            m.reset_state()
        for x, y in self._validation_batches():
            pred = self._predict(x)
            self._update(self.val_metrics, y, pred, self.loss_fn(y, pred))
        variables = [v for m in self.val_metrics for v in m.variables]
        for var, total in zip(variables, self.all_reduce_sum([v.value for v in variables])):
            var.assign(tf.cast(total, var.dtype))
        return {m.name: float(m.result()) for m in self.val_metrics}

    def val_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """`(labels, probabilities)` of the model on the whole "val" split, computed here (the chief)."""
        ds = cxrdata.load(
            self.config.dataset, "val", batch_size=self.config.batch_size, shuffle=False, label_mode="int"
        )
        labels, probs = [], []
        for x, y in ds:
            probs.append(np.asarray(self._predict(x), dtype=np.float64))
            labels.append(np.asarray(y))
        return np.concatenate(labels).astype(np.int64), np.concatenate(probs)

    # --- cluster-wide values ------------------------------------------------------------------------------

    def take_chiefs_state(self) -> None:
        """Gives every worker the chief's weights, optimizer state and bookkeeping (after a resume)."""
        state = self.session.bookkeeping.state
        has_best = self.session.bookkeeping.best_weights is not None
        best = state.best if not math.isinf(state.best) else math.nan
        values = self.broadcast([state.epoch, best, state.best_epoch, state.wait, state.stopped, has_best])
        state.epoch, state.best_epoch, state.wait = int(values[0]), int(values[2]), int(values[3])
        state.best = math.inf if math.isnan(values[1]) else values[1]
        state.stopped = bool(values[4])
        self.session.resumed_from = state.epoch
        self.broadcast_variables(self.net.weights + self.optimizer.variables)
        if values[5]:
            mine = self.session.bookkeeping.best_weights or self.net.get_weights()
            self.session.bookkeeping.best_weights = [
                t.numpy() for t in self._broadcast([tf.constant(w, tf.float64) for w in mine])
            ]

    def broadcast(self, values: list[float]) -> list[float]:
        """The chief's `values` (numbers), on every worker."""
        out = self._broadcast([tf.constant([float(v) for v in values], tf.float64)])
        return [float(v) for v in out[0].numpy()]

    def broadcast_variables(self, variables) -> None:
        """Gives every worker the chief's values of `variables`."""
        values = [tf.cast(v.value if isinstance(v, keras.Variable) else v, tf.float64) for v in variables]
        for var, value in zip(variables, self._broadcast(values)):
            var.assign(tf.cast(value, var.dtype))

    def _broadcast(self, values):
        return self._reduce(values, chief_only=True)

    def all_reduce_sum(self, values):
        """The sum over workers of each worker's `values` (each counted once, whatever its replicas)."""
        return self._reduce([tf.cast(v, tf.float64) for v in values], chief_only=False)

    def _reduce(self, values, *, chief_only: bool):
        """`values` (float64 tensors) reduced as one flat vector: one collective, one trace per kind."""
        if not values:
            return []
        if chief_only not in self._reducers:
            # Kept: a tf.function made per call would trace at every call. Every worker calls in the same
            # order, so their collectives match.
            self._reducers[chief_only] = tf.function(
                lambda flat: self.strategy.run(
                    functools.partial(self._replica_reduce, chief_only=chief_only), args=(flat,)
                ),
                input_signature=[tf.TensorSpec([None], tf.float64)],
            )
        flat = tf.concat([tf.reshape(v, [-1]) for v in values], axis=0)
        reduced = self.strategy.experimental_local_results(self._reducers[chief_only](flat))[0]
        parts = tf.split(reduced, [int(tf.size(v)) for v in values])
        return [tf.reshape(part, tf.shape(v)) for part, v in zip(parts, values)]

    def _replica_reduce(self, values, *, chief_only: bool):
        ctx = tf.distribute.get_replica_context()
        local = max(1, self.strategy.num_replicas_in_sync // self.workers)
        rid = ctx.replica_id_in_sync_group
        keep = tf.equal(rid, 0) if chief_only else tf.equal(rid % local, 0)  # one replica per worker
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values * tf.cast(keep, tf.float64))


def everyone_ok(strategy: tf.distribute.Strategy, ok: bool) -> bool:
    """Whether every worker says ok: one collective, which every worker must join once."""

    def replica(flag):
        # tf.identity: a tensor made on the replica's device (the argument has none to reduce to)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

    failed = tf.constant([0.0 if ok else 1.0], tf.float64)
    total = tf.function(lambda flag: strategy.run(replica, args=(flag,)))(failed)
    return float(strategy.experimental_local_results(total)[0][0]) == 0.0


def _one_finiteness_verdict(ctx, grads):
    """Gradients that are non-finite on every replica when they are on any (one skip/apply for all)."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
    # The replicas with a non-finite gradient, counted: `tf.distribute.ReduceOp` has SUM and MEAN only.
    non_finite = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(non_finite > 0, math.nan, 0.0)
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def _metrics(num_classes: int, positive: int | None) -> list:
    # Plain (not mirrored) metrics, outside the strategy's scope: updated with gathered values.
    # "accuracy" is what compile makes of it with one-hot labels.
    named = [
        keras.metrics.CategoricalAccuracy(name="accuracy") if m == "accuracy" else m
        for m in default_metrics(num_classes, positive_index=positive)
    ]
    return [keras.metrics.Mean(name="loss")] + named


def _update(metrics, y, pred, losses) -> None:
    # The loss as Model.fit reports it: the mean of the (class-weighted) per-example losses. The other
    # metrics unweighted, as Model.fit updates `compile(metrics=...)`: class weights weight only the
    # loss and `weighted_metrics` (keras/src/trainers/compile_utils.py, CompileMetrics.update_state).
    metrics[0].update_state(losses)
    for m in metrics[1:]:
        m.update_state(y, pred)
