"""`cxrmodels.audit` / `cxr audit` end to end on 64-pixel phantoms, and external evaluation.

Two small seed_cnn runs on phantoms that leave the model one signal each: "marker" films all
drawn without findings, relabelled by a corner marker alone (the lungs carry no class
information), and "clean" films whose only class signal is the disease inside the lungs
(findings confined to the lung mask). So what each model used is known, and the assertions
hold for any seed (checked over seeds 0-4, see `_assert_marker_run` and `_assert_clean_run`).
"""

from __future__ import annotations

import json
import os

import pytest

import cxrdata
import cxrmodels
from cxrdata.synthetic import SHORTCUTS, write_tree
from cxrmodels.cli import main
from cxrmodels.evaluation.evaluator import external_report_dir

pytestmark = pytest.mark.slow
SEED = 0


def _dataset_and_run(base, *, seed=SEED, **tree):
    """100 films per class at 64 px, split 50/20/30; seed_cnn (8, 16, 16) 12 epochs: about a minute."""
    write_tree(base / "src", per_class=100, image_size=64, masks=True, seed=seed, **tree)
    cxrdata.convert(
        base / "src",
        base / "data",
        image_size=64,
        radius=20,
        workers=1,
        progress=False,
        splits=(0.5, 0.2, 0.3),
        seed=seed,
    )
    cxrmodels.train(
        base / "data",
        out=base / "run",
        epochs=12,
        batch_size=16,
        learning_rate=3e-3,
        augment="none",
        patience=12,
        verbose=0,
        seed=seed,
        model_kwargs={"filters": (8, 16, 16), "dense_units": 16},
    )
    return base / "data", base / "run"


@pytest.fixture(scope="module")
def marker_run(tmp_path_factory):
    return _dataset_and_run(tmp_path_factory.mktemp("marker"), shortcut="marker", findings=False)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    return _dataset_and_run(tmp_path_factory.mktemp("clean"))


def _show(name, report):
    print(f"\n{name}: {report['status']}")
    for check in report["checks"].values():
        print(f"  [{check['status']}] {check['verdict']}")


def _assert_marker_run(report):
    """What a model that learned the corner marker must get, whatever the seed."""
    checks = report["checks"]
    assert checks["original"]["status"] == "ok" and checks["original"]["auc_ci"][0] > 0.8
    blanked = checks["lungs_blanked"]
    assert blanked["status"] == "flagged" and blanked["auc_ci"][0] >= 0.7 and blanked["direction"] == "same"
    assert "separates the classes without them" in blanked["verdict"]
    assert blanked["original_auc"] == pytest.approx(checks["original"]["auc"])  # every film audited
    assert checks["lungs_only"]["status"] == "reported" and checks["lungs_only"]["auc"] < 0.8
    assert report["status"] == "flagged" and "lungs_blanked" in report["flagged"]


def _assert_clean_run(report):
    """What a model that learned the findings inside the lungs must get, whatever the seed."""
    checks = report["checks"]
    assert checks["original"]["status"] == "ok"
    blanked = checks["lungs_blanked"]
    assert blanked["auc_ci"][0] < 0.5 < blanked["auc_ci"][1], blanked["verdict"]
    assert blanked["status"] in ("ok", "inconclusive") and report["flagged"] == []
    # The lungs matter more than a region their size: blanking the placebo keeps the signal.
    assert blanked["placebo"]["auc_ci"][0] > 0.7 and blanked["placebo"]["minus_lungs_ci"][0] > 0.2
    assert checks["lungs_only"]["auc"] > 0.8


