"""Confidence intervals the clinical metrics share: Wilson's for a proportion, bootstrap resampling.

Pure numpy and the standard library. Every interval here is two-sided at
`confidence` (0.95 unless told).
"""

from __future__ import annotations

from collections.abc import Iterator
from statistics import NormalDist

import numpy as np

_MAX_BOOTSTRAP_CELLS = 2_000_000  # resamples x cases per chunk, bounds memory


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> list[float] | None:
    """The Wilson score interval of the proportion `successes / n`.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and keeps its
    coverage near 0 and 1 and for small `n` (a sensitivity of 9/9 gets
    [0.70, 1.00], not [1, 1]), which is why clinical reports use it for
    sensitivity and specificity.

    Args:
        successes: Cases counted (true positives, for a sensitivity).
        n: Cases in all (the positives, for a sensitivity).
        confidence: Coverage, in (0, 1). Defaults to 0.95.

    Returns:
        `[low, high]`, or None when `n` is 0 (the proportion is undefined).

    Raises:
        ValueError: If `successes` is not in [0, n] or `confidence` not in (0, 1).

    Example:
        >>> [round(v, 3) for v in wilson_interval(8, 10)]
        [0.49, 0.943]
    """
    if not 0 <= successes <= n:
        raise ValueError(f"`successes` must be in [0, n={n}]. Received: successes={successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    if n == 0:
        return None
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At 0 and n the exact bound is 0 or 1; rounding may leave it a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return [float(low), float(high)]


def bootstrap_counts(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """Case-resampling bootstrap as counts: how often each of `n` cases is drawn, per resample.

    Yields float64 arrays `[b, n]` (row sums `n`), `n_bootstrap` rows in all, in
    chunks that bound memory; a statistic that is a sum over cases is then one
    matrix product per chunk. The same `seed` gives the same resamples.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_BOOTSTRAP_CELLS // max(n, 1))
    for b0 in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - b0)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> list[float] | None:
    """The percentile bootstrap interval of `values` (one statistic per resample); None if empty."""
    if len(values) == 0:
        return None
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)]
