"""`evaluate`: a trained run on one split of a converted dataset, with clinical metrics.

The decision threshold is chosen on validation predictions (Youden's J), so
the test metrics at that threshold are not tuned on the test data: the "val"
split of the evaluated dataset when it has one, otherwise the "val" split of
the dataset the run was trained on.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from cxrdata.utils.io import atomic_write_text
from cxrmodels.training import run_dir as _run


def evaluate(
    run_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    *,
    split: str = "test",
    batch_size: int = 64,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """Evaluates a run's model on a split and writes its metrics and figures into the run.

    Predicts the split (and a validation split, for the threshold), computes
    `cxrmodels.evaluation.clinical.evaluate_predictions` (ROC AUC with a bootstrap 95% CI,
    sensitivity, specificity, PPV, NPV and F1 at the Youden threshold and at
    0.5, the confusion matrix) and writes into `run_dir`: `metrics.json`,
    `roc.png` and `confusion_matrix.png` for the "test" split, or
    `metrics-{split}.json`, `roc-{split}.png` and `confusion_matrix-{split}.png`
    for another split.

    The dataset may be another one than the run was trained on (an external
    test set): a different manifest digest only adds a warning. Its classes,
    image shape and preprocessing must be the run's.

    Args:
        run_dir: A run folder written by `cxrmodels.train`.
        dataset_dir: A converted dataset.
        split: The split to evaluate. Defaults to "test".
        batch_size: Images per prediction batch. Defaults to 64.
        n_bootstrap: Bootstrap resamples for the AUC CI (0: none). Defaults to 1000.

    Returns:
        The metrics, as written to the JSON file, plus `"files"`: the paths written.

    Raises:
        FileNotFoundError: `run_dir` is not a training run, or the dataset is missing.
        ValueError: A bad argument, a split the dataset lacks, or a dataset whose
            classes, image size or preprocessing differ from the run's.

    Example:
        >>> m = evaluate("runs/a", "data/", split="test")  # doctest: +SKIP
        >>> from cxrmodels.evaluation.clinical import format_metrics_table
        >>> print(format_metrics_table(m))  # doctest: +SKIP
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a split name such as 'test'. Received: split={split!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be an integer >= 0. Received: n_bootstrap={n_bootstrap!r}")
    import cxrdata
    from cxrmodels.evaluation.clinical import evaluate_predictions
    from cxrmodels.evaluation.plots import plot_confusion_matrix, plot_roc

    run_dir, dataset_dir = os.fspath(run_dir), os.fspath(dataset_dir)
    config = _run.read_config(run_dir)
    manifest = cxrdata.read_manifest(dataset_dir)
    manifest.split(split)  # a missing split fails here, naming those there are
    notes = check_dataset(config, manifest, dataset_dir)
    model = _run.load_model(run_dir, config)

    y, probs = predict_split(model, dataset_dir, split, batch_size=batch_size)
    val_dir, val_note = _validation_source(config, manifest, dataset_dir, split)
    val_true = val_probs = None
    if val_dir is not None:
        val_true, val_probs = predict_split(model, val_dir, "val", batch_size=batch_size)
    class_names = config["class_names"]
    metrics = evaluate_predictions(
        y,
        probs,
        class_names=class_names,
        val_true=val_true,
        val_probs=val_probs,
        n_bootstrap=n_bootstrap,
        seed=0,
    )
    metrics["warnings"] = notes + metrics["warnings"]
    metrics.update(
        {
            "split": split,
            "threshold_data": val_note,
            "model": config["model"]["name"],
            "run": os.path.abspath(run_dir),
            "dataset": {
                "path": os.path.abspath(dataset_dir),
                "digest": manifest.digest(),
                "same_as_training": manifest.digest() == config["dataset"]["digest"],
            },
        }
    )

    suffix = "" if split == "test" else f"-{split}"
    files = {
        "metrics": os.path.join(run_dir, f"metrics{suffix}.json"),
        "roc": os.path.join(run_dir, f"roc{suffix}.png"),
        "confusion_matrix": os.path.join(run_dir, f"confusion_matrix{suffix}.png"),
    }
    if len(class_names) == 2 and len(set(y.tolist())) < 2:
        files.pop("roc")  # a two-class ROC curve needs both classes
    metrics["files"] = {k: os.path.basename(v) for k, v in files.items()}
    atomic_write_text(files["metrics"], json.dumps(metrics, indent=2) + "\n")
    if "roc" in files:
        plot_roc(y, probs, class_names=class_names, path=files["roc"], metrics=metrics)
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        class_names=class_names,
        path=files["confusion_matrix"],
        title=f"{config['model']['name']} on {split} (argmax decision)",
    )
    metrics["files"] = files
    return metrics


