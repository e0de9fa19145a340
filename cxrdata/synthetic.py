"""Synthetic chest X-ray phantoms, and folder trees of them laid out like public datasets.

No dataset can be downloaded here, so tests, the demo and the benchmarks use these
phantoms: seeded 8-bit images of a PA chest film (dark lungs, bright ribs, spine,
heart and diaphragm domes) with per-image changes of position, scale, rotation,
exposure and noise. The "covid" kind adds patchy peripheral ground-glass opacities
in both lungs; the "pneumonia" kind adds a one-sided lobar consolidation.

Findings lie inside the lung mask only (`cxrdata._phantom` renders them so), so a
film with findings and the same seed's film without them differ only inside it.
Only numpy and Pillow are used: a 299x299 phantom takes a few milliseconds.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxrdata._phantom import SHORTCUTS, plant_shortcut, render, sample_acquisition, sample_anatomy
from cxrdata.utils.argument_validation import check_bool, check_seed, is_int, standardize_image_size
from cxrdata.utils.io import atomic_write_text

KINDS = ("normal", "covid", "pneumonia")
_FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpeg"), "jpg": ("JPEG", ".jpeg")}
_SPLITS = ("train", "val", "test")


def make_phantom(
    image_size=299,
    *,
    label: str = "normal",
    rng: np.random.Generator | None = None,
    seed: int | None = None,
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draws one synthetic chest X-ray.

    Args:
        image_size: Output size, an int for a square image or a `(height, width)` tuple.
            Defaults to 299.
        label: The phantom kind, one of "normal", "covid" or "pneumonia" (any case).
            Defaults to "normal".
        rng: A `np.random.Generator` to draw from. Give `rng` or `seed`, not both.
            Defaults to None.
        seed: Seed for a fresh generator. Defaults to None: with neither `rng` nor
            `seed`, each call gives a different image.
        return_mask: Also return the film's lung mask. Findings lie inside it only:
            the same seed's "normal" film is the same pixel for pixel outside it.
            Defaults to False.

    Returns:
        A uint8 array of shape `(height, width)`; with `return_mask`, the pair
        `(image, mask)`, the mask a bool array of the same shape.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> image = make_phantom(128, label="covid", seed=3)
        >>> image.shape, image.dtype
        ((128, 128), dtype('uint8'))
    """
    shape = _check_size(image_size)
    kind = _check_kind(label)
    if rng is not None and seed is not None:
        raise ValueError(f"Give `rng` or `seed`, not both. Received: rng={rng!r}, seed={seed!r}")
    check_bool("return_mask", return_mask)
    if rng is None:
        rng = np.random.default_rng(seed)
    elif not isinstance(rng, np.random.Generator):
        raise ValueError(f"`rng` must be a numpy.random.Generator. Received: rng={rng!r}")
    image, mask = render(shape, sample_anatomy(rng, kind), sample_acquisition(rng), rng)
    return (_to_uint(image, 8), mask) if return_mask else _to_uint(image, 8)


def kind_of(class_name: str) -> str:
    """Maps a dataset class name to a phantom kind.

    "covid*" gives "covid"; "normal*" and "healthy" give "normal"; "pneumonia*",
    "viral*" and "lung_opacity" give "pneumonia" (any case).

    Raises:
        ValueError: If the name matches none of these.
    """
    name = str(class_name).strip().lower().replace(" ", "_").replace("-", "_")
    if name.startswith("covid"):
        return "covid"
    if name.startswith("normal") or name == "healthy":
        return "normal"
    if name.startswith(("pneumonia", "viral")) or name == "lung_opacity":
        return "pneumonia"
    raise ValueError(
        "Class names must start with 'covid', 'normal', 'pneumonia' or 'viral', or be 'healthy' "
        f"or 'lung_opacity', to choose a phantom kind. Received: class name {class_name!r}"
    )


