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
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import keras_tuner as kt

import cxrdata
from cxrdata.utils.output_dir import lock_output_dir
from cxrmodels.models.input_stack import check_equalization, dataset_is_equalized
from cxrmodels.models.saving import save_model
from cxrmodels.training.config import TrainConfig
from cxrmodels.tuning import search_folder
from cxrmodels.tuning.config import TUNERS, SearchConfig, check_objective, objective_names
from cxrmodels.tuning.distribute import ENV_VARS, launch_role, wait_for_chief
from cxrmodels.tuning.distribute import kerastuner_env as _kerastuner_env
from cxrmodels.tuning.hypermodel import CXRHyperModel
from cxrmodels.tuning.tuners import make_tuner, read_sidecar

__all__ = ["ENV_VARS", "CXRHyperModel", "SearchConfig", "SearchResult", "TUNERS", "objective_names", "search"]


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
    dataset: str | os.PathLike | None = None, *, config: SearchConfig | None = None, **options: Any
) -> SearchResult:
    """Searches a model's hyperparameters on a converted dataset with keras-tuner.

    Each trial is a `TrainConfig` (`CXRHyperModel.train_config`): it builds the
    model and its input stack as `cxrmodels.train` does, reads the dataset's
    "train" and "val" splits once with `cxrdata.load`, and trains with
    EarlyStopping on the objective. Mixed precision and the augmentation
    placement work as in `cxrmodels.train`. A rerun on the same `directory`
    resumes the search (keras-tuner's reload): finished trials are kept, an
    interrupted one is rerun, and `max_trials` may grow. `directory/search.json`
    holds the options (`SearchConfig.to_dict()`), the dataset's manifest digest
    and equalization and the hyperparameters' names; a folder holding a search
    of another dataset or other options (`SearchConfig.differences`) is refused
    unless `overwrite`.

    On a dataset converted with `equalize="none"` the radius of
    `cxrdata.LocalEqualization` inside the model, `equalize_radius` (0, 35,
    70 or 100; 0: none; trial 0 uses the study's 70), is searched too (see
    `CXRHyperModel`); `best_hyperparameters.json` then records the best radius
    as the `TrainConfig`'s `equalize_radius`, so `cxrmodels.train(**train_kwargs)`
    trains and `export` exports that model as any `equalize_radius` run.

    Args:
        dataset: A folder written by `cxrdata.convert`, with "train" and "val"
            splits (or `config.dataset`).
        config: A `SearchConfig` with every option. Defaults to None: the
            defaults, with `options` on top.
        **options: Any `SearchConfig` field, on top of `config`:
            `directory` (the search folder, required), `model` ("seed_cnn"),
            `tuner` ("hyperband", "random" or "bayesian", which needs
            scikit-learn), `objective` ("val_auc": loss, accuracy, auc,
            precision, recall, specificity (two classes) or their `val_`
            versions; minimized for a loss, maximized otherwise), `max_trials`
            (10; trials in all, counting those of a resumed search; for
            Hyperband a cap on its own schedule), `max_epochs` (10; per trial,
            Hyperband's largest budget), `batch_size` (32), `project_name`
            ("cxr_tune", keras-tuner's folder inside `directory`), `overwrite`
            (False), `seed` (0; the oracle, Keras, the shuffling and the
            augmentation), `hyperparameters` (None; fixes or narrows
            hyperparameters: a `keras_tuner.HyperParameters`, `{name: value |
            (low, high) | [choices]}` or `["NAME=SPEC", ...]`; see
            `CXRHyperModel`; `equalize_radius` only for a dataset converted
            with `equalize="none"`), `tune_new_entries` (True: also search the
            hyperparameters `hyperparameters` does not name; False: they keep
            their reference values), `mixed_precision` (None: float32; True or
            "float16", or "bfloat16"), `augment` ("gpu", "cpu" or "none"),
            `patience` (3; EarlyStopping's patience on the objective, None: no
            early stopping), `distributed` (False; see below), `worker_timeout`
            (120; the chief's seconds without a worker's heartbeat before its
            trial ends as FAILED), `model_kwargs` (fixed model options, such as
            `weights`) and `verbose` ("auto", 0, 1 or 2). Older names are
            accepted: `dataset_dir`, `out` (for `directory`).

    With `distributed=True` the process runs as keras-tuner's chief or
    worker, as the KERASTUNER_TUNER_ID ("chief", or "tuner0", "tuner1", ...),
    KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT environment variables say.
    The chief checks and prepares `directory`, serves the oracle and, when
    every worker is done, writes the results. A worker waits for the chief,
    checks that the chief's `search.json` matches its own options, then runs
    trials; it never clears or writes the results (it ignores `overwrite`).
    Without `distributed` those variables are ignored.

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
    >>> config = SearchConfig.from_file("tune.yaml")  # doctest: +SKIP
    >>> result = search(config=config, max_trials=20)  # doctest: +SKIP
    """
    start = time.perf_counter()
    if dataset is not None:
        options["dataset"] = dataset
    config = SearchConfig.from_kwargs(config, **options)
    config.require_paths()
    _check_tuner_installed(config.tuner)
    role = launch_role(config.distributed)
    manifest, direction = _read_dataset(config)
    hypermodel = _hypermodel(config, manifest)
    record = search_folder.search_record(
        config.replace(dataset=os.path.abspath(config.dataset)), _facts(manifest, hypermodel, direction)
    )
    with _search_folder(config, role, record):
        kt_tuner = make_tuner(
            config, hypermodel=hypermodel, objective=kt.Objective(config.objective, direction)
        )
        callbacks = []
        if config.patience is not None:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=config.objective, mode=direction, patience=config.patience
                )
            )
        kt_tuner.search(config.dataset, epochs=config.max_epochs, callbacks=callbacks, verbose=config.verbose)
        if role == "worker":
            return _worker_result(kt_tuner, config, direction, start)
        return _finish(kt_tuner, hypermodel, config, role=role, direction=direction, start=start)


