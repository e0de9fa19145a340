"""Synthetic chest X-ray phantoms, and folder trees of them laid out like public datasets.

No dataset can be downloaded here, so tests, the demo and the benchmarks use these
phantoms: seeded 8-bit images of a PA chest film (dark lungs, bright ribs, spine,
heart and diaphragm domes) with per-image changes of position, scale, rotation,
exposure and noise. The "covid" kind adds patchy peripheral ground-glass opacities
in both lungs; the "pneumonia" kind adds a one-sided lobar consolidation.

Only numpy and Pillow are used: a 299x299 phantom takes a few milliseconds.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import zlib

import numpy as np
from PIL import Image

from cxrdata.utils.argument_validation import check_seed, is_int

KINDS = ("normal", "covid", "pneumonia")
SHORTCUTS = ("marker", "brightness", "border")
_FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpeg"), "jpg": ("JPEG", ".jpeg")}
_SPLITS = ("train", "val", "test")


def make_phantom(
    image_size=299, *, label: str = "normal", rng: np.random.Generator | None = None, seed: int | None = None
) -> np.ndarray:
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

    Returns:
        A uint8 array of shape `(height, width)`.

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
    if rng is None:
        rng = np.random.default_rng(seed)
    elif not isinstance(rng, np.random.Generator):
        raise ValueError(f"`rng` must be a numpy.random.Generator. Received: rng={rng!r}")
    image, _ = _render(shape, _sample_anatomy(rng, kind), _sample_acquisition(rng), rng)
    return _to_uint(image, 8)


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
        shortcut: None, or a cue planted in some images, correlated with the class
            and never inside the lungs, so that the label can be predicted without
            looking at them: "marker" (a bright label with dark "text" in the top
            left corner, like a hospital's), "brightness" (the whole film brighter:
            20% of the way to white; local equalization removes most of it) or
            "border" (a bright frame, like a collimator edge). Defaults to None.
        shortcut_strength: How strongly the cue follows the class, from 0 (not at
            all) to 1 (perfectly): an image of a disease class carries it with
            probability (1 + strength) / 2, a normal one with (1 - strength) / 2.
            Drawn from its own seeded stream: the films are the same with and
            without a shortcut. Defaults to 1.0.
        severity: Scales the findings' opacity (1: as `make_phantom`; 0.3: subtle,
            easily outshone by a shortcut). Defaults to 1.0.

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
    classes, counts, shape, ext, splits = _check_tree_args(
        classes, per_class, image_size, seed, format, layout, splits, masks, patients, bit_depth
    )
    _check_shortcut(shortcut, shortcut_strength)
    if isinstance(severity, bool) or not isinstance(severity, (int, float)) or not 0 <= severity <= 1:
        raise ValueError(f"`severity` must be a number from 0 to 1. Received: severity={severity!r}")
    pil_format, suffix = _FORMATS[ext]
    group = 1 if patients is None else patients
    rows, patient_number = [], 0
    for name in classes:
        kind = kind_of(name)
        n = counts[name]
        sizes = [min(group, n - start) for start in range(0, n, group)]
        if layout == "splits":
            cuts = np.round(np.cumsum(splits) * len(sizes)).astype(int)
            split_of = np.searchsorted(cuts, np.arange(len(sizes)), side="right")
        else:
            split_of = np.zeros(len(sizes), dtype=int)
        class_key = zlib.crc32(name.encode("utf-8"))
        number = 0
        for p, size in enumerate(sizes):
            patient_number += 1
            patient_id = f"P{patient_number:05d}"
            anatomy = _sample_anatomy(np.random.default_rng([seed, class_key, p]), kind)
            if severity != 1:
                anatomy = _scaled_findings(anatomy, severity)
            folder = name if layout == "classes" else f"{_SPLITS[split_of[p]]}/{name}"
            for j in range(size):
                number += 1
                rng = np.random.default_rng([seed, class_key, p, j + 1])
                image, lung = _render(
                    shape, anatomy, _sample_acquisition(rng), rng, mask=masks or shortcut is not None
                )
                planted = None
                if shortcut is not None:
                    chance = (1 + shortcut_strength) / 2 if kind != "normal" else (1 - shortcut_strength) / 2
                    planted = bool(np.random.default_rng([seed, class_key, p, j + 1, 7]).uniform() < chance)
                    if planted:
                        image = _plant(image, lung, shortcut)
                stem = f"{name}-{number:05d}"
                path = f"{folder}/images/{stem}{suffix}" if masks else f"{folder}/{stem}{suffix}"
                _save(os.path.join(root, path), _to_uint(image, bit_depth), pil_format)
                row = {"path": path, "label": name, "patient": patient_id}
                if layout == "splits":
                    row["split"] = _SPLITS[split_of[p]]
                if masks:
                    row["mask"] = f"{folder}/masks/{stem}.png"
                    _save(os.path.join(root, row["mask"]), lung.astype(np.uint8) * 255, "PNG")
                if planted is not None:
                    row["shortcut"] = planted
                rows.append(row)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "patient"])
    writer.writerows([r["path"], r["label"], r["patient"]] for r in rows)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "labels.csv"), "w", encoding="utf-8", newline="") as f:
        f.write(buffer.getvalue())
    return rows


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


def _plant(image: np.ndarray, lung: np.ndarray, kind: str) -> np.ndarray:
    """`image` with the shortcut `kind` drawn in, nowhere inside the lung mask `lung`."""
    h, w = image.shape
    cue = np.zeros((h, w), dtype=bool)
    if kind == "brightness":
        return image * np.float32(0.8) + np.float32(0.2)
    if kind == "marker":
        top, bottom, left, right = round(0.02 * h), round(0.13 * h), round(0.02 * w), round(0.2 * w)
        cue[top:bottom, left:right] = True
        label = np.full((h, w), 0.95, dtype=np.float32)
        # Dark "letters": every other column of the label's middle third.
        rows = slice(top + (bottom - top) // 3, bottom - (bottom - top) // 3)
        label[rows, left + 1 : right - 1 : 2] = 0.15
    else:  # border
        t = max(2, round(0.05 * min(h, w)))
        cue[:t], cue[-t:], cue[:, :t], cue[:, -t:] = True, True, True, True
        label = np.full((h, w), 0.9, dtype=np.float32)
    cue &= ~lung
    return np.where(cue, label, image)


def _check_size(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if is_int(image_size) else image_size
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(is_int(s) and 16 <= s <= 8192 for s in size)
    ):
        raise ValueError(
            "`image_size` must be an int or a (height, width) tuple of ints from 16 to 8192. "
            f"Received: image_size={image_size!r}"
        )
    return int(size[0]), int(size[1])


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


# Rendering. Coordinates are in units of half the shorter image side, origin at the
# centre, x to the image's right (the patient's left on a PA film), y down. The
# renderer builds a density map (air 0, soft tissue ~0.5, bone higher), maps it
# through a random exposure curve and adds quantum-like noise.


def _sample_anatomy(rng: np.random.Generator, kind: str) -> dict:
    """Draws everything that belongs to the patient, so repeat films share it."""
    u = rng.uniform
    anatomy = {
        "kind": kind,
        "pose": (u(-0.05, 0.05), u(0.93, 1.05), u(-0.04, 0.04), u(-0.05, 0.05)),  # angle, scale, shift x, y
        # Half-width, neck half-width, shoulder height, soft-tissue density.
        "body": (u(0.84, 0.94), u(0.20, 0.26), u(-0.68, -0.6), u(0.5, 0.6)),
        "lung_dark": u(0.30, 0.36),
        # Centre x, centre y, outer and inner half-widths, half-height; image-left lung first.
        "lungs": [
            (s * u(0.40, 0.44), u(-0.14, -0.08), u(0.33, 0.38), u(0.27, 0.31), u(0.64, 0.70)) for s in (-1, 1)
        ],
        "heart": (u(0.07, 0.13), u(0.22, 0.3), u(0.31, 0.37), u(0.2, 0.25), u(0.35, 0.6)),
        "mediastinum": (u(0.10, 0.13), u(0.09, 0.13), u(-0.42, -0.34), u(0.06, 0.08)),
        "domes": (u(0.34, 0.41), u(0.40, 0.47), u(0.09, 0.15)),
        "clavicle": u(-0.62, -0.54) if u() < 0.85 else None,
        "bubble": (u(0.25, 0.42), u(0.04, 0.07)) if u() < 0.6 else None,
        "grids": [
            rng.standard_normal((6, 6)),
            rng.standard_normal((10, 10)),
            rng.standard_normal((22, 22)),
            rng.standard_normal((32, 32)),
        ],
        "ribs": [
            (
                u(0.095, 0.11),
                u(0.9, 1.3),
                u(0, 2 * np.pi),
                u(0.006, 0.016),
                u(5, 10),
                u(0.38, 0.48),
                u(-0.9, -0.84),
            )
            for _ in (-1, 1)
        ],
        "front_ribs": (u(0.13, 0.16), u(0.35, 0.5), u(-0.9, -0.8)),
    }
    # Findings come from their own stream, so one seed gives the same film with and without them.
    u = np.random.default_rng(rng.integers(2**63)).uniform
    if kind == "covid":
        anatomy["lesions"] = [
            (s, u(0.5, 0.95), u(-0.2, 0.8), u(0.08, 0.15), u(0.09, 0.17), u(0.7, 1.0))
            for s in (-1, 1)
            for _ in range(int(u(3, 6)))
        ]
        anatomy["lesion_alpha"] = u(0.22, 0.32)
    elif kind == "pneumonia":
        anatomy["consolidation"] = (
            1 if u() < 0.5 else -1,
            bool(u() < 0.7),
            u(-0.05, 0.25),
            u(0.2, 0.5),
            u(0.24, 0.32),
        )
    return anatomy


def _sample_acquisition(rng: np.random.Generator) -> dict:
    """Draws what changes from film to film: a little positioning, exposure and noise."""
    u = rng.uniform
    return {
        "jitter": (u(-0.015, 0.015), u(0.99, 1.01), u(-0.015, 0.015), u(-0.015, 0.015)),
        "exposure": (u(-0.12, 0.06), u(0.85, 1.25), u(0.75, 1.3)),  # offset, gain, gamma
        "field": (rng.standard_normal((3, 3)), u(0.02, 0.05), u(-0.04, 0.04), u(-0.04, 0.04)),
        "noise": u(0.008, 0.03),
    }


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    half = min(height, width) / 2.0
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / half
    y = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / half
    return x[None, :], y[:, None]


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
    return np.asarray(image.resize(shape[::-1], Image.BICUBIC))


def _ramp(z):
    """Smooth step: 0 below z=-1, 1 above z=1."""
    t = np.clip(0.5 + 0.5 * z, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _render(shape, anatomy: dict, acquisition: dict, rng: np.random.Generator, *, mask: bool = False):
    """Returns the image as float32 in [0, 1], and the binary lung mask (None unless `mask`)."""
    # Anatomy is smooth, so it is drawn with 160 pixels on the shorter side, then resized (which
    # also anti-aliases the ribs of small images); noise is added at full size.
    factor = min(shape) / 160
    small = (round(shape[0] / factor), round(shape[1] / factor))
    dens, lungs = _density(small, anatomy, acquisition)
    offset, gain, gamma = acquisition["exposure"]
    image = _resize(np.clip(offset + gain * dens, 0.0, 1.0) ** np.float32(gamma), shape)
    lungs = (_resize(lungs, shape) > 0.5) if mask else None
    noise = rng.standard_normal(shape, dtype=np.float32)
    # Noise as if a 299-pixel film were resized: smaller images average more of it away.
    sigma = np.float32(acquisition["noise"] * min(1.0, min(shape) / 299))
    image = image + sigma * np.sqrt(np.maximum(image, 0) + np.float32(0.05)) * noise
    return np.clip(image, 0.0, 1.0), lungs


def _density(shape, anatomy: dict, acquisition: dict):
    x0, y0 = _grid(*shape)
    (angle, scale, dx, dy), (d_angle, d_scale, ddx, ddy) = anatomy["pose"], acquisition["jitter"]
    angle, scale, dx, dy = angle + d_angle, scale * d_scale, dx + ddx, dy + ddy
    cos, sin = np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale)
    x = cos * x0 + sin * y0 - np.float32(dx)
    y = cos * y0 - sin * x0 - np.float32(dy)
    ax = np.abs(x)
    f_shape, f_vessel, f_vessel2, f_patch = (_resize(g, shape) for g in anatomy["grids"])

    half_width, neck, shoulder_y, density = anatomy["body"]
    chest = half_width + 0.06 * (1 - ((y + 0.1) / 0.9) ** 2)
    chest = chest - (chest - neck) * _ramp((shoulder_y - 0.17 - y) / 0.17)
    body = _ramp((chest - ax) / 0.025)
    dens = density * body * (0.5 + 0.5 * np.sqrt(np.clip(1 - (x / chest) ** 2, 0, 1)))
    dens -= 0.12 * _ramp((0.035 - ax) / 0.01) * _ramp((-0.3 - y) / 0.05) * body  # trachea

    right_y, left_y, dome_h = anatomy["domes"]
    sides = []
    for (cx, cy, a_out, a_in, b), dome_y in zip(anatomy["lungs"], (right_y, left_y)):
        p, q = (x - cx) * np.sign(cx), (y - cy) / b
        p = p / np.where(p > 0, np.float32(a_out), np.float32(a_in))
        taper = np.maximum(0.86 + 0.14 * q, 0.2)
        lung = _ramp((1 - (p / taper) ** 2 - q * q + 0.1 * f_shape) / 0.08)
        dome = dome_y - dome_h * np.clip(1 - ((x - cx) / (1.1 * a_out)) ** 2, 0, 1)
        sides.append(lung * _ramp((dome - y) / 0.012))
    hx, hy, ha, hb, hang = anatomy["heart"]
    u_, v_ = x - hx, y - hy
    hu, hv = u_ * np.cos(hang) + v_ * np.sin(hang), v_ * np.cos(hang) - u_ * np.sin(hang)
    heart = _ramp((1 - (hu / ha) ** 2 - (hv / hb) ** 2) / 0.1)
    med_w, knob_x, knob_y, knob_r = anatomy["mediastinum"]
    middle = _ramp((med_w + 0.05 * _ramp((y + 0.2) / 0.3) - np.abs(x - 0.02)) / 0.02)
    knob = _ramp((knob_r**2 - (x - knob_x) ** 2 - (y - knob_y) ** 2) / 0.004)
    solid = np.maximum(np.maximum(middle, heart), knob)
    lungs = (sides[0] + sides[1]) * (1 - solid)
    dens -= anatomy["lung_dark"] * lungs

    spine = _ramp((0.06 - ax) / 0.01) * (0.7 + 0.3 * _ramp(3 * np.cos(2 * np.pi * y / 0.105)))
    dens += 0.05 * spine * body
    sp, curve, phase0, wobble, wfreq, width, top = (
        np.where(x > 0, np.float32(r1), np.float32(r0)) for r0, r1 in zip(*anatomy["ribs"])
    )
    v = y - curve * (ax - 0.3) ** 2
    index, frac = np.divmod((v + wobble * np.sin(wfreq * v + phase0) - top) / sp, 1.0)
    cortex = 0.6 + 0.4 * (2 * frac / width - 1) ** 2
    rib = _ramp((width / 2 - np.abs(frac - width / 2)) * sp / 0.006) * cortex * ((index >= 0) & (index < 10))
    rib *= _ramp((ax - 0.07) / 0.03) * body
    f_sp, f_slope, f_top = anatomy["front_ribs"]
    frac = np.mod((y + f_slope * ax - 0.3 * ax**2 - f_top) / f_sp, 1.0)
    front = _ramp((0.2 - np.abs(frac - 0.2)) * f_sp / 0.01) * _ramp((ax - 0.2) / 0.05)
    dens += (0.05 + 0.06 * lungs) * rib + 0.03 * front * lungs
    if anatomy["clavicle"] is not None:
        line = anatomy["clavicle"] - 0.3 * (ax - 0.06) + 0.5 * (ax - 0.3) ** 2
        clav = _ramp((0.026 - np.abs(y - line)) / 0.008) * _ramp((ax - 0.07) / 0.02)
        clav *= _ramp((0.62 - ax) / 0.03)
        dens += 0.14 * clav * body
    # Vessels: lines fanning out of each hilum, bent by smooth noise, thinning outwards.
    hx_, hy_ = ax - 0.17, y + 0.02
    hilum = hx_**2 + hy_**2
    r = np.sqrt(hilum)
    theta = np.arctan2(hy_, hx_)
    vessels = np.exp(-((np.sin(7 * theta + 0.9 * f_vessel) * r / 0.09) ** 2)) + 0.6 * np.exp(
        -((np.sin(13 * theta + 1.2 * f_vessel2) * r / 0.06) ** 2)
    )
    haze = 0.06 * np.exp(-hilum / 0.08) + 0.05 * _ramp(y / 0.5) + 0.08 * np.exp(-hilum / 0.006)
    dens += (0.09 * vessels * np.exp(-r / 0.3) + haze) * lungs
    if anatomy["bubble"] is not None:
        bx, br = anatomy["bubble"]
        gas = np.exp(-((x - bx) ** 2 + ((y - left_y - 0.12) * 1.5) ** 2) / br**2) * _ramp((y - left_y) / 0.02)
        dens -= 0.12 * gas * body

    patch = _ramp(1.5 * f_patch)  # mottled, a few millimetres across
    if anatomy["kind"] == "covid":
        ggo = np.zeros_like(dens)
        for s, lateral, q, sx, sy, strength in anatomy["lesions"]:
            cx, cy, a_out, _, b = anatomy["lungs"][(s + 1) // 2]
            px, py = cx + s * lateral * a_out * (0.86 + 0.14 * q), cy + q * b
            ggo += strength * np.exp(-(((x - px) / sx) ** 2) - ((y - py) / sy) ** 2)
        dens += anatomy["lesion_alpha"] * np.minimum(ggo, 1) * (0.35 + 0.65 * patch) * lungs
    elif anatomy["kind"] == "pneumonia":
        s, lower, level, slope, alpha = anatomy["consolidation"]
        cx, cy, _, _, b = anatomy["lungs"][(s + 1) // 2]
        fissure = cy + level * b + slope * s * (x - cx)
        lobe = _ramp((y - fissure) / 0.015) if lower else _ramp((fissure - y) / 0.015)
        dens += alpha * lobe * sides[(s + 1) // 2] * (1 - solid) * (0.7 + 0.3 * patch)

    grid, amp, gx, gy = acquisition["field"]
    dens += amp * _resize(grid, shape) + gx * x0 + gy * y0
    return dens, lungs
