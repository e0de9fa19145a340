"""`train`: a registered model on a converted dataset, into a resumable run folder.

The run folder (see `cxrmodels.runs.run_folder`) gets the best model, the history, the
learning curves and a `config.json` that holds everything needed to rebuild
and use the model. Training is resumable: `BackupAndRestore` saves the state
at the end of every epoch, and rerunning the same command on a run killed
mid-epoch continues from the last finished epoch. Early stopping and the
best-model checkpoint continue from where they were too: their state is
rebuilt from `history.csv` and `model.keras`.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import keras

from cxrdata.utils.output_dir import lock_output_dir
from cxrmodels.models.saving import save_model
from cxrmodels.runs import run_folder
from cxrmodels.training import resume as _resume
from cxrmodels.training.options import augmentation_layer, check_train_args, input_shapes


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What `train` did.

    Attributes:
        run_dir: The run folder.
        model: The trained model, with the weights of the best epoch.
        history: `{metric: values}` per epoch over the whole run (resumed
            epochs included), as in `history.csv`.
        epochs: Epochs finished in all.
        best_epoch: The epoch (1-based) with the lowest validation loss.
        best_val_loss: That loss.
        resumed_from: Epochs already done when this call started (0: fresh).
        seconds: Wall time of this call.
        config: The run's `config.json`.
    """

    run_dir: str
    model: keras.Model
    history: dict[str, list[float]]
    epochs: int
    best_epoch: int
    best_val_loss: float
    resumed_from: int
    seconds: float
    config: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        resumed = f", resumed after epoch {self.resumed_from}" if self.resumed_from else ""
        epochs = f"{self.epochs} epoch{'s' * (self.epochs != 1)}"
        return (
            f"Trained {self.config['model']['name']} for {epochs}{resumed} in "
            f"{self.seconds:.1f}s; best epoch {self.best_epoch} (val_loss {self.best_val_loss:.4f}). "
            f"Run folder: {self.run_dir} ({run_folder.MODEL_NAME}, {run_folder.HISTORY_NAME}, "
            f"{run_folder.CURVES_NAME}, {run_folder.CONFIG_NAME})"
        )


