import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cxrmodels.evaluation import plots as P
from cxrmodels.metrics import clinical as M
from cxrmodels.metrics import tables as T
from cxrmodels.metrics.intervals import wilson_interval
from cxrmodels.metrics.keras_metrics import Specificity, default_metrics

# Ten hand-made cases. Negatives score 0.1 0.2 0.3 0.6 0.8, positives 0.4 0.6 0.7 0.9 0.95
# (one tie across classes at 0.6).
Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
S = np.array([0.1, 0.2, 0.3, 0.6, 0.8, 0.4, 0.6, 0.7, 0.9, 0.95])
# Negatives below each positive (ties 1/2): 0.4: 3, 0.6: 3 + 0.5, 0.7: 4, 0.9: 5, 0.95: 5 -> 20.5 / 25
AUC = 0.82
PROBS = np.stack([1 - S, S], axis=1)
NAMES = ["NORMAL", "PNEUMONIA"]

# Three classes, six cases; argmax predictions 0 1 1 2 2 2.
Y3 = np.array([0, 0, 1, 1, 2, 2])
P3 = np.array(
    [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]
)
NAMES3 = ["normal", "bacterial", "viral"]


@pytest.mark.parametrize(
    "names, expected",
    [
        (["NORMAL", "PNEUMONIA"], 1),
        (["Pneumonia", "normal"], 0),
        (["Effusion", "No Finding"], 0),
        (["no-finding", "mass"], 1),
        (["healthy", "sick"], 1),
        (["covid", "Negative"], 0),
        (["cat", "dog"], 1),
        (["normal", "healthy"], 1),
    ],
)
def test_positive_class_index(names, expected):
    assert M.positive_class_index(names) == expected


def test_positive_class_index_needs_two_names():
    with pytest.raises(ValueError, match="exactly 2 names"):
        M.positive_class_index(["a", "b", "c"])


def test_roc_curve_moves_tied_scores_together():
    fpr, tpr, thresholds = M.roc_curve(Y, S)
    np.testing.assert_allclose(thresholds, [np.inf, 0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    # at 0.6 one negative and one positive join at once: a diagonal step
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.8, 1])
    np.testing.assert_allclose(tpr, [0, 0.2, 0.4, 0.4, 0.6, 0.8, 1, 1, 1, 1])


def test_roc_auc_counts_ties_half():
    assert M.roc_auc(Y, S) == pytest.approx(AUC)
    assert M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # positives 0.2, 0.9 vs negatives 0.2, 0.1: 0.5 + 1 + 1 + 1 = 3.5 of 4 pairs
    assert M.roc_auc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.9]) == 0.875
    assert M.roc_auc(Y, -S) == pytest.approx(1 - AUC)


def test_roc_auc_equals_mann_whitney_on_random_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    assert M.roc_auc(y, s) == pytest.approx(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_roc_auc_rejects_bad_inputs():
    with pytest.raises(ValueError, match="both classes.*only class 1"):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        M.roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="binary labels"):
        M.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        M.roc_auc([0, 1], [0.1, np.nan])


def test_youden_threshold():
    # J: 0.6 -> 1 - 0 = 1 (0.9 gives 0.5 - 0)
    assert M.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9]) == 0.6
    # J per threshold: .95 .2, .9 .4, .8 .2, .7 .4, .6 .4, .4 (5/5 - 2/5) .6, .3 .4, ...
    assert M.youden_threshold(Y, S) == 0.4


def test_youden_ties_are_compared_exactly_and_go_to_the_highest_threshold():
    # Sorted by score: 0.8 N, 0.73 P, 0.67 N, 0.58 P, 0.48 P, 0.33 N, 0.25 P, 0.22 N, 0.07 N, 0.03 P.
    # J at 0.48 (TP 3, FP 2) and at 0.25 (TP 4, FP 3) is 1/5 for both; in floats 0.6 - 0.4 is
    # 0.19999999999999996 and 0.8 - 0.6 is 0.20000000000000007, which would pick 0.25.
    y = [0, 1, 0, 0, 1, 0, 0, 1, 1, 1]
    s = [0.07, 0.03, 0.67, 0.22, 0.58, 0.8, 0.33, 0.25, 0.73, 0.48]
    assert M.youden_threshold(y, s) == 0.48


