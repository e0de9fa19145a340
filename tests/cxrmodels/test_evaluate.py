"""Tests for `cxrmodels.evaluate` and `cxr evaluate`: predictions, metrics files, dataset checks."""

from __future__ import annotations

import json
import os
import shutil

import keras
import numpy as np
import pytest

import cxrdata
from cxrmodels.cli import main
from cxrmodels.evaluation.evaluator import evaluate
from cxrmodels.metrics.clinical import evaluate_predictions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _direct_predictions(run, dataset, split):
    """Labels and probabilities computed here, without `evaluate`'s code."""
    model = keras.saving.load_model(os.path.join(run, "model.keras"), compile=False)
    images, labels = [], []
    for x, y in cxrdata.load(dataset, split, batch_size=7, shuffle=False):
        images.append(x.numpy())
        labels.append(np.argmax(y.numpy(), axis=1))
    return np.concatenate(labels), model.predict(np.concatenate(images), verbose=0)


def _copy_with_manifest(dataset, dest, change):
    shutil.copytree(dataset, dest)
    manifest = json.loads((dest / "dataset.json").read_text())
    change(manifest)
    (dest / "dataset.json").write_text(json.dumps(manifest))
    return dest


def test_metrics_match_a_direct_computation_from_model_predict(trained_run, converted_dataset):
    metrics = evaluate(trained_run, converted_dataset, n_bootstrap=50)

    y, probs = _direct_predictions(trained_run, converted_dataset, "test")
    y_val, p_val = _direct_predictions(trained_run, converted_dataset, "val")
    expected = evaluate_predictions(
        y, probs, class_names=["COVID", "Normal"], val_true=y_val, val_probs=p_val, n_bootstrap=50, seed=0
    )
    manifest = cxrdata.read_manifest(converted_dataset)
    assert metrics["n"] == manifest.splits["test"].num_examples == len(y)
    assert metrics["class_counts"] == [manifest.splits["test"].counts[c] for c in ("COVID", "Normal")]
    assert metrics["threshold_source"] == "validation"
    for key in ("accuracy", "threshold"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6)
    assert (metrics["auc"] is None and expected["auc"] is None) or metrics["auc"] == pytest.approx(
        expected["auc"]
    )
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    # The confusion matrix by hand: rows true class, columns the argmax.
    predicted = probs.argmax(axis=1)
    assert metrics["confusion_matrix"] == [
        [int(np.sum((y == t) & (predicted == p))) for p in (0, 1)] for t in (0, 1)
    ]
    for key in ("tp", "fp", "tn", "fn"):
        assert metrics["at_0.5"][key] == expected["at_0.5"][key]
    assert metrics["dataset"]["same_as_training"] is True and metrics["split"] == "test"


def test_metrics_json_and_figures_are_written(trained_run, converted_dataset):
    metrics = evaluate(trained_run, converted_dataset, n_bootstrap=20)
    assert metrics["files"] == {
        name: os.path.join(trained_run, f"{name}{ext}")
        for name, ext in (("metrics", ".json"), ("roc", ".png"), ("confusion_matrix", ".png"))
    }
    on_disk = json.loads((trained_run / "metrics.json").read_text())
    assert on_disk["files"] == {
        "metrics": "metrics.json",
        "roc": "roc.png",
        "confusion_matrix": "confusion_matrix.png",
    }
    assert on_disk["confusion_matrix"] == metrics["confusion_matrix"] and on_disk["n_bootstrap"] == 20
    for name in ("roc.png", "confusion_matrix.png"):
        assert (trained_run / name).read_bytes()[:8] == PNG_SIGNATURE


def test_another_split_gets_its_own_files(trained_run, converted_dataset):
    metrics = evaluate(trained_run, converted_dataset, split="val", n_bootstrap=0)
    assert (trained_run / "metrics-val.json").is_file() and (
        trained_run / "confusion_matrix-val.png"
    ).is_file()
    assert metrics["n"] == cxrdata.read_manifest(converted_dataset).splits["val"].num_examples
    assert metrics["auc_ci"] is None  # no bootstrap asked
    assert metrics["threshold_source"] == "test"  # no other split to choose it on: flagged
    assert any("optimistic" in w for w in metrics["warnings"])