def write_tree(
    root,
    *,
    classes=("COVID", "Normal"),
    per_class=20,
    image_size=299,
    seed: int = 0,
    format: str = "png",
    layout: str = "classes",
    splits=(0.7, 0.15, 0.15),
    masks: bool = False,
    patients: int | None = None,
    bit_depth: int = 8,
    shortcut: str | None = None,
    shortcut_strength: float = 1.0,
    severity: float = 1.0,
    findings: bool = True,
) -> list[dict]:
    """Writes a folder tree of phantoms laid out like a public chest X-ray dataset.

    Layout "classes" gives `root/<class>/<class>-00001.png`, like the COVID-19
    Radiography Database; with `masks=True` each class folder holds `images/` and
    `masks/` (binary lung masks, PNG, same file stem), like its version 4. Layout
    "splits" gives `root/<train|val|test>/<class>/...`, like the Kermany pneumonia set.
    Both layouts also get `root/labels.csv` with columns path,label,patient.

    Args:
        root: Folder to write into; created if missing.
        classes: Class folder names; each must map to a phantom kind (see `kind_of`).
            Defaults to ("COVID", "Normal").
        per_class: Images per class, an int or a dict {class: count}. With layout
            "splits" it is the total over the three splits. Defaults to 20.
        image_size: An int or a `(height, width)` tuple. Defaults to 299.
        seed: Seed for everything drawn. Defaults to 0.
        format: "png" or "jpeg". Defaults to "png".
        layout: "classes" or "splits". Defaults to "classes".
        splits: Fractions for train, val and test with layout "splits"; they must
            add up to 1. Patients never straddle two splits. Defaults to (0.7, 0.15, 0.15).
        masks: Whether to write lung masks. Defaults to False.
        patients: None gives each image its own patient; an int k gives k images per
            patient (the last one of a class may have fewer), small variations of
            one anatomy. Defaults to None.
        bit_depth: 8, or 16 for 16-bit PNGs scaled to 0..65535. Defaults to 8.
        shortcut: None, or a cue correlated with the class, so that the label can
            be predicted without looking at the lungs. Drawn outside the lungs:
            "marker" (a bright label with dark "text" in the top left corner, like
            a hospital's), "border" (a bright frame, like a collimator edge),
            "laterality" (a bright "R" on every film, in the top right corner on
            films that carry the cue and in the top left on the others, like a
            hospital that places its side marker differently). Over the whole film:
            "brightness" (20% of the way to white; local equalization removes most
            of it), "noise" (a noisier detector: Gaussian noise of standard
            deviation 0.03 of full scale added) and "blur" (a softer detector or
            a resized film: a Gaussian blur of 0.6% of the shorter side, at least
            0.7 pixel). Defaults to None.
        shortcut_strength: How strongly the cue follows the class, from 0 (not at
            all) to 1 (perfectly): an image of a disease class carries it with
            probability (1 + strength) / 2, a normal one with (1 - strength) / 2.
            Drawn from its own seeded stream: the films are the same with and
            without a shortcut. Defaults to 1.0.
        severity: Scales the findings' opacity (1: as `make_phantom`; 0.3: subtle,
            easily outshone by a shortcut). Defaults to 1.0.
        findings: False draws every film without findings, whatever its class: the
            lungs then carry no class information, and a `shortcut` is the only
            signal a model can learn (the class still decides who carries the cue).
            Defaults to True.

    Returns:
        One dict per image written, in writing order: "path" (relative to `root`,
        with "/"), "label" (class name) and "patient" (like "P00001"); also "split"
        with layout "splits", "mask" (relative path) with `masks=True`, and
        "shortcut" (True or False) with a `shortcut`.

    Raises:
        ValueError: If an argument is out of range; nothing is written then.

    Example:
        >>> rows = write_tree("/tmp/cxr-tree", per_class=4, image_size=64)
        >>> rows[0]
        {'path': 'COVID/COVID-00001.png', 'label': 'COVID', 'patient': 'P00001'}
    """
    root = os.fspath(root)
    classes, counts, shape, ext, fractions = _check_tree_args(
        classes, per_class, image_size, seed, format, layout, splits, masks, patients, bit_depth
    )
    _check_shortcut(shortcut, shortcut_strength)
    if isinstance(severity, bool) or not isinstance(severity, (int, float)) or not 0 <= severity <= 1:
        raise ValueError(f"`severity` must be a number from 0 to 1. Received: severity={severity!r}")
    check_bool("findings", findings)
    tree = _Tree(
        root,
        shape,
        seed,
        ext,
        layout,
        fractions,
        masks,
        patients or 1,
        bit_depth,
        shortcut,
        shortcut_strength,
        severity,
        findings,
    )
    rows: list[dict] = []
    for name in classes:
        rows += _write_class(tree, name, counts[name], first_patient=len({r["patient"] for r in rows}) + 1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "patient"])
    writer.writerows([r["path"], r["label"], r["patient"]] for r in rows)
    os.makedirs(root, exist_ok=True)
    atomic_write_text(os.path.join(root, "labels.csv"), buffer.getvalue())
    return rows


