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
from cxrmodels.metrics.calibration import expected_calibration_error
from cxrmodels.metrics.clinical import decision_thresholds, evaluate_predictions

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
    chosen = decision_thresholds(y_val, p_val, ["COVID", "Normal"])  # on the val split, as `cxr train` does
    stored = json.loads((trained_run / "config.json").read_text())["decision_threshold"]
    assert stored["per_class"] == pytest.approx(chosen["per_class"])
    expected = evaluate_predictions(
        y, probs, class_names=["COVID", "Normal"], thresholds=chosen["per_class"], n_bootstrap=50, seed=0
    )
    manifest = cxrdata.read_manifest(converted_dataset)
    assert metrics["n"] == manifest.splits["test"].num_examples == len(y)
    assert metrics["class_counts"] == [manifest.splits["test"].counts[c] for c in ("COVID", "Normal")]
    assert metrics["threshold_source"] == "run" and metrics["threshold_method"] == "youden"
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
    figures = ("roc", "confusion_matrix", "reliability")
    assert metrics["files"] == {
        "metrics": os.path.join(trained_run, "metrics.json"),
        **{name: os.path.join(trained_run, f"{name}.png") for name in figures},
    }
    on_disk = json.loads((trained_run / "metrics.json").read_text())
    assert on_disk["files"] == {"metrics": "metrics.json", **{name: f"{name}.png" for name in figures}}
    assert on_disk["confusion_matrix"] == metrics["confusion_matrix"] and on_disk["n_bootstrap"] == 20
    for name in ("roc.png", "confusion_matrix.png", "reliability.png"):
        assert (trained_run / name).read_bytes()[:8] == PNG_SIGNATURE


def test_another_split_gets_its_own_files(trained_run, converted_dataset):
    metrics = evaluate(trained_run, converted_dataset, split="val", n_bootstrap=0)
    for name in ("metrics-val.json", "confusion_matrix-val.png", "reliability-val.png"):
        assert (trained_run / name).is_file()
    assert metrics["n"] == cxrdata.read_manifest(converted_dataset).splits["val"].num_examples
    assert metrics["auc_ci"] is None  # no bootstrap asked
    # the stored threshold was chosen on this very split: applied, and flagged
    assert metrics["threshold_source"] == "run"
    assert any(
        "chosen on the 'val' split evaluated here" in w and "optimistic" in w for w in metrics["warnings"]
    )


def test_external_dataset_with_the_same_preprocessing_warns(trained_run, converted_dataset, tmp_path):
    data = _copy_with_manifest(
        converted_dataset, tmp_path / "external", lambda m: m["source"].update(src="/elsewhere/hospital-b")
    )
    with pytest.warns(UserWarning, match="not the one the run was trained on"):
        metrics = evaluate(trained_run, data, n_bootstrap=0)
    assert metrics["dataset"]["same_as_training"] is False
    assert any("external" in w for w in metrics["warnings"])
    assert metrics["n"] == cxrdata.read_manifest(data).splits["test"].num_examples


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda m: m["preprocessing"].update(equalize_radius=70),
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
    assert "decision threshold: stored in the run: youden on the 'val' split" in out
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


# --- the run's decision threshold, external report folders (issue 19, item 6) -------------------


def _edit_config(run, change):
    config = json.loads((run / "config.json").read_text())
    change(config)
    (run / "config.json").write_text(json.dumps(config))
    return config


def _positive_scores(run, data, split):
    y, probs = _direct_predictions(run, data, split)
    return y == 0, probs[:, 0]  # COVID, the positive class of ["COVID", "Normal"]


def test_a_run_whose_training_data_moved_applies_its_stored_threshold(
    trained_run, converted_dataset, tmp_path
):
    # A run copied to another machine: its training dataset is not at the recorded path.
    run = _run_copy(trained_run, tmp_path)
    config = _edit_config(run, lambda c: c["dataset"].update(path=str(tmp_path / "gone")))
    data = _copy_with_manifest(converted_dataset, tmp_path / "external", lambda m: m["splits"].pop("val"))
    with pytest.warns(UserWarning, match="not the one the run was trained on"):
        metrics = evaluate(run, data, n_bootstrap=0)
    stored = config["decision_threshold"]["value"]
    assert metrics["threshold"] == stored and metrics["threshold_source"] == "run"
    positive, scores = _positive_scores(run, data, "test")
    called = scores >= stored
    assert metrics["at_threshold"]["tp"] == int(np.sum(called & positive))
    assert metrics["at_threshold"]["fp"] == int(np.sum(called & ~positive))
    assert "stored in the run" in metrics["threshold_data"]


