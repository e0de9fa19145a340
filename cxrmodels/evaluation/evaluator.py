"""`evaluate`: a trained run on one split of a converted dataset, with clinical metrics.

The decision threshold is chosen on validation predictions (Youden's J), so
the test metrics at that threshold are not tuned on the test data: always the
run's own validation split (the "val" split of the dataset it was trained on),
never one of an external dataset, whose threshold would be tuned on the very
population the external evaluation means to test.

An external dataset (another manifest digest) is reported in its own folder,
`RUN/external/<dataset>-<split>/`, beside the run's internal test figures:
the internal `metrics.json`, `roc.png` and `confusion_matrix.png` are never
overwritten by it.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from cxrdata.utils.io import atomic_write_text
from cxrmodels.models.predicting import predict_split
from cxrmodels.models.saving import load_run_model
from cxrmodels.runs import run_folder

EXTERNAL_DIR = "external"


def evaluate(
    run_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    *,
    split: str = "test",
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    class_map: dict[str, str] | str | None = None,
    allow_preprocessing_mismatch: bool = False,
) -> dict[str, Any]:
    """Evaluates a run's model on a split and writes its metrics and figures into the run.

    Predicts the split (and a validation split, for the threshold), computes
    `cxrmodels.metrics.clinical.evaluate_predictions` (ROC AUC with a bootstrap 95% CI,
    sensitivity, specificity, PPV, NPV and F1 at the Youden threshold and at
    0.5, the confusion matrix) and writes into `run_dir`: `metrics.json`,
    `roc.png` and `confusion_matrix.png` for the "test" split, or
    `metrics-{split}.json`, `roc-{split}.png` and `confusion_matrix-{split}.png`
    for another split.

    The dataset may be another one than the run was trained on (an external
    test set, converted elsewhere, for example with `cxr convert --splits 0,0,1`):
    a different manifest digest adds a warning, the threshold chosen on the
    run's own validation split is applied unchanged, and everything is written
    into `run_dir/external/<dataset folder name>-<split>/` with, under
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
        n_bootstrap: Bootstrap resamples for the AUC CI (0: none). Defaults to 1000.
        class_map: The dataset's class names mapped to the run's, as a dict or
            "pneumonia=COVID,healthy=Normal"; names left out must be the run's.
            Defaults to None.
        allow_preprocessing_mismatch: Evaluate even if the dataset was
            preprocessed differently (radius, equalization...), with a warning
            naming the differences. The image size must still be the model's.
            Defaults to False.

    Returns:
        The metrics, as written to the JSON file, plus `"files"`: the paths written.

    Raises:
        FileNotFoundError: `run_dir` is not a training run, or the dataset is missing.
        ValueError: A bad argument, a split the dataset lacks, or a dataset whose
            classes, image size or preprocessing differ from the run's.

    Example:
        >>> m = evaluate("runs/a", "data/", split="test")  # doctest: +SKIP
        >>> from cxrmodels.metrics.clinical import format_metrics_table
        >>> print(format_metrics_table(m))  # doctest: +SKIP
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a split name such as 'test'. Received: split={split!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be an integer >= 0. Received: n_bootstrap={n_bootstrap!r}")
    class_map = parse_class_map(class_map)
    if not isinstance(allow_preprocessing_mismatch, bool):
        raise TypeError(
            "`allow_preprocessing_mismatch` must be True or False. "
            f"Received: allow_preprocessing_mismatch={allow_preprocessing_mismatch!r}"
        )
    import cxrdata
    from cxrmodels.evaluation.plots import plot_confusion_matrix, plot_roc
    from cxrmodels.metrics.clinical import evaluate_predictions

    run_dir, dataset_dir = os.fspath(run_dir), os.fspath(dataset_dir)
    config = run_folder.read_config(run_dir)
    manifest = cxrdata.read_manifest(dataset_dir)
    splits = split_names(manifest, split)
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
                "same_as_training": not external,
            },
        }
    )
    if class_map:
        metrics["class_map"] = class_map

    if external:
        folder = external_report_dir(run_dir, dataset_dir, split)
        os.makedirs(folder, exist_ok=True)
        metrics["internal"] = internal_test_metrics(
            run_dir, config, model, batch_size=batch_size, n_bootstrap=n_bootstrap
        )
        files = {
            "metrics": os.path.join(folder, "metrics.json"),
            "roc": os.path.join(folder, "roc.png"),
            "confusion_matrix": os.path.join(folder, "confusion_matrix.png"),
            "comparison": os.path.join(folder, "comparison.png"),
        }
        if metrics["internal"] is None:
            files.pop("comparison")
    else:
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
    if "comparison" in files:
        from cxrmodels.evaluation.plots import plot_auc_bars

        bars = [
            ("internal test", metrics["internal"]),
            (f"external: {os.path.basename(dataset_dir)}", metrics),
        ]
        plot_auc_bars(
            [(name, _headline(m)) for name, m in bars],
            path=files["comparison"],
            title=f"{config['model']['name']}: internal test vs external",
        )
    metrics["files"] = files
    return metrics


