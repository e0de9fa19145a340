"""Figures a clinical reader looks at: ROC curve, confusion matrix, reliability diagram, AUC by group.

matplotlib is imported inside each function and draws through the Agg canvas
without pyplot, so the user's global backend is left alone. PNGs are written
atomically.
"""

from __future__ import annotations

import numpy as np

from cxrdata.utils.figures import save_figure
from cxrmodels.metrics.clinical import (
    _auc_text,
    _check_predictions,
    positive_class_index,
    roc_auc,
    roc_curve,
)


def _save_figure(fig, path) -> str:
    return save_figure(fig, path, dpi=120, tight=True)


def plot_roc(y_true, probs, *, class_names, path, metrics: dict | None = None) -> str:
    """Writes a ROC curve PNG: the positive class for two classes, one-vs-rest curves for more.

    Args:
        y_true: Integer labels [N].
        probs: Class probabilities [N, K].
        class_names: The K class names.
        path: Where to write the PNG (atomically).
        metrics: `evaluate_predictions` output for the same predictions, to
            show AUC CIs and mark the operating points. Defaults to None.

    Returns:
        `path`, as a string.

    Raises:
        ValueError: On bad inputs, or a two-class `y_true` holding one class.

    Example:
        >>> plot_roc(y, p, class_names=names, path="runs/a/roc.png", metrics=m)
    """
    from matplotlib.figure import Figure

    class_names = [str(c) for c in class_names]
    y, p = _check_predictions(y_true, probs, class_names)
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    if len(class_names) == 2:
        pos = positive_class_index(class_names)
        fpr, tpr, _ = roc_curve(y == pos, p[:, pos])
        ci = metrics.get("auc_ci") if metrics else None
        ax.plot(
            fpr, tpr, lw=2, label=f"{class_names[pos]}: AUC {_auc_text(roc_auc(y == pos, p[:, pos]), ci)}"
        )
        styles = {"at_threshold": dict(c="C3", marker="o"), "at_0.5": dict(mec="C3", mfc="none", marker="s")}
        for key, style in styles.items():
            r = metrics.get(key) if metrics else None
            if r and r["sensitivity"] is not None and r["specificity"] is not None:
                what = metrics["threshold_source"] if key == "at_threshold" else "default"
                ax.plot(
                    1 - r["specificity"],
                    r["sensitivity"],
                    ls="none",
                    ms=8,
                    **style,
                    label=f"t={r['threshold']:.3f} ({what}): "
                    f"sens {r['sensitivity']:.2f}, spec {r['specificity']:.2f}",
                )
        ax.set_title(f"ROC: {class_names[pos]} vs {class_names[1 - pos]} (n={len(y)})")
    else:
        for c, name in enumerate(class_names):
            if (y == c).all() or not (y == c).any():
                continue
            fpr, tpr, _ = roc_curve(y == c, p[:, c])
            ci = metrics["per_class"][name]["auc_ci"] if metrics else None
            ax.plot(fpr, tpr, lw=1.5, label=f"{name}: AUC {_auc_text(roc_auc(y == c, p[:, c]), ci)}")
        ax.set_title(f"ROC, one class vs the rest (n={len(y)})")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save_figure(fig, path)


def plot_confusion_matrix(cm, *, class_names, path, title: str = "Confusion matrix") -> str:
    """Writes a confusion matrix PNG: counts and row percentages, colored by row fraction.

    Args:
        cm: Counts [K, K], `cm[true][predicted]`.
        class_names: The K class names.
        path: Where to write the PNG (atomically).
        title: The figure title. Defaults to "Confusion matrix".

    Returns:
        `path`, as a string.

    Raises:
        ValueError: If `cm` is not a square matrix of non-negative counts matching `class_names`.

    Example:
        >>> plot_confusion_matrix(m["confusion_matrix"], class_names=names, path="runs/a/cm.png")
    """
    from matplotlib.figure import Figure

    cm, k = np.asarray(cm), len(class_names)
    if cm.shape != (k, k) or (cm < 0).any():
        raise ValueError(
            f"`cm` must be a [{k}, {k}] matrix of non-negative counts for {k} class names. "
            f"Received: cm.shape={cm.shape}"
        )
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = 2.2 + 1.1 * k
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{100 * frac[i, j]:.1f}%",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.5 else "black",
                fontsize=10,
            )
    ax.set_xticks(
        range(k),
        [str(c) for c in class_names],
        rotation=30 if k > 3 else 0,
        ha="right" if k > 3 else "center",
    )
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save_figure(fig, path)


