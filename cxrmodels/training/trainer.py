"""`train`: a registered model on a converted dataset, into a resumable run folder.

The run folder (see `cxrmodels.runs.run_folder`) gets the best model, the
history, the learning curves and a `config.json` that holds the run's
`TrainConfig` and everything needed to rebuild and use the model. Training is
resumable: every epoch is committed to `RUN/backup/` (`run_state`), and
rerunning the same command on a run killed at any moment continues from the
last committed epoch, with early stopping's state and the best weights as
they were.

One core serves both loops: `plan_run` checks everything before a file is
written, `open_session` builds, compiles and restores the model, the
`EpochBookkeeping` callback records every epoch, and `lifecycle.finish`
completes the run. Here the steps of an epoch are `Model.fit`'s; under
`strategy="multi-worker"` they are `multi_worker`'s loop.
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras

import cxrdata
from cxrdata.utils.output_dir import lock_output_dir
from cxrdata.verification import explain_read_error
from cxrmodels.models.predicting import predict_split
from cxrmodels.runs import run_folder
from cxrmodels.training.config import TrainConfig
from cxrmodels.training.lifecycle import TrainResult, finish, prepare_run_dir
from cxrmodels.training.plan import plan_run
from cxrmodels.training.session import Session, dtype_policy, open_session

__all__ = ["TrainResult", "train"]


def train(
    dataset_dir: str | os.PathLike | None = None, *, config: TrainConfig | None = None, **options: Any
) -> TrainResult | None:
    """Trains a registered model on a converted dataset and fills a run folder.

    The model is compiled with Adam, categorical cross-entropy and
    `cxrmodels.metrics.keras_metrics.default_metrics` (accuracy, AUC, precision,
    recall = sensitivity and specificity of the positive class), with Keras'
    `jit_compile="auto"`. It validates on the dataset's "val" split after each
    epoch, stops early on `val_loss` (restoring the best weights, as Keras'
    `EarlyStopping` does), keeps the best model in `out/model.keras`, commits
    every epoch to `out/backup` and logs to TensorBoard (`out/logs`) and
    `out/history.csv`. At the end the best model predicts the "val" split and
    its Youden threshold is stored in `config.json` (`decision_threshold`),
    which evaluation applies unchanged to any dataset.

    Args:
        dataset_dir: A folder written by `cxrdata.convert`, with "train" and
            "val" splits (or `config.dataset`).
        config: A `TrainConfig` with every option. Defaults to None: the
            defaults, with `options` on top.
        **options: Any `TrainConfig` field, on top of `config`: `out` (the run
            folder, required), `model` ("seed_cnn"), `epochs` (30),
            `batch_size` (32), `learning_rate` (1e-3), `mixed_precision`
            (None: float32; True/"float16" or "bfloat16"), `augment` ("gpu", "cpu" or
            "none"), `augment_strength` (1.0), `balance` ("none",
            "oversample", "class-weight"), `image_size` (None: the dataset's),
            `resize_in_model` (False), `equalize_radius` (None;
            `LocalEqualization` in the model, for datasets converted with
            `equalize="none"`), `seed` (0), `strategy` (None, "mirrored",
            "multi-worker" or a `tf.distribute.Strategy`), `patience` (10),
            `verbose` ("auto"), `overwrite` (False), `model_kwargs` (the model's
            own options). Older names are accepted: `equalize_in_model`.

    Returns:
        A `TrainResult` (None on the workers of a multi-worker run other than the chief).

    Raises:
        ValueError: A bad argument, an unknown model, a dataset without a
            "val" split, an image size mismatch without `resize_in_model`.
        TypeError: An argument of the wrong type, or an option the model
            does not take.
        FileNotFoundError: The dataset is missing.
        FileExistsError: `out` holds a finished run (pass `overwrite=True`),
            an unfinished one trained with other options, or files that are
            not a run.

    Example:
        >>> result = train("data/", model="seed_cnn", out="runs/a", epochs=30,
        ...                mixed_precision=True)  # doctest: +SKIP
        >>> config = TrainConfig.from_file("train.yaml")  # doctest: +SKIP
        >>> result = train(config=config, epochs=5)  # doctest: +SKIP
    """
    start = time.perf_counter()
    if dataset_dir is not None:
        options["dataset"] = dataset_dir
    config = TrainConfig.from_kwargs(config, **options)
    plan = plan_run(config)
    if config.strategy == "multi-worker":
        from cxrmodels.training.multi_worker import train_multi_worker  # deferred: TF_CONFIG work

        return train_multi_worker(plan, start=start)
    with lock_output_dir(config.out, what="training run"), dtype_policy(config.mixed_precision):
        state = prepare_run_dir(config, plan.run_config())
        session = open_session(plan, strategy=_strategy(config.strategy), state=state, writer=True)
        _fit(session)
        net = session.net
        val = predict_split(net, config.dataset, "val", batch_size=config.batch_size)
        return finish(
            config.out,
            net,
            session.run_config,
            session.state,
            val_predictions=val,
            resumed_from=session.resumed_from,
            start=start,
        )


def _strategy(strategy):
    import tensorflow as tf  # deferred: `import cxrmodels` does not import TensorFlow

    if strategy is None:
        return tf.distribute.get_strategy()  # the default (no-op) strategy
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if isinstance(strategy, str):
        raise ValueError(
            f"`strategy` {strategy!r} is a strategy's name read back from a run: pass the "
            "tf.distribute.Strategy object itself, or 'mirrored'."
        )
    return strategy


def _fit(session: Session) -> None:
    """The epochs left, under `Model.fit` (nothing when the run has none left)."""
    config, net = session.plan.config, session.net
    if session.done:
        session.bookkeeping.restore_best()
        return
    train_ds = cxrdata.load(
        config.dataset,
        "train",
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        augment=session.augment,
        balance="oversample" if config.balance == "oversample" else None,
    )
    val_ds = cxrdata.load(config.dataset, "val", batch_size=config.batch_size, shuffle=False)
    class_weight = cxrdata.class_weights(config.dataset) if config.balance == "class-weight" else None
    callbacks = [
        keras.callbacks.TensorBoard(os.path.join(config.out, run_folder.LOGS_DIR)),
        session.bookkeeping,
    ]
    try:
        net.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=session.state.epoch,
            class_weight=class_weight,
            shuffle=False,
            callbacks=callbacks,
            verbose=session.verbose,
        )
    except Exception as e:  # a damaged shard: name it (the pipeline's checks cannot)
        explained = explain_read_error(config.dataset, e)
        if explained is e:
            raise
        raise explained from e
