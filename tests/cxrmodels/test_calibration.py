"""Tests for `cxrmodels.metrics.calibration` and `cxrmodels.metrics.intervals`: hand values and error rates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrmodels.evaluation import plots as P
from cxrmodels.metrics import calibration as C
from cxrmodels.metrics.clinical import evaluate_predictions
from cxrmodels.metrics.intervals import wilson_interval

# Six cases: bin [0.0, 0.5) holds 0.1 (neg), 0.3 (pos); bin [0.5, 1.0] holds 0.6 (pos), 0.8 (neg), 0.9, 1.0 (pos)
Y = np.array([0, 1, 1, 0, 1, 1])
P6 = np.array([0.1, 0.3, 0.6, 0.8, 0.9, 1.0])


def test_brier_and_ece_by_hand():
    # Brier: (0.01 + 0.49 + 0.16 + 0.64 + 0.01 + 0) / 6
    assert C.brier_score(Y, P6) == pytest.approx(1.31 / 6)
    # ECE, 2 bins: |0.1 + 0.3 - 1| + |0.6 + 0.8 + 0.9 + 1.0 - 3| = 0.6 + 0.3, over 6 cases
    assert C.expected_calibration_error(Y, P6, n_bins=2) == pytest.approx(0.9 / 6)
    # 10 bins: 0.9 and 1.0 share the last; |0.1 - 0| + |0.3 - 1| + |0.6 - 1| + |0.8 - 0| + |1.9 - 2|
    assert C.expected_calibration_error(Y, P6) == pytest.approx(2.1 / 6)
    assert (
        C.brier_score([0, 1], [0.0, 1.0]) == 0.0 and C.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    )


def test_reliability_bins_by_hand():
    bins = C.reliability_bins(Y, P6, n_bins=2)
    assert [(b["lower"], b["upper"], b["n"], b["positives"]) for b in bins] == [
        (0, 0.5, 2, 1),
        (0.5, 1, 4, 3),
    ]
    assert bins[0]["mean_probability"] == pytest.approx(0.2) and bins[0]["observed"] == 0.5
    assert bins[1]["mean_probability"] == pytest.approx(0.825) and bins[1]["observed"] == 0.75
    assert bins[1]["observed_ci"] == pytest.approx(wilson_interval(3, 4))
    empty = C.reliability_bins([1], [0.95], n_bins=4)[0]
    assert (empty["n"], empty["mean_probability"], empty["observed"], empty["observed_ci"]) == (
        0,
        None,
        None,
        None,
    )


def test_calibration_report_intervals_hold_the_scores_and_are_seeded():
    rng = np.random.default_rng(0)
    p = rng.random(300)
    y = rng.random(300) < np.clip(0.3 * p + 0.6, 0, 1)  # outcomes far from what p says
    r = C.calibration_report(y, p, n_bootstrap=500, seed=3)
    assert r["n"] == 300 and sum(b["n"] for b in r["bins"]) == 300
    assert r["brier_ci"][0] <= r["brier"] <= r["brier_ci"][1]
    assert r["ece_ci"][0] <= r["ece"] <= r["ece_ci"][1]
    assert r["ece_ci"][0] > r["ece_if_calibrated"]  # clearly miscalibrated
    assert C.calibration_report(y, p, n_bootstrap=500, seed=3) == r
    bare = C.calibration_report(y, p, n_bootstrap=0)
    assert (bare["brier_ci"], bare["ece_ci"], bare["ece_if_calibrated"]) == (None, None, None)
    assert bare["ece"] == r["ece"]
    json.dumps(r, allow_nan=False)


def test_the_calibrated_reference_false_alarm_and_detection_rates():
    # The instrument's error rates on simulated models of known calibration, 100 samples of 150 cases:
    # a calibrated model (outcomes drawn from its probabilities) is called miscalibrated (ECE above the
    # reference) in about 5% of samples (8 of these 100); one whose probabilities are 0.25 too high, in all.
    alarms = detections = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        p = rng.uniform(0.05, 0.75, 150)
        y = rng.random(150) < p
        calibrated = C.calibration_report(y, p, n_bootstrap=300, seed=seed)
        shifted = C.calibration_report(y, p + 0.25, n_bootstrap=300, seed=seed)
        alarms += calibrated["ece"] > calibrated["ece_if_calibrated"]
        detections += shifted["ece"] > shifted["ece_if_calibrated"]
    assert alarms <= 12  # 5 expected; more than 12 of 100 at a 5% rate has a probability of 0.1%
    assert detections >= 95


def test_calibration_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"`probs` must be probabilities in \[0, 1\]"):
        C.brier_score([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="binary labels"):
        C.expected_calibration_error([0, 2], [0.2, 0.4])
    with pytest.raises(ValueError, match="same length"):
        C.brier_score([0, 1, 1], [0.2, 0.4])
    with pytest.raises(ValueError, match="`n_bins` must be a positive integer"):
        C.expected_calibration_error([0, 1], [0.2, 0.4], n_bins=0)
    with pytest.raises(ValueError, match="`n_bootstrap` must be an integer >= 0"):
        C.calibration_report([0, 1], [0.2, 0.4], n_bootstrap=-1)


def test_wilson_interval_known_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605; 0/20 -> 0-0.1611
    assert wilson_interval(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx([0.0624, 0.1605], abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx([0.0, 0.1611], abs=1e-4)
    assert wilson_interval(9, 9)[1] == 1.0 and wilson_interval(9, 9)[0] == pytest.approx(0.7009, abs=1e-4)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="`successes` must be in"):
        wilson_interval(5, 4)


def test_every_evaluation_holds_calibration_and_its_diagram_is_drawn(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.random(80)
    y = (rng.random(80) < p).astype(int)
    m = evaluate_predictions(y, np.stack([1 - p, p], 1), class_names=["Normal", "COVID"], n_bootstrap=100)
    assert list(m["calibration"]["classes"]) == ["COVID"]
    r = m["calibration"]["classes"]["COVID"]
    assert r["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert r["ece"] == pytest.approx(C.expected_calibration_error(y, p))
    path = P.plot_reliability(m["calibration"], path=tmp_path / "reliability.png", title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