@dataclass(frozen=True)
class _Tree:
    """The checked options of one `write_tree` call."""

    root: str
    shape: tuple[int, int]
    seed: int
    ext: str
    layout: str
    splits: tuple[float, float, float]
    masks: bool
    group: int
    bit_depth: int
    shortcut: str | None
    strength: float
    severity: float
    findings: bool


def _write_class(tree: _Tree, name: str, n: int, *, first_patient: int) -> list[dict]:
    """Writes the films of one class, patient by patient; returns their rows."""
    kind = kind_of(name)
    sizes = [min(tree.group, n - start) for start in range(0, n, tree.group)]
    if tree.layout == "splits":
        cuts = np.round(np.cumsum(tree.splits) * len(sizes)).astype(int)
        split_of = np.searchsorted(cuts, np.arange(len(sizes)), side="right")
    else:
        split_of = np.zeros(len(sizes), dtype=int)
    class_key = zlib.crc32(name.encode("utf-8"))
    rows: list[dict] = []
    for p, size in enumerate(sizes):
        anatomy = sample_anatomy(
            np.random.default_rng([tree.seed, class_key, p]), kind if tree.findings else "normal"
        )
        if tree.severity != 1:
            anatomy = _scaled_findings(anatomy, tree.severity)
        folder = name if tree.layout == "classes" else f"{_SPLITS[split_of[p]]}/{name}"
        for j in range(size):
            row = {"label": name, "patient": f"P{first_patient + p:05d}"}
            if tree.layout == "splits":
                row["split"] = _SPLITS[split_of[p]]
            key = [tree.seed, class_key, p, j + 1]
            rows.append(_write_film(tree, row, f"{folder}/", f"{name}-{len(rows) + 1:05d}", anatomy, key))
    return rows


def _write_film(tree: _Tree, row: dict, folder: str, stem: str, anatomy: dict, key: list[int]) -> dict:
    """Renders one film (and its cue), writes it and its mask; returns its row, completed."""
    rng = np.random.default_rng(key)
    image, lung = render(tree.shape, anatomy, sample_acquisition(rng), rng)
    planted = None
    if tree.shortcut is not None:
        # The cue has its own stream: the films are the same with and without a shortcut.
        cue_rng = np.random.default_rng([*key, 7])
        disease = kind_of(row["label"]) != "normal"
        chance = (1 + tree.strength) / 2 if disease else (1 - tree.strength) / 2
        planted = bool(cue_rng.uniform() < chance)
        image = plant_shortcut(image, lung, tree.shortcut, planted=planted, rng=cue_rng)
    suffix = _FORMATS[tree.ext][1]
    path = f"{folder}images/{stem}{suffix}" if tree.masks else f"{folder}{stem}{suffix}"
    _save(os.path.join(tree.root, path), _to_uint(image, tree.bit_depth), _FORMATS[tree.ext][0])
    row = {"path": path, **row}
    if tree.masks:
        row["mask"] = f"{folder}masks/{stem}.png"
        _save(os.path.join(tree.root, row["mask"]), lung.astype(np.uint8) * 255, "PNG")
    if planted is not None:
        row["shortcut"] = planted
    return row


