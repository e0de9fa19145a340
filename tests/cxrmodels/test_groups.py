"""Tests for `cxrmodels.metrics.groups`: results by group, their table section and forest plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrmodels.evaluation import plots as P
from cxrmodels.metrics.clinical import evaluate_predictions, roc_auc
from cxrmodels.metrics.groups import metrics_by_group
from cxrmodels.metrics.intervals import wilson_interval
from cxrmodels.metrics.tables import format_metrics_table, group_rows

NAMES = ["COVID", "Normal"]  # COVID (index 0) is the positive class
# Site "a": COVID scores .9 .8 .7, Normal .2 .3: separated. Site "b": COVID .1 .2, Normal .8 .9 .6: inverted.
SCORES = np.array([0.9, 0.8, 0.7, 0.2, 0.3, 0.1, 0.2, 0.8, 0.9, 0.6])
Y = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1, 1])
SITES = np.array(["a"] * 5 + ["b"] * 5)
PROBS = np.stack([SCORES, 1 - SCORES], 1)


def test_each_group_is_computed_alone():
    r = metrics_by_group(Y, PROBS, SITES, class_names=NAMES, thresholds={"COVID": 0.5}, n_bootstrap=200)
    assert r["positive_class"] == "COVID" and list(r["groups"]) == ["a", "b"]
    a, b = r["groups"]["a"], r["groups"]["b"]
    assert (a["auc"], b["auc"]) == (1.0, 0.0)
    overall = roc_auc(Y == 0, SCORES)
    assert 0.3 < overall < 0.7  # the pooled AUC hides both
    # at 0.5: site a calls its 3 COVID films and none of its 2 Normal; site b the reverse
    assert (a["tp"], a["fn"], a["tn"], a["fp"]) == (3, 0, 2, 0)
    assert (b["tp"], b["fn"], b["tn"], b["fp"]) == (0, 2, 0, 3)
    assert (a["sensitivity"], a["specificity"], b["sensitivity"], b["specificity"]) == (1, 1, 0, 0)
    assert a["sensitivity_ci"] == pytest.approx(wilson_interval(3, 3))
    assert b["specificity_ci"] == pytest.approx(wilson_interval(0, 3))
    assert a["auc_ci"] == [1.0, 1.0] and a["n"] == 5 and a["n_positive"] == 3
    json.dumps(r, allow_nan=False)


def test_the_threshold_decides_and_a_one_class_group_has_no_auc():
    groups = np.array(["", "", "", "x", "x", "x", "x", "x", "x", "x"])  # "" (no group given) first
    r = metrics_by_group(Y, PROBS, groups, class_names=NAMES, thresholds={"COVID": 0.85}, n_bootstrap=0)
    none = r["groups"]["(none)"]
    assert none["auc"] is None and none["auc_ci"] is None  # three COVID films only
    assert (none["tp"], none["fn"], none["threshold"]) == (1, 2, 0.85)  # only .9 >= .85
    assert r["groups"]["x"]["auc"] == pytest.approx(roc_auc(Y[3:] == 0, SCORES[3:]))
    assert "0.850" in r["decision"]
    default = metrics_by_group(Y, PROBS, groups, class_names=NAMES, n_bootstrap=0)
    assert default["groups"]["(none)"]["threshold"] == 0.5


def test_multiclass_groups_report_each_class_at_the_argmax():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]
    )
    r = metrics_by_group(y, p, ["a", "a", "a", "b", "b", "b"], class_names=["x", "y", "z"], n_bootstrap=0)
    assert r["decision"].startswith("argmax")
    a, b = r["groups"]["a"], r["groups"]["b"]
    assert a["class_counts"] == [1, 1, 1] and [a["per_class"][c]["sensitivity"] for c in "xyz"] == [1, 1, 1]
    assert [b["per_class"][c]["sensitivity"] for c in "xyz"] == [0, 0, 1]
    assert [label for label, _ in group_rows(r)][:3] == ["a / x", "a / y", "a / z"]


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match=r"`groups` must be 1-D with one group per case \(10\)"):
        metrics_by_group(Y, PROBS, SITES[:4], class_names=NAMES)
    with pytest.raises(ValueError, match="`n_bootstrap` must be an integer >= 0"):
        metrics_by_group(Y, PROBS, SITES, class_names=NAMES, n_bootstrap=-2)


def test_the_table_and_the_forest_plot_show_every_group(tmp_path):
    m = evaluate_predictions(Y, PROBS, class_names=NAMES, thresholds={"COVID": 0.5}, n_bootstrap=100)
    m["by_group"] = {
        "key": "group",
        **metrics_by_group(Y, PROBS, SITES, class_names=NAMES, thresholds={"COVID": 0.5}),
    }
    lines = format_metrics_table(m).splitlines()
    head = lines.index("by group (COVID called at probability >= 0.500)")
    assert lines[head + 2].split()[:4] == ["a", "5", "3", "1.000"]
    assert lines[head + 3].split()[:4] == ["b", "5", "2", "0.000"]
    path = P.plot_forest(
        list(group_rows(m["by_group"])), path=tmp_path / "forest.png", overall=(m["auc"], m["auc_ci"])
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
