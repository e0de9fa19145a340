"""`search`: a keras-tuner hyperparameter search on a converted dataset, into a resumable folder.

The reference study tuned its CNN by hand (learning rate and filters).
`search` runs a Hyperband, random or Bayesian search over a `CXRHyperModel`,
whose defaults are the reference values, so the first trial is the reference
model. The folder it fills (see `cxrmodels.tuning.search_folder`) ends with
`trials.csv`, `best_hyperparameters.json`, `best_model.keras` and
`search_plot.png`; rerunning the same search on it resumes it. With
`distributed=True` it runs as keras-tuner's chief or one of its workers (see
examples/distributed_tuning.md).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import numbers
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import keras

from cxrdata.utils.argument_validation import check_bool, check_choice, check_int
from cxrdata.utils.output_dir import lock_output_dir
from cxrmodels.models.saving import save_model
from cxrmodels.tuning import search_folder
from cxrmodels.tuning.hypermodel import CXRHyperModel, check_objective, objective_names

TUNERS = ("hyperband", "random", "bayesian")
ENV_VARS = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
_MIN_WORKER_TIMEOUT = 5.0  # seconds; workers beat every 2

__all__ = ["CXRHyperModel", "SearchResult", "objective_names", "search"]


@dataclass(frozen=True, eq=False)
class SearchResult:
    """What `search` did.

    Attributes:
        directory: The search folder.
        role: "local", "chief" (wrote the results of every worker) or "worker"
            (ran trials; its chief writes the results).
        objective: The metric searched on, such as "val_auc".
        direction: "max" or "min".
        best_trial_id: The best completed trial (None for a worker).
        best_value: Its objective value.
        best_hyperparameters: Its values of every hyperparameter.
        trials: One dict per trial, as in `trials.csv` (for a worker: those it ran).
        files: The files written, by name (`trials.csv`, ...), as paths.
        model: The best trial's model at its best epoch (None for a worker).
        seconds: Wall time of this call.
    """

    directory: str
    role: str
    objective: str
    direction: str
    best_trial_id: str | None
    best_value: float | None
    best_hyperparameters: dict[str, Any] | None
    trials: list[dict[str, Any]] = field(repr=False)
    files: dict[str, str]
    model: keras.Model | None = field(repr=False)
    seconds: float

    def summary(self) -> str:
        if self.role == "worker":
            return (
                f"Worker ran {len(self.trials)} trials in {self.seconds:.1f}s; the chief writes the "
                f"results to {self.directory}."
            )
        done = sum(t["status"] == "COMPLETED" for t in self.trials)
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in (self.best_hyperparameters or {}).items())
        return (
            f"{len(self.trials)} trials ({done} completed) in {self.seconds:.1f}s. Best {self.objective} "
            f"{_fmt(self.best_value)} (trial {self.best_trial_id}): {values}. Results in {self.directory}: "
            f"{', '.join(sorted(self.files))}"
        )


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def search(
    dataset_dir: str | os.PathLike,
    *,
    model: str = "seed_cnn",
    tuner: str = "hyperband",
    objective: str = "val_auc",
    max_trials: int = 10,
    max_epochs: int = 10,
    batch_size: int = 32,
    directory: str | os.PathLike,
    project_name: str = "cxr_tune",
    overwrite: bool = False,
    seed: int = 0,
    hyperparameters=None,
    tune_new_entries: bool = True,
    mixed_precision: bool | str = False,
    augment: str = "gpu",
    patience: int | None = 3,
    distributed: bool = False,
    worker_timeout: float = 120.0,
    model_kwargs: dict[str, Any] | None = None,
    verbose: str | int = "auto",
) -> SearchResult:
    """Searches a model's hyperparameters on a converted dataset with keras-tuner.

    Each trial builds a `CXRHyperModel` model, reads the dataset's "train" and
    "val" splits once with `cxrdata.load`, and trains with EarlyStopping on
    the objective. Mixed precision and the augmentation placement work as in
    `cxrmodels.train`. A rerun on the same `directory` resumes the search
    (keras-tuner's reload): finished trials are kept, an interrupted one is
    rerun, and `max_trials` may grow. `directory/search.json` records the
    model, the dataset's manifest digest and equalization, the
    hyperparameters' names and the settings, and a folder holding another
    search is refused unless `overwrite`.

    On a dataset converted with `equalize="none"` the radius of
    `cxrdata.LocalEqualization` inside the model, `equalize_radius` (0, 35,
    70 or 100; 0: none; trial 0 uses the study's 70), is searched too (see
    `CXRHyperModel`); `best_hyperparameters.json`'s `train_kwargs` then carry
    the best radius as `equalize_in_model`, so `cxrmodels.train(**train_kwargs)`
    trains and `export` exports that model as any `equalize_in_model` run.

    Args:
        dataset_dir: A folder written by `cxrdata.convert`, with "train" and "val" splits.
        model: A name from `cxrmodels.list_models()`. Defaults to "seed_cnn".
        tuner: "hyperband", "random" or "bayesian" (needs scikit-learn).
            Defaults to "hyperband".
        objective: A metric the model logs: loss, accuracy, auc, precision,
            recall, specificity (two classes) or their `val_` versions;
            minimized for a loss, maximized otherwise. Defaults to "val_auc".
        max_trials: Trials in all, counting those of a resumed search (for
            Hyperband a cap on its own schedule). Defaults to 10.
        max_epochs: Epochs per trial (Hyperband's largest budget). Defaults to 10.
        batch_size: Examples per batch. Defaults to 32.
        directory: The search folder.
        project_name: keras-tuner's project folder inside it. Defaults to "cxr_tune".
        overwrite: Replace the search in `directory`. Defaults to False.
        seed: Seeds the oracle, Keras, the shuffling and the augmentation. Defaults to 0.
        hyperparameters: Fixes or narrows hyperparameters: a
            `keras_tuner.HyperParameters` or `{name: value | (low, high) |
            [choices]}` (see `CXRHyperModel`); `equalize_radius` only for a
            dataset converted with `equalize="none"`. Defaults to None.
        tune_new_entries: Also search the hyperparameters that
            `hyperparameters` does not name (False: they keep their
            reference values). Defaults to True.
        mixed_precision: False, True or "float16", or "bfloat16". Defaults to False.
        augment: "gpu", "cpu" or "none", as in `cxrmodels.train`. Defaults to "gpu".
        patience: EarlyStopping's patience in epochs on the objective (None:
            no early stopping). Defaults to 3.
        distributed: Run as keras-tuner's chief or worker, as the
            KERASTUNER_TUNER_ID ("chief", or "tuner0", "tuner1", ...),
            KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT environment
            variables say. The chief checks and prepares `directory`, serves
            the oracle and, when every worker is done, writes the results. A
            worker waits for the chief, checks that the chief's `search.json`
            matches its own options, then runs trials; it never clears or
            writes the results (it ignores `overwrite`). Without
            `distributed` those variables are ignored. Defaults to False.
        worker_timeout: (chief) Seconds without a worker's heartbeat before
            its trial ends as FAILED and the search goes on without it.
            Defaults to 120.
        model_kwargs: Fixed model options, such as `weights`. Defaults to None.
        verbose: Progress output of keras-tuner and `Model.fit`: "auto", 0, 1
            or 2. Defaults to "auto".

    Returns:
        A `SearchResult`.

    Raises:
        ValueError: A bad argument, hyperparameter range or objective (the
            message lists the valid ones), a dataset without "train" or "val",
            a distributed launch missing an environment variable (named).
        TypeError: An argument of the wrong type.
        FileNotFoundError: The dataset is missing.
        FileExistsError: `directory` holds other files, or a search of another
            model, dataset or settings (pass `overwrite=True` to replace it).
        ImportError: `tuner="bayesian"` without scikit-learn.
        RuntimeError: No trial completed (see the `note` column of trials.csv).

    Example:

    >>> import keras_tuner
    >>> hp = keras_tuner.HyperParameters()
    >>> hp.Fixed("dropout", 0.0)
    >>> result = search("data/", tuner="random", max_trials=8, max_epochs=5,
    ...                 directory="tune/a", hyperparameters=hp)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    """
    start = time.perf_counter()
    _check_args(
        model=model,
        tuner=tuner,
        max_trials=max_trials,
        max_epochs=max_epochs,
        batch_size=batch_size,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        seed=seed,
        tune_new_entries=tune_new_entries,
        augment=augment,
        patience=patience,
        distributed=distributed,
        worker_timeout=worker_timeout,
        verbose=verbose,
    )
    role = _role(distributed)
    import cxrdata

    dataset_dir, out = os.fspath(dataset_dir), os.fspath(directory)
    manifest = cxrdata.read_manifest(dataset_dir)
    for split in ("train", "val"):
        if not manifest.splits.get(split) or not manifest.splits[split].num_examples:
            raise ValueError(
                f"The dataset {dataset_dir!r} has no {split!r} split (it has: "
                f"{', '.join(manifest.splits) or 'none'}). A search trains on train and "
                "validates on val: convert with `--splits 0.7,0.15,0.15`."
            )
    objective, direction = check_objective(objective, manifest.num_classes)
    hypermodel = CXRHyperModel(
        model,
        input_shape=manifest.image_shape,
        num_classes=manifest.num_classes,
        class_names=manifest.class_names,
        hyperparameters=hyperparameters,
        mixed_precision=mixed_precision,
        augment=augment,
        batch_size=batch_size,
        seed=seed,
        model_kwargs=model_kwargs,
        dataset_equalized=manifest.preprocessing.get("equalize") != "none",
    )
    overrides = hypermodel.hyperparameters
    if not tune_new_entries and not overrides.space:
        raise ValueError(
            "`tune_new_entries=False` searches only the entries of `hyperparameters`, "
            f"so give some. Received: hyperparameters={hyperparameters!r}"
        )
    config = {
        "format_version": search_folder.FORMAT_VERSION,
        "model": model,
        "model_kwargs": {k: str(v) for k, v in hypermodel.model_kwargs.items()},
        "dataset_digest": manifest.digest(),
        "dataset": os.path.abspath(dataset_dir),
        "class_names": list(manifest.class_names),
        "image_shape": list(manifest.image_shape),
        "dataset_equalize": manifest.preprocessing.get("equalize"),
        "hyperparameter_names": list(hypermodel.space.names),
        "tuner": tuner,
        "objective": objective,
        "direction": direction,
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "seed": seed,
        "mixed_precision": hypermodel.policy,
        "augment": augment,
        "hyperparameters": overrides.get_config()["space"] or None,
        "tune_new_entries": tune_new_entries,
        "project_name": project_name,
        "max_trials": max_trials,
        "patience": patience,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    lock = contextlib.ExitStack()  # one writer of DIR: the chief (or a local search); workers share it
    if role != "worker":
        lock.enter_context(lock_output_dir(out, what="search folder"))
    with lock, _kerastuner_env(distributed):
        from cxrmodels.tuning.distribute import wait_for_chief
        from cxrmodels.tuning.tuners import make_tuner

        if role == "worker":
            wait_for_chief()  # the chief writes search.json before it serves
            search_folder.check_worker(out, config)
        else:
            search_folder.prepare(out, config, overwrite=overwrite)

        kt_tuner = make_tuner(
            tuner,
            hypermodel=hypermodel,
            objective=_kt_objective(objective, direction),
            max_trials=max_trials,
            max_epochs=max_epochs,
            seed=seed,
            hyperparameters=overrides if overrides.space else None,
            tune_new_entries=tune_new_entries,
            directory=out,
            project_name=project_name,
            overwrite=False,
            worker_timeout=worker_timeout,
        )
        callbacks = (
            []
            if patience is None
            else [keras.callbacks.EarlyStopping(monitor=objective, mode=direction, patience=patience)]
        )
        kt_tuner.search(dataset_dir, epochs=max_epochs, callbacks=callbacks, verbose=verbose)
        if role == "worker":
            return _worker_result(kt_tuner, out, objective, direction, start)
        return _finish(
            kt_tuner,
            hypermodel,
            out,
            role=role,
            tuner=tuner,
            objective=objective,
            direction=direction,
            start=start,
        )


def _kt_objective(name: str, direction: str):
    import keras_tuner as kt

    return kt.Objective(name, direction)


def _check_args(
    *,
    model,
    tuner,
    max_trials,
    max_epochs,
    batch_size,
    directory,
    project_name,
    overwrite,
    seed,
    tune_new_entries,
    augment,
    patience,
    distributed,
    worker_timeout,
    verbose,
) -> None:
    from cxrmodels.training.config import TrainConfig

    TrainConfig(model=model, batch_size=batch_size, seed=seed, augment=augment, verbose=verbose)
    check_int("patience", patience, minimum=0, allow_none=True)
    check_choice("tuner", tuner, TUNERS)
    check_int("max_trials", max_trials, minimum=1)
    check_int("max_epochs", max_epochs, minimum=1)
    if directory is None or not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
        raise ValueError(
            f"`directory` must be the path of the search folder. Received: directory={directory!r}"
        )
    if (
        not isinstance(project_name, str)
        or not re.fullmatch(r"[A-Za-z0-9_.-]+", project_name)
        or project_name in (".", "..")
    ):
        raise ValueError(
            "`project_name` must be a folder name (letters, digits, '_', '-', '.'). "
            f"Received: project_name={project_name!r}"
        )
    for name, value in (
        ("overwrite", overwrite),
        ("tune_new_entries", tune_new_entries),
        ("distributed", distributed),
    ):
        check_bool(name, value)
    if (
        isinstance(worker_timeout, bool)
        or not isinstance(worker_timeout, numbers.Real)
        or not worker_timeout >= _MIN_WORKER_TIMEOUT
    ):
        raise ValueError(
            f"`worker_timeout` must be a number of seconds >= {_MIN_WORKER_TIMEOUT:g} "
            f"(workers beat every 2 s). Received: worker_timeout={worker_timeout!r}"
        )
    if tuner == "bayesian" and importlib.util.find_spec("sklearn") is None:
        raise ImportError(
            "tuner='bayesian' needs scikit-learn (keras-tuner's Gaussian process): "
            "`pip install scikit-learn`, or use tuner='random' or 'hyperband'."
        )


def _role(distributed: bool) -> str:
    """ "local", or for a distributed launch "chief" or "worker", after checking its environment."""
    if not distributed:
        return "local"
    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"A distributed search needs the environment variables {', '.join(ENV_VARS)}; missing: "
            f"{', '.join(missing)}. Set KERASTUNER_TUNER_ID=chief for the process that serves the oracle "
            "and tuner0, tuner1, ... for the workers, and KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT "
            "to the chief's address and port (see examples/distributed_tuning.md)."
        )
    port, tuner_id = os.environ["KERASTUNER_ORACLE_PORT"], os.environ["KERASTUNER_TUNER_ID"]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"KERASTUNER_ORACLE_PORT must be a port number (1 to 65535). Received: {port!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tuner_id):
        raise ValueError(
            "KERASTUNER_TUNER_ID must be a name of letters, digits, '_', '-' or '.' "
            f"('chief', 'tuner0', ...). Received: {tuner_id!r}"
        )
    return "chief" if "chief" in tuner_id else "worker"  # keras-tuner's own rule


@contextlib.contextmanager
def _kerastuner_env(distributed: bool):
    """Hides the KERASTUNER_* variables from a local search: keras-tuner would go distributed."""
    saved = {} if distributed else {v: os.environ.pop(v) for v in ENV_VARS if v in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _finish(
    kt_tuner, hypermodel, out: str, *, role: str, tuner: str, objective: str, direction: str, start: float
) -> SearchResult:
    """Writes trials.csv, the plot, best_hyperparameters.json and best_model.keras."""
    import keras_tuner as kt

    rows = search_folder.trial_rows(kt_tuner, hypermodel, objective)
    files = {}
    files[search_folder.TRIALS_NAME] = os.path.join(out, search_folder.TRIALS_NAME)
    search_folder.write_trials_csv(files[search_folder.TRIALS_NAME], rows)
    names = hypermodel.space.names
    second = next(
        n
        for n in ("base_filters", "trainable_blocks", "dense_units", "dropout", "learning_rate")
        if n in names
    )
    files[search_folder.PLOT_NAME] = search_folder.plot(
        rows,
        os.path.join(out, search_folder.PLOT_NAME),
        objective=objective,
        direction=direction,
        second=second,
        title=f"{hypermodel.model_name}, {tuner} search",
        defaults=hypermodel.resolve(kt.HyperParameters()),
        extra=("equalize_radius",) if "equalize_radius" in names else (),
    )
    best = search_folder.best_row(rows, objective, direction)
    if best is None:
        notes = sorted({r["note"] for r in rows if r.get("note")})
        raise RuntimeError(
            f"No trial of the search in {out!r} completed ({len(rows)} trials). "
            f"Reasons: {'; '.join(notes) or 'none recorded'}. See {files[search_folder.TRIALS_NAME]}."
        )
    values = {n: best[n] for n in names}
    net = kt_tuner.load_model(kt_tuner.oracle.get_trial(best["trial_id"]))
    files[search_folder.MODEL_NAME] = os.path.join(out, search_folder.MODEL_NAME)
    save_model(net, files[search_folder.MODEL_NAME])
    files[search_folder.BEST_NAME] = os.path.join(out, search_folder.BEST_NAME)
    search_folder.write_json(
        files[search_folder.BEST_NAME],
        {
            "objective": objective,
            "direction": direction,
            "best_value": best[objective],
            "trial_id": best["trial_id"],
            "model": hypermodel.model_name,
            "hyperparameters": values,
            "train_kwargs": hypermodel.train_kwargs(values),
            "trials": len(rows),
            "completed_trials": sum(r["status"] == "COMPLETED" for r in rows),
        },
    )
    return SearchResult(
        directory=out,
        role=role,
        objective=objective,
        direction=direction,
        best_trial_id=best["trial_id"],
        best_value=best[objective],
        best_hyperparameters=values,
        trials=rows,
        files=files,
        model=net,
        seconds=time.perf_counter() - start,
    )


def _worker_result(kt_tuner, out: str, objective: str, direction: str, start: float) -> SearchResult:
    from cxrmodels.tuning.tuners import read_sidecar

    ran = [
        read_sidecar(os.path.join(kt_tuner.project_dir, f"trial_{trial_id}"))
        for trial_id in kt_tuner.trial_started
    ]
    return SearchResult(
        directory=out,
        role="worker",
        objective=objective,
        direction=direction,
        best_trial_id=None,
        best_value=None,
        best_hyperparameters=None,
        trials=ran,
        files={},
        model=None,
        seconds=time.perf_counter() - start,
    )
