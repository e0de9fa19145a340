"""`cxrmodels.audit` / `cxr audit` end to end on 64-pixel phantoms, and external evaluation.

Two small seed_cnn runs: one on phantoms with a planted corner marker (findings subtle,
severity 0.25, the marker on every COVID film and no normal one), one on clean phantoms
whose disease lives only in the lungs. Seeded; about a minute each on 2 CPU cores.
"""

from __future__ import annotations

import json
import os

import pytest

import cxrdata
import cxrmodels
from cxrdata.synthetic import write_tree
from cxrmodels.cli import main

pytestmark = pytest.mark.slow


def _dataset_and_run(base, **tree):
    write_tree(base / "src", per_class=60, image_size=64, masks=True, seed=5, **tree)
    cxrdata.convert(
        base / "src",
        base / "data",
        image_size=64,
        radius=20,
        workers=1,
        progress=False,
        splits=(0.5, 0.2, 0.3),
    )
    cxrmodels.train(
        base / "data",
        out=base / "run",
        epochs=15,
        batch_size=16,
        learning_rate=3e-3,
        augment="none",
        patience=15,
        verbose=0,
        model_kwargs={"filters": (8, 16, 16), "dense_units": 16},
    )
    return base / "data", base / "run"


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory):
    return _dataset_and_run(tmp_path_factory.mktemp("shortcut"), shortcut="marker", severity=0.25)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    return _dataset_and_run(tmp_path_factory.mktemp("clean"))


def _show(name, report):
    print(f"\n{name}:")
    for check in report["checks"].values():
        print(f"  [{check['status']}] {check['verdict']}")