def train(
    dataset_dir: str | os.PathLike,
    *,
    model: str = "seed_cnn",
    out: str | os.PathLike,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    mixed_precision: bool | str = False,
    augment: str = "gpu",
    balance: str = "none",
    image_size: int | tuple[int, int] | None = None,
    resize_in_model: bool = False,
    equalize_in_model: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    strategy=None,
    model_kwargs: dict[str, Any] | None = None,
    augment_strength: float = 1.0,
    patience: int = 10,
    verbose: str | int = "auto",
) -> TrainResult | None:
    """Trains a registered model on a converted dataset and fills a run folder.

    The model is compiled with Adam, categorical cross-entropy and
    `cxrmodels.metrics.keras_metrics.default_metrics` (accuracy, AUC, precision,
    recall = sensitivity and specificity of the positive class), with Keras'
    `jit_compile="auto"`. It validates on the dataset's "val" split after each
    epoch, with EarlyStopping on `val_loss` (restoring the best weights),
    ModelCheckpoint of the best model to `out/model.keras`, BackupAndRestore
    (`out/backup`), TensorBoard (`out/logs`) and CSVLogger (`out/history.csv`).
    At the end it writes the best model atomically, `learning_curves.png` and
    `config.json` with `"finished": true`, and only then removes `out/backup`:
    a run killed anywhere before that is finished by a rerun, never retrained.

    Args:
        dataset_dir: A folder written by `cxrdata.convert`, with "train" and
            "val" splits.
        model: A name from `cxrmodels.list_models()`. Defaults to "seed_cnn".
        out: The run folder. A folder holding a finished run is refused unless
            `overwrite`; one holding an unfinished run resumes it.
        epochs: Total epochs (also counting those of a resumed run). Defaults to 30.
        batch_size: Examples per batch (global, over all replicas). Defaults to 32.
        learning_rate: Adam's learning rate. Defaults to 1e-3.
        mixed_precision: False (float32), True or "float16" (`mixed_float16`,
            for GPUs) or "bfloat16" (`mixed_bfloat16`, for TPUs and recent
            CPUs). The global policy is set while training and restored after.
            Defaults to False.
        augment: "gpu" (a `cxrdata.RandomAffine` with `ImageDataGenerator`'s
            reference ranges, inside the model: it runs on the accelerator, in
            training only), "cpu" (the same layer in the `tf.data` pipeline) or
            "none". Defaults to "gpu".
        balance: "none", "oversample" (each class drawn equally often by the
            pipeline) or "class-weight" (balanced loss weights). Defaults to "none".
        image_size: The model's input size, int or (height, width). Defaults
            to None: the dataset's image size.
        resize_in_model: When `image_size` differs from the dataset's, put a
            `keras.layers.Resizing` at the model's input (which then takes the
            dataset's size). Without it such a mismatch is a ValueError.
            Defaults to False.
        equalize_in_model: A disk radius: put `cxrdata.LocalEqualization(radius)`
            at the model's input, before the augmentation, so the equalization
            runs on the device and is part of the saved model (predict,
            evaluate and export then feed it unequalized images, as the
            dataset holds them). The dataset must be converted with
            `equalize="none"`. Recorded in `config.json` as
            `model.equalize_in_model`. Defaults to None (no equalization in the model).
        seed: Seeds Keras, the pipeline's shuffling and the augmentation.
            Defaults to 0.
        overwrite: Replace a run already in `out`. Defaults to False.
        strategy: None, "mirrored" (`tf.distribute.MirroredStrategy` over the
            local GPUs, or the CPU), "multi-worker" (several processes or
            machines described by `TF_CONFIG`, see
            `cxrmodels.training.multi_worker`; only the chief writes `out` and
            returns the result, the others return None) or a
            `tf.distribute.Strategy`. Defaults to None.
        model_kwargs: The model's own options (see
            `cxrmodels.models._registry.model_options`), and `weights`. Defaults to None.
        augment_strength: Scales every augmentation range (0 turns it off).
            Defaults to 1.0.
        patience: EarlyStopping's patience in epochs. Defaults to 10.
        verbose: `Model.fit`'s verbosity: "auto", 0, 1 or 2. Defaults to "auto".

    Returns:
        A `TrainResult` (None on the workers of a multi-worker run other than the chief).

    Raises:
        ValueError: A bad argument, an unknown model, a dataset without a
            "val" split, an image size mismatch without `resize_in_model`, or
            an unfinished run in `out` trained with other options.
        TypeError: An argument of the wrong type, or an option the model
            does not take.
        FileNotFoundError: The dataset is missing.
        FileExistsError: `out` holds a finished run (pass `overwrite=True`),
            or files that are not a run.

    Example:
        >>> result = train("data/", model="seed_cnn", out="runs/a", epochs=30,
        ...                mixed_precision=True)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    start = time.perf_counter()
    opts = check_train_args(
        model=model,
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        mixed_precision=mixed_precision,
        augment=augment,
        balance=balance,
        image_size=image_size,
        resize_in_model=resize_in_model,
        equalize_in_model=equalize_in_model,
        seed=seed,
        strategy=strategy,
        model_kwargs=model_kwargs,
        augment_strength=augment_strength,
        patience=patience,
        verbose=verbose,
    )
    import cxrdata
    from cxrmodels.metrics.clinical import positive_class_index
    from cxrmodels.models import model_options

    dataset_dir = os.fspath(dataset_dir)
    out = os.fspath(out)
    manifest = cxrdata.read_manifest(dataset_dir)
    for split in ("train", "val"):
        if split not in manifest.splits or not manifest.splits[split].num_examples:
            raise ValueError(
                f"The dataset {dataset_dir!r} has no {split!r} split{' for validation' * (split == 'val')} "
                f"(it has: {', '.join(manifest.splits) or 'none'}). Training needs train and val "
                f"splits: convert with `cxr convert SRC {dataset_dir} --splits 0.7,0.15,0.15`."
            )
    # An unknown model name or option fails here, before any file is written.
    unknown = sorted(set(opts["model_kwargs"]) - set(model_options(opts["model"])) - {"weights"})
    if unknown:
        raise TypeError(
            f"Model {opts['model']!r} got unexpected options {unknown}. "
            f"Accepted options: {sorted(model_options(opts['model']))}."
        )
    if opts["equalize_in_model"] is not None and manifest.preprocessing.get("equalize") != "none":
        raise ValueError(
            f"The dataset {dataset_dir!r} is already equalized (equalize="
            f"{manifest.preprocessing.get('equalize')!r}); equalizing again in the model would do it twice. "
            f"Convert with --equalize none (equalize='none') to equalize in the model. Received: "
            f"equalize_in_model={opts['equalize_in_model']}"
        )
    model_shape, data_shape = input_shapes(
        manifest.image_shape, opts["image_size"], resize_in_model=opts["resize_in_model"]
    )
    k = manifest.num_classes
    positive = positive_class_index(manifest.class_names) if k == 2 else None
    config = {
        "format_version": run_folder.FORMAT_VERSION,
        "library_version": cxrdata.__version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "finished": False,
        "model": {
            "name": opts["model"],
            "kwargs": opts["model_kwargs"],
            "input_shape": list(data_shape),
            "image_size": list(model_shape[:2]),
            "resize_in_model": data_shape != model_shape,
            "equalize_in_model": opts["equalize_in_model"],
            "num_classes": k,
        },
        "class_names": list(manifest.class_names),
        "positive_class": None if positive is None else manifest.class_names[positive],
        "dataset": {
            "path": os.path.abspath(dataset_dir),
            "digest": manifest.digest(),
            "image_shape": list(manifest.image_shape),
            "encoding": manifest.encoding,
            "counts": {s: dict(info.counts) for s, info in manifest.splits.items()},
        },
        "preprocessing": dict(manifest.preprocessing),
        "training": {
            key: opts[key]
            for key in (
                "epochs",
                "batch_size",
                "learning_rate",
                "mixed_precision",
                "augment",
                "augment_strength",
                "balance",
                "seed",
                "strategy",
                "patience",
                "verbose",
            )
        }
        | {"optimizer": "adam", "loss": "categorical_crossentropy", "validation_split": "val"},
    }
    if opts["strategy"] == "multi-worker":  # a custom loop: Model.fit fails under that strategy
        from cxrmodels.training.multi_worker import train_multi_worker

        return train_multi_worker(
            dataset_dir,
            out,
            config,
            opts,
            overwrite=overwrite,
            start=start,
            finish=_finish,
            build_model=lambda aug: _build_model(opts, model_shape, data_shape, k, aug),
        )
    lock = contextlib.ExitStack()  # held until the run's last write; a second writer is refused
    lock.enter_context(lock_output_dir(out, what="training run"))
    previous_policy = keras.config.dtype_policy()
    try:
        done = _resume.prepare_run_dir(out, config, overwrite=overwrite)
        if opts["policy"]:
            keras.config.set_dtype_policy(opts["policy"])
        keras.utils.set_random_seed(opts["seed"])
        aug = augmentation_layer(opts)
        config["training"]["augment_layer"] = None if aug is None else aug.get_config()
        run_folder.write_config(out, config)
        dist = _make_strategy(opts["strategy_obj"])
        with dist.scope():
            net = _build_model(opts, model_shape, data_shape, k, aug if opts["augment"] == "gpu" else None)
            net.compile(
                optimizer=keras.optimizers.Adam(opts["learning_rate"]),
                loss=keras.losses.CategoricalCrossentropy(),
                metrics=_default_metrics(k, positive),
            )
        train_ds = cxrdata.load(
            dataset_dir,
            "train",
            batch_size=opts["batch_size"],
            shuffle=True,
            seed=opts["seed"],
            augment=aug if opts["augment"] == "cpu" else None,
            balance="oversample" if opts["balance"] == "oversample" else None,
        )
        val_ds = cxrdata.load(dataset_dir, "val", batch_size=opts["batch_size"], shuffle=False)
        class_weight = cxrdata.class_weights(dataset_dir) if opts["balance"] == "class-weight" else None
        history = run_folder.read_history(os.path.join(out, run_folder.HISTORY_NAME))
        resume = _resume.resume_state(history, opts["patience"])
        if done < opts["epochs"] and not resume.stopped:
            try:
                net.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=opts["epochs"],
                    class_weight=class_weight,
                    shuffle=False,
                    callbacks=_callbacks(out, opts, resume),
                    verbose=opts["verbose"],
                )
            except Exception as e:  # a damaged shard: name it (the pipeline's checks cannot)
                from cxrdata.verification import explain_read_error

                explained = explain_read_error(dataset_dir, e)
                if explained is e:
                    raise
                raise explained from e
        else:  # killed after its last epoch: nothing left to train but the final writes
            _resume.restore_finished(net, out)
        return _finish(out, net, config, resumed_from=done, start=start)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        lock.close()


def _default_metrics(k: int, positive: int | None) -> list:
    from cxrmodels.metrics.keras_metrics import default_metrics

    return default_metrics(k, positive_index=positive)


def _make_strategy(strategy):
    import tensorflow as tf

    if strategy is None:
        return tf.distribute.get_strategy()  # the default (no-op) strategy
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return strategy


def _build_model(opts, model_shape, data_shape, num_classes, aug) -> keras.Model:
    from cxrmodels.models import create_model

    front = aug
    if data_shape != model_shape:
        # Inside the `augment` slot the resize stays in the model's own graph (no nested
        # model, so Grad-CAM finds the conv layers) and runs in inference too.
        resize = keras.layers.Resizing(*model_shape[:2], interpolation="bilinear", name="resize")
        front = keras.Sequential([resize] + ([aug] if aug is not None else []), name="input_block")
    kwargs = dict(opts["model_kwargs"])
    if "filters" in kwargs:
        kwargs["filters"] = tuple(kwargs["filters"])
    equalize = None
    if opts.get("equalize_in_model") is not None:
        from cxrdata.layers.local_equalization import LocalEqualization

        equalize = LocalEqualization(opts["equalize_in_model"], name="local_equalization")
    return create_model(
        opts["model"],
        input_shape=tuple(data_shape),
        num_classes=num_classes,
        augment=front,
        equalize=equalize,
        **kwargs,
    )


def _callbacks(out: str, opts: dict, resume: _resume.ResumeState) -> list:
    model_path = os.path.join(out, run_folder.MODEL_NAME)
    verbose = 0 if opts["verbose"] == 0 else 1
    # BackupAndRestore goes last: an epoch's row and checkpoint are written before its backup.
    return [
        keras.callbacks.CSVLogger(os.path.join(out, run_folder.HISTORY_NAME), append=True),
        keras.callbacks.TensorBoard(os.path.join(out, run_folder.LOGS_DIR)),
        keras.callbacks.ModelCheckpoint(
            model_path, monitor="val_loss", save_best_only=True, initial_value_threshold=resume.best
        ),
        _resume.ResumableEarlyStopping(
            resume=resume,
            weights_path=model_path,
            monitor="val_loss",
            patience=opts["patience"],
            restore_best_weights=True,
            verbose=verbose,
        ),
        # Kept after fit returns (Keras would delete it): until config.json says the run finished,
        # the backup is what tells a rerun how many epochs are done.
        keras.callbacks.BackupAndRestore(
            os.path.join(out, run_folder.BACKUP_DIR), double_checkpoint=True, delete_checkpoint=False
        ),
    ]


def _decision_threshold(net: keras.Model, config: dict) -> dict:
    """Youden's thresholds on the "val" split, with what they were chosen on (stored in the run)."""
    from cxrmodels.metrics.clinical import decision_thresholds
    from cxrmodels.models.predicting import predict_split

    batch_size = config["training"]["batch_size"]
    y, probs = predict_split(net, config["dataset"]["path"], "val", batch_size=batch_size)
    chosen = decision_thresholds(y, probs, config["class_names"])
    return chosen | {"split": "val", "dataset_digest": config["dataset"]["digest"]}