def test_a_model_using_a_planted_marker_is_flagged(marker_run):
    data, run = marker_run
    report = cxrmodels.audit(run, data, n_bootstrap=500)
    _show("marker shortcut", report)
    _assert_marker_run(report)
    share = report["checks"]["gradcam_lung_share"]
    assert share["resolution"]["feature_map"] == "9x9" and share["status"] == "inconclusive"
    assert "too coarse to resolve the lungs" in share["verdict"]
    assert report["dataset"]["audited"] == report["dataset"]["n"] == 60
    assert report["dataset"]["blanked_from"] == {"source": 60} and report["dataset"]["left_out"] == []
    on_disk = json.loads(open(report["files"]["audit"]).read())
    assert on_disk["status"] == "flagged" and on_disk["thresholds"]["lungs_blanked_signal"] == 0.2
    assert on_disk["checks"]["lungs_blanked"]["auc_ci"] == report["checks"]["lungs_blanked"]["auc_ci"]
    assert open(report["files"]["figure"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    digest = cxrdata.read_manifest(data).digest()[:8]
    assert os.path.dirname(report["files"]["audit"]) == os.path.join(run, "audit", f"data-{digest}-test")


def test_a_model_looking_at_the_lungs_is_not_flagged(clean_run):
    data, run = clean_run
    report = cxrmodels.audit(run, data, n_bootstrap=500)
    _show("clean", report)
    _assert_clean_run(report)
    assert report["status"] == "inconclusive"  # the 9x9 Grad-CAM cannot resolve the lungs: it says so


def test_thresholds_are_overridable_and_checked(clean_run, tmp_path):
    data, run = clean_run
    report = cxrmodels.audit(
        run, data, n_bootstrap=200, thresholds={"lungs_blanked_signal": 0.45}, out=tmp_path / "a"
    )
    assert report["thresholds"]["lungs_blanked_signal"] == 0.45
    assert report["checks"]["lungs_blanked"]["status"] == "ok"  # the band 0.5 +- 0.45 holds any chance AUC
    assert report["files"]["audit"].startswith(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="`thresholds` takes the keys"):
        cxrmodels.audit(run, data, thresholds={"blanked": 0.5})
    with pytest.raises(
        ValueError, match=r"`thresholds\['lungs_blanked_signal'\]` must be a number from 0 to 0.5"
    ):
        cxrmodels.audit(run, data, thresholds={"lungs_blanked_signal": 0.7})
    with pytest.raises(TypeError, match="`seed` must be an integer"):
        cxrmodels.audit(run, data, seed="1")


def test_without_the_source_files_an_equalized_dataset_cannot_be_blanked(clean_run, tmp_path):
    data, run = clean_run
    src = cxrdata.read_manifest(data).source["src"]
    os.rename(src, src + "-moved")
    try:
        report = cxrmodels.audit(run, data, n_bootstrap=300, out=tmp_path)
    finally:
        os.rename(src + "-moved", src)
    # The model has skill, but no shortcut check ran: that is not a clean audit (it was "ok", exit 0).
    assert report["checks"]["original"]["status"] == "ok"
    assert report["status"] == "inconclusive" and report["inconclusive"] == ["original"]
    assert any("no shortcut check could run" in w for w in report["warnings"])
    for name in ("lungs_blanked", "lungs_only", "gradcam_lung_share"):
        assert report["checks"][name]["status"] == "skipped"
        assert (
            "could be blanked before equalization: source file not found" in report["checks"][name]["verdict"]
        )
    assert len(report["dataset"]["left_out"]) == 60 and any(
        "left out of the blanking checks" in w for w in report["warnings"]
    )


def test_records_without_masks_skip_the_checks_that_need_them(trained_run, converted_dataset, tmp_path):
    report = cxrmodels.audit(trained_run, converted_dataset, n_bootstrap=0, out=tmp_path)
    checks = report["checks"]
    n = cxrdata.read_manifest(converted_dataset).splits["test"].num_examples
    assert checks["original"]["status"] == "inconclusive" and checks["original"]["n"] == n  # no interval
    for name in ("lungs_blanked", "lungs_only", "gradcam_lung_share"):
        assert checks[name]["status"] == "skipped"
        assert "no record of split 'test' carries a lung mask" in checks[name]["verdict"]
    assert report["flagged"] == [] and (tmp_path / "audit.png").is_file()


@pytest.fixture(scope="module")
def external_data(tmp_path_factory):
    """Another 'hospital': other class names, test-only, preprocessed like the runs (and once not); and
    its films without findings and without the marker ("plain"), where the marker run has nothing to see."""
    base = tmp_path_factory.mktemp("external")
    write_tree(base / "src", classes=("covid19", "healthy"), per_class=20, image_size=64, masks=True, seed=11)
    write_tree(
        base / "plain-src",
        classes=("covid19", "healthy"),
        per_class=20,
        image_size=64,
        seed=11,
        findings=False,
    )
    cxrdata.convert(
        base / "src", base / "ext", image_size=64, radius=20, workers=1, progress=False, splits="0,0,1"
    )
    cxrdata.convert(
        base / "src", base / "ext-r12", image_size=64, radius=12, workers=1, progress=False, splits="0,0,1"
    )
    cxrdata.convert(
        base / "plain-src",
        base / "plain",
        image_size=64,
        radius=20,
        workers=1,
        progress=False,
        splits="0,0,1",
    )
    return base / "ext", base / "ext-r12", base / "plain"


def test_external_evaluation_maps_classes_and_keeps_the_internal_report(clean_run, external_data):
    data, run = clean_run
    ext = external_data[0]
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
    # The run's stored threshold (chosen on its own val split), applied unchanged.
    assert metrics["threshold_source"] == "run" and metrics["threshold_data"].startswith("stored in the run")
    assert metrics["internal"]["auc"] == pytest.approx(internal["auc"])
    folder = external_report_dir(run, ext, "all", cxrdata.read_manifest(ext).digest())
    assert metrics["files"]["metrics"] == os.path.join(folder, "metrics.json")
    for name in ("metrics.json", "roc.png", "confusion_matrix.png", "comparison.png"):
        assert os.path.isfile(os.path.join(folder, name))
    assert before == {n: open(os.path.join(run, n), "rb").read() for n in before}
    with pytest.raises(ValueError, match=r"class\(es\) 'covid19', 'healthy' that the run was not trained on"):
        cxrmodels.evaluate(run, ext, split="all")


def test_external_preprocessing_mismatch_is_refused_naming_both_values(clean_run, external_data, capsys):
    data, run = clean_run
    other = external_data[1]
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


def test_cli_audit_exit_codes_and_the_external_drop(marker_run, clean_run, external_data, capsys):
    data, run = marker_run
    plain = external_data[2]
    code = main(
        [
            "audit",
            str(run),
            str(data),
            "--external",
            str(plain),
            "--class-map",
            "covid19=COVID,healthy=Normal",
            "--n-bootstrap",
            "300",
        ]
    )
    out = capsys.readouterr().out
    print(out)
    assert code == 4 and "[     flagged] lungs blanked: AUC" in out and "audit: flagged" in out
    folder = f"data-{cxrdata.read_manifest(data).digest()[:8]}-test"
    report = json.loads(open(os.path.join(run, "audit", folder, "audit.json")).read())
    ext_check = report["checks"]["external"]
    assert ext_check["n"] == 40 and ext_check["drop"] == pytest.approx(
        ext_check["internal_auc"] - ext_check["auc"]
    )
    # The external films carry neither the marker nor findings: the model falls to chance.
    assert ext_check["status"] == "flagged" and ext_check["drop_ci"][0] > 0.05, ext_check["verdict"]
    data, run = clean_run
    assert main(["audit", str(run), str(data), "--n-bootstrap", "300", "--out", str(run / "a")]) == 3
    assert "audit: inconclusive" in capsys.readouterr().out


def test_cli_synth_plants_every_shortcut_on_one_signal_phantoms(tmp_path, capsys):
    from cxrmodels.cli import build_parser

    synth = build_parser()._subparsers._group_actions[0].choices["synth"]
    choices = next(a.choices for a in synth._actions if a.dest == "shortcut")
    assert tuple(choices) == SHORTCUTS
    assert main(["synth", str(tmp_path / "s"), "--per-class", "2", "--image-size", "32", "--masks",
                 "--shortcut", "laterality", "--no-findings", "--seed", "3"]) == 0  # fmt: skip
    rows = write_tree(
        tmp_path / "w", per_class=2, image_size=32, masks=True, shortcut="laterality", findings=False, seed=3
    )
    for r in rows:
        assert (tmp_path / "s" / r["path"]).read_bytes() == (tmp_path / "w" / r["path"]).read_bytes()
