"""The shortcut audit's checks and their three-state verdicts, decided by the intervals.

Each check reports its figure with a 95% bootstrap interval and one of:

- `flagged`: the interval lies beyond the threshold (a shortcut is established);
- `ok`: the interval lies on the safe side;
- `inconclusive`: the interval straddles the threshold, or the model shows no skill on the
  audited records (the original AUC's interval reaches down to `min_skill_auc`: it includes
  chance, or the skill is too small for any check to say what it rests on), or the check
  cannot resolve what it measures (a Grad-CAM map too coarse for the lungs), or there is no
  interval (`n_bootstrap=0`).

A lungs-blanked AUC is read as a signal, its distance from chance |AUC - 0.5|, in either
direction: an AUC of 0.15 separates the classes as well as one of 0.85, inverted.
"""

from __future__ import annotations

import numpy as np

from cxrmodels.evaluation import _audit_stats as stats

# lungs_blanked_signal: flagged when the lungs-blanked AUC's CI lies at least this far from 0.5 (0.2: an AUC
#   of 0.7 or more, or 0.3 or less; 0.7 is "acceptable discrimination", Hosmer-Lemeshow); ok when the CI
#   lies within 0.5 +- it and the drop from the original AUC is established (its CI above 0).
# lung_share: the mean share of Grad-CAM energy inside the lungs over the mean share of the image the lungs
#   cover (1.0: no more in the lungs than a map blind to anatomy); flagged when its CI lies below, ok above.
# external_drop: flagged when the CI of internal AUC - external AUC lies above it, ok when below.
# min_skill_auc: every check is inconclusive when the lower end of the original AUC's CI is at or below it.
DEFAULT_THRESHOLDS = {
    "lungs_blanked_signal": 0.2,
    "lung_share": 1.0,
    "external_drop": 0.05,
    "min_skill_auc": 0.6,
}
# A Grad-CAM map resolves the lungs when a map following them exactly at its resolution (the mask
# averaged over the feature cells, then upsampled as Grad-CAM is) would put at least this share of
# its energy inside them; coarser maps tend to the lungs' area share whatever the model does.
MIN_RESOLVED_SHARE = 0.85
STATES = ("flagged", "inconclusive", "ok")


def text(auc, ci) -> str:
    if auc is None:
        return "n/a"
    return f"{auc:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def worst(statuses) -> str:
    """ "flagged" if any is, else "inconclusive" if any is, else "ok" (others ignored)."""
    present = [s for s in statuses if s in STATES]
    return next((s for s in STATES if s in present), "ok")


def no_skill(original: dict, floor: float) -> str | None:
    """Why the model shows no skill on these records (None when it does)."""
    if original["auc"] is None:
        return "the records hold one class only"
    if original["auc_ci"] is None:
        return "no interval (n_bootstrap=0): the verdicts need one"
    if original["auc_ci"][0] <= floor:
        return (
            f"the model shows no skill here: original AUC {text(original['auc'], original['auc_ci'])}, "
            f"its CI reaches down to {floor:.2f} (min_skill_auc)"
        )
    return None


def signal_status(blanked: dict, drop_ci, limit: float) -> tuple[str, str]:
    """(status, why) of a lungs-blanked AUC against 0.5 +- `limit` (see the module)."""
    ci = blanked["auc_ci"]
    if ci is None:
        return "inconclusive", "no interval"
    if ci[0] >= 0.5 + limit or ci[1] <= 0.5 - limit:
        inverted = ci[1] <= 0.5 - limit
        return "flagged", (
            f"{'an inverted' if inverted else 'a'} signal of {abs(blanked['auc'] - 0.5):.2f} without the lungs: "
            f"the model separates the classes without them (the CI lies beyond 0.5 {'-' if inverted else '+'} "
            f"{limit:.2f})"
        )
    inside = 0.5 - limit < ci[0] and ci[1] < 0.5 + limit
    if inside and drop_ci is not None and drop_ci[0] > 0:
        return "ok", f"the blanking takes the signal away (the CI lies within 0.5 +- {limit:.2f})"
    if inside:
        return (
            "inconclusive",
            f"the CI lies within 0.5 +- {limit:.2f} but the drop from the original is not established",
        )
    return "inconclusive", f"the CI straddles 0.5 +- {limit:.2f}"