def check_dataset(config: dict, manifest, dataset_dir: str) -> list[str]:
    """Checks that a dataset is fed like the run's training data; returns warnings.

    Raises:
        ValueError: Its classes, image shape or preprocessing differ from the run's.
    """
    if list(manifest.class_names) != list(config["class_names"]):
        raise ValueError(
            f"The dataset {dataset_dir!r} has classes {list(manifest.class_names)} but the run "
            f"was trained on {config['class_names']} (in that order)."
        )
    if list(manifest.image_shape) != list(config["model"]["input_shape"]):
        raise ValueError(
            f"The dataset {dataset_dir!r} holds {tuple(manifest.image_shape)} images but the model takes "
            f"{tuple(config['model']['input_shape'])}. Convert it with the run's preprocessing: "
            f"{_describe(config['preprocessing'])}."
        )
    here, there = _normalized(manifest.preprocessing), _normalized(config["preprocessing"])
    different = sorted(k for k in set(here) | set(there) if here.get(k) != there.get(k))
    if different:
        raise ValueError(
            f"The dataset {dataset_dir!r} was preprocessed differently from the run's training data ("
            + ", ".join(
                f"{k}: {manifest.preprocessing.get(k)!r} here, {config['preprocessing'].get(k)!r} "
                "in training"
                for k in different
            )
            + "). Convert it again with the run's settings."
        )
    if manifest.digest() != config["dataset"]["digest"]:
        message = (
            f"The dataset {dataset_dir!r} is not the one the run was trained on (its manifest "
            "digest differs); its preprocessing is the same, so it is evaluated as an external set."
        )
        warnings.warn(message, stacklevel=3)
        return [message]
    return []


def _normalized(preprocessing: dict) -> dict:
    """`preprocessing` with the defaults of keys older manifests lack (their DICOM reading)."""
    from cxrdata.dicom import MULTI_FRAME_POLICY
    from cxrdata.manifest import dicom_window_of

    return {
        **preprocessing,
        "dicom_window": dicom_window_of(preprocessing),
        "dicom_frames": preprocessing.get("dicom_frames", MULTI_FRAME_POLICY),
    }


def _describe(preprocessing: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in preprocessing.items())


def _validation_source(config, manifest, dataset_dir, split) -> tuple[str | None, str]:
    """The dataset whose "val" split chooses the threshold, and a note saying which."""
    import cxrdata

    if split == "val":
        return None, "none: the evaluated split is the validation split"
    if "val" in manifest.splits and manifest.splits["val"].num_examples:
        return dataset_dir, f"val split of {os.path.abspath(dataset_dir)}"
    training = config["dataset"]["path"]
    try:
        same = cxrdata.read_manifest(training).digest() == config["dataset"]["digest"]
    except (OSError, ValueError):
        same = False
    if same and "val" in cxrdata.read_manifest(training).splits:
        return training, f"val split of the training dataset {training}"
    return None, "none: no validation split found"


def predict_split(model, dataset_dir: str, split: str, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(labels [N], probabilities [N, K])` of a model on one split, in manifest order."""
    import cxrdata

    ds = cxrdata.load(dataset_dir, split, batch_size=batch_size, shuffle=False, label_mode="int")
    labels, probs = [], []
    for images, y in ds:
        probs.append(np.asarray(model.predict_on_batch(images), dtype=np.float64))
        labels.append(np.asarray(y))
    return np.concatenate(labels).astype(np.int64), np.concatenate(probs)
