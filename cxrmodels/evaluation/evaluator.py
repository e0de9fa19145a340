"""`evaluate`: a trained run on one split of a converted dataset, with clinical metrics.

The decision threshold is part of the run: `cxr train` chooses it on the run's
own validation split (Youden's J) and stores it in `config.json`
(`decision_threshold`); evaluation applies it unchanged to any dataset and
never chooses one on the data it reports. A run without one (trained before
thresholds were stored) is refused for two classes unless a threshold is
given (`threshold=`, `--threshold`).

An external dataset (another manifest digest) is reported in its own folder,
`RUN/external/<dataset folder name>-<manifest digest[:8]>-<split>/`, so two
datasets never share one, beside the run's internal test figures: the
internal `metrics.json` and figures are never overwritten by it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

import cxrdata
from cxrdata.utils.argument_validation import check_bool, check_int, check_number
from cxrdata.utils.io import atomic_write_text
from cxrmodels.evaluation import plots

# The shortcut audit reaches these through this module too (`evaluator.check_dataset`, ...).
from cxrmodels.evaluation.dataset_checks import (
    check_dataset,
    check_groups,
    label_mapping,
    parse_class_map,
    split_names,
)
from cxrmodels.evaluation.stored_threshold import in_sample_notes, run_threshold
from cxrmodels.metrics.clinical import evaluate_predictions
from cxrmodels.metrics.groups import metrics_by_group
from cxrmodels.metrics.tables import group_rows
from cxrmodels.models.predicting import predict_split, split_groups
from cxrmodels.models.saving import load_run_model
from cxrmodels.runs import run_folder

BY_CHOICES = ("group",)
_FIGURES = ("roc", "confusion_matrix", "reliability", "by_group", "comparison")


def evaluate(
    run_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    *,
    split: str = "test",
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    class_map: dict[str, str] | str | None = None,
    allow_preprocessing_mismatch: bool = False,
    threshold: float | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """Evaluates a run's model on a split and writes its metrics and figures into the run.

    Predicts the split and computes `cxrmodels.metrics.clinical.evaluate_predictions`:
    ROC AUC with a bootstrap 95% CI; sensitivity (with its Wilson CI),
    specificity (likewise), PPV, NPV and F1 at the run's stored decision
    threshold and at 0.5; the confusion matrix; and calibration (Brier score
    and expected calibration error with bootstrap CIs). It writes into
    `run_dir`: `metrics.json`, `roc.png`, `confusion_matrix.png` and
    `reliability.png` for the "test" split, or `metrics-{split}.json` and
    `{figure}-{split}.png` for another split. With `by="group"` it adds each
    group's AUC, sensitivity and specificity with CIs (`by_group` in the JSON,
    a section of the table) and a forest plot, `by_group.png`.

    The threshold is never chosen on the data reported: it is the one stored
    in the run (`config.json`'s `decision_threshold`, chosen on its validation
    split when it was trained), or `threshold` when given. Evaluating the very
    split it was chosen on adds a warning (the metrics at it are optimistic).

    The dataset may be another one than the run was trained on (an external
    test set, converted elsewhere, for example with `cxr convert --splits 0,0,1`):
    a different manifest digest adds a warning, and everything is written
    into `run_dir/external/<dataset folder>-<digest[:8]>-<split>/` with, under
    `"internal"`, the run's internal test metrics (its `metrics.json`, or
    computed) and a `comparison.png` of internal and external AUC with their
    confidence intervals. Its image shape and preprocessing must be the run's
    (unless `allow_preprocessing_mismatch`), its classes the run's or mapped to
    them by `class_map`.

    Args:
        run_dir: A run folder written by `cxrmodels.train`.
        dataset_dir: A converted dataset.
        split: The split to evaluate, or "all" for every split of the dataset
            (an external set). Defaults to "test".
        batch_size: Images per prediction batch. Defaults to 64.
        n_bootstrap: Bootstrap resamples for each CI (0: none). Defaults to 1000.
        class_map: The dataset's class names mapped to the run's, as a dict or
            "pneumonia=COVID,healthy=Normal"; names left out must be the run's.
            Defaults to None.
        allow_preprocessing_mismatch: Evaluate even if the dataset was
            preprocessed differently (radius, equalization...), with a warning
            naming the differences. The image size must still be the model's.
            Defaults to False.
        threshold: The positive class's decision threshold, in (0, 1), for a
            two-class run; it replaces the stored one (for a run that has
            none). Choose it on data other than those evaluated. Defaults to
            None (the run's stored threshold).
        by: "group" to report each group of records (the dataset's
            `--group-by` / `--group-pattern` ids: hospital, source) on its
            own, or None. Defaults to None.

    Returns:
        The metrics, as written to the JSON file, plus `"files"`: the paths written.

    Raises:
        FileNotFoundError: `run_dir` is not a training run, or the dataset is missing.
        ValueError: A bad argument, a split the dataset lacks, a dataset whose
            classes, image size or preprocessing differ from the run's, a
            two-class run that stores no threshold (and none given), or
            `by="group"` on a dataset without groups.
        TypeError: An argument of the wrong type.

    Example:
        >>> m = evaluate("runs/a", "hospital-b/", split="all", by="group")  # doctest: +SKIP
        >>> from cxrmodels.metrics.tables import format_metrics_table
        >>> print(format_metrics_table(m))  # doctest: +SKIP
    """
    _check_args(split, batch_size, n_bootstrap, allow_preprocessing_mismatch, threshold, by)
    class_map = parse_class_map(class_map)
    run_dir, dataset_dir = os.fspath(run_dir), os.fspath(dataset_dir)
    config = run_folder.read_config(run_dir)
    chosen = run_threshold(config, run_dir, threshold)
    manifest = cxrdata.read_manifest(dataset_dir)
    splits = split_names(manifest, split)
    if by:
        check_groups(manifest, splits, dataset_dir)
    notes = check_dataset(
        config,
        manifest,
        dataset_dir,
        class_map=class_map,
        allow_preprocessing_mismatch=allow_preprocessing_mismatch,
    )
    labels = label_mapping(config, manifest, class_map)
    external = manifest.digest() != config["dataset"]["digest"]
    model = load_run_model(run_dir, config)

    y, probs = predict_splits(model, dataset_dir, splits, batch_size=batch_size, labels=labels)
    metrics = _metrics(y, probs, config, chosen, n_bootstrap)
    metrics["warnings"] = notes + in_sample_notes(chosen, manifest, splits) + metrics["warnings"]
    metrics.update(
        {
            "split": split,
            "model": config["model"]["name"],
            "run": os.path.abspath(run_dir),
            "dataset": {
                "path": os.path.abspath(dataset_dir),
                "digest": manifest.digest(),
                "same_as_training": not external,
            },
        }
    )
    if class_map:
        metrics["class_map"] = class_map
    if by:
        groups = np.concatenate([split_groups(dataset_dir, s) for s in splits])
        metrics["by_group"] = _by_group(y, probs, groups, config, chosen, n_bootstrap)
    if external:
        metrics["internal"] = internal_test_metrics(
            run_dir, config, model, chosen, batch_size=batch_size, n_bootstrap=n_bootstrap
        )
    files = _report_files(run_dir, dataset_dir, manifest.digest(), split, external=external)
    _write_report(files, metrics, y, probs, config, title=f"{config['model']['name']} on {split}")
    metrics["files"] = {k: v for k, v in files.items() if k in metrics["files"]}
    return metrics


def _check_args(split, batch_size, n_bootstrap, allow_preprocessing_mismatch, threshold, by) -> None:
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a split name such as 'test'. Received: split={split!r}")
    check_int("batch_size", batch_size, minimum=1)
    check_int("n_bootstrap", n_bootstrap, minimum=0)
    check_bool("allow_preprocessing_mismatch", allow_preprocessing_mismatch)
    check_number("threshold", threshold, allow_none=True)
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(
            f"`threshold` must be a probability in (0, 1) or None. Received: threshold={threshold!r}"
        )
    if by is not None and by not in BY_CHOICES:
        raise ValueError(f"`by` must be None or 'group'. Received: by={by!r}")


def _metrics(y, probs, config, chosen, n_bootstrap) -> dict:
    metrics = evaluate_predictions(
        y,
        probs,
        class_names=config["class_names"],
        thresholds=chosen["per_class"],
        threshold_source=chosen["source"] or "run",
        n_bootstrap=n_bootstrap,
        seed=0,
    )
    metrics["threshold_method"] = chosen["method"]
    metrics["threshold_data"] = chosen["description"]
    return metrics


def _by_group(y, probs, groups, config, chosen, n_bootstrap) -> dict:
    result = metrics_by_group(
        y,
        probs,
        groups,
        class_names=config["class_names"],
        thresholds=chosen["per_class"],
        n_bootstrap=n_bootstrap,
        seed=0,
    )
    return {"key": "group", **result}


def _headline(metrics: dict) -> tuple[float | None, list | None]:
    """(AUC, CI) of a metrics dict: the positive class's, or the macro AUC without a CI."""
    if metrics.get("task") == "binary":
        return metrics["auc"], metrics["auc_ci"]
    return metrics.get("macro_auc"), None


def external_report_dir(run_dir: str, dataset_dir: str, split: str, digest: str) -> str:
    """`run_dir/external/<dataset folder name>-<digest[:8]>-<split>`: an external evaluation's folder.

    The manifest digest keeps apart two datasets whose folders share a name
    (`a/external` and `b/external`); the same dataset, wherever it is, gets
    the same folder.
    """
    name = os.path.basename(os.path.normpath(os.path.abspath(dataset_dir))) or "dataset"
    return os.path.join(run_dir, run_folder.EXTERNAL_DIR, f"{name}-{digest[:8]}-{split}")


def _report_files(run_dir: str, dataset_dir: str, digest: str, split: str, *, external: bool) -> dict:
    """Where each file of a report goes: `metrics` and every figure (`_FIGURES`) that may be drawn."""
    if external:
        folder = external_report_dir(run_dir, dataset_dir, split, digest)
        os.makedirs(folder, exist_ok=True)
        return {"metrics": os.path.join(folder, "metrics.json")} | {
            f: os.path.join(folder, f"{f}.png") for f in _FIGURES
        }
    suffix = "" if split == "test" else f"-{split}"
    return {"metrics": os.path.join(run_dir, f"metrics{suffix}.json")} | {
        f: os.path.join(run_dir, f"{f}{suffix}.png") for f in _FIGURES if f != "comparison"
    }


def _write_report(files: dict, metrics: dict, y, probs, config: dict, *, title: str) -> None:
    """Writes `metrics.json` (with `files`: the names written) and the figures the report has."""
    names = config["class_names"]
    drawn = {"metrics", "confusion_matrix", "reliability"}
    if len(names) > 2 or len(set(y.tolist())) == 2:
        drawn.add("roc")  # a two-class ROC curve needs both classes
    if metrics.get("by_group"):
        drawn.add("by_group")
    if metrics.get("internal") and "comparison" in files:
        drawn.add("comparison")
    metrics["files"] = {k: os.path.basename(v) for k, v in files.items() if k in drawn}
    atomic_write_text(files["metrics"], json.dumps(metrics, indent=2) + "\n")
    if "roc" in drawn:
        plots.plot_roc(y, probs, class_names=names, path=files["roc"], metrics=metrics)
    plots.plot_confusion_matrix(
        metrics["confusion_matrix"],
        class_names=names,
        path=files["confusion_matrix"],
        title=f"{title} (argmax)",
    )
    plots.plot_reliability(metrics["calibration"], path=files["reliability"], title=f"Reliability: {title}")
    if "by_group" in drawn:
        plots.plot_forest(
            list(group_rows(metrics["by_group"])),
            path=files["by_group"],
            title=f"ROC AUC by group: {title} ({metrics['by_group']['decision']})",
            overall=_headline(metrics) if metrics["task"] == "binary" else None,
        )
    if "comparison" in drawn:
        bars = [("internal test", metrics["internal"]), ("external", metrics)]
        plots.plot_auc_bars(
            [(name, _headline(m)) for name, m in bars],
            path=files["comparison"],
            title=f"{config['model']['name']}: internal test vs external",
        )


def internal_test_metrics(
    run_dir: str, config: dict, model, chosen: dict, *, batch_size: int, n_bootstrap: int
) -> dict | None:
    """The run's metrics on its own test split: its `metrics.json` if current, else computed; None if unreachable."""

    path = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if (
            saved.get("dataset", {}).get("digest") == config["dataset"]["digest"]
            and saved.get("split") == "test"
        ):
            return {k: v for k, v in saved.items() if k != "files"}
    training = config["dataset"]["path"]
    try:
        manifest = cxrdata.read_manifest(training)
    except (OSError, ValueError):
        return None
    if manifest.digest() != config["dataset"]["digest"] or "test" not in manifest.splits:
        return None
    y, probs = predict_split(model, training, "test", batch_size=batch_size)
    metrics = _metrics(y, probs, config, chosen, n_bootstrap)
    metrics.update(
        {
            "split": "test",
            "dataset": {
                "path": os.path.abspath(training),
                "digest": manifest.digest(),
                "same_as_training": True,
            },
        }
    )
    return metrics


def predict_splits(
    model, dataset_dir: str, splits: list[str], *, batch_size: int, labels: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`predict_split` over several splits, concatenated; dataset labels mapped through `labels`."""
    parts = [predict_split(model, dataset_dir, s, batch_size=batch_size) for s in splits]
    y, probs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)[y]
    return y, probs