def test_binary_report_hand_counts():
    r = M.binary_report(Y, S, threshold=0.5)
    # called positive (>= 0.5): positives .6 .7 .9 .95, negatives .6 .8
    assert r["confusion_matrix"] == [[3, 2], [1, 4]]
    assert (r["tp"], r["fp"], r["tn"], r["fn"], r["n"], r["n_positive"], r["n_negative"]) == (
        4,
        2,
        3,
        1,
        10,
        5,
        5,
    )
    assert r["sensitivity"] == pytest.approx(0.8)  # 4 / 5
    assert r["specificity"] == pytest.approx(0.6)  # 3 / 5
    assert r["ppv"] == pytest.approx(4 / 6)
    assert r["npv"] == pytest.approx(0.75)  # 3 / 4
    assert r["f1"] == pytest.approx(8 / 11)  # 2*4 / (2*4 + 2 + 1)
    assert r["accuracy"] == pytest.approx(0.7)
    # Wilson 95% intervals: 4/5 -> [0.376, 0.964], 3/5 -> [0.231, 0.882] (Newcombe 1998's formula)
    assert r["sensitivity_ci"] == pytest.approx([0.3755, 0.9638], abs=1e-4)
    assert r["specificity_ci"] == pytest.approx([0.2307, 0.8824], abs=1e-4)
    # the threshold itself counts as positive
    assert M.binary_report(Y, S, threshold=0.4)["confusion_matrix"] == [[3, 2], [0, 5]]


def test_binary_report_zero_denominators_are_none():
    r = M.binary_report([0, 0], [0.1, 0.2], threshold=0.5)
    assert r["sensitivity"] is None and r["ppv"] is None and r["f1"] is None
    assert r["specificity"] == 1.0 and r["npv"] == 1.0
    assert '"sensitivity": null' in json.dumps(r, allow_nan=False)
    with pytest.raises(ValueError, match="`threshold` must be a finite number"):
        M.binary_report(Y, S, threshold=float("nan"))


def test_bootstrap_ci_contains_estimate_narrows_and_is_seeded():
    low, high = M.bootstrap_auc_ci(Y, S, n_bootstrap=300, seed=0)
    assert low <= AUC <= high and 0 <= low < high <= 1
    assert M.bootstrap_auc_ci(Y, S, n_bootstrap=300, seed=0) == (low, high)
    assert M.bootstrap_auc_ci(Y, S, n_bootstrap=300, seed=1) != (low, high)

    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2000):
        y = rng.integers(0, 2, n)
        s = rng.normal(size=n) + y
        lo, hi = M.bootstrap_auc_ci(y, s, n_bootstrap=300)
        assert lo <= M.roc_auc(y, s) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # about 1 / sqrt(20) as wide


def test_bootstrap_ci_counts_ties_half_in_every_resample():
    y = np.array([0, 1] * 20)
    assert M.bootstrap_auc_ci(y, np.full(40, 0.3), n_bootstrap=200) == (0.5, 0.5)
    assert M.bootstrap_auc_ci(y, y * 0.5, n_bootstrap=200) == (1.0, 1.0)
    # two cases: half the resamples lack a class and are skipped (and said to be); the rest are perfect
    with pytest.warns(UserWarning, match=r"from 2\d of 50 bootstrap resamples"):
        assert M.bootstrap_auc_ci([0, 1], [0.2, 0.9], n_bootstrap=50) == (1.0, 1.0)


def test_bootstrap_ci_says_how_many_resamples_it_used_and_when_it_is_degenerate():
    # 1 positive in 40 cases, perfectly separated: (39/40)^40 = 36% of the resamples lack it.
    y = np.r_[np.zeros(39, int), 1]
    s = np.r_[np.linspace(0.0, 0.5, 39), 0.9]
    with pytest.warns(UserWarning, match=r"from 6\d\d of 1000 bootstrap resamples \(6\d%\)"):
        assert M.bootstrap_auc_ci(y, s, n_bootstrap=1000) == (1.0, 1.0)
    m = M.evaluate_predictions(y, np.stack([1 - s, s], 1), class_names=NAMES, n_bootstrap=1000)
    used = m["auc_ci_resamples"]
    assert 600 <= used <= 700 and m["n_bootstrap"] == 1000 and m["auc_ci"] == [1.0, 1.0]
    assert any(f"from {used} of 1000 bootstrap resamples" in w and "degenerate" in w for w in m["warnings"])
    table = T.format_metrics_table(m)
    assert f"AUC          1.000 (95% CI 1.000-1.000; degenerate; {used}/1000 resamples)" in table
    # enough of both classes: every resample is used, nothing flagged
    m = M.evaluate_predictions(Y, PROBS, class_names=NAMES, n_bootstrap=200)
    assert m["auc_ci_resamples"] >= 180 and not any("resamples" in w for w in m["warnings"])
    m3 = M.evaluate_predictions(np.r_[Y3, 0, 0], np.r_[P3, P3[:2]], class_names=NAMES3, n_bootstrap=100)
    assert all(m3["per_class"][c]["auc_ci_resamples"] <= 100 for c in NAMES3)
    assert any(w.startswith("class 'bacterial': the AUC CI comes from") for w in m3["warnings"])


