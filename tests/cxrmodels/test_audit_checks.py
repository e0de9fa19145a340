"""The audit's verdicts on crafted predictions (no training): three states decided by the intervals."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmodels.evaluation import _audit_checks as checks
from cxrmodels.evaluation import _audit_stats as stats
from cxrmodels.evaluation._audit_data import AuditData
from cxrmodels.evaluation.shortcut_audit import _checks

LIMITS = dict(checks.DEFAULT_THRESHOLDS)
CLASSES = ["COVID", "Normal"]  # COVID is the positive class


def _scores(y, separation, rng):
    """Scores whose AUC for "y == 0 is positive" is about Phi(separation / sqrt(2))."""
    return 1 / (1 + np.exp(-(separation * (y == 0) + rng.standard_normal(len(y)))))


def _probs(p_covid):
    return np.stack([p_covid, 1 - p_covid], axis=1)


def _data(y, original, blanked, *, only=None, share=1.0, feature_map=(26, 26), rng=None):
    """An `AuditData` of crafted predictions; every film audited; Grad-CAM evidence `share` x a blind map's."""
    n = len(y)
    area = np.full(n, 0.25)
    inside = np.stack([0.6 * share * area, 0.4 * share * area], axis=1)
    blind = np.stack([0.6 * area, 0.4 * area], axis=1)
    return AuditData(
        y=y,
        original=original,
        has_mask=np.ones(n, bool),
        audited=np.ones(n, bool),
        variants={
            "lungs_blanked": blanked,
            "placebo_blanked": original,
            "lungs_only": original if only is None else only,
            "placebo_only": blanked,
        },
        inside=inside,
        blind=blind,
        evidence=np.tile([0.6, 0.4], (n, 1)),
        ideal=np.full(n, 0.95 if feature_map == (26, 26) else 0.7),
        feature_map=feature_map,
    )