def _check_tuner_installed(tuner: str) -> None:
    if tuner == "bayesian" and importlib.util.find_spec("sklearn") is None:
        raise ImportError(
            "tuner='bayesian' needs scikit-learn (keras-tuner's Gaussian process): "
            "`pip install scikit-learn`, or use tuner='random' or 'hyperband'."
        )


def _read_dataset(config: SearchConfig) -> tuple[Any, str]:
    """The dataset's manifest and the objective's direction, checked against the options."""
    manifest = cxrdata.read_manifest(config.dataset)
    for split in ("train", "val"):
        if not manifest.splits.get(split) or not manifest.splits[split].num_examples:
            raise ValueError(
                f"The dataset {config.dataset!r} has no {split!r} split (it has: "
                f"{', '.join(manifest.splits) or 'none'}). A search trains on train and "
                "validates on val: convert with `--splits 0.7,0.15,0.15`."
            )
    _, direction = check_objective(config.objective, manifest.num_classes)
    radius = (config.hyperparameters or {}).get("equalize_radius")
    if radius not in (None, 0):  # 0: none, which the space refuses by name on an equalized dataset
        check_equalization(manifest.preprocessing, radius, dataset=config.dataset)
    return manifest, direction


def _hypermodel(config: SearchConfig, manifest) -> CXRHyperModel:
    """The search space on this dataset; every trial trains these fixed options."""
    fixed = TrainConfig(
        dataset=config.dataset,
        model=config.model,
        epochs=config.max_epochs,
        batch_size=config.batch_size,
        mixed_precision=config.mixed_precision,
        augment=config.augment,
        seed=config.seed,
        model_kwargs=config.model_kwargs,
        verbose=config.verbose,
    )
    return CXRHyperModel(
        input_shape=manifest.image_shape,
        num_classes=manifest.num_classes,
        class_names=manifest.class_names,
        hyperparameters=config.hyperparameters,
        dataset_equalized=dataset_is_equalized(manifest.preprocessing),
        config=fixed,
    )


