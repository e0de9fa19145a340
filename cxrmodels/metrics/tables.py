"""Plain-text tables of evaluation results, for terminals and logs: `format_metrics_table`.

The table shows what `evaluate_predictions` (and `cxrmodels.evaluate`) computed:
AUC with its CI, the operating points, calibration, results by group when
asked for, and the confusion matrix. Pure Python.
"""

from __future__ import annotations

from cxrmodels.metrics.clinical import _auc_text, _f

# Rows of the binary table: label, key, and the counts whose sums make the ratio.
_BINARY_ROWS = (
    ("Sensitivity", "sensitivity", ("tp",), ("tp", "fn")),
    ("Specificity", "specificity", ("tn",), ("tn", "fp")),
    ("PPV", "ppv", ("tp",), ("tp", "fp")),
    ("NPV", "npv", ("tn",), ("tn", "fn")),
    ("F1", "f1", None, None),
    ("Accuracy", "accuracy", ("tp", "tn"), ("tp", "tn", "fp", "fn")),
)
_MAX_GROUP_ROWS = 30  # more groups (patients, say) are in metrics.json, not on the terminal


def format_metrics_table(metrics: dict) -> str:
    """A plain-text table of `evaluate_predictions` output (with `by_group`, if it holds one).

    Args:
        metrics: The dict returned by `evaluate_predictions` or `cxrmodels.evaluate`.

    Returns:
        The table, lines joined with newlines (no trailing newline).

    Example:
        >>> print(format_metrics_table(evaluate_predictions(y, p, class_names=names)))  # doctest: +SKIP
    """
    names = metrics["class_names"]
    lines = [
        f"n = {metrics['n']} (" + ", ".join(f"{c}: {n}" for c, n in zip(names, metrics["class_counts"])) + ")"
    ]
    lines += _binary_lines(metrics) if metrics["task"] == "binary" else _multiclass_lines(metrics)
    if metrics.get("calibration"):
        lines += ["", *_calibration_lines(metrics["calibration"])]
    if metrics.get("by_group"):
        lines += ["", *format_by_group(metrics["by_group"])]
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


def _ratio_cell(r: dict, key: str, num, den) -> str:
    if not num:
        return _f(r[key])
    cell = _f(r[key]) + f" ({sum(r[c] for c in num)}/{sum(r[c] for c in den)}"
    ci = r.get(f"{key}_ci")
    return cell + (f"; {ci[0]:.2f}-{ci[1]:.2f})" if ci else ")")


def _binary_lines(metrics: dict) -> list[str]:
    auc = _auc_text(
        metrics["auc"], metrics["auc_ci"], metrics.get("auc_ci_resamples"), metrics.get("n_bootstrap")
    )
    lines = [
        f"positive class: {metrics['positive_class']}",
        f"{'AUC':<13}{auc}",
        f"{'Accuracy':<13}{_f(metrics['accuracy'])} (argmax)",
        "",
    ]
    reports = [r for r in (metrics["at_threshold"], metrics["at_0.5"]) if r is not None]
    heads = ["t=0.500"]
    if metrics["at_threshold"] is not None:
        heads.insert(0, f"t={metrics['threshold']:.3f} ({metrics['threshold_source']})")
    lines.append(f"{'':<13}" + "".join(f"{h:<32}" for h in heads).rstrip())
    for label, key, num, den in _BINARY_ROWS:
        lines.append(
            f"{label:<13}" + "".join(f"{_ratio_cell(r, key, num, den):<32}" for r in reports).rstrip()
        )
    cells = ["{tp}/{fp}/{tn}/{fn}".format(**r) for r in reports]
    lines.append(f"{'TP/FP/TN/FN':<13}" + "".join(f"{c:<32}" for c in cells).rstrip())
    lines.append("(sensitivity and specificity with Wilson 95% CIs)")
    return lines


def _multiclass_lines(metrics: dict) -> list[str]:
    names = metrics["class_names"]
    w = max(12, *(len(c) + 2 for c in names))
    lines = [
        f"{'macro AUC':<{w}}{_f(metrics['macro_auc'])}",
        f"{'Accuracy':<{w}}{_f(metrics['accuracy'])} (argmax)",
        "",
        f"{'class':<{w}}{'AUC (95% CI)':<29}"
        + "".join(f"{h:<7}" for h in ("Sens", "Spec", "PPV", "NPV", "F1"))
        + "stored t",
    ]
    for name, r in metrics["per_class"].items():
        auc = _auc_text(r["auc"], r["auc_ci"], r.get("auc_ci_resamples"), metrics.get("n_bootstrap"))
        lines.append(
            f"{name:<{w}}{auc:<29}"
            + "".join(f"{_f(r[k]):<7}" for k in ("sensitivity", "specificity", "ppv", "npv", "f1"))
            + _f(r["threshold"])
        )
    lines.append("(sensitivity to F1 at the argmax decision, each class vs the rest)")
    return lines


def _ci_text(value, ci) -> str:
    return _f(value) + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _calibration_lines(calibration: dict) -> list[str]:
    lines = [f"calibration ({calibration['n_bins']} {calibration['binning']} bins of probability)"]
    for name, r in calibration["classes"].items():
        ece = f"ECE {_ci_text(r['ece'], r['ece_ci'])}"
        if r["ece_if_calibrated"] is not None:
            verdict = "above" if r["ece"] > r["ece_if_calibrated"] else "within"
            ece += f", {verdict} what a calibrated model reaches here (< {r['ece_if_calibrated']:.3f})"
        lines.append(f"{name}: Brier {_ci_text(r['brier'], r['brier_ci'])}; {ece}")
    return lines


def group_rows(by_group: dict):
    """`(label, report)` per row: one per group for two classes, one per group and class for more."""
    for name, r in by_group["groups"].items():
        if "per_class" in r:
            for c, rc in r["per_class"].items():
                yield f"{name} / {c}", rc
        else:
            yield name, r


def format_by_group(by_group: dict) -> list[str]:
    """The lines of the by-group section: per group n, AUC, sensitivity and specificity with CIs."""
    rows = list(group_rows(by_group))
    shown = sorted(rows, key=lambda row: -row[1]["n"])[:_MAX_GROUP_ROWS]
    shown = [row for row in rows if row in shown]
    w = max(8, *(len(label) + 2 for label, _ in shown)) if shown else 8
    aucs = [_auc_text(r["auc"], r["auc_ci"]) for _, r in shown]
    wa = max([30] + [len(a) + 2 for a in aucs])
    lines = [
        f"by {by_group.get('key', 'group')} ({by_group['decision']})",
        f"{'':<{w}}{'n':>5}{'pos':>5}  {'AUC (95% CI)':<{wa}}{'Sensitivity':<20}Specificity",
    ]
    for (label, r), auc in zip(shown, aucs):
        sens, spec = (_f(r[k], 2) + _short_ci(r[f"{k}_ci"]) for k in ("sensitivity", "specificity"))
        lines.append(f"{label:<{w}}{r['n']:>5}{r['n_positive']:>5}  {auc:<{wa}}{sens:<20}{spec}")
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} smaller rows in metrics.json")
    return lines


def _short_ci(ci) -> str:
    return f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else ""