def _labels(n):
    return np.repeat([0, 1], n // 2)


def test_a_model_with_no_skill_is_inconclusive_on_every_check():
    rng = np.random.default_rng(0)
    y = _labels(200)
    chance = _probs(_scores(y, 0.0, rng))  # original AUC about 0.5
    separating = _probs(_scores(y, 1.9, rng))  # lungs blanked about 0.9: flagged for a model with skill
    found, internal = _checks(_data(y, chance, separating, share=0.3), CLASSES, LIMITS, 500, 0, "test")
    assert found["original"]["auc_ci"][0] < 0.5 < found["original"]["auc_ci"][1]
    for name in ("original", "lungs_blanked", "gradcam_lung_share"):
        assert found[name]["status"] == "inconclusive", (name, found[name]["verdict"])
        assert "no skill" in found[name]["verdict"]
    assert found["lungs_only"]["status"] == "reported"
    external = stats.headline(y, separating, CLASSES, 0, stats.stratified_resamples(y, 500, 2))
    drop = checks.drop_check(internal, external, LIMITS)
    assert drop["status"] == "inconclusive" and "no skill" in drop["verdict"]


def test_an_inverted_lungs_blanked_signal_is_flagged():
    rng = np.random.default_rng(1)
    y = _labels(200)
    skilled = _probs(_scores(y, 4.0, rng))
    inverted = _probs(_scores(y, -1.47, rng))  # AUC about 0.15
    found, _ = _checks(_data(y, skilled, inverted), CLASSES, LIMITS, 500, 0, "test")
    blanked = found["lungs_blanked"]
    assert 0.08 < blanked["auc"] < 0.25 and blanked["auc_ci"][1] <= 0.3
    assert blanked["status"] == "flagged" and blanked["direction"] == "inverted"
    assert blanked["signal"] == pytest.approx(0.5 - blanked["auc"])
    assert "an inverted signal" in blanked["verdict"] and "beyond 0.5 - 0.20" in blanked["verdict"]


def test_a_ci_that_straddles_the_threshold_is_inconclusive():
    # The case: a lungs-blanked AUC of 0.82 [0.60, 1.00] on 14 films was "flagged".
    verdict = checks.signal_status({"auc": 0.82, "auc_ci": [0.60, 1.00]}, [0.0, 0.3], 0.2)
    assert verdict[0] == "inconclusive" and "straddles" in verdict[1]
    rng = np.random.default_rng(2)
    y = _labels(14)
    skilled = _probs(np.where(y == 0, 0.9, 0.1))
    found, _ = _checks(_data(y, skilled, _probs(_scores(y, 1.3, rng))), CLASSES, LIMITS, 1000, 0, "test")
    blanked = found["lungs_blanked"]
    assert blanked["auc_ci"][0] < 0.7 < blanked["auc_ci"][1], blanked["verdict"]
    assert blanked["status"] == "inconclusive"


def test_ok_needs_the_ci_inside_the_band_and_an_established_drop():
    rng = np.random.default_rng(3)
    y = _labels(200)
    skilled = _probs(_scores(y, 4.0, rng))
    found, _ = _checks(
        _data(y, skilled, _probs(_scores(y, 0.0, rng)), share=1.5), CLASSES, LIMITS, 500, 0, "test"
    )
    assert found["original"]["status"] == "ok"
    assert (
        found["lungs_blanked"]["status"] == "ok"
        and "takes the signal away" in found["lungs_blanked"]["verdict"]
    )
    assert found["lungs_blanked"]["drop_ci"][0] > 0.3
    assert found["gradcam_lung_share"]["status"] == "ok"
    # Inside the band, but the original was hardly better: no established drop, so not "ok".
    weak = _probs(_scores(y, 0.9, rng))
    status, why = checks.signal_status({"auc": 0.55, "auc_ci": [0.45, 0.65]}, [-0.05, 0.2], 0.2)
    assert status == "inconclusive" and "drop" in why
    found, _ = _checks(_data(y, weak, weak), CLASSES, {**LIMITS, "min_skill_auc": 0.5}, 500, 0, "test")
    assert found["lungs_blanked"]["status"] != "ok"


def test_grad_cam_is_judged_by_its_interval_and_only_where_the_map_resolves_the_lungs():
    rng = np.random.default_rng(4)
    y = _labels(100)
    skilled = _probs(_scores(y, 4.0, rng))
    chance = _probs(_scores(y, 0.0, rng))
    outside, _ = _checks(_data(y, skilled, chance, share=0.5), CLASSES, LIMITS, 300, 0, "test")
    share = outside["gradcam_lung_share"]
    assert share["status"] == "flagged" and share["ratio"] == pytest.approx(0.5)
    assert share["resolution"]["feature_map"] == "26x26" and set(share["per_class"]) == set(CLASSES)
    coarse, _ = _checks(
        _data(y, skilled, chance, share=0.5, feature_map=(7, 7)), CLASSES, LIMITS, 300, 0, "test"
    )
    share = coarse["gradcam_lung_share"]
    assert share["status"] == "inconclusive" and "7x7 feature map is too coarse" in share["verdict"]


def test_more_than_two_classes_are_audited_one_vs_rest():
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 2], 80)
    logits = 3.0 * np.eye(3)[y] + rng.standard_normal((240, 3))
    original = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    blanked = original.copy()
    blanked[:, 2] = rng.uniform(size=240)  # class 2's signal lives in the lungs, the others' does not
    names = ["COVID", "Normal", "Viral"]
    data = _data(y, original, blanked)
    data.inside, data.blind, data.evidence = (
        np.tile(a[:, :1], (1, 3)) / 3 for a in (data.inside, data.blind, data.evidence)
    )
    found, _ = _checks(data, names, LIMITS, 300, 0, "test")
    per_class = found["lungs_blanked"]["per_class"]
    assert set(per_class) == set(names)
    assert per_class["COVID"]["status"] == per_class["Normal"]["status"] == "flagged"
    assert per_class["Viral"]["status"] == "ok"
    assert (
        found["lungs_blanked"]["status"] == "flagged" and "Viral: [ok]" in found["lungs_blanked"]["verdict"]
    )


def test_the_external_drop_has_its_own_interval():
    rng = np.random.default_rng(6)
    y = _labels(60)
    internal = stats.headline(
        y, _probs(_scores(y, 2.5, rng)), CLASSES, 0, stats.stratified_resamples(y, 500, 0)
    )
    close = stats.headline(y, _probs(_scores(y, 2.2, rng)), CLASSES, 0, stats.stratified_resamples(y, 500, 1))
    check = checks.drop_check(internal, close, LIMITS)
    assert check["drop_ci"][0] < 0.05 < check["drop_ci"][1] and check["status"] == "inconclusive"
    far = stats.headline(y, _probs(_scores(y, 0.3, rng)), CLASSES, 0, stats.stratified_resamples(y, 500, 1))
    check = checks.drop_check(internal, far, LIMITS)
    assert check["drop_ci"][0] > 0.05 and check["status"] == "flagged"