def test_bootstrap_ci_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`n_bootstrap` must be a positive integer"):
        M.bootstrap_auc_ci(Y, S, n_bootstrap=0)
    with pytest.raises(ValueError, match="`confidence` must be in"):
        M.bootstrap_auc_ci(Y, S, confidence=95)


def test_evaluate_binary_applies_the_given_threshold():
    # Youden on validation data: J at 0.9 = 0.5, at 0.7 = 1.0 -> threshold 0.7
    val_y, val_s = np.array([0, 0, 1, 1]), np.array([0.2, 0.65, 0.7, 0.9])
    chosen = M.decision_thresholds(val_y, np.stack([1 - val_s, val_s], 1), NAMES)
    assert chosen["per_class"]["PNEUMONIA"] == chosen["value"] == 0.7
    m = M.evaluate_predictions(Y, PROBS, class_names=NAMES, thresholds=chosen["per_class"], n_bootstrap=200)
    assert (m["n"], m["positive_class"], m["positive_index"], m["task"]) == (10, "PNEUMONIA", 1, "binary")
    assert m["auc"] == pytest.approx(AUC)
    assert m["auc_ci"][0] <= AUC <= m["auc_ci"][1]
    assert (m["threshold"], m["threshold_source"], m["warnings"]) == (0.7, "given", [])
    t = m["at_threshold"]
    # at 0.7: positives .7 .9 .95 called, .4 .6 missed; negative .8 called
    assert (t["tp"], t["fn"], t["fp"], t["tn"]) == (3, 2, 1, 4)
    assert (t["sensitivity"], t["specificity"], t["ppv"]) == pytest.approx((0.6, 0.8, 0.75))
    assert (t["npv"], t["f1"]) == pytest.approx((4 / 6, 6 / 9))
    assert t["sensitivity_ci"] == pytest.approx(wilson_interval(3, 5))
    assert t["specificity_ci"] == pytest.approx(wilson_interval(4, 5))
    assert m["at_0.5"]["confusion_matrix"] == [[3, 2], [1, 4]]
    assert m["accuracy"] == pytest.approx(0.7)  # argmax = s > 0.5
    assert m["confusion_matrix"] == [[3, 2], [1, 4]]
    assert m["class_counts"] == [5, 5]
    json.dumps(m, allow_nan=False)


def test_evaluate_binary_without_a_threshold_chooses_none_on_the_data_it_reports():
    m = M.evaluate_predictions(1 - Y, PROBS[:, ::-1], class_names=["PNEUMONIA", "NORMAL"], n_bootstrap=0)
    assert (m["positive_class"], m["positive_index"]) == ("PNEUMONIA", 0)
    assert m["auc"] == pytest.approx(AUC) and m["auc_ci"] is None
    assert (m["threshold"], m["threshold_source"], m["at_threshold"]) == (None, None, None)
    assert m["at_0.5"]["tp"] == 4 and m["warnings"] == []
    assert m["confusion_matrix"] == [[4, 1], [2, 3]]


def test_evaluate_binary_single_class_test_set_does_not_crash():
    m = M.evaluate_predictions(
        [1, 1], [[0.3, 0.7], [0.6, 0.4]], class_names=NAMES, thresholds={"PNEUMONIA": 0.5}, n_bootstrap=10
    )
    assert m["auc"] is None and m["auc_ci"] is None
    assert m["at_threshold"]["specificity"] is None and m["at_threshold"]["sensitivity"] == 0.5
    assert m["at_threshold"]["specificity_ci"] is None
    assert m["warnings"] == ["the test data hold one class only: AUC is undefined"]
    json.dumps(m, allow_nan=False)