def blanked_check(results: dict, limits: dict, n: int) -> dict:
    """The lungs-blanked check from `{class: paired AUCs of original, lungs_blanked, placebo_blanked}`."""
    per_class = {}
    for name, r in results.items():
        drop, drop_ci = stats.difference(r["original"], r["lungs_blanked"])
        gap, gap_ci = stats.difference(r["placebo_blanked"], r["lungs_blanked"])
        reason = no_skill(r["original"], limits["min_skill_auc"])
        status, why = (
            ("inconclusive", reason)
            if reason
            else signal_status(r["lungs_blanked"], drop_ci, limits["lungs_blanked_signal"])
        )
        b = r["lungs_blanked"]
        per_class[name] = {
            **_figures(r, "lungs_blanked"),
            "signal": None if b["auc"] is None else abs(b["auc"] - 0.5),
            "direction": None if b["auc"] is None else ("inverted" if b["auc"] < 0.5 else "same"),
            "drop": drop,
            "drop_ci": drop_ci,
            "placebo": {
                **_figures(r, "placebo_blanked", original=False),
                "minus_lungs": gap,
                "minus_lungs_ci": gap_ci,
            },
            "status": status,
            "verdict": f"AUC {text(b['auc'], b['auc_ci'])} (original {text(r['original']['auc'], r['original']['auc_ci'])}, "
            f"placebo of the lungs' area blanked {text(r['placebo_blanked']['auc'], r['placebo_blanked']['auc_ci'])}): "
            + why,
        }
    return _combine("lungs blanked", per_class, n)


def only_check(results: dict, n: int) -> dict:
    """Lungs only, reported and never judged: a whole-film model loses AUC on such films anyway."""
    per_class = {}
    for name, r in results.items():
        gap, gap_ci = stats.difference(r["lungs_only"], r["placebo_only"])
        o, p = r["lungs_only"], r["placebo_only"]
        per_class[name] = {
            **_figures(r, "lungs_only"),
            "placebo": {
                **_figures(r, "placebo_only", original=False),
                "lungs_minus_placebo": gap,
                "ci": gap_ci,
            },
            "status": "reported",
            "verdict": f"AUC {text(o['auc'], o['auc_ci'])} (original {text(r['original']['auc'], r['original']['auc_ci'])}; "
            f"a region of the lungs' area kept instead: {text(p['auc'], p['auc_ci'])}, lungs minus it "
            f"{text(gap, gap_ci)}): reported, not judged",
        }
    return {**_combine("lungs only", per_class, n), "status": "reported"}


def _figures(r: dict, variant: str, *, original: bool = True) -> dict:
    out = {"auc": r[variant]["auc"], "auc_ci": r[variant]["auc_ci"]}
    if original:
        out.update(original_auc=r["original"]["auc"], original_auc_ci=r["original"]["auc_ci"])
    return out


def _combine(title: str, per_class: dict, n: int) -> dict:
    """One check from its per-class figures: the binary case flat, more classes one-vs-rest."""
    status = worst(c["status"] for c in per_class.values())
    if len(per_class) == 1:
        (only,) = per_class.values()
        return {**only, "n": n, "verdict": f"{title}: {only['verdict']}"}
    lines = "; ".join(f"{k}: [{c['status']}] {c['verdict']}" for k, c in per_class.items())
    macro = [c["auc"] for c in per_class.values() if c["auc"] is not None]
    return {
        "auc": float(np.mean(macro)) if macro else None,
        "auc_ci": None,
        "n": n,
        "per_class": per_class,
        "status": status,
        "verdict": f"{title} (one vs rest): {lines}",
    }


def original_check(results: dict, limits: dict, n: int) -> dict:
    """The model's skill on the audited records: ok when established, else inconclusive."""
    per_class = {}
    for name, r in results.items():
        reason = no_skill(r, limits["min_skill_auc"])
        per_class[name] = {
            "auc": r["auc"],
            "auc_ci": r["auc_ci"],
            "status": "inconclusive" if reason else "ok",
            "verdict": f"AUC {text(r['auc'], r['auc_ci'])}" + (f": {reason}" if reason else ""),
        }
    return _combine("original images", per_class, n)