def test_paired_resamples_keep_class_counts_and_match_the_plain_auc():
    from cxrmodels.metrics.clinical import bootstrap_auc_ci, roc_auc

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.uniform(size=80) + 0.6 * y, 1)  # ties included
    counts = stats.stratified_resamples(y, 2000, 0)
    assert (counts[:, y == 1].sum(axis=1) == (y == 1).sum()).all()
    assert stats.auc(y == 1, s) == pytest.approx(roc_auc(y, s))
    low, high = stats.interval(stats.resampled_aucs(y == 1, s, counts))
    ref = bootstrap_auc_ci(y, s, n_bootstrap=2000)
    assert low == pytest.approx(ref[0], abs=0.03) and high == pytest.approx(ref[1], abs=0.03)


def test_without_intervals_nothing_is_judged():
    rng = np.random.default_rng(8)
    y = _labels(100)
    found, _ = _checks(
        _data(y, _probs(_scores(y, 4.0, rng)), _probs(_scores(y, 4.0, rng))), CLASSES, LIMITS, 0, 0, "t"
    )
    assert {found[k]["status"] for k in ("original", "lungs_blanked", "gradcam_lung_share")} == {
        "inconclusive"
    }
    assert "n_bootstrap=0" in found["original"]["verdict"]


def test_every_compared_auc_comes_from_the_same_records():
    # Films that could not be blanked (no mask, no source) are predicted perfectly wrong here: if the
    # original AUC the blanked one is compared with included them, it would not be the audited films'.
    rng = np.random.default_rng(9)
    y = _labels(200)
    original = _probs(_scores(y, 4.0, rng))
    data = _data(y, original, _probs(_scores(y, 0.0, rng)))
    left_out = np.arange(200) % 4 == 0
    data.audited = ~left_out
    data.original[left_out] = data.original[left_out][:, ::-1]
    found, _ = _checks(data, CLASSES, LIMITS, 300, 0, "test")
    audited_auc = stats.auc(y[~left_out] == 0, data.original[~left_out][:, 0])
    assert found["lungs_blanked"]["original_auc"] == pytest.approx(audited_auc) and audited_auc > 0.95
    assert (
        found["original"]["auc"] < 0.85
        and found["original"]["n"] == 200
        and found["lungs_blanked"]["n"] == 150
    )
    assert found["lungs_blanked"]["status"] == "ok"


def test_class_maps_are_class_discriminative_and_leave_no_film_out():
    import keras

    from cxrmodels.evaluation import _audit_gradcam as cams
    from cxrmodels.models import create_model
    from cxrmodels.serving.prediction import gradcam_model

    keras.utils.set_random_seed(0)
    model = create_model("seed_cnn", input_shape=(64, 64, 1), num_classes=2, filters=(4, 8, 8), dense_units=4)
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 1)).astype(np.uint8)
    maps, feature_map = cams.class_maps(gradcam_model(model), images)
    assert maps.shape == (6, 2, 64, 64) and feature_map == (9, 9) and (maps >= 0).all()
    # Two classes: the evidence for one is the evidence against the other (ReLU of opposite maps on the
    # feature grid), so where one is strong the other is not; upsampling blends them only between cells.
    peak = maps.max(axis=(2, 3), keepdims=True)
    strong = maps > 0.6 * np.maximum(peak, 1e-12)
    assert not (strong[:, 0] & strong[:, 1]).any() and (maps.sum(axis=(1, 2, 3)) > 0).all()
    masks = np.zeros((6, 64, 64), bool)
    masks[:, 16:48, 8:56] = True
    inside, blind, evidence = cams.share_terms(maps, masks)
    np.testing.assert_allclose(evidence.sum(axis=1), 1.0, rtol=1e-5)  # every film weighs 1
    np.testing.assert_allclose(blind.sum(axis=1), masks.mean(axis=(1, 2)), rtol=1e-5)
    ideal = cams.ideal_shares(masks, feature_map)
    assert (ideal > 0.5).all() and cams.resolution(ideal, feature_map)["feature_map"] == "9x9"
    assert cams.resolution(np.full(3, 0.9), (26, 26))["resolved"]
    assert not cams.resolution(np.full(3, 0.72), (9, 9))["resolved"]
