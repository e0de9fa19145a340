"""`audit`: does a model look at the lungs, or at a shortcut (a hospital's marker, a border)?

Classifiers trained on public chest X-ray collections often learn the source
instead of the disease (DeGrave et al., 2021). On a split whose records carry
lung masks (`cxr convert` with masks), the audit measures, on the same records:

1. the AUC on the original films, with the lungs blanked, and with everything but
   the lungs blanked; and the same with a placebo region of the lungs' area blanked
   (or kept) instead. The unequalized film is blanked, then the dataset's own
   preprocessing runs (see `_audit_blanking`): no lung information survives, and the
   fill continues the kept region with its texture instead of one gray. The
   lungs-blanked AUC is judged as a signal |AUC - 0.5| in either direction; lungs
   only is reported, not judged (a whole-film model loses AUC on such films anyway);
2. class-discriminative Grad-CAM: per class, the share of the evidence for it inside
   the lungs, over what a map blind to anatomy would put there (see `_audit_gradcam`),
   with the feature map's resolution, and "inconclusive" when that cannot resolve the lungs;
3. with an external dataset, the drop from the internal AUC to the external one.

Each check is `flagged`, `ok` or `inconclusive`, decided by its 95% bootstrap interval
against a documented, overridable threshold (`DEFAULT_THRESHOLDS`, see `_audit_checks`);
all are inconclusive when the model shows no skill on the audited records. With more
than two classes each check is made per class, one vs rest. Checks that need masks are
skipped, saying why, when no record can be blanked.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

import cxrdata
from cxrdata.utils.argument_validation import check_int, check_seed
from cxrdata.utils.io import atomic_write_text
from cxrmodels.evaluation import _audit_checks as checks_
from cxrmodels.evaluation import _audit_stats as stats
from cxrmodels.evaluation import evaluator
from cxrmodels.evaluation._audit_blanking import MARGIN, VARIANTS
from cxrmodels.evaluation._audit_checks import DEFAULT_THRESHOLDS
from cxrmodels.evaluation._audit_data import collect
from cxrmodels.evaluation._audit_gradcam import resolution
from cxrmodels.evaluation.audit_figure import plot_audit
from cxrmodels.metrics.clinical import positive_class_index
from cxrmodels.models.saving import load_run_model
from cxrmodels.runs import run_folder

EXIT_CODES = {"ok": 0, "inconclusive": 3, "flagged": 4}  # 1 is a failure, 2 a usage error
_MASKED = ("lungs_blanked", "lungs_only", "gradcam_lung_share")


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
    seed: int = 0,
    gradcam_layer: str | None = None,
) -> dict[str, Any]:
    """Audits whether a run's model separates the classes by the lungs or by something else.

    Writes `audit.json` and `audit.png` (AUC bars original / lungs blanked / lungs only /
    placebos [/ external] with CIs, the Grad-CAM evidence inside the lungs per class, and a
    few example overlays with their lungs-blanked films) into `out`.

    Args:
        run_dir: A run folder written by `cxrmodels.train`.
        dataset_dir: A converted dataset fed like the run's training data, with lung masks,
            whose source files are still where the manifest says (or converted with
            `equalize="none"`): blanking needs the unequalized films.
        split: The split to audit. Defaults to "test".
        external: Another converted dataset (another hospital), for the
            internal-vs-external check. Defaults to None (check skipped).
        external_split: Its split, or "all". Defaults to "all".
        class_map: The external dataset's class names mapped to the run's
            (see `cxrmodels.evaluate`). Defaults to None.
        allow_preprocessing_mismatch: Accept an external dataset preprocessed
            differently. Defaults to False.
        thresholds: Overrides of `DEFAULT_THRESHOLDS` ("lungs_blanked_signal",
            "lung_share", "external_drop", "min_skill_auc"). Defaults to None.
        out: Output folder. Defaults to `run_dir/audit/<dataset folder>-<digest[:8]>-<split>` (two
            datasets whose folders share a name never share a report).
        batch_size: Images per batch. Defaults to 32.
        n_bootstrap: Bootstrap resamples for the intervals; 0 leaves every judged check
            inconclusive. Defaults to 1000.
        examples: Example overlays in the figure. Defaults to 4.
        seed: Seed of the fill's texture, the placebo regions and the resamples.
            Defaults to 0.
        gradcam_layer: The feature layer of Grad-CAM (`"outer/inner"` inside a nested
            model). Defaults to None: the last convolutional one.

    Returns:
        The audit, as written to `audit.json`: `checks` (per check its figures, `status`
        "ok", "flagged", "inconclusive", "reported" or "skipped", and `verdict`),
        `status` (the worst judged status), `flagged`, `inconclusive`, `thresholds`,
        `dataset` (with the records left out of the blanking and why) and `files`.

    Raises:
        FileNotFoundError: The run or a dataset is missing.
        TypeError: An argument of the wrong type (`seed`, `gradcam_layer`, `thresholds`...).
        ValueError: A bad value, or a dataset fed differently from the run's.

    Example:
        >>> report = audit("runs/a", "data/", external="hospital-b/")  # doctest: +SKIP
        >>> report["status"], [c["verdict"] for c in report["checks"].values()]  # doctest: +SKIP
    """
    limits = _check_args(split, thresholds, batch_size, n_bootstrap, examples, seed, gradcam_layer)
    ctx = _open(
        run_dir, dataset_dir, split, external, external_split, class_map, allow_preprocessing_mismatch
    )

    model = load_run_model(ctx["run_dir"], ctx["config"])
    data = collect(
        model,
        ctx["dataset_dir"],
        ctx["manifest"],
        split,
        batch_size=batch_size,
        seed=seed,
        examples=examples,
        layer=gradcam_layer,
    )
    checks, internal = _checks(data, ctx["class_names"], limits, n_bootstrap, seed, split)
    if external is None:
        checks["external"] = {
            "status": "skipped",
            "verdict": "internal vs external: skipped: no external dataset given (--external OTHER_DATASET)",
        }
    else:
        checks["external"] = _external_check(model, ctx, internal, limits, batch_size, n_bootstrap, seed)
    return _write(ctx, data, checks, limits, out=out, split=split, seed=seed, n_bootstrap=n_bootstrap)


def _check_args(split, thresholds, batch_size, n_bootstrap, examples, seed, gradcam_layer) -> dict:
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a split name such as 'test'. Received: split={split!r}")
    check_int("batch_size", batch_size, minimum=1)
    check_int("n_bootstrap", n_bootstrap, minimum=0)
    check_int("examples", examples, minimum=0)
    check_seed(seed, allow_none=False)
    if gradcam_layer is not None and (not isinstance(gradcam_layer, str) or not gradcam_layer):
        raise TypeError(
            f"`gradcam_layer` must be a layer name or None. Received: gradcam_layer={gradcam_layer!r}"
        )
    if thresholds is not None and not isinstance(thresholds, dict):
        raise TypeError(f"`thresholds` must be a dict or None. Received: thresholds={thresholds!r}")
    unknown = sorted(set(thresholds or {}) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise ValueError(
            f"`thresholds` takes the keys {sorted(DEFAULT_THRESHOLDS)}. Received: thresholds={thresholds}"
        )
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    tops = {"lungs_blanked_signal": 0.5, "lung_share": 10, "external_drop": 1, "min_skill_auc": 1}
    for k, v in limits.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= tops[k]:
            raise ValueError(f"`thresholds[{k!r}]` must be a number from 0 to {tops[k]}. Received: {k}={v!r}")
    return {k: float(v) for k, v in limits.items()}


def _open(run_dir, dataset_dir, split, external, external_split, class_map, allow_mismatch) -> dict:
    """The run's config and the datasets' manifests, checked against each other before any work."""

    run_dir, dataset_dir = os.fspath(run_dir), os.fspath(dataset_dir)
    config = run_folder.read_config(run_dir)
    manifest = cxrdata.read_manifest(dataset_dir)
    manifest.split(split)
    ctx = {
        "run_dir": run_dir,
        "dataset_dir": dataset_dir,
        "config": config,
        "manifest": manifest,
        "class_names": list(config["class_names"]),
        "notes": evaluator.check_dataset(config, manifest, dataset_dir),
    }
    if external is not None:
        ctx["external"] = os.fspath(external)
        ctx["ext_manifest"] = cxrdata.read_manifest(ctx["external"])
        ctx["ext_splits"] = evaluator.split_names(ctx["ext_manifest"], external_split)
        ctx["ext_map"] = evaluator.parse_class_map(class_map)
        ctx["notes"] += evaluator.check_dataset(
            config,
            ctx["ext_manifest"],
            ctx["external"],
            class_map=ctx["ext_map"],
            allow_preprocessing_mismatch=allow_mismatch,
        )
    return ctx


def _positive(class_names) -> int | None:
    return positive_class_index(class_names) if len(class_names) == 2 else None


def _checks(data, class_names, limits, n_bootstrap, seed, split) -> tuple[dict, dict]:
    """Every check on the split's records; also the internal headline AUC for the external check."""

    positive = _positive(class_names)
    counts = stats.stratified_resamples(data.y, n_bootstrap, seed) if n_bootstrap else None
    whole = {
        name: stats.paired_aucs(labels, {"o": scores}, counts)["o"]
        for name, (labels, scores) in stats.one_vs_rest(data.y, data.original, class_names, positive).items()
    }
    checks = {"original": checks_.original_check(whole, limits, len(data.y))}
    internal = stats.headline(data.y, data.original, class_names, positive, counts)
    a = data.audited
    if not a.any():
        for name in _MASKED:
            checks[name] = {
                "status": "skipped",
                "verdict": f"{name.replace('_', ' ')}: skipped: {_why_none(data, split)}",
            }
        return checks, internal
    y = data.y[a]
    counts = stats.stratified_resamples(y, n_bootstrap, seed + 1) if n_bootstrap else None
    results, shares, skill = {}, {}, {}
    for name, (labels, _) in stats.one_vs_rest(y, data.original[a], class_names, positive).items():
        c = class_names.index(name)
        scores = {"original": data.original[a][:, c], **{v: data.variants[v][a][:, c] for v in VARIANTS}}
        results[name] = stats.paired_aucs(labels, scores, counts)
    for c, name in enumerate(class_names):
        shares[name] = (data.inside[a][:, c], data.blind[a][:, c], data.evidence[a][:, c])
        skill[name] = results[name if name in results else next(iter(results))]["original"]
    n = int(a.sum())
    checks["lungs_blanked"] = checks_.blanked_check(results, limits, n)
    checks["lungs_only"] = checks_.only_check(results, n)
    checks["gradcam_lung_share"] = checks_.share_check(
        shares, limits, skill, counts, resolution(data.ideal, data.feature_map)
    )
    return checks, internal