def draw_auc_bars(ax, bars, *, title: str = "") -> None:
    """Draws AUC bars with their 95% CIs on a Matplotlib axes.

    Args:
        ax: The axes.
        bars: `(label, (auc, ci))` pairs; `auc` None draws "n/a", `ci` None no whisker.
        title: The axes title. Defaults to "".
    """
    xs = np.arange(len(bars))
    for x, (_label, (auc, ci)) in zip(xs, bars):
        if auc is None:
            ax.text(x, 0.02, "n/a", ha="center", va="bottom")
            continue
        ax.bar(x, auc, color=f"C{x % 10}", width=0.6)
        if ci:
            ax.errorbar(x, auc, yerr=[[auc - ci[0]], [ci[1] - auc]], color="k", capsize=6, lw=1.2)
        ax.text(
            x,
            min(auc, ci[1] if ci else auc) + 0.03,
            f"{auc:.3f}" + (f"\n[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(0.5, ls="--", c="0.5", lw=1)
    ax.set_xticks(xs, [label for label, _ in bars], fontsize=8)
    ax.set(ylim=(0, 1.18), ylabel="ROC AUC (95% CI)", title=title)


def plot_auc_bars(bars, *, path, title: str = "") -> str:
    """Writes a PNG of AUC bars with CIs side by side (`draw_auc_bars`); returns `path`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.8 + 1.6 * len(bars), 4.2))
    draw_auc_bars(fig.add_subplot(), bars, title=title)
    return _save_figure(fig, path)


def plot_reliability(calibration: dict, *, path, title: str = "Reliability diagram") -> str:
    """Writes a reliability diagram PNG: observed share against mean probability, per bin, per class.

    Each non-empty bin is a point at (mean predicted probability, observed share
    positive) with the share's Wilson 95% interval, sized by its cases; the
    diagonal is perfect calibration. A histogram of the probabilities sits
    below, and the legend gives each class's Brier score and ECE with CIs.

    Args:
        calibration: The `calibration` entry of `evaluate_predictions` output.
        path: Where to write the PNG (atomically).
        title: The figure title. Defaults to "Reliability diagram".

    Returns:
        `path`, as a string.

    Example:
        >>> plot_reliability(m["calibration"], path="runs/a/reliability.png")  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect calibration")
    n_bins = calibration["n_bins"]
    for i, (name, r) in enumerate(calibration["classes"].items()):
        bins = [b for b in r["bins"] if b["n"]]
        x = np.array([b["mean_probability"] for b in bins])
        yv = np.array([b["observed"] for b in bins])
        err = np.array(
            [[b["observed"] - b["observed_ci"][0], b["observed_ci"][1] - b["observed"]] for b in bins]
        )
        label = f"{name}: Brier {r['brier']:.3f}, ECE {r['ece']:.3f}"
        if r["ece_ci"]:
            label += f" [{r['ece_ci'][0]:.3f}, {r['ece_ci'][1]:.3f}]"
        top.errorbar(
            x, yv, yerr=err.T if len(bins) else None, marker="o", ms=5, capsize=3, c=f"C{i}", label=label
        )
        edges = np.linspace(0, 1, n_bins + 1)
        width = 1 / n_bins / max(1, len(calibration["classes"]))
        bottom.bar(
            edges[:-1] + i * width, [b["n"] for b in r["bins"]], width=width, align="edge", color=f"C{i}"
        )
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed share positive (95% CI)", title=title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=7)
    bottom.set(xlabel="predicted probability", ylabel="cases")
    return _save_figure(fig, path)


def plot_forest(rows, *, path, title: str = "ROC AUC by group", overall=None) -> str:
    """Writes a forest plot PNG: one row per group, its AUC as a square sized by cases, with its 95% CI.

    Args:
        rows: `(label, report)` pairs, each report holding `auc`, `auc_ci`, `n`
            and `n_positive` (a group without an AUC is listed as "n/a").
        path: Where to write the PNG (atomically).
        title: The figure title. Defaults to "ROC AUC by group".
        overall: `(auc, ci)` of all cases together, drawn as a diamond below
            the groups, or None. Defaults to None.

    Returns:
        `path`, as a string.

    Example:
        >>> plot_forest(list(m["by_group"]["groups"].items()), path="by_group.png")  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    rows = list(rows)
    fig = Figure(figsize=(7, 1.2 + 0.35 * (len(rows) + 2)))
    ax = fig.add_subplot()
    largest = max([r["n"] for _, r in rows] + [1])
    labels = []
    for i, (label, r) in enumerate(rows):
        y = len(rows) - i
        labels.append((y, f"{label} (n={r['n']}, {r['n_positive']} pos.)"))
        if r["auc"] is None:
            ax.text(0.5, y, "n/a: one class only", ha="center", va="center", fontsize=8, c="0.4")
            continue
        if r["auc_ci"]:
            ax.plot(r["auc_ci"], [y, y], c="k", lw=1.2)
        ax.plot(
            r["auc"], y, marker="s", ls="none", c="C0", ms=4 + 8 * np.sqrt(r["n"] / largest), clip_on=False
        )
        ax.text(1.04, y, _auc_text(r["auc"], r["auc_ci"]), va="center", fontsize=7)
    if overall is not None and overall[0] is not None:
        labels.append((0, "all"))
        auc, ci = overall
        ax.plot(auc, 0, marker="D", ls="none", c="C3", ms=8, clip_on=False)
        if ci:
            ax.plot(ci, [0, 0], c="C3", lw=1.2)
        ax.text(1.04, 0, _auc_text(auc, ci), va="center", fontsize=7)
    ax.axvline(0.5, ls="--", c="0.5", lw=1)
    ax.set_yticks([y for y, _ in labels], [text for _, text in labels], fontsize=8)
    ax.set(xlim=(0, 1), ylim=(-0.8 if overall else 0.2, len(rows) + 0.8), xlabel="ROC AUC (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save_figure(fig, path)
