"""Results by group: each group's (hospital, scanner, source) AUC, sensitivity and specificity with CIs.

A classifier whose AUC is 0.99 on one hospital's films and 0.6 on another's has
one pooled AUC that hides both; `metrics_by_group` reports each group on its
own, at the decision the whole evaluation uses (the given threshold for two
classes, the argmax for more). Pure numpy.
"""

from __future__ import annotations

import numpy as np

from cxrmodels.metrics.clinical import (
    _auc_with_ci,
    _check_predictions,
    _check_thresholds,
    _confusion_matrix,
    _report_from_counts,
    binary_report,
    positive_class_index,
)

NO_GROUP = "(none)"  # records converted without a group id
_KEPT = ("n", "n_positive", "n_negative", "tp", "fp", "tn", "fn", "sensitivity", "sensitivity_ci")
_KEPT += ("specificity", "specificity_ci", "ppv", "npv")


def metrics_by_group(
    y_true,
    probs,
    groups,
    *,
    class_names,
    thresholds: dict[str, float | None] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Per group: the AUC with its bootstrap 95% CI, and sensitivity and specificity with Wilson CIs.

    Two classes: the positive class's AUC, and the operating point at its
    threshold in `thresholds` (0.5 when none is given). More classes: per
    class one-vs-rest, at the argmax decision. A group holding one class only
    has no AUC (None), and a ratio with no cases to count is None.

    Args:
        y_true: Integer labels [N] indexing `class_names`.
        probs: Class probabilities [N, K].
        groups: The group of each case [N] (strings; "" is shown as "(none)").
        class_names: The K class names, in label order.
        thresholds: Decision thresholds by class name (see
            `evaluate_predictions`). Defaults to None.
        n_bootstrap: Bootstrap resamples for each AUC CI; 0 skips them. Defaults to 1000.
        seed: Seed of the bootstrap. Defaults to 0.

    Returns:
        `{"decision": how cases were called, "positive_class": name or None,
        "groups": {group: report}}`, groups sorted by name. A two-class report
        holds `auc`, `auc_ci`, `auc_ci_resamples`, `note`, `threshold` and
        `binary_report`'s counts and ratios; a multiclass one holds `n`,
        `class_counts` and `per_class` (the same fields, per class).

    Raises:
        ValueError: On mismatched shapes or bad arguments.

    Example:
        >>> r = metrics_by_group(y, probs, sites, class_names=["COVID", "Normal"],
        ...                      thresholds={"COVID": 0.41, "Normal": None})  # doctest: +SKIP
        >>> {g: round(v["auc"], 2) for g, v in r["groups"].items()}  # doctest: +SKIP
        {'hospital-a': 0.99, 'hospital-b': 0.61}
    """
    class_names = [str(c) for c in class_names]
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be an integer >= 0. Received: n_bootstrap={n_bootstrap}")
    thresholds = _check_thresholds(thresholds, class_names)
    y, p = _check_predictions(y_true, probs, class_names)
    g = np.asarray([str(v) or NO_GROUP for v in np.asarray(groups, dtype=object).ravel()])
    if np.ndim(groups) != 1 or len(g) != len(y):
        raise ValueError(
            f"`groups` must be 1-D with one group per case ({len(y)}). Received: shape {np.shape(groups)}"
        )
    out: dict = {"positive_class": None, "groups": {}}
    if len(class_names) == 2:
        pos = positive_class_index(class_names)
        t = thresholds[class_names[pos]] if thresholds else None
        out["positive_class"] = class_names[pos]
        out["decision"] = f"{class_names[pos]} called at probability >= {0.5 if t is None else t:.3f}"
        for name in sorted(set(g)):
            here = g == name
            out["groups"][name] = _binary_group(y[here] == pos, p[here, pos], t, n_bootstrap, seed)
    else:
        out["decision"] = "argmax, each class vs the rest"
        for name in sorted(set(g)):
            here = g == name
            out["groups"][name] = _multiclass_group(y[here], p[here], class_names, n_bootstrap, seed)
    return out


def _binary_group(yb: np.ndarray, s: np.ndarray, t: float | None, n_bootstrap: int, seed: int) -> dict:
    report = binary_report(yb, s, threshold=0.5 if t is None else t)
    return {
        **_auc_with_ci(yb, s, n_bootstrap, seed),
        "threshold": report["threshold"],
        **{k: report[k] for k in _KEPT},
    }


def _multiclass_group(y: np.ndarray, p: np.ndarray, class_names, n_bootstrap: int, seed: int) -> dict:
    k = len(class_names)
    cm = _confusion_matrix(y, np.argmax(p, axis=1), k)
    per_class = {}
    for c, name in enumerate(class_names):
        tp = cm[c, c]
        fn, fp = cm[c].sum() - tp, cm[:, c].sum() - tp
        report = _report_from_counts(tp=tp, fp=fp, tn=len(y) - tp - fn - fp, fn=fn)
        per_class[name] = {
            **_auc_with_ci(y == c, p[:, c], n_bootstrap, seed),
            **{f: report[f] for f in _KEPT},
        }
    return {"n": int(len(y)), "class_counts": cm.sum(axis=1).tolist(), "per_class": per_class}
