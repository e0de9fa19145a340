"""Clinical evaluation of classifier outputs: operating points, decision thresholds, `evaluate_predictions`.

Pure numpy, so evaluation runs under any Keras backend or none. The ROC analysis
(curve, AUC, its bootstrap CI, Youden's threshold) lives in `roc`, calibration in
`calibration`, results by group in `groups` and the text table in `tables`;
the ROC names stay importable from here.

Conventions used throughout:

* A case is called positive at threshold `t` when its score is `>= t`.
* Undefined ratios (0/0, such as the specificity of a set with no negatives)
  are `None`, which `json.dumps` writes as `null`; they are never NaN.
* For two classes the positive (disease) class is `positive_class_index`.
* No threshold is ever chosen on the predictions being reported: it is given
  (a run's stored `decision_threshold`, chosen on its validation split).
"""

from __future__ import annotations

import math
import re

import numpy as np

from cxrmodels.metrics.calibration import N_BINS, calibration_report
from cxrmodels.metrics.intervals import wilson_interval
from cxrmodels.metrics.roc import (
    MIN_BOOTSTRAP_SHARE,
    _binary_inputs,
    _bootstrap_aucs,
    _resample_note,
    bootstrap_auc_ci,
    roc_auc,
    roc_curve,
    youden_threshold,
)

__all__ = [
    "MIN_BOOTSTRAP_SHARE",
    "binary_report",
    "bootstrap_auc_ci",
    "decision_thresholds",
    "evaluate_predictions",
    "positive_class_index",
    "roc_auc",
    "roc_curve",
    "youden_threshold",
]

_NORMAL_NAMES = {"normal", "negative", "healthy", "nofinding"}


def positive_class_index(class_names) -> int:
    """The index of the positive (disease) class of a two-class problem.

    The positive class is the one not named like normal, negative, healthy or
    no finding (case, spaces, `-` and `_` ignored). If neither or both names
    look normal, it is index 1, as in Keras' binary conventions.

    Args:
        class_names: The two class names, in label order.

    Returns:
        0 or 1.

    Raises:
        ValueError: If there are not exactly two class names.

    Example:
        >>> positive_class_index(["PNEUMONIA", "NORMAL"])
        0
    """
    names = list(class_names)
    if len(names) != 2:
        raise ValueError(f"`class_names` must hold exactly 2 names. Received: class_names={names}")
    normal = [re.sub(r"[\s_\-]+", "", str(n).lower()) in _NORMAL_NAMES for n in names]
    return 0 if normal == [False, True] else 1


def decision_thresholds(y_true, probs, class_names) -> dict:
    """The decision thresholds a run stores: Youden's, one-vs-rest per class, on validation data.

    `cxr train` calls this on the "val" split after training and keeps the result
    in the run's `config.json` (`decision_threshold`); evaluation on any dataset
    applies it unchanged, so the data it reports never choose it.

    Args:
        y_true: Integer labels [N].
        probs: Probabilities [N, K].
        class_names: The K class names.

    Returns:
        `{"method": "youden", "per_class": {name: threshold or None},
        "positive_class": name or None, "value": the positive class's threshold
        (two classes) or None, "examples": N}`. A class absent from (or alone
        in) `y_true` gets None: Youden's J needs both.
    """
    y, p = _check_predictions(y_true, probs, class_names)
    per_class = {}
    for c, name in enumerate(class_names):
        yc = y == c
        per_class[str(name)] = None if yc.all() or not yc.any() else youden_threshold(yc, p[:, c])
    positive = class_names[positive_class_index(class_names)] if len(class_names) == 2 else None
    return {
        "method": "youden",
        "per_class": per_class,
        "positive_class": positive,
        "value": per_class[positive] if positive is not None else None,
        "examples": int(len(y)),
    }


def _ratio(num, den) -> float | None:
    return float(num / den) if den else None


