"""Is a dataset fit to evaluate a run on? Its classes, image shape and preprocessing against the run's.

`cxrmodels.evaluate` and the shortcut audit call these before predicting
anything: a dataset whose classes cannot be mapped to the run's, whose images
the model cannot take, or which was preprocessed otherwise is refused with
every difference named.
"""

from __future__ import annotations

import warnings

from cxrdata.dicom import MULTI_FRAME_POLICY
from cxrdata.manifest import dicom_window_of


def split_names(manifest, split: str) -> list[str]:
    """The splits that `split` means: every split of the dataset for "all"."""
    if split == "all":
        names = [s for s in manifest.splits if manifest.splits[s].num_examples]
        if not names:
            raise ValueError("The dataset holds no examples in any split.")
        return names
    manifest.split(split)  # a missing split fails here, naming those there are
    return [split]


def parse_class_map(class_map) -> dict[str, str]:
    """`{dataset class: run class}` from a dict or a "a=B,c=D" string; {} for None."""
    if class_map is None:
        return {}
    if isinstance(class_map, str):
        pairs = [p.split("=") for p in class_map.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
            raise ValueError(
                "`class_map` must be pairs DATASET_CLASS=RUN_CLASS separated by commas, like "
                f"'pneumonia=COVID,healthy=Normal'. Received: class_map={class_map!r}"
            )
        return {a.strip(): b.strip() for a, b in pairs}
    if not isinstance(class_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in class_map.items()
    ):
        raise TypeError(
            f"`class_map` must be a dict of str to str, a 'a=B,c=D' string or None. "
            f"Received: class_map={class_map!r}"
        )
    return dict(class_map)


def label_mapping(config: dict, manifest, class_map: dict[str, str]) -> list[int] | None:
    """Run label of each dataset label, or None when they are the same."""
    names = [class_map.get(c, c) for c in manifest.class_names]
    if names == list(config["class_names"]):
        return None
    return [list(config["class_names"]).index(n) for n in names]


def check_dataset(
    config: dict,
    manifest,
    dataset_dir: str,
    *,
    class_map: dict[str, str] | None = None,
    allow_preprocessing_mismatch: bool = False,
) -> list[str]:
    """Checks that a dataset is fed like the run's training data; returns warnings.

    Raises:
        ValueError: Its classes (after `class_map`), image shape or preprocessing
            (unless `allow_preprocessing_mismatch`) differ from the run's.
    """
    class_map = class_map or {}
    unused = sorted(set(class_map) - set(manifest.class_names))
    if unused:
        raise ValueError(
            f"`class_map` maps class(es) {unused} that the dataset {dataset_dir!r} lacks; its classes: "
            f"{list(manifest.class_names)}. Received: class_map={class_map}"
        )
    mapped = [class_map.get(c, c) for c in manifest.class_names]
    unknown = [
        f"{c!r}" + (f" (mapped to {class_map[c]!r})" if c in class_map else "")
        for c, m in zip(manifest.class_names, mapped)
        if m not in config["class_names"]
    ]
    if unknown:
        raise ValueError(
            f"The dataset {dataset_dir!r} has class(es) {', '.join(unknown)} that the run was not "
            f"trained on (its classes: {config['class_names']}). Map them with `class_map` "
            "(`--class-map theirs=ours,...`)."
        )
    if not class_map and list(manifest.class_names) != list(config["class_names"]):
        raise ValueError(
            f"The dataset {dataset_dir!r} has classes {list(manifest.class_names)} but the run "
            f"was trained on {config['class_names']} (in that order). Map them with `class_map` "
            "if they are the same classes."
        )
    if list(manifest.image_shape) != list(config["model"]["input_shape"]):
        raise ValueError(
            f"The dataset {dataset_dir!r} holds {tuple(manifest.image_shape)} images but the model takes "
            f"{tuple(config['model']['input_shape'])}. Convert it with the run's preprocessing: "
            f"{_describe(config['preprocessing'])}."
        )
    here, there = _normalized(manifest.preprocessing), _normalized(config["preprocessing"])
    different = sorted(k for k in set(here) | set(there) if here.get(k) != there.get(k))
    notes = []
    if different:
        what = (
            "The dataset {dataset_dir!r} was preprocessed differently from the run's training data ("
            + ", ".join(
                f"{k}: {manifest.preprocessing.get(k)!r} here, {config['preprocessing'].get(k)!r} "
                "in training"
                for k in different
            )
            + ")"
        ).format(dataset_dir=dataset_dir)
        if not allow_preprocessing_mismatch:
            raise ValueError(
                what + ". Convert it again with the run's settings, or pass "
                "--allow-preprocessing-mismatch (allow_preprocessing_mismatch=True) to evaluate it "
                "anyway."
            )
        notes.append(
            what + "; evaluated anyway (allow_preprocessing_mismatch): the figures mix a shift of "
            "population with one of preprocessing."
        )
        warnings.warn(notes[-1], stacklevel=3)
    if manifest.digest() != config["dataset"]["digest"]:
        message = (
            f"The dataset {dataset_dir!r} is not the one the run was trained on (its manifest "
            "digest differs), so it is evaluated as an external set."
        )
        warnings.warn(message, stacklevel=3)
        return notes + [message]
    return notes


def _normalized(preprocessing: dict) -> dict:
    """`preprocessing` with the defaults of keys older manifests lack (their DICOM reading)."""

    renamed = {("equalize_radius" if k == "radius" else k): v for k, v in preprocessing.items()}  # before 0.2
    return {
        **renamed,
        "dicom_window": dicom_window_of(preprocessing),
        "dicom_frames": preprocessing.get("dicom_frames", MULTI_FRAME_POLICY),
    }


def _describe(preprocessing: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in preprocessing.items())


def check_groups(manifest, splits: list[str], dataset_dir: str) -> None:
    """Raises unless every split in `splits` records the group of each record (for `by="group"`)."""
    missing = [s for s in splits if manifest.splits[s].groups is None]
    if missing:
        raise ValueError(
            f"`by='group'` reports each group (hospital, source, patient) on its own, but the dataset "
            f"{dataset_dir!r} records no groups in split(s) {missing}: it was converted without them. "
            "Convert it again with --group-by or --group-pattern (group_by= or group_pattern=) naming "
            "each image's source."
        )
