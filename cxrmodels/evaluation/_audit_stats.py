"""Intervals for the shortcut audit: paired bootstrap AUCs, their differences, ratios of means.

Every AUC the audit compares is computed on the same records, and their intervals come from
the same resamples (a paired, class-stratified bootstrap: each resample draws the cases of each
class from that class, so every resample holds every class and the class counts stay fixed).
The difference of two AUCs then has its own interval, narrower than the two intervals side by
side suggest when the two are correlated, as predictions on the same films are.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
_MAX_CELLS = 4_000_000  # resample counts held at once (float64: 32 MB)


def stratified_resamples(y: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """`[n_bootstrap, n]` case counts: each resample draws each class's cases from that class."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_bootstrap, len(y)), dtype=np.float64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        draws = members[rng.integers(0, len(members), size=(n_bootstrap, len(members)))]
        np.add.at(counts, (np.arange(n_bootstrap)[:, None], draws), 1)
    return counts


def auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """The ROC AUC (ties count 1/2) of `scores` for the bool labels `positive`; None with one class."""
    counts = np.ones((1, len(positive)))
    value = resampled_aucs(positive, scores, counts)[0]
    return None if np.isnan(value) else float(value)


def resampled_aucs(positive: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The AUC of each resample given by `counts` `[B, n]` (NaN where a class is missing)."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(scores, dtype=np.float64)[order], positive[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    out = []
    chunk = max(1, _MAX_CELLS // max(1, len(y)))
    for b0 in range(0, len(counts), chunk):
        c = counts[b0 : b0 + chunk][:, order]
        pos = np.add.reduceat(c * y, starts, axis=1)  # per tie group, descending score
        neg = np.add.reduceat(c * ~y, starts, axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        below = n_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scoring strictly lower
        u = np.sum(pos * (below + neg / 2), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan))
    return np.concatenate(out)


def interval(samples: np.ndarray) -> list[float] | None:
    """The percentile interval of bootstrap `samples` (NaNs ignored); None without any."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return None
    low, high = np.quantile(samples, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return [float(low), float(high)]


def one_vs_rest(y: np.ndarray, probs: np.ndarray, class_names, positive: int | None) -> dict[str, tuple]:
    """`{class name: (bool labels, scores)}`: the positive class alone with two classes, else every class."""
    classes = [positive] if positive is not None else range(len(class_names))
    return {class_names[c]: (np.asarray(y) == c, np.asarray(probs)[:, c]) for c in classes}


def paired_aucs(positive: np.ndarray, scores: dict[str, np.ndarray], counts: np.ndarray | None) -> dict:
    """`{name: {"auc", "auc_ci", "samples"}}` for score vectors of the same cases, resampled together."""
    out = {}
    for name, s in scores.items():
        samples = resampled_aucs(positive, s, counts) if counts is not None else np.array([])
        out[name] = {"auc": auc(positive, s), "auc_ci": interval(samples), "samples": samples}
    return out


def difference(a: dict, b: dict) -> tuple[float | None, list[float] | None]:
    """AUC of `a` minus AUC of `b`, with the interval of the paired resampled differences."""
    if a["auc"] is None or b["auc"] is None:
        return None, None
    ci = interval(a["samples"] - b["samples"]) if len(a["samples"]) and len(b["samples"]) else None
    return a["auc"] - b["auc"], ci


def ratio_of_means(
    numerator: np.ndarray, denominator: np.ndarray, counts: np.ndarray | None
) -> tuple[float | None, list[float] | None]:
    """mean(numerator) / mean(denominator), with its bootstrap interval over the same resamples (None when
    the denominator is 0)."""
    if not np.mean(denominator) > 0:
        return None, None
    value = float(np.mean(numerator) / np.mean(denominator))
    if counts is None:
        return value, None
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = (counts @ numerator) / (counts @ denominator)
    return value, interval(samples)


def headline(y: np.ndarray, probs: np.ndarray, class_names, positive: int | None, counts) -> dict:
    """The AUC a dataset is summed up by (the positive class's, or the macro one-vs-rest mean) and its samples."""
    per_class = [
        paired_aucs(labels, {"auc": scores}, counts)["auc"]
        for labels, scores in one_vs_rest(y, probs, class_names, positive).values()
    ]
    if any(r["auc"] is None for r in per_class):
        return {"auc": None, "auc_ci": None, "samples": np.array([])}
    samples = np.mean([r["samples"] for r in per_class], axis=0) if counts is not None else np.array([])
    return {
        "auc": float(np.mean([r["auc"] for r in per_class])),
        "auc_ci": interval(samples) if len(samples) else None,
        "samples": samples,
    }