def _report_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict:
    tp, fp, tn, fn = int(tp), int(fp), int(tn), int(fn)
    return {
        "n": tp + fp + tn + fn,
        "n_positive": tp + fn,
        "n_negative": tn + fp,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "sensitivity_ci": wilson_interval(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "specificity_ci": wilson_interval(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def binary_report(y_true, scores, *, threshold: float) -> dict:
    """Operating-point metrics of binary scores at one threshold.

    Args:
        y_true: Binary labels [N], 1 for positive.
        scores: Scores [N]; a case is called positive when `score >= threshold`.
        threshold: The decision threshold.

    Returns:
        A JSON-serializable dict: `threshold`, `n`, `n_positive`, `n_negative`,
        `tp`, `fp`, `tn`, `fn`, `accuracy`, `sensitivity` (recall) and
        `sensitivity_ci`, `specificity` and `specificity_ci` (Wilson 95%
        intervals), `ppv` (precision), `npv`, `f1` and `confusion_matrix`
        `[[TN, FP], [FN, TP]]`. Ratios with a zero denominator, and their
        intervals, are `None`.

    Raises:
        ValueError: On bad shapes, labels or threshold.

    Example:
        >>> binary_report([0, 1, 1], [0.2, 0.7, 0.4], threshold=0.5)["sensitivity"]
        0.5
    """
    if not np.isfinite(threshold):
        raise ValueError(f"`threshold` must be a finite number. Received: threshold={threshold}")
    y, s = _binary_inputs(y_true, scores)
    called = s >= threshold
    report = _report_from_counts(
        tp=np.sum(called & y), fp=np.sum(called & ~y), tn=np.sum(~called & ~y), fn=np.sum(~called & y)
    )
    return {"threshold": float(threshold), **report}


def _check_predictions(y_true, probs, class_names, what="") -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if p.ndim != 2 or p.shape[1] != k or y.shape != (p.shape[0],):
        raise ValueError(
            f"`{what}y_true` must be [N] and `{what}probs` [N, len(class_names)={k}]. "
            f"Received: {what}y_true.shape={y.shape}, {what}probs.shape={p.shape}"
        )
    if len(y) == 0:
        raise ValueError(f"`{what}y_true` must hold at least one case. Received: an empty array")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise ValueError(f"`{what}y_true` must hold integer labels. Received: dtype={y.dtype}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(
            f"`{what}y_true` labels must be in [0, {k - 1}] for {k} classes. "
            f"Received: labels from {y.min()} to {y.max()}"
        )
    if not np.isfinite(p).all():
        raise ValueError(
            f"`{what}probs` must be finite. Received: {int((~np.isfinite(p)).sum())} non-finite values"
        )
    return y.astype(np.int64), p


def _check_thresholds(thresholds, class_names) -> dict[str, float | None] | None:
    """`thresholds` as `{class name: float or None}`, or raises naming what is wrong."""
    if thresholds is None:
        return None
    if not isinstance(thresholds, dict):
        raise TypeError(
            f"`thresholds` must be a dict of class name to threshold, or None. Received: thresholds={thresholds!r}"
        )
    unknown = sorted(set(thresholds) - set(class_names))
    bad = {
        k: v
        for k, v in thresholds.items()
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v))
    }
    if unknown or bad:
        raise ValueError(
            f"`thresholds` must map class names among {class_names} to finite numbers or None. "
            f"Received: thresholds={thresholds!r}"
        )
    return {name: (None if thresholds.get(name) is None else float(thresholds[name])) for name in class_names}


def _confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _auc_with_ci(y, s, n_bootstrap, seed, confidence=0.95) -> dict:
    """`auc`, `auc_ci`, `auc_ci_resamples` (resamples with both classes) and a `note` on a weak CI."""
    if y.all() or not y.any():
        return {"auc": None, "auc_ci": None, "auc_ci_resamples": None, "note": None}
    auc = roc_auc(y, s)
    if not n_bootstrap:
        return {"auc": auc, "auc_ci": None, "auc_ci_resamples": None, "note": None}
    aucs = _bootstrap_aucs(y, s, n_bootstrap=n_bootstrap, seed=seed)
    ci = None
    if len(aucs):
        ci = [float(v) for v in np.quantile(aucs, [(1 - confidence) / 2, (1 + confidence) / 2])]
    notes = [_resample_note(len(aucs), n_bootstrap)]
    if ci is not None and ci[0] == ci[1]:
        notes.append(
            f"the AUC CI is degenerate ({ci[0]:.3f} in every usable resample): it does not "
            "measure the uncertainty"
        )
    note = "; ".join(n for n in notes if n) or None
    return {"auc": auc, "auc_ci": ci, "auc_ci_resamples": int(len(aucs)), "note": note}


def evaluate_predictions(
    y_true,
    probs,
    *,
    class_names,
    thresholds: dict[str, float | None] | None = None,
    threshold_source: str = "given",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Everything `metrics.json` holds about one set of predictions.

    Two classes: the positive class's ROC AUC with a bootstrap 95% CI,
    `binary_report` at the given decision threshold (`at_threshold`, None when
    `thresholds` gives none: no threshold is ever chosen on the data reported)
    and at 0.5 (`at_0.5`), the argmax accuracy and the K x K confusion matrix.
    More classes: per class one-vs-rest (`per_class`: AUC with CI, the report
    at the argmax decision, and the given threshold), the macro-average AUC,
    accuracy and confusion matrix. Always `calibration`: per class (the
    positive one for two classes) `calibration.calibration_report` of its
    probability, the Brier score and ECE with CIs and the reliability bins.
    Each AUC CI comes with `auc_ci_resamples`, the bootstrap resamples that
    held both classes; fewer than 90% of `n_bootstrap`, or a zero-width
    (degenerate) interval, adds a line to `warnings`.

    Args:
        y_true: Integer labels [N] indexing `class_names`.
        probs: Class probabilities [N, K].
        class_names: The K class names, in label order.
        thresholds: Decision thresholds by class name, chosen elsewhere: a
            run's `decision_threshold["per_class"]`, or
            `decision_thresholds(y_val, p_val, names)["per_class"]`. Defaults
            to None (no operating point but 0.5).
        threshold_source: What `thresholds` are, recorded as
            `threshold_source` (e.g. "run", "given"). Defaults to "given".
        n_bootstrap: Bootstrap resamples for each CI; 0 skips the CIs.
            Defaults to 1000.
        seed: Seed of the bootstrap. Defaults to 0.

    Returns:
        A JSON-serializable dict (plain ints, floats, lists, str and None);
        confusion matrices are `cm[true][predicted]`.

    Raises:
        ValueError: On mismatched shapes, out-of-range labels or bad arguments.
        TypeError: If `thresholds` is not a dict.

    Example:
        >>> chosen = decision_thresholds(y_val, p_val, ["NORMAL", "PNEUMONIA"])  # doctest: +SKIP
        >>> m = evaluate_predictions(y_test, p_test, class_names=["NORMAL", "PNEUMONIA"],
        ...                          thresholds=chosen["per_class"])  # doctest: +SKIP
    """
    class_names = [str(c) for c in class_names]
    k = len(class_names)
    if k < 2 or len(set(class_names)) != k:
        raise ValueError(
            f"`class_names` must hold at least 2 distinct names. Received: class_names={class_names}"
        )
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be an integer >= 0. Received: n_bootstrap={n_bootstrap}")
    thresholds = _check_thresholds(thresholds, class_names)
    y, p = _check_predictions(y_true, probs, class_names)
    pred = np.argmax(p, axis=1)
    cm = _confusion_matrix(y, pred, k)
    out = {
        "n": len(y),
        "class_names": class_names,
        "task": "binary" if k == 2 else "multiclass",
        "class_counts": cm.sum(axis=1).tolist(),
        "accuracy": float(np.mean(pred == y)),
        "confusion_matrix": cm.tolist(),
        "n_bootstrap": int(n_bootstrap),
        "ci_level": 0.95,
    }
    source = None if thresholds is None else threshold_source
    if k == 2:
        out.update(_binary_metrics(y, p, class_names, thresholds, source, n_bootstrap, seed))
    else:
        out.update(_multiclass_metrics(y, p, cm, class_names, thresholds, source, n_bootstrap, seed))
    out["calibration"] = _calibration(y, p, class_names, n_bootstrap, seed)
    return out


def _binary_metrics(y, p, class_names, thresholds, source, n_bootstrap, seed) -> dict:
    pos = positive_class_index(class_names)
    yb, s = y == pos, p[:, pos]
    auc = _auc_with_ci(yb, s, n_bootstrap, seed)
    note = auc.pop("note")
    t = None if thresholds is None else thresholds[class_names[pos]]
    found = [] if auc["auc"] is not None else ["the test data hold one class only: AUC is undefined"]
    if thresholds is not None and t is None:
        found.append(f"no decision threshold was given for {class_names[pos]!r}: reported at 0.5 only")
    return {
        "positive_class": class_names[pos],
        "positive_index": pos,
        **auc,
        "threshold": t,
        "threshold_source": source if t is not None else None,
        "at_threshold": None if t is None else binary_report(yb, s, threshold=t),
        "at_0.5": binary_report(yb, s, threshold=0.5),
        "warnings": found + ([note] if note else []),
    }


def _multiclass_metrics(y, p, cm, class_names, thresholds, source, n_bootstrap, seed) -> dict:
    per_class, warnings = {}, []
    for c, name in enumerate(class_names):
        auc = _auc_with_ci(y == c, p[:, c], n_bootstrap, seed)
        note = auc.pop("note")
        tp = cm[c, c]
        fn, fp = cm[c].sum() - tp, cm[:, c].sum() - tp
        t = None if thresholds is None else thresholds[name]
        per_class[name] = {
            **auc,
            "threshold": t,
            **_report_from_counts(tp=tp, fp=fp, tn=len(y) - tp - fn - fp, fn=fn),
        }
        if note:
            warnings.append(f"class {name!r}: {note}")
        if auc["auc"] is None:
            warnings.append(f"class {name!r}: AUC is undefined (the test data hold none or only cases of it)")
    aucs = [r["auc"] for r in per_class.values() if r["auc"] is not None]
    return {
        "positive_class": None,
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "threshold_source": source,
        "warnings": warnings,
    }


def _calibration(y, p, class_names, n_bootstrap, seed) -> dict:
    """`calibration_report` of each class's probability (the positive class's alone for two)."""
    classes = [positive_class_index(class_names)] if len(class_names) == 2 else range(len(class_names))
    return {
        "binning": "equal-width",
        "n_bins": N_BINS,
        "classes": {
            class_names[c]: calibration_report(
                y == c, np.clip(p[:, c], 0, 1), n_bootstrap=n_bootstrap, seed=seed
            )
            for c in classes
        },
    }


def _f(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _auc_text(auc, ci, used=None, n_bootstrap=None) -> str:
    if not ci:
        return _f(auc)
    flags = []
    if ci[0] == ci[1]:
        flags.append("degenerate")
    if used is not None and n_bootstrap and used < MIN_BOOTSTRAP_SHARE * n_bootstrap:
        flags.append(f"{used}/{n_bootstrap} resamples")
    return _f(auc) + f" (95% CI {ci[0]:.3f}-{ci[1]:.3f}" + "".join(f"; {f}" for f in flags) + ")"
