"""The setup both training loops share: seed, model, compile, resume, bookkeeping.

`open_session(plan, ...)` turns a checked `RunPlan` into a `Session`: the
compiled model (under the loop's `tf.distribute` strategy), restored from the
run's backup when it resumes, with the `EpochBookkeeping` callback that will
record each epoch. `Model.fit` (one process) and the multi-worker loop differ
only in how they run the steps of an epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import keras

from cxrmodels.metrics.keras_metrics import default_metrics
from cxrmodels.models.input_stack import build_model
from cxrmodels.runs import run_folder
from cxrmodels.training import run_state
from cxrmodels.training.bookkeeping import EpochBookkeeping
from cxrmodels.training.config import augmentation_layer
from cxrmodels.training.plan import RunPlan
from cxrmodels.training.run_state import RunState


@dataclasses.dataclass
class Session:
    """A run ready for its first (or next) epoch.

    Attributes:
        plan: The checked run.
        run_config: Its `config.json` (the finish sequence completes it).
        net: The compiled model, restored when the run resumes.
        bookkeeping: The callback that records each epoch.
        augment: The augmentation layer for the input pipeline (augment "cpu"), else None.
        resumed_from: Epochs already done.
        verbose: Keras' verbosity (0, 1 or 2).
    """

    plan: RunPlan
    run_config: dict[str, Any]
    net: keras.Model
    bookkeeping: EpochBookkeeping
    augment: Any
    resumed_from: int
    verbose: int

    @property
    def state(self) -> RunState:
        return self.bookkeeping.state

    @property
    def done(self) -> bool:
        """No epoch left: all were trained, or early stopping ended the run."""
        return self.state.epoch >= self.plan.config.epochs or self.state.stopped


def resolve_verbose(verbose: str | int) -> int:
    """Keras' "auto" made explicit: a progress bar on a terminal, one line per epoch in a log."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


@contextlib.contextmanager
def dtype_policy(policy: str | None) -> Iterator[None]:
    """Sets the global Keras dtype policy for the run, and restores the previous one after."""
    previous = keras.config.dtype_policy()
    try:
        if policy:
            keras.config.set_dtype_policy(policy)
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def compile_model(net: keras.Model, *, learning_rate: float, num_classes: int, positive: int | None) -> None:
    """Adam, categorical cross-entropy and the run's metrics (a LossScaleOptimizer under mixed_float16).

    Training and every trial of a search compile their models here.
    """
    net.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=default_metrics(num_classes, positive_index=positive),
    )
    net.optimizer.build(net.trainable_variables)  # its variables exist before a restore loads them


def open_session(plan: RunPlan, *, strategy, state: RunState | None, writer: bool) -> Session:
    """Builds, compiles and (when `state` is given) restores the run's model under `strategy`.

    Args:
        plan: The checked run.
        strategy: The `tf.distribute.Strategy` whose scope builds the model.
        state: The committed state of a run to resume, or None for a fresh one.
        writer: Whether this process writes the run folder (config.json now,
            each epoch's backup and files later).
    """
    config = plan.config
    keras.utils.set_random_seed(config.seed)
    aug = augmentation_layer(config)
    run_config = plan.run_config()
    run_config["training"]["augment_layer"] = None if aug is None else aug.get_config()
    if writer:
        run_folder.write_config(config.out, run_config)
    with strategy.scope():
        net = build_model(
            config.model,
            data_shape=plan.data_shape,
            model_shape=plan.model_shape,
            num_classes=plan.num_classes,
            equalize_radius=config.equalize_radius,
            augment=aug if config.augment == "gpu" else None,
            model_kwargs=config.model_kwargs,
        )
        compile_model(
            net, learning_rate=config.learning_rate, num_classes=plan.num_classes, positive=plan.positive
        )
    best = None
    if state is not None:
        state, best = run_state.restore(config.out, net, state, config.patience)
        if writer:
            run_state.write_derived_files(config.out, net, state, best)
    verbose = resolve_verbose(config.verbose)
    bookkeeping = EpochBookkeeping(
        config.out, state or RunState(), best, patience=config.patience, writer=writer, verbose=verbose != 0
    )
    bookkeeping.set_model(net)
    return Session(
        plan=plan,
        run_config=run_config,
        net=net,
        bookkeeping=bookkeeping,
        augment=aug if config.augment == "cpu" else None,
        resumed_from=state.epoch if state is not None else 0,
        verbose=verbose,
    )
