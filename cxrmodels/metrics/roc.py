"""ROC analysis of binary scores: the curve, its area, a bootstrap CI of the area, Youden's threshold.

Pure numpy. A case is called positive at threshold `t` when its score is
`>= t`; tied scores move together along the curve and count 1/2 in the area.
"""

from __future__ import annotations

import warnings

import numpy as np

from cxrmodels.metrics.intervals import bootstrap_counts

# Below this share of usable resamples (those holding both classes) a bootstrap CI is flagged.
MIN_BOOTSTRAP_SHARE = 0.9


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
    aucs = []
    for counts in bootstrap_counts(len(y), n_bootstrap, seed):
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