def test_evaluate_multiclass_one_vs_rest():
    m = M.evaluate_predictions(Y3, P3, class_names=NAMES3, n_bootstrap=50)
    assert m["task"] == "multiclass" and m["positive_class"] is None
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    pc = m["per_class"]
    assert list(pc) == NAMES3
    # class 0: positives .7 .4 above all of .2 .1 .1 .3 -> 1; class 1: .6 beats 4, .3 beats 2 + tie 0.5 -> 6.5 / 8;
    # class 2: .8 beats 4, .4 beats 3 -> 7 / 8
    assert [pc[c]["auc"] for c in NAMES3] == pytest.approx([1.0, 0.8125, 0.875])
    assert m["macro_auc"] == pytest.approx((1 + 0.8125 + 0.875) / 3)
    # argmax one-vs-rest: class 0 TP 1 FN 1 FP 0 TN 4; class 1 TP 1 FN 1 FP 1 TN 3; class 2 TP 2 FN 0 FP 1 TN 3
    assert [(pc[c]["tp"], pc[c]["fn"], pc[c]["fp"], pc[c]["tn"]) for c in NAMES3] == [
        (1, 1, 0, 4),
        (1, 1, 1, 3),
        (2, 0, 1, 3),
    ]
    assert [pc[c]["sensitivity"] for c in NAMES3] == pytest.approx([0.5, 0.5, 1])
    assert [pc[c]["specificity"] for c in NAMES3] == pytest.approx([1, 0.75, 0.75])
    assert [pc[c]["ppv"] for c in NAMES3] == pytest.approx([1, 0.5, 2 / 3])
    assert [pc[c]["npv"] for c in NAMES3] == pytest.approx([0.8, 0.75, 1])
    assert [pc[c]["f1"] for c in NAMES3] == pytest.approx([2 / 3, 0.5, 0.8])
    # no thresholds given: none is chosen on these data
    assert [pc[c]["threshold"] for c in NAMES3] == [None, None, None] and m["threshold_source"] is None
    for c in NAMES3:
        if pc[c]["auc"] < 1:
            assert pc[c]["auc_ci"][0] <= pc[c]["auc"] <= pc[c]["auc_ci"][1]
    assert list(m["calibration"]["classes"]) == NAMES3  # every class's probability
    json.dumps(m, allow_nan=False)


def test_evaluate_multiclass_given_thresholds_and_missing_class():
    # Youden on other data: class 1 ties J = .5 at .6 and .3, the higher wins
    chosen = M.decision_thresholds(Y3, P3, NAMES3)
    assert chosen["per_class"] == {"normal": 0.4, "bacterial": 0.6, "viral": 0.4} and chosen["value"] is None
    m = M.evaluate_predictions(
        Y3[:4],
        P3[:4],
        class_names=NAMES3,
        thresholds=chosen["per_class"],
        threshold_source="run",
        n_bootstrap=0,
    )
    assert m["threshold_source"] == "run"
    assert [m["per_class"][c]["threshold"] for c in NAMES3] == [0.4, 0.6, 0.4]
    assert m["per_class"]["viral"]["auc"] is None  # no viral case in the test set
    assert m["macro_auc"] == pytest.approx((1 + M.roc_auc(Y3[:4] == 1, P3[:4, 1])) / 2)
    assert any("'viral'" in w for w in m["warnings"])


def test_evaluate_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"probs.*\[N, len\(class_names\)=2\].*probs.shape=\(10, 3\)"):
        M.evaluate_predictions(Y, np.ones((10, 3)) / 3, class_names=NAMES)
    with pytest.raises(ValueError, match=r"y_true.shape=\(9,\)"):
        M.evaluate_predictions(Y[:9], PROBS, class_names=NAMES)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\].*from 0 to 2"):
        M.evaluate_predictions(np.r_[Y[:9], 2], PROBS, class_names=NAMES)
    with pytest.raises(TypeError, match="`thresholds` must be a dict"):
        M.evaluate_predictions(Y, PROBS, class_names=NAMES, thresholds=0.5)
    with pytest.raises(ValueError, match=r"`thresholds` must map class names.*'COVID'"):
        M.evaluate_predictions(Y, PROBS, class_names=NAMES, thresholds={"COVID": 0.5})
    with pytest.raises(ValueError, match="`thresholds` must map class names"):
        M.evaluate_predictions(Y, PROBS, class_names=NAMES, thresholds={"PNEUMONIA": float("nan")})
    with pytest.raises(ValueError, match="2 distinct names"):
        M.evaluate_predictions(Y, PROBS, class_names=["a", "a"])


