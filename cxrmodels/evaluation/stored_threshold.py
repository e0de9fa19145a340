"""The decision threshold an evaluation applies: the one stored in the run, or one given, never one tuned.

`cxr train` chooses the threshold on the run's validation split (Youden's J) and
stores it in `config.json` (`decision_threshold`: per class, with the split, its
examples and the dataset's manifest digest). Evaluation applies it unchanged;
a two-class run without one is refused, naming what is missing, unless the
caller gives one chosen elsewhere.
"""

from __future__ import annotations

from cxrmodels.metrics.clinical import positive_class_index


def run_threshold(config: dict, run_dir: str, threshold: float | None = None) -> dict:
    """The decision thresholds an evaluation applies: `threshold` if given, else the run's stored ones.

    Returns:
        `{"per_class": {class name: threshold or None}, "source": "given" | "run" |
        None, "method", "description", "split", "dataset_digest"}` (the last two
        say what a stored threshold was chosen on).

    Raises:
        ValueError: `threshold` for a run of more than two classes, or a
            two-class run that stores no usable threshold while none is given.
    """
    names = [str(c) for c in config["class_names"]]
    stored = config.get("decision_threshold") or {}
    if threshold is not None:
        if len(names) != 2:
            raise ValueError(
                f"`threshold` applies to two-class runs; {run_dir!r} has {len(names)} classes {names}, "
                f"called by the argmax. Received: threshold={threshold!r}"
            )
        positive = names[positive_class_index(names)]
        return {
            "per_class": {n: (float(threshold) if n == positive else None) for n in names},
            "source": "given",
            "method": "given",
            "description": f"given: {threshold} (`threshold`), not chosen on the evaluated data by cxr",
            "split": None,
            "dataset_digest": None,
        }
    if len(names) == 2 and (not stored.get("per_class") or stored.get("value") is None):
        raise ValueError(_missing_threshold_message(run_dir, stored))
    if not stored.get("per_class"):
        return {
            "per_class": None,
            "source": None,
            "method": None,
            "split": None,
            "dataset_digest": None,
            "description": "none stored in the run (trained before cxr stored thresholds); the argmax "
            "decision needs none",
        }
    return {
        "per_class": dict(stored["per_class"]),
        "source": "run",
        "method": stored.get("method", "youden"),
        "description": (
            f"stored in the run: {stored.get('method', 'youden')} on the {stored.get('split', 'val')!r} split of "
            f"its training dataset ({stored.get('examples', '?')} examples, manifest digest "
            f"{str(stored.get('dataset_digest'))[:12]})"
        ),
        "split": stored.get("split", "val"),
        "dataset_digest": stored.get("dataset_digest"),
    }


def _missing_threshold_message(run_dir: str, stored: dict) -> str:
    if not stored:
        what = (
            "stores no decision threshold (its config.json has no 'decision_threshold': it was trained "
            "before cxr stored one)"
        )
    else:
        what = (
            f"stores no usable decision threshold (its 'decision_threshold' has value None: the "
            f"{stored.get('split', 'val')!r} split it was chosen on, {stored.get('examples')} examples, "
            "did not hold both classes)"
        )
    return (
        f"The run {run_dir!r} {what}. Evaluation never chooses a threshold on the data it reports: "
        "train it again (`cxr train` chooses one on the validation split), or give one with "
        "`threshold` (`--threshold T`), chosen on data other than those evaluated."
    )


def in_sample_notes(chosen: dict, manifest, splits: list[str]) -> list[str]:
    """A warning when the stored threshold was chosen on (part of) the very data evaluated."""
    if (
        chosen["source"] != "run"
        or chosen["dataset_digest"] != manifest.digest()
        or chosen["split"] not in splits
    ):
        return []
    return [
        f"the stored decision threshold was chosen on the {chosen['split']!r} split evaluated here: "
        "the metrics at it are optimistic (report the test split, or an external set)"
    ]