def _why_none(data, split) -> str:
    if not data.has_mask.any():
        return (
            f"no record of split {split!r} carries a lung mask (convert with masks: Kaggle masks/ beside "
            "images/, --masks DIR, or a CSV mask column)"
        )
    reasons = sorted({r["reason"] for r in data.left_out})
    return "no masked record could be blanked before equalization: " + "; ".join(reasons[:3])


def _external_check(model, ctx, internal, limits, batch_size, n_bootstrap, seed) -> dict:
    labels = evaluator.label_mapping(ctx["config"], ctx["ext_manifest"], ctx["ext_map"])
    y, probs = evaluator.predict_splits(
        model, ctx["external"], ctx["ext_splits"], batch_size=batch_size, labels=labels
    )
    counts = stats.stratified_resamples(y, n_bootstrap, seed + 2) if n_bootstrap else None
    external = stats.headline(y, probs, ctx["class_names"], _positive(ctx["class_names"]), counts)
    check = checks_.drop_check(internal, external, limits)
    return {"path": os.path.abspath(ctx["external"]), "splits": ctx["ext_splits"], "n": int(len(y)), **check}


def _write(ctx, data, checks, limits, *, out, split, seed, n_bootstrap) -> dict:
    """Assembles the report, writes `audit.json` and `audit.png`, returns the report."""

    dataset_dir = ctx["dataset_dir"]
    folder = (
        os.fspath(out)
        if out is not None
        else os.path.join(
            ctx["run_dir"],
            run_folder.AUDIT_DIR,
            f"{os.path.basename(os.path.normpath(os.path.abspath(dataset_dir)))}-"
            f"{ctx['manifest'].digest()[:8]}-{split}",
        )
    )
    os.makedirs(folder, exist_ok=True)
    notes = list(ctx["notes"])
    if data.left_out:
        reasons = sorted({r["reason"].split(":")[0] for r in data.left_out})
        notes.append(
            f"{len(data.left_out)} masked record(s) left out of the blanking checks ({'; '.join(reasons)}): "
            "see dataset.left_out"
        )
    if data.has_mask.any() and not data.has_mask.all():
        notes.append(f"{int((~data.has_mask).sum())} of {len(data.y)} records carry no lung mask")
    judged = {k: c["status"] for k, c in checks.items() if c["status"] in checks_.STATES}
    if set(judged) <= {"original"}:  # no shortcut check ran: skill alone is not a clean audit
        judged = {"original": "inconclusive"}
        notes.append("no shortcut check could run on these records (see checks): the audit is inconclusive")
    report = {
        "run": os.path.abspath(ctx["run_dir"]),
        "model": ctx["config"]["model"]["name"],
        "dataset": {
            "path": os.path.abspath(dataset_dir),
            "split": split,
            "digest": ctx["manifest"].digest(),
            "n": int(len(data.y)),
            "with_masks": int(data.has_mask.sum()),
            "audited": int(data.audited.sum()),
            "blanked_from": data.blanked_from,
            "left_out": data.left_out,
        },
        "class_names": ctx["class_names"],
        "thresholds": limits,
        "seed": seed,
        "n_bootstrap": n_bootstrap,
        "blanking": (
            f"the unequalized film (its source file, or the record of a dataset converted without "
            f"equalization), the lung mask grown by {MARGIN:.0%} of the shorter side blanked (or everything "
            "but it), filled with the kept region's smooth continuation and texture, then the dataset's "
            "preprocessing; placebo: a region of the same area made of the mask's pieces, outside the lungs; "
            f"placebo area / lung area: mean {np.mean(data.placebo_area) if data.placebo_area else float('nan'):.2f}"
        ),
        "checks": checks,
        "status": checks_.worst(judged.values()),
        "flagged": [k for k, s in judged.items() if s == "flagged"],
        "inconclusive": [k for k, s in judged.items() if s == "inconclusive"],
        "warnings": notes,
        "files": {"audit": os.path.join(folder, "audit.json"), "figure": os.path.join(folder, "audit.png")},
    }

    plot_audit(report, data, path=report["files"]["figure"])
    atomic_write_text(report["files"]["audit"], json.dumps(_plain(report), indent=2) + "\n")
    return report


def _plain(value):
    """`value` with numpy scalars and arrays turned into JSON's types (bootstrap samples dropped)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "samples"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