def test_format_metrics_table_binary():
    m = M.evaluate_predictions(
        Y, PROBS, class_names=NAMES, thresholds={"PNEUMONIA": 0.4}, threshold_source="run", n_bootstrap=200
    )
    lines = T.format_metrics_table(m).splitlines()
    lo, hi = m["auc_ci"]
    assert lines[0] == "n = 10 (NORMAL: 5, PNEUMONIA: 5)"
    assert f"AUC          0.820 (95% CI {lo:.3f}-{hi:.3f})" in lines
    assert lines[5].split() == ["t=0.400", "(run)", "t=0.500"]
    # threshold 0.4: TP 5 of 5, TN 3 of 5; threshold 0.5: TP 4, TN 3 (Wilson CIs: 5/5 0.57-1, 4/5 0.38-0.96)
    assert lines[6].split() == ["Sensitivity", "1.000", "(5/5;", "0.57-1.00)", "0.800", "(4/5;", "0.38-0.96)"]
    assert lines[7].split() == ["Specificity", "0.600", "(3/5;", "0.23-0.88)", "0.600", "(3/5;", "0.23-0.88)"]
    assert lines[9].split() == ["NPV", "1.000", "(3/3)", "0.750", "(3/4)"]
    calibration = m["calibration"]["classes"]["PNEUMONIA"]
    line = next(x for x in lines if x.startswith("PNEUMONIA: Brier"))
    assert f"Brier {calibration['brier']:.3f} (95% CI" in line and f"ECE {calibration['ece']:.3f}" in line


def test_format_metrics_table_binary_without_a_threshold_shows_the_0_5_column_only():
    m = M.evaluate_predictions(Y, PROBS, class_names=NAMES, n_bootstrap=0)
    lines = T.format_metrics_table(m).splitlines()
    assert lines[5].split() == ["t=0.500"]
    assert lines[6].split() == ["Sensitivity", "0.800", "(4/5;", "0.38-0.96)"]


def test_format_metrics_table_multiclass_shows_none_as_na():
    m = M.evaluate_predictions(Y3[:4], P3[:4], class_names=NAMES3, n_bootstrap=0)
    text = T.format_metrics_table(m)
    assert "normal" in text and "macro AUC" in text
    viral = next(line for line in text.splitlines() if line.startswith("viral "))
    assert viral.split()[:3] == ["viral", "n/a", "n/a"]  # no AUC, no sensitivity without viral cases


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plots_write_pngs(tmp_path):
    m = M.evaluate_predictions(Y, PROBS, class_names=NAMES, n_bootstrap=50)
    assert P.plot_roc(Y, PROBS, class_names=NAMES, path=tmp_path / "roc.png", metrics=m) == str(
        tmp_path / "roc.png"
    )
    P.plot_roc(Y3, P3, class_names=NAMES3, path=tmp_path / "roc3.png")
    P.plot_confusion_matrix(m["confusion_matrix"], class_names=NAMES, path=tmp_path / "cm.png", title="test")
    for name in ("roc.png", "roc3.png", "cm.png"):
        _assert_png(str(tmp_path / name))
    assert sorted(os.listdir(tmp_path)) == ["cm.png", "roc.png", "roc3.png"]  # no temporary files left
    with pytest.raises(ValueError, match=r"\[3, 3\] matrix"):
        P.plot_confusion_matrix([[1, 2], [3, 4]], class_names=NAMES3, path=tmp_path / "bad.png")


def test_metrics_module_does_not_import_tensorflow():
    code = "import sys, cxrmodels.metrics.clinical; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# Keras metrics. Batch 1: class-1 scores .1 .7 .8 for labels 0 0 1 -> TN 1, FP 1.
Y_B1, P_B1 = [[1, 0], [1, 0], [0, 1]], [[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]]
# Batch 2: scores .4 .6 .5 .3 for labels 0 0 0 1 -> TN 2 (.5 is not above .5), FP 1.
Y_B2, P_B2 = [[1, 0], [1, 0], [1, 0], [0, 1]], [[0.6, 0.4], [0.4, 0.6], [0.5, 0.5], [0.7, 0.3]]