def share_check(shares: dict, limits: dict, skill: dict, counts, resolution: dict) -> dict:
    """The Grad-CAM check from per-class `{class: (inside, blind, evidence)}` (see `_audit_gradcam.share_terms`).

    Judged on all classes' evidence together (each image weighs 1, whatever its label or how its
    evidence splits between the classes); each class's own ratio is reported beside it.
    """
    limit = limits["lung_share"]
    pooled = tuple(np.sum([terms[i] for terms in shares.values()], axis=0) for i in range(3))
    figures = _share_figures(*pooled, counts)
    reason = next((r for r in (no_skill(s, limits["min_skill_auc"]) for s in skill.values()) if r), None)
    reason = reason or (None if resolution["resolved"] else resolution["why"])
    ci = figures["ratio_ci"]
    if reason:
        status, why = "inconclusive", reason
    elif figures["ratio"] is None:
        status, why = "inconclusive", "the maps hold no class evidence on any film"
    elif ci is None:
        status, why = "inconclusive", "no interval"
    elif ci[1] < limit:
        status, why = "flagged", f"the evidence lies outside the lungs (the CI lies below {limit:g})"
    elif ci[0] > limit:
        status, why = "ok", f"the evidence is concentrated in the lungs (the CI lies above {limit:g})"
    else:
        status, why = "inconclusive", f"the CI straddles {limit:g}"
    per_class = {name: _share_figures(*terms, counts) for name, terms in shares.items()}
    classes = "; ".join(f"{k} {text(c['ratio'], c['ratio_ci'])}" for k, c in per_class.items())
    return {
        **figures,
        "status": status,
        "verdict": f"Grad-CAM (class-discriminative, feature map {resolution['feature_map']}): "
        f"{figures['share']:.2f} of the evidence inside the lungs, which cover {figures['lung_area']:.2f} of "
        f"the films: ratio {text(figures['ratio'], ci)} (per class: {classes}): {why}",
        "per_class": per_class,
        "resolution": resolution,
        "n": len(pooled[0]),
    }


def _share_figures(inside, blind, evidence, counts) -> dict:
    ratio, ci = stats.ratio_of_means(inside, blind, counts)
    weight = max(float(np.sum(evidence)), 1e-12)
    return {
        "ratio": ratio,
        "ratio_ci": ci,
        "share": float(np.sum(inside) / weight),
        "lung_area": float(np.sum(blind) / weight),
        "evidence": float(np.mean(evidence)),
    }


def drop_check(internal: dict, external: dict, limits: dict) -> dict:
    """Internal vs external: the drop of the headline AUC, with the interval of independent resamples."""
    drop = None if internal["auc"] is None or external["auc"] is None else internal["auc"] - external["auc"]
    samples = (
        internal["samples"] - external["samples"]
        if len(internal["samples"]) and len(external["samples"])
        else []
    )
    ci = stats.interval(samples) if len(samples) else None
    limit = limits["external_drop"]
    reason = no_skill(internal, limits["min_skill_auc"])
    if drop is None:
        status, why = "skipped", "an AUC is undefined (one class only)"
    elif reason:
        status, why = "inconclusive", reason
    elif ci is None:
        status, why = "inconclusive", "no interval"
    elif ci[0] > limit:
        status, why = (
            "flagged",
            f"the model does not carry over to the other source (the CI lies above {limit:.2f})",
        )
    elif ci[1] <= limit:
        status, why = "ok", f"the model carries over (the CI lies at or below {limit:.2f})"
    else:
        status, why = "inconclusive", f"the CI straddles {limit:.2f}"
    return {
        "auc": external["auc"],
        "auc_ci": external["auc_ci"],
        "internal_auc": internal["auc"],
        "internal_auc_ci": internal["auc_ci"],
        "drop": drop,
        "drop_ci": ci,
        "status": status,
        "verdict": f"internal vs external: AUC {text(internal['auc'], internal['auc_ci'])} internal, "
        f"{text(external['auc'], external['auc_ci'])} external, drop {text(drop, ci)}: {why}",
    }
