"""The one figure of a shortcut audit (`cxrmodels.audit`): AUC bars, Grad-CAM shares, overlays."""

from __future__ import annotations

import os

import numpy as np

from cxrdata.utils.figures import save_figure


def plot_audit(report: dict, data: dict, *, path: str | os.PathLike) -> str:
    """Writes `audit.png`: AUC bars with CIs (original, lungs blanked, lungs only, external),
    the distribution of the Grad-CAM share inside the lungs by class, and example overlays
    (Grad-CAM over the image, the lung mask outlined). Returns `path`.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from cxrmodels.evaluation.plots import draw_auc_bars

    checks = report["checks"]
    shown = data["examples"]
    fig = Figure(figsize=(11, 8.5 if shown else 4.6))
    grid = fig.add_gridspec(
        2 if shown else 1, max(2, len(shown)) * 2, height_ratios=[1.25, 1] if shown else [1]
    )
    half = grid.ncols // 2
    bars = [("original", checks["original"])] + [
        (name.replace("_", " "), checks[name])
        for name in ("lungs_blanked", "lungs_only")
        if checks[name]["status"] != "skipped"
    ]
    if checks["external"].get("auc") is not None:
        bars.append(("external", checks["external"]))
    draw_auc_bars(
        fig.add_subplot(grid[0, :half]),
        [(k, (c["auc"], c.get("auc_ci"))) for k, c in bars],
        title="Does the model need the lungs?",
    )

    ax = fig.add_subplot(grid[0, half:])
    share = checks["gradcam_lung_share"]
    if share["status"] == "skipped":
        ax.text(0.5, 0.5, "Grad-CAM share: skipped\n(no lung masks)", ha="center", va="center")
        ax.set_axis_off()
    else:
        values, y = data["share"], data["y"]
        for c, name in enumerate(report["class_names"]):
            s = values[(y == c) & ~np.isnan(values)]
            if len(s):
                ax.hist(
                    s, bins=np.linspace(0, 1, 21), alpha=0.55, color=f"C{c}", label=f"{name} (n={len(s)})"
                )
        ax.axvline(share["lung_area"], ls=":", c="k", label=f"lung area {share['lung_area']:.2f}")
        ax.axvline(share["cutoff"], ls="--", c="C3", label=f"flag below {share['cutoff']:.2f}")
        ax.set(
            xlim=(0, 1),
            xlabel="share of Grad-CAM energy inside the lungs",
            ylabel="images",
            title=f"Grad-CAM inside the lungs: median {share['median']:.2f}",
        )
        ax.legend(fontsize=8)

    jet = colormaps["jet"]
    for i, (image, cam, mask, label) in enumerate(shown):
        ax = fig.add_subplot(grid[1, 2 * i : 2 * i + 2])
        gray = np.repeat(image.astype(np.float32)[..., None] / 255.0, 3, axis=-1)
        ax.imshow(np.clip(0.6 * gray + 0.4 * jet(np.clip(cam, 0, 1))[..., :3], 0, 1))
        ax.contour(mask.astype(float), levels=[0.5], colors="w", linewidths=1)
        ax.set_title(f"{report['class_names'][label]}", fontsize=9)
        ax.set_axis_off()

    flagged = report["flagged"]
    fig.suptitle(
        f"{report['model']}: "
        + (
            "FLAGGED: " + ", ".join(f.replace("_", " ") for f in flagged)
            if flagged
            else "no shortcut found by these checks"
        ),
        color="C3" if flagged else "k",
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