def test_specificity_accumulates_and_resets():
    m = Specificity(class_id=1)
    m.update_state(np.array(Y_B1, "float32"), np.array(P_B1, "float32"))
    assert float(m.result()) == pytest.approx(0.5)  # 1 / (1 + 1)
    m.update_state(np.array(Y_B2, "float32"), np.array(P_B2, "float32"))
    assert float(m.result()) == pytest.approx(0.6)  # (1 + 2) / (1 + 2 + 1 + 1)
    m.reset_state()
    assert float(m.result()) == 0.0


def test_specificity_sparse_labels_class_id_and_weights():
    m = Specificity()  # class 1
    m.update_state(np.array([0, 0, 1]), np.array(P_B1, "float32"))
    assert float(m.result()) == pytest.approx(0.5)
    m = Specificity(class_id=0)  # negatives are class-1 cases: .2 of batch 1 is a TN
    m.update_state(np.array([[0], [0], [1]]), np.array(P_B1, "float32"))
    assert float(m.result()) == 1.0
    m = Specificity(class_id=1)
    m.update_state(np.array([0, 0, 1]), np.array(P_B1, "float32"), sample_weight=np.array([3.0, 1.0, 5.0]))
    assert float(m.result()) == pytest.approx(0.75)  # TN weight 3, FP weight 1
    with pytest.raises(ValueError, match="`thresholds` must be a number in"):
        Specificity(thresholds=2)


def test_specificity_config_round_trip():
    m = Specificity(class_id=0, thresholds=0.3, name="spec")
    config = m.get_config()
    assert (config["class_id"], config["thresholds"], config["name"]) == (0, 0.3, "spec")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
    assert isinstance(restored, Specificity) and restored.get_config() == config


def _identity_model():
    return keras.Sequential([keras.Input((None,)), keras.layers.Identity()])


def test_default_metrics_binary_via_model_evaluate():
    model = _identity_model()  # its output is its input: the predictions are PROBS
    model.compile(loss="categorical_crossentropy", metrics=default_metrics(2, positive_index=1))
    logs = model.evaluate(
        PROBS.astype("float32"), np.eye(2)[Y].astype("float32"), batch_size=4, verbose=0, return_dict=True
    )
    assert logs["accuracy"] == pytest.approx(0.7)
    assert logs["precision"] == pytest.approx(4 / 6)  # s > .5: TP 4, FP 2
    assert logs["recall"] == pytest.approx(0.8)
    assert logs["specificity"] == pytest.approx(0.6)
    assert logs["auc"] == pytest.approx(AUC, abs=0.01)  # Keras bins scores into 200 thresholds


def test_default_metrics_binary_positive_first():
    model = _identity_model()
    model.compile(loss="categorical_crossentropy", metrics=default_metrics(2, positive_index=0))
    logs = model.evaluate(
        PROBS[:, ::-1].astype("float32"), np.eye(2)[1 - Y].astype("float32"), verbose=0, return_dict=True
    )
    assert (logs["precision"], logs["recall"], logs["specificity"]) == pytest.approx((4 / 6, 0.8, 0.6))
    assert logs["auc"] == pytest.approx(AUC, abs=0.01)


def test_default_metrics_multiclass_micro():
    model = _identity_model()
    model.compile(loss="categorical_crossentropy", metrics=default_metrics(3))
    logs = model.evaluate(P3.astype("float32"), np.eye(3)[Y3].astype("float32"), verbose=0, return_dict=True)
    assert "specificity" not in logs
    assert logs["accuracy"] == pytest.approx(4 / 6)
    # entries above .5: .7 (true), .6 (true), .6 (false: case 3 is class 1), .8 (true) -> 3 / 4; 3 of 6 true found
    assert (logs["precision"], logs["recall"]) == pytest.approx((0.75, 0.5))
    flat_auc = M.roc_auc(np.eye(3)[Y3].ravel(), P3.ravel())
    assert logs["auc"] == pytest.approx(flat_auc, abs=0.01)


def test_default_metrics_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 2"):
        default_metrics(1)
    with pytest.raises(ValueError, match="`positive_index` must be 0 or 1.*Received: positive_index=None"):
        default_metrics(2)
