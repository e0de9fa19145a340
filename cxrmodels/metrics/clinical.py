"""Clinical evaluation of classifier outputs: ROC AUC with bootstrap CI, operating points, reports, plots.

Pure numpy (matplotlib only inside the plotting functions, through the Agg
canvas, never pyplot), so evaluation runs under any Keras backend or none.

Conventions used throughout:

* A case is called positive at threshold `t` when its score is `>= t`.
* Undefined ratios (0/0, such as the specificity of a set with no negatives)
  are `None`, which `json.dumps` writes as `null`; they are never NaN.
* For two classes the positive (disease) class is `positive_class_index`.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

_NORMAL_NAMES = {"normal", "negative", "healthy", "nofinding"}
_MAX_BOOTSTRAP_CELLS = 2_000_000  # resamples x cases per chunk, bounds memory
# Below this share of usable resamples (those holding both classes) a bootstrap CI is flagged.
MIN_BOOTSTRAP_SHARE = 0.9


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


def _binary_inputs(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise ValueError(
            "`y_true` and `scores` must be 1-D arrays of the same length. "
            f"Received: y_true.shape={y.shape}, scores.shape={s.shape}"
        )
    if len(y) == 0:
        raise ValueError("`y_true` must hold at least one case. Received: an empty array")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"`y_true` must hold binary labels 0 and 1. Received values: {np.unique(y)[:10].tolist()}"
        )
    if not np.isfinite(s).all():
        raise ValueError(
            f"`scores` must be finite. Received: {int((~np.isfinite(s)).sum())} non-finite values"
        )
    return y.astype(bool), s


def _require_both_classes(y: np.ndarray) -> None:
    if y.all() or not y.any():
        raise ValueError(
            "`y_true` must contain both classes (0 and 1) for a ROC analysis. "
            f"Received: y_true with only class {int(y[0])} (n={len(y)})"
        )


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve, one point per distinct score (tied scores move together).

    Args:
        y_true: Binary labels [N], 1 for positive.
        scores: Scores [N], higher meaning more likely positive.

    Returns:
        `(fpr, tpr, thresholds)`, each of length (distinct scores + 1).
        `thresholds` is decreasing and starts at `inf` (nothing called
        positive); point i calls positive the cases with `score >= thresholds[i]`.

    Raises:
        ValueError: On bad shapes or labels, or if `y_true` holds one class only.

    Example:
        >>> fpr, tpr, t = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> tpr.tolist()
        [0.0, 0.5, 0.5, 1.0, 1.0]
    """
    fps, tps, thresholds = _roc_counts(y_true, scores)
    return fps / fps[-1], tps / tps[-1], thresholds