def test_external_dataset_with_the_same_preprocessing_warns(trained_run, converted_dataset, tmp_path):
    data = _copy_with_manifest(
        converted_dataset, tmp_path / "external", lambda m: m["source"].update(src="/elsewhere/hospital-b")
    )
    with pytest.warns(UserWarning, match="not the one the run was trained on"):
        metrics = evaluate(trained_run, data, n_bootstrap=0)
    assert metrics["dataset"]["same_as_training"] is False
    assert any("external" in w for w in metrics["warnings"])
    assert metrics["n"] == cxrdata.read_manifest(data).splits["test"].num_examples


def test_external_dataset_without_val_uses_the_training_val_split(trained_run, converted_dataset, tmp_path):
    data = _copy_with_manifest(converted_dataset, tmp_path / "external", lambda m: m["splits"].pop("val"))
    with pytest.warns(UserWarning):
        metrics = evaluate(trained_run, data, n_bootstrap=0)
    assert metrics["threshold_source"] == "validation"
    assert (
        metrics["threshold_data"] == f"val split of the training dataset {os.path.abspath(converted_dataset)}"
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda m: m["preprocessing"].update(radius=70),
            r"preprocessed differently.*radius: 70 here, 20 in training",
        ),
        (
            lambda m: m.update(image_shape=[48, 48, 1]),
            r"holds \(48, 48, 1\) images but the model takes \(64, 64, 1\)",
        ),
        (lambda m: m.update(class_names=["Normal", "COVID"]), r"has classes \['Normal', 'COVID'\]"),
    ],
)
def test_dataset_prepared_differently_is_an_error(trained_run, converted_dataset, tmp_path, change, match):
    data = _copy_with_manifest(converted_dataset, tmp_path / "other", change)
    with pytest.raises(ValueError, match=match):
        evaluate(trained_run, data)


def test_bad_inputs(trained_run, converted_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a training run: it holds no config.json"):
        evaluate(tmp_path, converted_dataset)
    with pytest.raises(ValueError, match="no split 'holdout'"):
        evaluate(trained_run, converted_dataset, split="holdout")
    with pytest.raises(ValueError, match="`n_bootstrap` must be an integer >= 0"):
        evaluate(trained_run, converted_dataset, n_bootstrap=-1)


def test_cli_prints_the_metrics_table(trained_run, converted_dataset, capsys):
    assert main(["evaluate", str(trained_run), str(converted_dataset), "--n-bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert "positive class: COVID" in out and "Sensitivity" in out and "confusion matrix" in out
    assert "threshold chosen on: val split of" in out
    assert main(["evaluate", str(converted_dataset), str(converted_dataset)]) == 2
    assert "not a training run" in capsys.readouterr().err


def _run_copy(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("logs"))
    return run


def test_a_truncated_model_file_is_called_damaged_not_missing(
    trained_run, converted_dataset, tmp_path, capsys
):
    from cxrmodels.serving.prediction import predict

    run = _run_copy(trained_run, tmp_path)
    model_file = run / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(
        ValueError, match=r"model\.keras' \(\d+ bytes\) is damaged: it is not a complete " r"\.keras zip file"
    ):
        evaluate(run, converted_dataset, n_bootstrap=0)
    with pytest.raises(ValueError, match="is damaged"):
        predict(run, [os.path.join(converted_dataset, "dataset.json")])
    assert main(["evaluate", str(run), str(converted_dataset)]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "not found" not in err.lower() and len(err.strip().splitlines()) == 1


def test_a_model_with_other_classes_than_the_run_is_named(trained_run, converted_dataset, tmp_path, realdata):
    from cxrmodels.models import create_model
    from cxrmodels.serving.prediction import predict

    run = _run_copy(trained_run, tmp_path)
    create_model("seed_cnn", input_shape=(64, 64, 1), num_classes=3, filters=(4, 8, 8), dense_units=8).save(
        run / "model.keras"
    )
    png = next(p for p in sorted(realdata.rglob("*.png")))
    with pytest.raises(
        ValueError,
        match=r"has 3 class outputs but the run's config\.json names 2 classes "
        r"\['COVID', 'Normal'\]: model\.keras does not belong to this run",
    ):
        predict(run, [png])
    with pytest.raises(ValueError, match="has 3 class outputs"):
        evaluate(run, converted_dataset, n_bootstrap=0)
