"""The one figure of a shortcut audit (`cxrmodels.audit`): AUC bars, Grad-CAM evidence, examples."""

from __future__ import annotations

import os

import numpy as np

from cxrdata.utils.figures import save_figure
from cxrmodels.evaluation.plots import draw_auc_bars

_COLORS = {"flagged": "C3", "inconclusive": "C1", "ok": "C2"}


def plot_audit(report: dict, data, *, path: str | os.PathLike) -> str:
    """Writes `audit.png` and returns `path`.

    Top left: AUC bars with CIs on the audited records (original, lungs blanked, a placebo region
    of the lungs' area blanked, lungs only, the placebo kept only) and the external set's AUC.
    Top right: per class, the Grad-CAM evidence inside the lungs over a blind map's, with CIs and
    the threshold. Below: example films with their class-discriminative Grad-CAM and lung outline,
    each beside its lungs-blanked film as the model saw it.
    """
    from matplotlib.figure import Figure

    checks = report["checks"]
    shown = data.examples
    fig = Figure(figsize=(12, 8.5 if shown else 4.6))
    grid = fig.add_gridspec(
        2 if shown else 1, max(2, len(shown)) * 2, height_ratios=[1.25, 1] if shown else [1]
    )
    half = grid.ncols // 2
    draw_auc_bars(fig.add_subplot(grid[0, :half]), _bars(checks), title="Does the model need the lungs?")
    _draw_shares(fig.add_subplot(grid[0, half:]), checks["gradcam_lung_share"], report["thresholds"])
    for i, (image, cam, mask, label, blanked) in enumerate(shown):
        _draw_example(fig.add_subplot(grid[1, 2 * i]), image, cam, mask, report["class_names"][label])
        ax = fig.add_subplot(grid[1, 2 * i + 1])
        ax.imshow(blanked, cmap="gray", vmin=0, vmax=255)
        ax.set_title("lungs blanked", fontsize=9)
        ax.set_axis_off()
    status = report["status"]
    fig.suptitle(
        f"{report['model']}: {status.upper()}"
        + (f": {', '.join(f.replace('_', ' ') for f in report['flagged'])}" if report["flagged"] else "")
        + (
            f" (inconclusive: {', '.join(i.replace('_', ' ') for i in report['inconclusive'])})"
            if report["inconclusive"]
            else ""
        ),
        color=_COLORS.get(status, "k"),
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _bars(checks: dict) -> list:
    blanked, only = checks.get("lungs_blanked", {}), checks.get("lungs_only", {})
    if blanked.get("status") in (None, "skipped"):
        bars = [("original", (checks["original"].get("auc"), checks["original"].get("auc_ci")))]
    else:
        bars = [
            ("original", _figure(blanked, "original_auc")),
            ("lungs\nblanked", _figure(blanked, "auc")),
            ("placebo\nblanked", _figure(blanked, "auc", "placebo")),
            ("lungs\nonly", _figure(only, "auc")),
            ("placebo\nonly", _figure(only, "auc", "placebo")),
        ]
    if checks["external"].get("auc") is not None:
        bars.append(("external", (checks["external"]["auc"], checks["external"].get("auc_ci"))))
    return bars


def _figure(check: dict, key: str, within: str | None = None) -> tuple:
    """`(auc, ci)` of a check (of its `within` part); with classes one vs rest, their mean without a CI."""
    if "per_class" not in check:
        part = check.get(within, {}) if within else check
        return part.get(key), part.get(key + "_ci")
    values = [(c.get(within, {}) if within else c).get(key) for c in check["per_class"].values()]
    values = [v for v in values if v is not None]
    return (float(np.mean(values)) if values else None), None


def _draw_shares(ax, check: dict, thresholds: dict) -> None:
    if check["status"] == "skipped":
        ax.text(0.5, 0.5, "Grad-CAM: skipped\n(no film could be blanked)", ha="center", va="center")
        ax.set_axis_off()
        return
    names = ["all classes", *check["per_class"]]
    for x, name in enumerate(names):
        c = check if x == 0 else check["per_class"][name]
        if c["ratio"] is None:
            ax.text(x, 0.02, "n/a", ha="center", va="bottom")
            continue
        ax.bar(x, c["ratio"], color=_COLORS.get(check["status"], "0.5") if x == 0 else "0.6", width=0.6)
        if c["ratio_ci"]:
            lo, hi = c["ratio_ci"]
            ax.errorbar(
                x, c["ratio"], yerr=[[c["ratio"] - lo], [hi - c["ratio"]]], color="k", capsize=6, lw=1.2
            )
    ax.text(0, 0.02, check["status"], ha="center", va="bottom", fontsize=8, color="w")
    ax.axhline(
        thresholds["lung_share"], ls="--", c="C3", lw=1, label=f"threshold {thresholds['lung_share']:g}"
    )
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(
        ylabel="evidence in the lungs / a blind map's (95% CI)",
        title=f"Grad-CAM per class (feature map {check['resolution']['feature_map']})",
    )
    ax.legend(fontsize=8)


def _draw_example(ax, image, cam, mask, title) -> None:
    from matplotlib import colormaps

    gray = np.repeat(image.astype(np.float32)[..., None] / 255.0, 3, axis=-1)
    ax.imshow(np.clip(0.6 * gray + 0.4 * colormaps["jet"](np.clip(cam, 0, 1))[..., :3], 0, 1))
    ax.contour(mask.astype(float), levels=[0.5], colors="w", linewidths=1)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
