"""Calibration of predicted probabilities: Brier score, expected calibration error, reliability bins.

A model is calibrated when, of the cases it gives a probability near `p`, a
share near `p` has the condition: what a clinician needs before reading its
output as a risk, and before any threshold. Pure numpy.

* The Brier score is the mean squared error of the probabilities, `mean((p - y)^2)`
  (0 is perfect; always predicting the prevalence `pi` scores `pi (1 - pi)`).
* The expected calibration error (ECE) splits [0, 1] into `n_bins` equal-width
  bins and averages `|mean probability - observed share|` over them, weighted by
  their cases (Naeini et al. 2015; Guo et al. 2017). It is biased upward on few
  cases: even a perfectly calibrated model scores above 0, so each report also
  gives `ece_if_calibrated`, the ECE such a model stays below in 95% of samples
  of this size with these probabilities (drawing each outcome from its own
  probability). An ECE above it is evidence of miscalibration (the "consistency
  resampling" of Broecker and Smith 2007).
* The Brier score's interval is the percentile bootstrap. The ECE's is the basic
  (reverse percentile) bootstrap, `2 ECE - quantiles`, clipped at 0: resampling
  adds to the ECE's upward bias, so its percentile interval sits above the truth
  (measured on simulated models: it held a calibrated model's ECE in 0% of
  samples; the basic interval does better but still falls short when the true
  ECE is near 0; see benchmarks/interval_coverage.py). Read the ECE against
  `ece_if_calibrated`, not by its interval alone.
"""

from __future__ import annotations

import numpy as np

from cxrmodels.metrics.intervals import bootstrap_counts, percentile_interval, wilson_interval

N_BINS = 10


def _inputs(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(
            "`y_true` and `probs` must be 1-D arrays of the same length. "
            f"Received: y_true.shape={y.shape}, probs.shape={p.shape}"
        )
    if len(y) == 0:
        raise ValueError("`y_true` must hold at least one case. Received: an empty array")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"`y_true` must hold binary labels 0 and 1. Received values: {np.unique(y)[:10].tolist()}"
        )
    if not (np.isfinite(p) & (p >= 0) & (p <= 1)).all():
        raise ValueError("`probs` must be probabilities in [0, 1]. Received: values outside [0, 1] or NaN")
    return y.astype(np.float64), p


def _check_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer. Received: n_bins={n_bins!r}")
    return int(n_bins)