def _finish(out: str, net: keras.Model, config: dict, *, resumed_from: int, start: float) -> TrainResult:
    history_path = os.path.join(out, run_folder.HISTORY_NAME)
    history = run_folder.read_history(history_path)
    if history:
        run_folder.write_history(history_path, history)  # without the rows of epochs that were redone
    losses = history.get("val_loss", [])
    best = min(range(len(losses)), key=lambda i: (math.isnan(losses[i]), losses[i])) if losses else -1
    save_model(net, os.path.join(out, run_folder.MODEL_NAME))
    config["decision_threshold"] = _decision_threshold(net, config)
    run_folder.plot_learning_curves(history, os.path.join(out, run_folder.CURVES_NAME))
    seconds = time.perf_counter() - start
    config["results"] = {
        "epochs": len(losses),
        "best_epoch": best + 1,
        "best_val_loss": losses[best] if losses else None,
        "best_val_metrics": {k[4:]: v[best] for k, v in history.items() if k.startswith("val_")}
        if losses
        else {},
        "resumed_from": resumed_from,
        "seconds": round(seconds, 2),
    }
    config["finished_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    config["finished"] = True
    run_folder.write_config(out, config)  # a run is finished only once this is written
    # Only now: a kill before the config above leaves the backup, so the rerun finishes, not retrains.
    shutil.rmtree(os.path.join(out, run_folder.BACKUP_DIR), ignore_errors=True)
    return TrainResult(
        run_dir=out,
        model=net,
        history=history,
        epochs=len(losses),
        best_epoch=best + 1,
        best_val_loss=losses[best] if losses else math.nan,
        resumed_from=resumed_from,
        seconds=seconds,
        config=config,
    )
