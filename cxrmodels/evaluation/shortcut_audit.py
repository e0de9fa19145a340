"""`audit`: does a model look at the lungs, or at a shortcut (a hospital's marker, a border)?

Classifiers trained on public chest X-ray collections often learn the source
instead of the disease (DeGrave et al., 2021). On a split whose records carry
lung masks (`cxr convert` with masks), the audit measures:

1. the AUC on the original images, with the lungs blanked and with everything
   but the lungs blanked. The blanked region is filled with the median of the
   region kept (lungs blanked: the image's median outside-lung value; lungs
   only: its median lung value), so no intensity from the removed region
   survives and no gray level the image does not hold is introduced. A model
   that still separates the classes with its lungs blanked uses something else;
2. the share of positive Grad-CAM energy inside the
   lung mask, per image, summarised by class, beside the lungs' share of the
   image (what a map blind to anatomy would give). With two classes the map is
   the positive (disease) class's, wherever its evidence lies; images with no
   positive energy for it are left out. With more, the predicted class's;
3. with an external dataset, the drop from the internal AUC to the external one.

Each check gets a verdict against a documented, overridable threshold
(`DEFAULT_THRESHOLDS`); checks that need masks are skipped, saying why, when
the records carry none.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from cxrdata.utils.io import atomic_write_text
from cxrmodels.models.saving import load_run_model
from cxrmodels.runs import run_folder

# lungs_blanked_auc: flagged at or above it (0.5 is chance; 0.7 is "acceptable discrimination", Hosmer-Lemeshow).
# lung_share: flagged when the median share of Grad-CAM energy inside the lungs is below this multiple of the
#   median lungs' share of the image area (1.0: the evidence is no more in the lungs than a map blind to
#   anatomy would put there; Grad-CAM maps are coarse, so an absolute share would punish small images).
# external_drop: flagged when internal AUC - external AUC exceeds it.
DEFAULT_THRESHOLDS = {"lungs_blanked_auc": 0.7, "lung_share": 1.0, "external_drop": 0.05}
AUDIT_DIR = "audit"


def audit(
    run_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    *,
    split: str = "test",
    external: str | os.PathLike | None = None,
    external_split: str = "all",
    class_map: dict[str, str] | str | None = None,
    allow_preprocessing_mismatch: bool = False,
    thresholds: dict[str, float] | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    n_bootstrap: int = 1000,
    examples: int = 4,
) -> dict[str, Any]:
    """Audits whether a run's model separates the classes by the lungs or by something else.

    Writes `audit.json` and `audit.png` (AUC bars original / lungs blanked /
    lungs only [/ external], the distribution of the Grad-CAM share inside the
    lungs by class, and a few example overlays) into `out`.

    Args:
        run_dir: A run folder written by `cxrmodels.train`.
        dataset_dir: A converted dataset fed like the run's training data,
            preferably with lung masks.
        split: The split to audit. Defaults to "test".
        external: Another converted dataset (another hospital), for the
            internal-vs-external check. Defaults to None (check skipped).
        external_split: Its split, or "all". Defaults to "all".
        class_map: The external dataset's class names mapped to the run's
            (see `cxrmodels.evaluate`). Defaults to None.
        allow_preprocessing_mismatch: Accept an external dataset preprocessed
            differently. Defaults to False.
        thresholds: Overrides of `DEFAULT_THRESHOLDS` ("lungs_blanked_auc",
            "lung_share", "external_drop"). Defaults to None.
        out: Output folder. Defaults to `run_dir/audit/<dataset folder>-<split>`.
        batch_size: Images per batch. Defaults to 32.
        n_bootstrap: Bootstrap resamples for the AUC CIs. Defaults to 1000.
        examples: Example overlays in the figure. Defaults to 4.

    Returns:
        The audit, as written to `audit.json`: `checks` (per check its figures,
        `status` "ok", "flagged" or "skipped", and `verdict`), `flagged`
        (the names of flagged checks), `thresholds` and `files`.

    Raises:
        FileNotFoundError: The run or a dataset is missing.
        ValueError: A bad argument, or a dataset fed differently from the run's.

    Example:
        >>> report = audit("runs/a", "data/", external="hospital-b/")  # doctest: +SKIP
        >>> print("\\n".join(c["verdict"] for c in report["checks"].values()))  # doctest: +SKIP
    """
    limits = _check_args(split, thresholds, batch_size, n_bootstrap, examples)
    import cxrdata
    from cxrmodels.evaluation import evaluator

    run_dir, dataset_dir = os.fspath(run_dir), os.fspath(dataset_dir)
    config = run_folder.read_config(run_dir)
    manifest = cxrdata.read_manifest(dataset_dir)
    manifest.split(split)
    notes = evaluator.check_dataset(config, manifest, dataset_dir)
    ext_manifest = None
    if external is not None:
        external = os.fspath(external)
        ext_manifest = cxrdata.read_manifest(external)
        ext_splits = evaluator.split_names(ext_manifest, external_split)
        ext_map = evaluator.parse_class_map(class_map)
        notes += evaluator.check_dataset(
            config,
            ext_manifest,
            external,
            class_map=ext_map,
            allow_preprocessing_mismatch=allow_preprocessing_mismatch,
        )
    model = load_run_model(run_dir, config)
    class_names = list(config["class_names"])

    from cxrmodels.metrics.clinical import positive_class_index

    target = positive_class_index(class_names) if len(class_names) == 2 else None
    data = _predict_variants(
        model, dataset_dir, split, batch_size=batch_size, examples=examples, target=target
    )
    checks: dict[str, dict] = {}
    original = _auc(data["y"], data["probs"]["original"], class_names, n_bootstrap)
    with_masks = data["has_mask"]
    n_masks = int(with_masks.sum())
    skip_reason = (
        None
        if n_masks
        else f"skipped: no record of split {split!r} carries a lung mask (convert with masks: Kaggle "
        "masks/ beside images/, --masks DIR, or a CSV mask column)"
    )
    checks["original"] = {
        "auc": original[0],
        "auc_ci": original[1],
        "n": int(len(data["y"])),
        "status": "ok",
        "verdict": f"original images: AUC {_text(*original)}",
    }
    if skip_reason:
        for name in ("lungs_blanked", "lungs_only", "gradcam_lung_share"):
            checks[name] = {"status": "skipped", "verdict": f"{name.replace('_', ' ')}: {skip_reason}"}
    else:
        y = data["y"][with_masks]
        for name in ("lungs_blanked", "lungs_only"):
            auc, ci = _auc(y, data["probs"][name][with_masks], class_names, n_bootstrap)
            checks[name] = {"auc": auc, "auc_ci": ci, "n": n_masks}
        checks["lungs_blanked"].update(_blanked_verdict(checks["lungs_blanked"], limits["lungs_blanked_auc"]))
        lo = checks["lungs_only"]
        checks["lungs_only"].update(
            status="ok",
            verdict=(
                f"lungs only: AUC {_text(lo['auc'], lo['auc_ci'])} (original {_text(*original)}): "
                + (
                    "what the lungs alone carry"
                    if lo["auc"] is None
                    else "the lungs alone carry the signal"
                    if original[0] is None or lo["auc"] >= original[0] - 0.05
                    else "part of the signal lies outside the lungs"
                )
            ),
        )
        checks["gradcam_lung_share"] = _share_check(data, class_names, limits["lung_share"])
    if n_masks and n_masks < len(data["y"]):
        notes.append(
            f"{len(data['y']) - n_masks} of {len(data['y'])} records carry no lung mask: the checks "
            "that need one use the other {n_masks}".replace("{n_masks}", str(n_masks))
        )
    if external is None:
        checks["external"] = {
            "status": "skipped",
            "verdict": "internal vs external: skipped: no external dataset "
            "given (--external OTHER_DATASET)",
        }
    else:
        checks["external"] = _external_check(
            model,
            config,
            external,
            ext_manifest,
            ext_splits,
            ext_map,
            original,
            batch_size,
            n_bootstrap,
            limits["external_drop"],
        )

    folder = (
        os.fspath(out)
        if out is not None
        else os.path.join(
            run_dir, AUDIT_DIR, f"{os.path.basename(os.path.normpath(os.path.abspath(dataset_dir)))}-{split}"
        )
    )
    os.makedirs(folder, exist_ok=True)
    report = {
        "run": os.path.abspath(run_dir),
        "model": config["model"]["name"],
        "dataset": {
            "path": os.path.abspath(dataset_dir),
            "split": split,
            "digest": manifest.digest(),
            "with_masks": n_masks,
            "n": int(len(data["y"])),
        },
        "class_names": class_names,
        "thresholds": limits,
        "fill": "lungs blanked: the image's median outside-lung value; lungs only: its median lung value",
        "checks": checks,
        "flagged": [k for k, c in checks.items() if c["status"] == "flagged"],
        "warnings": notes,
        "files": {"audit": os.path.join(folder, "audit.json"), "figure": os.path.join(folder, "audit.png")},
    }
    from cxrmodels.evaluation.audit_figure import plot_audit

    plot_audit(report, data, path=report["files"]["figure"])
    atomic_write_text(report["files"]["audit"], json.dumps(report, indent=2) + "\n")
    return report


def _check_args(split, thresholds, batch_size, n_bootstrap, examples) -> dict:
    from cxrdata.utils.argument_validation import check_int

    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a split name such as 'test'. Received: split={split!r}")
    check_int("batch_size", batch_size, minimum=1)
    check_int("n_bootstrap", n_bootstrap, minimum=0)
    check_int("examples", examples, minimum=0)
    if thresholds is not None and not isinstance(thresholds, dict):
        raise TypeError(f"`thresholds` must be a dict or None. Received: thresholds={thresholds!r}")
    unknown = sorted(set(thresholds or {}) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise ValueError(
            f"`thresholds` takes the keys {sorted(DEFAULT_THRESHOLDS)}. Received: thresholds={thresholds}"
        )
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    for k, v in limits.items():
        top = 10 if k == "lung_share" else 1
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= top:
            raise ValueError(f"`thresholds[{k!r}]` must be a number from 0 to {top}. Received: {k}={v!r}")
    return {k: float(v) for k, v in limits.items()}


def blank(images: np.ndarray, masks: np.ndarray, *, keep: str) -> np.ndarray:
    """Images with the lungs (`keep="outside"`) or all but the lungs (`keep="lungs"`) blanked.

    The blanked region is filled, per image, with the median of the region kept.

    Args:
        images: uint8 `[N, H, W, C]`.
        masks: `[N, H, W, 1]`, nonzero inside the lungs.
        keep: "outside" (lungs blanked) or "lungs" (everything but the lungs blanked).

    Returns:
        uint8 images of the same shape.
    """
    inside = np.broadcast_to(masks > 0, images.shape)
    out = images.copy()
    for i in range(len(images)):
        region = ~inside[i] if keep == "outside" else inside[i]
        if not region.any() or region.all():
            continue  # no mask: nothing to blank
        out[i][~region] = np.uint8(np.median(images[i][region]))
    return out


def _predict_variants(model, dataset_dir, split, *, batch_size, examples, target=None) -> dict:
    """Labels, masks, probabilities of the three image variants, Grad-CAM shares and a few examples."""
    import cxrdata
    from cxrmodels.serving.prediction import gradcam

    ys, has, shares, areas = [], [], [], []
    probs = {"original": [], "lungs_blanked": [], "lungs_only": []}
    shown: list[tuple] = []
    for images, labels, masks in cxrdata.load(
        dataset_dir, split, batch_size=batch_size, shuffle=False, label_mode="int", with_masks=True
    ):
        images, masks = images.numpy(), masks.numpy()
        ys.append(labels.numpy())
        present = masks.reshape(len(masks), -1).any(axis=1)
        has.append(present)
        probs["original"].append(np.asarray(model.predict_on_batch(images), np.float64))
        probs["lungs_blanked"].append(
            np.asarray(model.predict_on_batch(blank(images, masks, keep="outside")), np.float64)
        )
        probs["lungs_only"].append(
            np.asarray(model.predict_on_batch(blank(images, masks, keep="lungs")), np.float64)
        )
        cams = gradcam(model, images, class_index=target)
        inside = masks[..., 0] > 0
        total = cams.reshape(len(cams), -1).sum(axis=1)
        within = (cams * inside).reshape(len(cams), -1).sum(axis=1)
        shares.append(np.where(present & (total > 0), within / np.maximum(total, 1e-12), np.nan))
        areas.append(np.where(present, inside.reshape(len(inside), -1).mean(axis=1), np.nan))
        for i in range(len(images)):
            if len(shown) < examples and present[i]:
                shown.append((images[i, ..., 0], cams[i], inside[i], int(labels[i])))
    return {
        "y": np.concatenate(ys).astype(np.int64),
        "has_mask": np.concatenate(has),
        "probs": {k: np.concatenate(v) for k, v in probs.items()},
        "share": np.concatenate(shares),
        "area": np.concatenate(areas),
        "examples": shown,
    }


def _auc(y, probs, class_names, n_bootstrap) -> tuple[float | None, list | None]:
    from cxrmodels.evaluation.evaluator import _headline
    from cxrmodels.metrics.clinical import evaluate_predictions

    if len(y) == 0:
        return None, None
    return _headline(evaluate_predictions(y, probs, class_names=class_names, n_bootstrap=n_bootstrap, seed=0))


def _text(auc, ci) -> str:
    if auc is None:
        return "n/a (one class only)"
    return f"{auc:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _blanked_verdict(check: dict, limit: float) -> dict:
    auc = check["auc"]
    if auc is None:
        return {
            "status": "skipped",
            "verdict": "lungs blanked: skipped: the masked records hold one class only",
        }
    flagged = auc >= limit
    return {
        "status": "flagged" if flagged else "ok",
        "verdict": (
            f"lungs blanked: AUC {_text(auc, check['auc_ci'])}: the model "
            + (
                "separates the classes without the lungs"
                if flagged
                else "does not separate the classes without the lungs"
            )
            + f" (flagged at AUC >= {limit:.2f})"
        ),
    }


def _share_check(data, class_names, limit) -> dict:
    share, area, y = data["share"], data["area"], data["y"]
    valid = ~np.isnan(share)
    if not valid.any():
        return {
            "status": "skipped",
            "verdict": "Grad-CAM share inside the lungs: skipped: no positive Grad-CAM "
            "energy on any masked image",
        }
    by_class = {}
    for c, name in enumerate(class_names):
        s = share[valid & (y == c)]
        if len(s):
            by_class[name] = {
                "n": int(len(s)),
                "median": float(np.median(s)),
                "q25": float(np.percentile(s, 25)),
                "q75": float(np.percentile(s, 75)),
            }
    median, lung_area = float(np.median(share[valid])), float(np.nanmedian(area))
    cutoff = limit * lung_area
    flagged = median < cutoff
    verdict = (
        f"Grad-CAM share inside the lungs: median {median:.2f} ("
        + ", ".join(f"{k} {v['median']:.2f}" for k, v in by_class.items())
        + f"; the lungs cover {lung_area:.2f} of the image): the model's evidence is "
        + ("no more in the lungs than elsewhere" if flagged else "concentrated in the lungs")
        + f" (flagged below {cutoff:.2f} = {limit:g} x lung area)"
    )
    return {
        "status": "flagged" if flagged else "ok",
        "verdict": verdict,
        "median": median,
        "lung_area": lung_area,
        "cutoff": cutoff,
        "by_class": by_class,
        "n": int(valid.sum()),
        "per_image": [None if np.isnan(v) else round(float(v), 4) for v in share],
    }


def _external_check(
    model, config, external, manifest, splits, class_map, internal, batch_size, n_bootstrap, limit
) -> dict:
    from cxrmodels.evaluation import evaluator

    labels = evaluator.label_mapping(config, manifest, class_map)
    y, probs = evaluator.predict_splits(model, external, splits, batch_size=batch_size, labels=labels)
    auc, ci = _auc(y, probs, list(config["class_names"]), n_bootstrap)
    out = {
        "path": os.path.abspath(external),
        "splits": splits,
        "n": int(len(y)),
        "auc": auc,
        "auc_ci": ci,
        "internal_auc": internal[0],
        "internal_auc_ci": internal[1],
    }
    if auc is None or internal[0] is None:
        return {
            **out,
            "status": "skipped",
            "verdict": "internal vs external: skipped: an AUC is undefined " "(one class only)",
        }
    drop = internal[0] - auc
    flagged = drop > limit
    return {
        **out,
        "drop": drop,
        "status": "flagged" if flagged else "ok",
        "verdict": (
            f"internal vs external: AUC {_text(*internal)} internal, {_text(auc, ci)} external (drop {drop:+.2f}): "
            + ("the model does not carry over to the other source" if flagged else "the model carries over")
            + f" (flagged at a drop > {limit:.2f})"
        ),
    }