def _bin_of(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability; 1.0 goes into the last bin."""
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def brier_score(y_true, probs) -> float:
    """The Brier score `mean((probs - y_true)^2)` of binary outcomes.

    Args:
        y_true: Binary labels [N], 1 where the condition is present.
        probs: Predicted probabilities of the condition [N], in [0, 1].

    Returns:
        The score, in [0, 1]; lower is better.

    Raises:
        ValueError: On bad shapes, labels or probabilities.

    Example:
        >>> round(brier_score([0, 1, 1], [0.2, 0.6, 1.0]), 4)
        0.0667
    """
    y, p = _inputs(y_true, probs)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(y_true, probs, *, n_bins: int = N_BINS) -> float:
    """The expected calibration error over `n_bins` equal-width bins of probability.

    `sum over bins of (cases in bin / N) * |mean probability - share positive|`,
    which is `sum over bins of |sum(probs - y_true)| / N`.

    Args:
        y_true: Binary labels [N].
        probs: Predicted probabilities [N], in [0, 1].
        n_bins: Bins over [0, 1]. Defaults to 10.

    Returns:
        The ECE, in [0, 1]; 0 is perfect calibration on these cases.

    Raises:
        ValueError: On bad shapes, labels, probabilities or `n_bins`.

    Example:
        >>> round(expected_calibration_error([0, 1, 1, 1], [0.05, 0.95, 0.95, 0.55], n_bins=2), 4)
        0.15
    """
    n_bins = _check_bins(n_bins)
    y, p = _inputs(y_true, probs)
    gap = np.bincount(_bin_of(p, n_bins), weights=p - y, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


def reliability_bins(y_true, probs, *, n_bins: int = N_BINS, confidence: float = 0.95) -> list[dict]:
    """The points of a reliability diagram: per bin, the mean probability and the observed share.

    Args:
        y_true: Binary labels [N].
        probs: Predicted probabilities [N], in [0, 1].
        n_bins: Equal-width bins over [0, 1]. Defaults to 10.
        confidence: Coverage of the observed share's Wilson interval. Defaults to 0.95.

    Returns:
        One dict per bin, lowest first: `lower`, `upper` (its edges), `n`,
        `positives`, `mean_probability`, `observed` (the share positive) and
        `observed_ci`; the last three are None for an empty bin.
    """
    n_bins = _check_bins(n_bins)
    y, p = _inputs(y_true, probs)
    b = _bin_of(p, n_bins)
    n = np.bincount(b, minlength=n_bins)
    positives = np.bincount(b, weights=y, minlength=n_bins)
    total = np.bincount(b, weights=p, minlength=n_bins)
    out = []
    for i in range(n_bins):
        k, m = int(n[i]), int(round(positives[i]))
        out.append(
            {
                "lower": i / n_bins,
                "upper": (i + 1) / n_bins,
                "n": k,
                "positives": m,
                "mean_probability": float(total[i] / k) if k else None,
                "observed": m / k if k else None,
                "observed_ci": wilson_interval(m, k, confidence=confidence),
            }
        )
    return out


def calibration_report(
    y_true,
    probs,
    *,
    n_bins: int = N_BINS,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Brier score and ECE with bootstrap CIs, the calibrated reference and the reliability bins.

    Each bootstrap resample draws the cases with replacement and recomputes
    both scores (as sums over cases, so all resamples cost one matrix product
    per chunk). `ece_if_calibrated` draws, `n_bootstrap` times, every outcome
    from its own predicted probability (a calibrated model by construction)
    and takes the `confidence` quantile of their ECEs.

    Args:
        y_true: Binary labels [N].
        probs: Predicted probabilities [N], in [0, 1].
        n_bins: Equal-width bins over [0, 1]. Defaults to 10.
        n_bootstrap: Resamples (0: no intervals and no reference). Defaults to 1000.
        confidence: Coverage of the intervals. Defaults to 0.95.
        seed: Seed of the resampling. Defaults to 0.

    Returns:
        A JSON-serializable dict: `n`, `brier`, `brier_ci`, `ece`, `ece_ci`,
        `ece_if_calibrated` (None without resamples) and `bins` (see
        `reliability_bins`).

    Raises:
        ValueError: On bad inputs.

    Example:
        >>> r = calibration_report(y_test == 1, probs[:, 1], n_bootstrap=2000)  # doctest: +SKIP
        >>> r["ece"], r["ece_ci"], r["ece_if_calibrated"]  # doctest: +SKIP
    """
    n_bins = _check_bins(n_bins)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"`n_bootstrap` must be an integer >= 0. Received: n_bootstrap={n_bootstrap!r}")
    y, p = _inputs(y_true, probs)
    onehot = np.eye(n_bins)[_bin_of(p, n_bins)]  # [N, bins]
    out = {
        "n": int(len(y)),
        "brier": brier_score(y, p),
        "brier_ci": None,
        "ece": expected_calibration_error(y, p, n_bins=n_bins),
        "ece_ci": None,
        "ece_if_calibrated": None,
    }
    if n_bootstrap:
        sq, gap = (p - y) ** 2, onehot * (p - y)[:, None]
        briers, eces = [], []
        for counts in bootstrap_counts(len(y), n_bootstrap, seed):
            briers.append(counts @ sq / len(y))
            eces.append(np.abs(counts @ gap).sum(axis=1) / len(y))
        out["brier_ci"] = percentile_interval(np.concatenate(briers), confidence)
        low, high = percentile_interval(np.concatenate(eces), confidence)
        out["ece_ci"] = [max(0.0, 2 * out["ece"] - high), max(0.0, 2 * out["ece"] - low)]
        out["ece_if_calibrated"] = _calibrated_ece(p, onehot, n_bootstrap, confidence, seed)
    out["bins"] = reliability_bins(y, p, n_bins=n_bins, confidence=confidence)
    return out


def _calibrated_ece(p: np.ndarray, onehot: np.ndarray, draws: int, confidence: float, seed: int) -> float:
    """The `confidence` quantile of the ECE when each outcome is drawn from its own probability."""
    rng = np.random.default_rng([seed, 1])
    chunk = max(1, 2_000_000 // len(p))
    eces = []
    for b0 in range(0, draws, chunk):
        outcomes = rng.random((min(chunk, draws - b0), len(p))) < p
        eces.append(np.abs((p - outcomes) @ onehot).sum(axis=1) / len(p))
    return float(np.quantile(np.concatenate(eces), confidence))