def _headline(metrics: dict) -> tuple[float | None, list | None]:
    """(AUC, CI) of a metrics dict: the positive class's, or the macro AUC without a CI."""
    if metrics.get("task") == "binary":
        return metrics["auc"], metrics["auc_ci"]
    return metrics.get("macro_auc"), None


def split_names(manifest, split: str) -> list[str]:
    """The splits that `split` means: every split of the dataset for "all"."""
    if split == "all":
        names = [s for s in manifest.splits if manifest.splits[s].num_examples]
        if not names:
            raise ValueError("The dataset holds no examples in any split.")
        return names
    manifest.split(split)  # a missing split fails here, naming those there are
    return [split]


def parse_class_map(class_map) -> dict[str, str]:
    """`{dataset class: run class}` from a dict or a "a=B,c=D" string; {} for None."""
    if class_map is None:
        return {}
    if isinstance(class_map, str):
        pairs = [p.split("=") for p in class_map.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
            raise ValueError(
                "`class_map` must be pairs DATASET_CLASS=RUN_CLASS separated by commas, like "
                f"'pneumonia=COVID,healthy=Normal'. Received: class_map={class_map!r}"
            )
        return {a.strip(): b.strip() for a, b in pairs}
    if not isinstance(class_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in class_map.items()
    ):
        raise TypeError(
            f"`class_map` must be a dict of str to str, a 'a=B,c=D' string or None. "
            f"Received: class_map={class_map!r}"
        )
    return dict(class_map)


def label_mapping(config: dict, manifest, class_map: dict[str, str]) -> list[int] | None:
    """Run label of each dataset label, or None when they are the same."""
    names = [class_map.get(c, c) for c in manifest.class_names]
    if names == list(config["class_names"]):
        return None
    return [list(config["class_names"]).index(n) for n in names]


def external_report_dir(run_dir: str, dataset_dir: str, split: str) -> str:
    """`run_dir/external/<dataset folder name>-<split>`: where an external evaluation is written."""
    name = os.path.basename(os.path.normpath(os.path.abspath(dataset_dir))) or "dataset"
    return os.path.join(run_dir, EXTERNAL_DIR, f"{name}-{split}")


def internal_test_metrics(
    run_dir: str, config: dict, model, *, batch_size: int, n_bootstrap: int
) -> dict | None:
    """The run's metrics on its own test split: its `metrics.json` if current, else computed; None if unreachable."""
    import cxrdata
    from cxrmodels.metrics.clinical import evaluate_predictions

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
    val = (
        predict_split(model, training, "val", batch_size=batch_size)
        if "val" in manifest.splits
        else (None, None)
    )
    metrics = evaluate_predictions(
        y,
        probs,
        class_names=config["class_names"],
        val_true=val[0],
        val_probs=val[1],
        n_bootstrap=n_bootstrap,
        seed=0,
    )
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


def check_dataset(
    config: dict,
    manifest,
    dataset_dir: str,
    *,
    class_map: dict[str, str] | None = None,
    allow_preprocessing_mismatch: bool = False,
) -> list[str]:
    """Checks that a dataset is fed like the run's training data; returns warnings.

    Raises:
        ValueError: Its classes (after `class_map`), image shape or preprocessing
            (unless `allow_preprocessing_mismatch`) differ from the run's.
    """
    class_map = class_map or {}
    unused = sorted(set(class_map) - set(manifest.class_names))
    if unused:
        raise ValueError(
            f"`class_map` maps class(es) {unused} that the dataset {dataset_dir!r} lacks; its classes: "
            f"{list(manifest.class_names)}. Received: class_map={class_map}"
        )
    mapped = [class_map.get(c, c) for c in manifest.class_names]
    unknown = [
        f"{c!r}" + (f" (mapped to {class_map[c]!r})" if c in class_map else "")
        for c, m in zip(manifest.class_names, mapped)
        if m not in config["class_names"]
    ]
    if unknown:
        raise ValueError(
            f"The dataset {dataset_dir!r} has class(es) {', '.join(unknown)} that the run was not "
            f"trained on (its classes: {config['class_names']}). Map them with `class_map` "
            "(`--class-map theirs=ours,...`)."
        )
    if not class_map and list(manifest.class_names) != list(config["class_names"]):
        raise ValueError(
            f"The dataset {dataset_dir!r} has classes {list(manifest.class_names)} but the run "
            f"was trained on {config['class_names']} (in that order). Map them with `class_map` "
            "if they are the same classes."
        )
    if list(manifest.image_shape) != list(config["model"]["input_shape"]):
        raise ValueError(
            f"The dataset {dataset_dir!r} holds {tuple(manifest.image_shape)} images but the model takes "
            f"{tuple(config['model']['input_shape'])}. Convert it with the run's preprocessing: "
            f"{_describe(config['preprocessing'])}."
        )
    here, there = _normalized(manifest.preprocessing), _normalized(config["preprocessing"])
    different = sorted(k for k in set(here) | set(there) if here.get(k) != there.get(k))
    notes = []
    if different:
        what = (
            "The dataset {dataset_dir!r} was preprocessed differently from the run's training data ("
            + ", ".join(
                f"{k}: {manifest.preprocessing.get(k)!r} here, {config['preprocessing'].get(k)!r} "
                "in training"
                for k in different
            )
            + ")"
        ).format(dataset_dir=dataset_dir)
        if not allow_preprocessing_mismatch:
            raise ValueError(
                what + ". Convert it again with the run's settings, or pass "
                "--allow-preprocessing-mismatch (allow_preprocessing_mismatch=True) to evaluate it "
                "anyway."
            )
        notes.append(
            what + "; evaluated anyway (allow_preprocessing_mismatch): the figures mix a shift of "
            "population with one of preprocessing."
        )
        warnings.warn(notes[-1], stacklevel=3)
    if manifest.digest() != config["dataset"]["digest"]:
        message = (
            f"The dataset {dataset_dir!r} is not the one the run was trained on (its manifest "
            "digest differs), so it is evaluated as an external set."
        )
        warnings.warn(message, stacklevel=3)
        return notes + [message]
    return notes


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
    """The dataset whose "val" split chooses the threshold (the run's own), and a note saying which."""
    import cxrdata

    own = manifest.digest() == config["dataset"]["digest"]
    if own and split in ("val", "all"):
        return None, "none: the evaluated data hold the validation split"
    if own and "val" in manifest.splits and manifest.splits["val"].num_examples:
        return dataset_dir, f"val split of {os.path.abspath(dataset_dir)}"
    training = config["dataset"]["path"]
    try:
        same = cxrdata.read_manifest(training).digest() == config["dataset"]["digest"]
    except (OSError, ValueError):
        same = False
    if same and "val" in cxrdata.read_manifest(training).splits:
        return training, f"val split of the training dataset {training}"
    return None, "none: no validation split found"


def predict_splits(
    model, dataset_dir: str, splits: list[str], *, batch_size: int, labels: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`predict_split` over several splits, concatenated; dataset labels mapped through `labels`."""
    parts = [predict_split(model, dataset_dir, s, batch_size=batch_size) for s in splits]
    y, probs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)[y]
    return y, probs