def _check_tree_args(
    classes, per_class, image_size, seed, format, layout, splits, masks, patients, bit_depth
):
    if isinstance(classes, str) or not classes:
        raise ValueError(
            f"`classes` must be a non-empty sequence of class names. Received: classes={classes!r}"
        )
    classes = tuple(classes)
    if len(set(classes)) != len(classes) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ValueError(f"`classes` must be distinct non-empty strings. Received: classes={classes!r}")
    for name in classes:
        kind_of(name)
        if "/" in name or "\\" in name:
            raise ValueError(f"Class names must not contain path separators. Received: classes={classes!r}")
    if isinstance(per_class, dict):
        if set(per_class) != set(classes):
            raise ValueError(
                "`per_class` as a dict must have exactly one count per class in `classes`. "
                f"Received: per_class={per_class!r}, classes={classes!r}"
            )
        counts = dict(per_class)
    else:
        counts = {name: per_class for name in classes}
    if not all(is_int(c) and c >= 0 for c in counts.values()) or sum(counts.values()) < 1:
        raise ValueError(
            "`per_class` must be a non-negative int, or a dict of them, with at least one image "
            f"in all. Received: per_class={per_class!r}"
        )
    shape = _check_size(image_size)
    check_seed(seed, allow_none=False)
    ext = str(format).lower()
    if ext not in _FORMATS:
        raise ValueError(f"`format` must be 'png' or 'jpeg'. Received: format={format!r}")
    if layout not in ("classes", "splits"):
        raise ValueError(f"`layout` must be 'classes' or 'splits'. Received: layout={layout!r}")
    try:
        fractions = tuple(float(s) for s in splits)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            "`splits` must be three non-negative fractions (train, val, test) that add up to 1. "
            f"Received: splits={splits!r}"
        )
    if not isinstance(masks, bool):
        raise ValueError(f"`masks` must be True or False. Received: masks={masks!r}")
    if patients is not None and not (is_int(patients) and patients >= 1):
        raise ValueError(f"`patients` must be None or a positive int. Received: patients={patients!r}")
    if bit_depth not in (8, 16) or isinstance(bit_depth, bool):
        raise ValueError(f"`bit_depth` must be 8 or 16. Received: bit_depth={bit_depth!r}")
    if bit_depth == 16 and _FORMATS[ext][0] != "PNG":
        raise ValueError(f"16-bit images need format='png'. Received: format={format!r}, bit_depth=16")
    return classes, counts, shape, ext, fractions


def _scaled_findings(anatomy: dict, severity: float) -> dict:
    anatomy = dict(anatomy)
    if "lesion_alpha" in anatomy:
        anatomy["lesion_alpha"] *= severity
    if "consolidation" in anatomy:
        *rest, alpha = anatomy["consolidation"]
        anatomy["consolidation"] = (*rest, alpha * severity)
    return anatomy


def _check_shortcut(shortcut, strength) -> None:
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise ValueError(f"`shortcut` must be None or one of {SHORTCUTS}. Received: shortcut={shortcut!r}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise TypeError(f"`shortcut_strength` must be a number. Received: shortcut_strength={strength!r}")
    if not 0 <= strength <= 1:
        raise ValueError(
            f"`shortcut_strength` must be between 0 and 1. Received: shortcut_strength={strength!r}"
        )


def _check_size(image_size) -> tuple[int, int]:
    return standardize_image_size(image_size, minimum=16, maximum=8192)


def _check_kind(label) -> str:
    kind = str(label).lower() if isinstance(label, str) else None
    if kind not in KINDS:
        raise ValueError(f"`label` must be one of {KINDS}. Received: label={label!r}")
    return kind


def _save(path: str, array: np.ndarray, pil_format: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    if pil_format == "JPEG":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def _to_uint(image: np.ndarray, bit_depth: int) -> np.ndarray:
    top, dtype = (255, np.uint8) if bit_depth == 8 else (65535, np.uint16)
    return np.rint(np.clip(image, 0.0, 1.0) * top).astype(dtype)
