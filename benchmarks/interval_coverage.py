"""How often the evaluation's intervals hold the truth, on simulated models whose truth is known.

`cxr evaluate` reports an AUC with a percentile bootstrap CI, sensitivity with a
Wilson CI, and calibration: the Brier score (percentile bootstrap CI), the
expected calibration error (ECE, basic bootstrap CI) and `ece_if_calibrated`,
the ECE a calibrated model stays below in 95% of samples. Each is a statistical
instrument; this measures its error rates. Cases are simulated: a true risk
`q ~ U(0, 1)`, an outcome `y ~ Bernoulli(q)` and a model's probability
`p = f(q)`, for a calibrated model (`f(q) = q`) and three miscalibrated ones.
The true AUC, sensitivity at 0.5, Brier score and ECE come from 2 million
cases; each row then draws `--reps` samples of `n` cases and counts how often
each 95% interval holds the truth (coverage: 95% is the target), and how often
the ECE lies above the calibrated reference ("flagged": about 5% is right for
the calibrated model, near 100% is the power against the others). The ECE's
percentile interval, which `cxr evaluate` does not use, is measured beside its
basic one to show why.

Usage:
    python benchmarks/interval_coverage.py [--sizes 40,100,400] [--reps 200]
        [--n-bootstrap 500] [--out bench-output/interval_coverage.json] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from _common import markdown_table, write_json  # noqa: E402

from cxrmodels.metrics.calibration import (  # noqa: E402
    _bin_of,
    calibration_report,
    expected_calibration_error,
)
from cxrmodels.metrics.intervals import bootstrap_counts, percentile_interval, wilson_interval  # noqa: E402
from cxrmodels.metrics.roc import bootstrap_auc_ci, roc_auc  # noqa: E402

MODELS = {
    "calibrated": lambda q: q,
    "overconfident": lambda q: np.clip(0.5 + 1.6 * (q - 0.5), 0, 1),
    "too high": lambda q: np.clip(0.7 * q + 0.25, 0, 1),
    "slightly high": lambda q: np.clip(0.9 * q + 0.07, 0, 1),
}
HEADERS = ["n", "model", "true AUC", "AUC CI", "true sens", "sens Wilson", "true Brier", "Brier CI"]
HEADERS += ["true ECE", "ECE basic CI", "ECE percentile CI", "flagged"]


def _draw(rng, f, n):
    q = rng.random(n)
    return (rng.random(n) < q).astype(np.float64), f(q)


def _truth(f) -> dict:
    y, p = _draw(np.random.default_rng(12345), f, 2_000_000)
    return {
        "auc": roc_auc(y, p),
        "sensitivity": float(np.mean(p[y == 1] >= 0.5)),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
    }


def _holds(ci, value) -> bool:
    return ci is not None and ci[0] <= value <= ci[1]


def _sample(rng, f, n, truth, n_bootstrap, seed) -> dict:
    y, p = _draw(rng, f, n)
    r = calibration_report(y, p, n_bootstrap=n_bootstrap, seed=seed)
    gap = np.eye(10)[_bin_of(p, 10)] * (p - y)[:, None]
    eces = np.concatenate([np.abs(c @ gap).sum(axis=1) / n for c in bootstrap_counts(n, n_bootstrap, seed)])
    positives = y == 1
    tp = int(np.sum(p[positives] >= 0.5))
    auc_ci = bootstrap_auc_ci(y, p, n_bootstrap=n_bootstrap, seed=seed) if 0 < positives.sum() < n else None
    return {
        "auc": _holds(auc_ci, truth["auc"]),
        "sensitivity": _holds(wilson_interval(tp, int(positives.sum())), truth["sensitivity"]),
        "brier": _holds(r["brier_ci"], truth["brier"]),
        "ece_basic": _holds(r["ece_ci"], truth["ece"]),
        "ece_percentile": _holds(percentile_interval(eces), truth["ece"]),
        "flagged": r["ece"] > r["ece_if_calibrated"],
    }


def run(sizes, reps, n_bootstrap) -> list[dict]:
    rows = []
    for name, f in MODELS.items():
        truth = _truth(f)
        for n in sizes:
            rng = np.random.default_rng([n, len(name)])
            samples = [_sample(rng, f, n, truth, n_bootstrap, seed) for seed in range(reps)]
            rates = {k: float(np.mean([s[k] for s in samples])) for k in samples[0]}
            rows.append({"n": n, "model": name, "truth": truth, "rates": rates, "reps": reps})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="40,100,400", help="cases per sample (default: 40,100,400)")
    parser.add_argument("--reps", type=int, default=200, help="samples per row (default: 200)")
    parser.add_argument("--n-bootstrap", type=int, default=500, help="resamples per interval (default: 500)")
    parser.add_argument("--out", default="bench-output/interval_coverage.json")
    parser.add_argument("--smoke", action="store_true", help="a few samples of 40 cases: checks it runs")
    args = parser.parse_args(argv)
    sizes = [40] if args.smoke else [int(s) for s in args.sizes.split(",")]
    reps, n_bootstrap = (5, 100) if args.smoke else (args.reps, args.n_bootstrap)
    start = time.perf_counter()
    rows = run(sizes, reps, n_bootstrap)
    table = [
        [r["n"], r["model"]]
        + [
            cell
            for key, truth in (("auc", "auc"), ("sensitivity", "sensitivity"), ("brier", "brier"))
            for cell in (f"{r['truth'][truth]:.3f}", f"{r['rates'][key]:.0%}")
        ]
        + [
            f"{r['truth']['ece']:.3f}",
            f"{r['rates']['ece_basic']:.0%}",
            f"{r['rates']['ece_percentile']:.0%}",
        ]
        + [f"{r['rates']['flagged']:.0%}"]
        for r in rows
    ]
    print(f"Coverage of 95% intervals ({reps} samples per row, {n_bootstrap} resamples each)\n")
    print(markdown_table(HEADERS, table))
    write_json(
        args.out,
        {
            "benchmark": "interval_coverage",
            "reps": reps,
            "n_bootstrap": n_bootstrap,
            "rows": rows,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