def test_a_model_using_a_planted_marker_is_flagged(shortcut_run):
    data, run = shortcut_run
    report = cxrmodels.audit(run, data, n_bootstrap=200)
    _show("marker shortcut", report)
    checks = report["checks"]
    assert checks["original"]["auc"] > 0.9
    assert checks["lungs_blanked"]["auc"] >= 0.85 and checks["lungs_blanked"]["status"] == "flagged"
    assert "separates the classes without the lungs" in checks["lungs_blanked"]["verdict"]
    share = checks["gradcam_lung_share"]
    assert share["median"] < share["lung_area"] and share["status"] == "flagged"
    assert {"lungs_blanked", "gradcam_lung_share"} <= set(report["flagged"])
    assert checks["external"]["status"] == "skipped"
    on_disk = json.loads(open(report["files"]["audit"]).read())
    assert on_disk["flagged"] == report["flagged"] and on_disk["thresholds"]["lungs_blanked_auc"] == 0.7
    assert open(report["files"]["figure"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.dirname(report["files"]["audit"]) == os.path.join(run, "audit", "data-test")


def test_a_model_looking_at_the_lungs_is_not_flagged(clean_run):
    data, run = clean_run
    report = cxrmodels.audit(run, data, n_bootstrap=200)
    _show("clean", report)
    checks = report["checks"]
    assert checks["original"]["auc"] > 0.9
    assert checks["lungs_blanked"]["auc"] < 0.7 and checks["lungs_blanked"]["status"] == "ok"
    assert checks["lungs_only"]["auc"] > 0.8
    share = checks["gradcam_lung_share"]
    assert share["median"] >= share["lung_area"] and share["status"] == "ok"
    assert report["flagged"] == []


def test_thresholds_are_overridable_and_checked(clean_run, tmp_path):
    data, run = clean_run
    report = cxrmodels.audit(
        run, data, n_bootstrap=0, thresholds={"lungs_blanked_auc": 0.0}, out=tmp_path / "a"
    )
    assert report["checks"]["lungs_blanked"]["status"] == "flagged" and report["files"]["audit"].startswith(
        str(tmp_path / "a")
    )
    with pytest.raises(ValueError, match="`thresholds` takes the keys"):
        cxrmodels.audit(run, data, thresholds={"blanked": 0.5})
    with pytest.raises(ValueError, match=r"`thresholds\['external_drop'\]` must be a number from 0 to 1"):
        cxrmodels.audit(run, data, thresholds={"external_drop": 3})


def test_records_without_masks_skip_the_checks_that_need_them(trained_run, converted_dataset, tmp_path):
    report = cxrmodels.audit(trained_run, converted_dataset, n_bootstrap=0, out=tmp_path)
    checks = report["checks"]
    n = cxrdata.read_manifest(converted_dataset).splits["test"].num_examples
    assert checks["original"]["status"] == "ok" and checks["original"]["n"] == n
    for name in ("lungs_blanked", "lungs_only", "gradcam_lung_share"):
        assert checks[name]["status"] == "skipped"
        assert "no record of split 'test' carries a lung mask" in checks[name]["verdict"]
    assert report["flagged"] == [] and (tmp_path / "audit.png").is_file()


@pytest.fixture(scope="module")
def external_data(tmp_path_factory):
    """Another 'hospital': other class names, test-only, preprocessed like the runs (and once not)."""
    base = tmp_path_factory.mktemp("external")
    write_tree(base / "src", classes=("covid19", "healthy"), per_class=20, image_size=64, masks=True, seed=11)
    cxrdata.convert(
        base / "src", base / "ext", image_size=64, radius=20, workers=1, progress=False, splits="0,0,1"
    )
    cxrdata.convert(
        base / "src", base / "ext-r12", image_size=64, radius=12, workers=1, progress=False, splits="0,0,1"
    )
    return base / "ext", base / "ext-r12"


def test_external_evaluation_maps_classes_and_keeps_the_internal_report(clean_run, external_data):
    data, run = clean_run
    ext, _ = external_data
    internal = cxrmodels.evaluate(run, data, n_bootstrap=100)
    before = {
        n: open(os.path.join(run, n), "rb").read()
        for n in ("metrics.json", "roc.png", "confusion_matrix.png")
    }
    with pytest.warns(UserWarning, match="external set"):
        metrics = cxrmodels.evaluate(
            run, ext, split="all", class_map="covid19=COVID,healthy=Normal", n_bootstrap=100
        )
    print(
        f"\nexternal: internal AUC {internal['auc']:.3f} {internal['auc_ci']}, external AUC {metrics['auc']:.3f} "
        f"{metrics['auc_ci']}"
    )
    assert metrics["n"] == 40 and metrics["class_counts"] == [20, 20]
    assert metrics["threshold"] == pytest.approx(internal["threshold"])  # the run's own val split, unchanged
    assert metrics["threshold_data"] == f"val split of the training dataset {os.path.abspath(data)}"
    assert metrics["internal"]["auc"] == pytest.approx(internal["auc"])
    folder = os.path.join(run, "external", "ext-all")
    assert metrics["files"]["metrics"] == os.path.join(folder, "metrics.json")
    for name in ("metrics.json", "roc.png", "confusion_matrix.png", "comparison.png"):
        assert os.path.isfile(os.path.join(folder, name))
    assert before == {n: open(os.path.join(run, n), "rb").read() for n in before}
    with pytest.raises(ValueError, match=r"class\(es\) 'covid19', 'healthy' that the run was not trained on"):
        cxrmodels.evaluate(run, ext, split="all")


def test_external_preprocessing_mismatch_is_refused_naming_both_values(clean_run, external_data, capsys):
    data, run = clean_run
    _, other = external_data
    with pytest.raises(ValueError, match=r"radius: 12 here, 20 in training.*--allow-preprocessing-mismatch"):
        cxrmodels.evaluate(run, other, split="all", class_map={"covid19": "COVID", "healthy": "Normal"})
    args = [
        "evaluate",
        str(run),
        str(other),
        "--split",
        "all",
        "--class-map",
        "covid19=COVID,healthy=Normal",
        "--n-bootstrap",
        "0",
    ]
    assert main(args) == 2 and "radius: 12 here, 20 in training" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="preprocessed differently"):
        assert main(args + ["--allow-preprocessing-mismatch"]) == 0
    assert "AUC internal test:" in capsys.readouterr().out


def test_cli_audit_with_an_external_dataset(shortcut_run, external_data, capsys):
    data, run = shortcut_run
    ext, _ = external_data
    code = main(
        [
            "audit",
            str(run),
            str(data),
            "--external",
            str(ext),
            "--class-map",
            "covid19=COVID,healthy=Normal",
            "--n-bootstrap",
            "100",
        ]
    )
    out = capsys.readouterr().out
    print(out)
    assert code == 1  # flagged
    assert "[flagged] lungs blanked: AUC" in out and "internal vs external: AUC" in out
    report = json.loads(open(os.path.join(run, "audit", "data-test", "audit.json")).read())
    ext_check = report["checks"]["external"]
    assert ext_check["n"] == 40 and ext_check["drop"] == pytest.approx(
        ext_check["internal_auc"] - ext_check["auc"]
    )
    assert ext_check["status"] == ("flagged" if ext_check["drop"] > 0.05 else "ok")