def _roc_counts(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(false positives, true positives, thresholds)` per ROC point, as integers (see `roc_curve`)."""
    y, s = _binary_inputs(y_true, scores)
    _require_both_classes(y)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tps = np.r_[0, np.cumsum(y, dtype=np.int64)[last_of_tie]]
    fps = np.r_[0, np.cumsum(~y, dtype=np.int64)[last_of_tie]]
    return fps, tps, np.r_[np.inf, s[last_of_tie]]


def roc_auc(y_true, scores) -> float:
    """The area under the ROC curve, ties counting 1/2 (the Mann-Whitney U / (P * N)).

    Args:
        y_true: Binary labels [N], 1 for positive.
        scores: Scores [N].

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: On bad shapes or labels, or if `y_true` holds one class only.

    Example:
        >>> roc_auc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.9])
        0.875
    """
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def bootstrap_auc_ci(
    y_true, scores, *, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap confidence interval of the ROC AUC, resampling cases.

    Resamples lacking one class have no AUC and are skipped; when fewer than
    `MIN_BOOTSTRAP_SHARE` (90%) of them are usable (few cases of one class) a
    UserWarning says how many were, since the interval then describes only
    the resamples that happened to hold that class. All resamples are computed
    at once from case counts over the score-sorted cases, in chunks that bound memory.

    Args:
        y_true: Binary labels [N], 1 for positive.
        scores: Scores [N].
        n_bootstrap: Number of resamples. Defaults to 1000.
        confidence: Coverage of the interval, in (0, 1). Defaults to 0.95.
        seed: Seed of the resampling. Defaults to 0.

    Returns:
        `(low, high)`; `(nan, nan)` if every resample lacked a class.

    Raises:
        ValueError: On bad arguments, or if `y_true` holds one class only.

    Example:
        >>> low, high = bootstrap_auc_ci(labels, probs[:, 1], n_bootstrap=2000, seed=1)
    """
    if not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise ValueError(f"`n_bootstrap` must be a positive integer. Received: n_bootstrap={n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    aucs = _bootstrap_aucs(y_true, scores, n_bootstrap=n_bootstrap, seed=seed)
    note = _resample_note(len(aucs), n_bootstrap)
    if note:
        warnings.warn(f"bootstrap_auc_ci: {note}", stacklevel=2)
    if len(aucs) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(aucs, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _resample_note(used: int, n_bootstrap: int) -> str | None:
    if used >= MIN_BOOTSTRAP_SHARE * n_bootstrap:
        return None
    return (
        f"the AUC CI comes from {used} of {n_bootstrap} bootstrap resamples ({used / n_bootstrap:.0%}); "
        "the others lacked a class (too few cases of one class for a reliable interval)"
    )


def _bootstrap_aucs(y_true, scores, *, n_bootstrap: int, seed: int) -> np.ndarray:
    """The AUCs of the bootstrap resamples that hold both classes (see `bootstrap_auc_ci`)."""
    y, s = _binary_inputs(y_true, scores)
    _require_both_classes(y)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    n, rng, aucs = len(y), np.random.default_rng(seed), []
    chunk = max(1, _MAX_BOOTSTRAP_CELLS // n)
    for b0 in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - b0)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        pos = np.add.reduceat(counts * y, starts, axis=1)  # per tie group, descending score
        neg = np.add.reduceat(counts * ~y, starts, axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        below = n_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scoring strictly lower
        u = np.sum(pos * (below + neg / 2), axis=1)
        ok = (n_pos > 0) & (n_neg > 0)
        aucs.append(u[ok] / (n_pos[ok] * n_neg[ok]))
    return np.concatenate(aucs)


def youden_threshold(y_true, scores) -> float:
    """The threshold maximizing Youden's J = sensitivity + specificity - 1 on the given data.

    The threshold is one of the scores (cases with `score >= threshold` are
    positive). J is compared exactly, as the integer `TP * N - FP * P` (P
    positive and N negative cases), so floating-point rounding never decides
    between thresholds. Among equally good thresholds the highest is returned:
    the most specific one, calling the fewest cases positive for the same J
    (what `np.argmax` over scikit-learn's decreasing thresholds would pick
    without rounding).

    Args:
        y_true: Binary labels [N], 1 for positive.
        scores: Scores [N].

    Returns:
        The threshold.

    Raises:
        ValueError: On bad shapes or labels, or if `y_true` holds one class only.

    Example:
        >>> youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9])
        0.6
    """
    fps, tps, thresholds = _roc_counts(y_true, scores)
    j = tps * fps[-1] - fps * tps[-1]  # (sensitivity + specificity - 1) * P * N
    return float(thresholds[1 + int(np.argmax(j[1:]))])  # argmax: the first, i.e. highest, of ties


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
        "specificity": _ratio(tn, tn + fp),
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
        `tp`, `fp`, `tn`, `fn`, `accuracy`, `sensitivity` (recall),
        `specificity`, `ppv` (precision), `npv`, `f1` and `confusion_matrix`
        `[[TN, FP], [FN, TP]]`. Ratios with a zero denominator are `None`.

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


def _pick_threshold(y, p, c, val) -> tuple[float, str]:
    """Youden's threshold for class `c`: on `val = (labels, probs)` if given, else on the test data."""
    source = "test" if val is None else "validation"
    yc, s = (y == c, p[:, c]) if val is None else (val[0] == c, val[1][:, c])
    if yc.all() or not yc.any():
        return 0.5, "default"  # Youden's J needs both classes
    return youden_threshold(yc, s), source


def evaluate_predictions(
    y_true, probs, *, class_names, val_true=None, val_probs=None, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """Everything `metrics.json` holds about one set of predictions.

    Two classes: the positive class's ROC AUC with a bootstrap 95% CI, a
    decision threshold by Youden's J on the validation predictions (on the
    test data when none are given, which makes those metrics optimistic and
    is flagged in `threshold_source` and `warnings`), `binary_report` at that
    threshold (`at_threshold`) and at 0.5 (`at_0.5`), the argmax accuracy
    and the K x K confusion matrix. More classes: per class one-vs-rest
    (`per_class`: AUC with CI, the report at the argmax decision, and a
    Youden threshold), the macro-average AUC, accuracy and confusion matrix.
    Each AUC CI comes with `auc_ci_resamples`, the bootstrap resamples that
    held both classes; fewer than 90% of `n_bootstrap`, or a zero-width
    (degenerate) interval, adds a line to `warnings`.

    Args:
        y_true: Integer labels [N] indexing `class_names`.
        probs: Class probabilities [N, K].
        class_names: The K class names, in label order.
        val_true: Validation labels, for choosing thresholds. Defaults to None.
        val_probs: Validation probabilities [M, K]. Defaults to None.
        n_bootstrap: Bootstrap resamples for each AUC CI; 0 skips the CIs.
            Defaults to 1000.
        seed: Seed of the bootstrap. Defaults to 0.

    Returns:
        A JSON-serializable dict (plain ints, floats, lists, str and None);
        confusion matrices are `cm[true][predicted]`.

    Raises:
        ValueError: On mismatched shapes, out-of-range labels or bad arguments.

    Example:
        >>> m = evaluate_predictions(y_test, p_test, class_names=["NORMAL", "PNEUMONIA"],
        ...                          val_true=y_val, val_probs=p_val)
        >>> print(format_metrics_table(m))
    """
    class_names = [str(c) for c in class_names]
    k = len(class_names)
    if k < 2 or len(set(class_names)) != k:
        raise ValueError(
            f"`class_names` must hold at least 2 distinct names. Received: class_names={class_names}"
        )
    if (val_true is None) != (val_probs is None):
        raise ValueError(
            "`val_true` and `val_probs` must be given together. "
            f"Received: val_true is {'not ' * (val_true is not None)}None, "
            f"val_probs is {'not ' * (val_probs is not None)}None"
        )
    if not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be an integer >= 0. Received: n_bootstrap={n_bootstrap}")
    y, p = _check_predictions(y_true, probs, class_names)
    val = None if val_true is None else _check_predictions(val_true, val_probs, class_names, what="val_")
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
        "threshold_method": "youden",
    }
    if k == 2:
        out.update(_binary_metrics(y, p, class_names, val, n_bootstrap, seed))
    else:
        out.update(_multiclass_metrics(y, p, cm, class_names, val, n_bootstrap, seed))
    sources = (
        [out["threshold_source"]] if k == 2 else [r["threshold_source"] for r in out["per_class"].values()]
    )
    out["threshold_source"] = sources[0] if len(set(sources)) == 1 else "mixed"
    if "test" in sources:
        out["warnings"].append(
            "decision threshold chosen on the test data (no validation predictions given): "
            "the metrics at that threshold are optimistic"
        )
    if "default" in sources:
        out["warnings"].append("Youden's threshold needs both classes in its data: 0.5 used instead")
    return out


def _binary_metrics(y, p, class_names, val, n_bootstrap, seed) -> dict:
    pos = positive_class_index(class_names)
    yb, s = y == pos, p[:, pos]
    auc = _auc_with_ci(yb, s, n_bootstrap, seed)
    note = auc.pop("note")
    t, source = _pick_threshold(y, p, pos, val)
    found = [] if auc["auc"] is not None else ["the test data hold one class only: AUC is undefined"]
    return {
        "positive_class": class_names[pos],
        "positive_index": pos,
        **auc,
        "threshold": t,
        "threshold_source": source,
        "at_threshold": binary_report(yb, s, threshold=t),
        "at_0.5": binary_report(yb, s, threshold=0.5),
        "warnings": found + ([note] if note else []),
    }


def _multiclass_metrics(y, p, cm, class_names, val, n_bootstrap, seed) -> dict:
    per_class, warnings = {}, []
    for c, name in enumerate(class_names):
        auc = _auc_with_ci(y == c, p[:, c], n_bootstrap, seed)
        note = auc.pop("note")
        t, source = _pick_threshold(y, p, c, val)
        tp = cm[c, c]
        fn, fp = cm[c].sum() - tp, cm[:, c].sum() - tp
        per_class[name] = {
            **auc,
            "youden_threshold": t,
            "threshold_source": source,
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
        "warnings": warnings,
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


# Rows of the binary table: label, key, and the counts whose sums make the ratio.
_BINARY_ROWS = (
    ("Sensitivity", "sensitivity", ("tp",), ("tp", "fn")),
    ("Specificity", "specificity", ("tn",), ("tn", "fp")),
    ("PPV", "ppv", ("tp",), ("tp", "fp")),
    ("NPV", "npv", ("tn",), ("tn", "fn")),
    ("F1", "f1", None, None),
    ("Accuracy", "accuracy", ("tp", "tn"), ("tp", "tn", "fp", "fn")),
)


def format_metrics_table(metrics: dict) -> str:
    """A plain-text table of `evaluate_predictions` output, for terminals and logs.

    Args:
        metrics: The dict returned by `evaluate_predictions`.

    Returns:
        The table, lines joined with newlines (no trailing newline).

    Example:
        >>> print(format_metrics_table(evaluate_predictions(y, p, class_names=names)))
    """
    names = metrics["class_names"]
    lines = [
        f"n = {metrics['n']} (" + ", ".join(f"{c}: {n}" for c, n in zip(names, metrics["class_counts"])) + ")"
    ]
    if metrics["task"] == "binary":
        reports = metrics["at_threshold"], metrics["at_0.5"]
        head = f"t={reports[0]['threshold']:.3f} (Youden, {metrics['threshold_source']})"
        lines += [
            f"positive class: {metrics['positive_class']}",
            f"{'AUC':<13}{_auc_text(metrics['auc'], metrics['auc_ci'], metrics.get('auc_ci_resamples'), metrics.get('n_bootstrap'))}",
            f"{'Accuracy':<13}{_f(metrics['accuracy'])} (argmax)",
            "",
            f"{'':<13}{head:<30}t=0.500",
        ]
        for label, key, num, den in _BINARY_ROWS:
            cells = [
                _f(r[key]) + (f" ({sum(r[c] for c in num)}/{sum(r[c] for c in den)})" if num else "")
                for r in reports
            ]
            lines.append(f"{label:<13}{cells[0]:<30}{cells[1]}")
        cells = ["{tp}/{fp}/{tn}/{fn}".format(**r) for r in reports]
        lines.append(f"{'TP/FP/TN/FN':<13}{cells[0]:<30}{cells[1]}")
    else:
        w = max(12, *(len(c) + 2 for c in names))
        lines += [
            f"{'macro AUC':<{w}}{_f(metrics['macro_auc'])}",
            f"{'Accuracy':<{w}}{_f(metrics['accuracy'])} (argmax)",
            "",
            f"{'class':<{w}}{'AUC (95% CI)':<29}"
            + "".join(f"{h:<7}" for h in ("Sens", "Spec", "PPV", "NPV", "F1"))
            + "Youden t",
        ]
        for name, r in metrics["per_class"].items():
            auc = _auc_text(r["auc"], r["auc_ci"], r.get("auc_ci_resamples"), metrics.get("n_bootstrap"))
            lines.append(
                f"{name:<{w}}{auc:<29}"
                + "".join(f"{_f(r[k]):<7}" for k in ("sensitivity", "specificity", "ppv", "npv", "f1"))
                + f"{r['youden_threshold']:.3f} ({r['threshold_source']})"
            )
        lines.append("(sensitivity to F1 at the argmax decision, each class vs the rest)")
    w, cols = max(len(c) for c in names) + 2, [max(7, len(c) + 2) for c in names]
    lines += [
        "",
        "confusion matrix (rows: true, columns: predicted)",
        " " * w + "".join(f"{c:>{cw}}" for c, cw in zip(names, cols)),
    ]
    lines += [
        f"{c:<{w}}" + "".join(f"{v:>{cw}}" for v, cw in zip(row, cols))
        for c, row in zip(names, metrics["confusion_matrix"])
    ]
    lines += [f"warning: {m}" for m in metrics.get("warnings", [])]
    return "\n".join(lines)