def _facts(manifest, hypermodel: CXRHyperModel, direction: str) -> dict[str, Any]:
    return {
        "library_version": cxrdata.__version__,
        "dataset_digest": manifest.digest(),
        "dataset_equalize": manifest.preprocessing.get("equalize"),
        "class_names": list(manifest.class_names),
        "image_shape": list(manifest.image_shape),
        "hyperparameter_names": list(hypermodel.space.names),
        "direction": direction,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def _search_folder(config: SearchConfig, role: str, record: dict[str, Any]) -> Iterator[None]:
    """The search folder, ready: locked and prepared by the chief (or a local search), checked by a worker."""
    out = config.directory
    with contextlib.ExitStack() as stack:
        if role != "worker":  # one writer of DIR: the chief (or a local search); workers share it
            stack.enter_context(lock_output_dir(out, what="search folder"))
        stack.enter_context(_kerastuner_env(config.distributed))
        if role == "worker":
            wait_for_chief()  # the chief writes search.json before it serves
            search_folder.check_worker(out, record)
        else:
            search_folder.prepare(out, record, overwrite=config.overwrite)
        yield


def _finish(
    kt_tuner, hypermodel: CXRHyperModel, config: SearchConfig, *, role: str, direction: str, start: float
) -> SearchResult:
    """Writes trials.csv, the plot, best_hyperparameters.json and best_model.keras."""
    out, objective = config.directory, config.objective
    rows = search_folder.trial_rows(kt_tuner, hypermodel, objective)
    files = {name: os.path.join(out, name) for name in search_folder.OUTPUT_NAMES}
    search_folder.write_trials_csv(files[search_folder.TRIALS_NAME], rows)
    files[search_folder.PLOT_NAME] = _plot(
        rows, hypermodel, config, direction, files[search_folder.PLOT_NAME]
    )
    best = search_folder.best_row(rows, objective, direction)
    if best is None:
        notes = sorted({r["note"] for r in rows if r.get("note")})
        raise RuntimeError(
            f"No trial of the search in {out!r} completed ({len(rows)} trials). "
            f"Reasons: {'; '.join(notes) or 'none recorded'}. See {files[search_folder.TRIALS_NAME]}."
        )
    values = {n: best[n] for n in hypermodel.space.names}
    net = kt_tuner.load_model(kt_tuner.oracle.get_trial(best["trial_id"]))
    save_model(net, files[search_folder.MODEL_NAME])
    trial = hypermodel.train_config(values, dataset=os.path.abspath(config.dataset))
    search_folder.write_json(
        files[search_folder.BEST_NAME],
        {
            "objective": objective,
            "direction": direction,
            "best_value": best[objective],
            "trial_id": best["trial_id"],
            "model": hypermodel.model_name,
            "hyperparameters": values,
            "train_config": trial.to_dict(),
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


def _plot(rows, hypermodel: CXRHyperModel, config: SearchConfig, direction: str, path: str) -> str:
    """The objective against the learning rate, the model's main size (and the radius)."""
    names = hypermodel.space.names
    second = next(
        n
        for n in ("base_filters", "trainable_blocks", "dense_units", "dropout", "learning_rate")
        if n in names
    )
    return search_folder.plot(
        rows,
        path,
        objective=config.objective,
        direction=direction,
        second=second,
        title=f"{hypermodel.model_name}, {config.tuner} search",
        defaults=hypermodel.resolve(kt.HyperParameters()),
        extra=("equalize_radius",) if "equalize_radius" in names else (),
    )


def _worker_result(kt_tuner, config: SearchConfig, direction: str, start: float) -> SearchResult:
    ran = [
        read_sidecar(os.path.join(kt_tuner.project_dir, f"trial_{trial_id}"))
        for trial_id in kt_tuner.trial_started
    ]
    return SearchResult(
        directory=config.directory,
        role="worker",
        objective=config.objective,
        direction=direction,
        best_trial_id=None,
        best_value=None,
        best_hyperparameters=None,
        trials=ran,
        files={},
        model=None,
        seconds=time.perf_counter() - start,
    )