def test_a_run_without_a_stored_threshold_is_refused_unless_one_is_given(
    trained_run, converted_dataset, tmp_path
):
    run = _run_copy(trained_run, tmp_path)
    _edit_config(run, lambda c: c.pop("decision_threshold"))
    with pytest.raises(ValueError, match=r"stores no decision threshold.*train it again.*`threshold`"):
        evaluate(run, converted_dataset, n_bootstrap=0)
    metrics = evaluate(run, converted_dataset, n_bootstrap=0, threshold=0.3)
    assert metrics["threshold"] == 0.3 and metrics["threshold_source"] == "given"
    positive, scores = _positive_scores(run, converted_dataset, "test")
    assert metrics["at_threshold"]["tp"] == int(np.sum((scores >= 0.3) & positive))


def test_two_external_datasets_whose_folders_share_a_name_keep_their_own_reports(
    trained_run, converted_dataset, tmp_path
):
    run = _run_copy(trained_run, tmp_path)
    reports = []
    for hospital in ("a", "b"):
        data = _copy_with_manifest(
            converted_dataset,
            tmp_path / hospital / "external",
            lambda m, h=hospital: m["source"].update(src=f"/hospital-{h}"),
        )
        with pytest.warns(UserWarning):
            reports.append(evaluate(run, data, n_bootstrap=0))
    folders = [os.path.dirname(r["files"]["metrics"]) for r in reports]
    assert folders[0] != folders[1]
    for folder, report in zip(folders, reports):
        on_disk = json.loads(open(os.path.join(folder, "metrics.json")).read())
        assert on_disk["dataset"]["digest"] == report["dataset"]["digest"]
        assert os.path.basename(folder).startswith("external-")


# --- results by group, calibration (issue 19, items 7 and 8) ------------------------------------


@pytest.fixture(scope="module")
def two_site_dataset(tmp_path_factory):
    """An external test set (64x64, radius 20, as the run's data) from two sites, grouped by site."""
    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree

    base = tmp_path_factory.mktemp("sites")
    rows = write_tree(base / "src", per_class=10, image_size=64, seed=8)
    with open(base / "labels.csv", "w") as f:
        f.write("path,label,site\n")
        f.writelines(
            f"{r['path']},{r['label']},{'north' if i % 2 else 'south'}\n" for i, r in enumerate(rows)
        )
    convert(
        base / "src",
        base / "data",
        labels=base / "labels.csv",
        group_by="site",
        splits=(0, 0, 1),
        image_size=64,
        radius=20,
        workers=1,
        progress=False,
    )
    return base / "data"


def _groups_in_manifest_order(data, split):
    from cxrdata.records import iter_records, parse_record

    manifest = cxrdata.read_manifest(data)
    return np.array(
        [
            parse_record(raw)["group"]
            for shard in manifest.splits[split].shards
            for raw in iter_records(os.path.join(data, shard.name))
        ]
    )


def test_results_by_group_match_each_group_computed_alone(trained_run, two_site_dataset, tmp_path):
    from cxrmodels.metrics.clinical import bootstrap_auc_ci, roc_auc
    from cxrmodels.metrics.intervals import wilson_interval

    run = _run_copy(trained_run, tmp_path)
    with pytest.warns(UserWarning, match="not the one the run was trained on"):
        metrics = evaluate(run, two_site_dataset, split="all", by="group", n_bootstrap=200)
    positive, scores = _positive_scores(run, two_site_dataset, "test")
    groups = _groups_in_manifest_order(two_site_dataset, "test")
    threshold = json.loads((run / "config.json").read_text())["decision_threshold"]["value"]
    by_group = metrics["by_group"]
    assert by_group["key"] == "group" and sorted(by_group["groups"]) == ["north", "south"]
    for name, report in by_group["groups"].items():
        here = groups == name
        assert report["n"] == int(here.sum()) == 10
        assert report["auc"] == pytest.approx(roc_auc(positive[here], scores[here]))
        # the group's own bootstrap (same seed and resamples), and Wilson intervals of its counts
        low, high = bootstrap_auc_ci(positive[here], scores[here], n_bootstrap=200, seed=0)
        assert report["auc_ci"] == pytest.approx([low, high])
        called = scores[here] >= threshold
        tp, tn = int(np.sum(called & positive[here])), int(np.sum(~called & ~positive[here]))
        assert report["sensitivity"] == pytest.approx(tp / 5) and report["specificity"] == pytest.approx(
            tn / 5
        )
        assert report["sensitivity_ci"] == pytest.approx(wilson_interval(tp, 5))
        assert report["specificity_ci"] == pytest.approx(wilson_interval(tn, 5))
    files = metrics["files"]
    assert open(files["by_group"], "rb").read(8) == PNG_SIGNATURE
    on_disk = json.loads(open(files["metrics"]).read())
    assert on_disk["by_group"]["groups"]["north"]["n"] == 10


def test_by_group_on_a_dataset_without_groups_is_refused_before_predicting(trained_run, converted_dataset):
    with pytest.raises(ValueError, match=r"records no groups.*--group-by or --group-pattern"):
        evaluate(trained_run, converted_dataset, by="group")
    with pytest.raises(ValueError, match=r"`by` must be None or 'group'. Received: by='site'"):
        evaluate(trained_run, converted_dataset, by="site")


def test_every_report_holds_calibration_and_a_reliability_diagram(trained_run, converted_dataset, tmp_path):
    run = _run_copy(trained_run, tmp_path)
    metrics = evaluate(run, converted_dataset, n_bootstrap=200)
    positive, scores = _positive_scores(run, converted_dataset, "test")
    calibration = metrics["calibration"]["classes"]["COVID"]
    assert calibration["brier"] == pytest.approx(np.mean((scores - positive) ** 2))
    assert calibration["brier_ci"][0] <= calibration["brier"] <= calibration["brier_ci"][1]
    # The ECE's (basic bootstrap) interval need not hold the estimate; it is ordered and in [0, 1].
    assert 0 <= calibration["ece_ci"][0] <= calibration["ece_ci"][1] <= 1
    assert calibration["ece"] == pytest.approx(expected_calibration_error(positive, scores))
    assert sum(b["n"] for b in calibration["bins"]) == len(scores)
    assert (run / "reliability.png").read_bytes()[:8] == PNG_SIGNATURE
    assert metrics["files"]["reliability"] == os.path.join(run, "reliability.png")


def test_run_threshold_names_what_is_missing_and_keeps_argmax_runs_evaluable():
    from cxrmodels.evaluation.stored_threshold import run_threshold

    binary = {"class_names": ["COVID", "Normal"]}
    one_class_val = {
        **binary,
        "decision_threshold": {"per_class": {"COVID": None, "Normal": None}, "value": None, "examples": 3},
    }
    with pytest.raises(
        ValueError, match=r"no usable decision threshold.*3 examples, did not hold both classes"
    ):
        run_threshold(one_class_val, "runs/a")
    given = run_threshold(one_class_val, "runs/a", 0.25)
    assert given["per_class"] == {"COVID": 0.25, "Normal": None} and given["source"] == "given"
    three = {"class_names": ["a", "b", "c"]}
    with pytest.raises(ValueError, match=r"`threshold` applies to two-class runs.*3 classes"):
        run_threshold(three, "runs/b", 0.5)
    assert run_threshold(three, "runs/b")["per_class"] is None  # the argmax decision needs none


def test_threshold_and_by_are_checked_before_anything_is_read(tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(ValueError, match=r"`threshold` must be a probability in \(0, 1\) or None"):
        evaluate(missing, missing, threshold=1.5)
    with pytest.raises(TypeError, match="`threshold` must be a number or None"):
        evaluate(missing, missing, threshold="0.3")


def test_cli_reports_by_group_at_a_given_threshold(trained_run, two_site_dataset, tmp_path, capsys):
    run = _run_copy(trained_run, tmp_path)
    _edit_config(run, lambda c: c.pop("decision_threshold"))
    args = [
        "evaluate",
        str(run),
        str(two_site_dataset),
        "--split",
        "all",
        "--by",
        "group",
        "--n-bootstrap",
        "20",
    ]
    assert main(args) == 2  # refused before the dataset is read
    assert "stores no decision threshold" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="external set"):
        assert main(args + ["--threshold", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "by group (COVID called at probability >= 0.400)" in out
    assert any(line.split()[:3] == ["north", "10", "5"] for line in out.splitlines())
    assert "decision threshold: given: 0.4" in out and "by_group.png" in out
