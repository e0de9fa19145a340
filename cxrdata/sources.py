"""Finding input images (class folders, split folders or a CSV) and decoding them.

Decoding turns any supported file into a 2-D uint8 grayscale array: Pillow for
PNG, JPEG, WebP, BMP and TIFF (8- and 16-bit gray, RGB, RGBA, palette), and
`cxrdata.dicom` for DICOM (header by pydicom; pixels by pydicom for uncompressed
and RLE, by tensorflow-io for JPEG, JPEG-LS and JPEG 2000).
"""

from __future__ import annotations

import csv
import functools
import io
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

# Files that are obviously not images: skipped without a word.
SKIPPED_SUFFIXES = frozenset(
    {
        ".txt",
        ".csv",
        ".tsv",
        ".json",
        ".md",
        ".rst",
        ".xlsx",
        ".xls",
        ".pdf",
        ".html",
        ".htm",
        ".py",
        ".ipynb",
        ".yaml",
        ".yml",
        ".xml",
        ".log",
        ".doc",
        ".docx",
        ".zip",
        ".tar",
        ".gz",
        ".db",
        ".ini",
        ".pkl",
        ".npy",
        ".h5",
    }
)
MASK_FOLDERS = frozenset({"masks", "mask"})
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


class DecodeError(Exception):
    """A file that cannot be turned into an image; its message is the reject reason."""


@dataclass(frozen=True)
class Source:
    """One input image: where it is, its class, its group and, if given, its split."""

    path: str
    relpath: str
    label: str
    group: str = ""
    split: str | None = None
    mask: str | None = None  # path of its lung mask, if one was found


@dataclass(frozen=True)
class Listing:
    """The inputs found under a source, with their layout and class names."""

    sources: tuple[Source, ...]
    class_names: tuple[str, ...]
    layout: str  # "classes", "splits" or "csv"


def is_candidate(name: str) -> bool:
    """Whether a file name may be an image (hidden and text-like files are not)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() not in SKIPPED_SUFFIXES


def _walk_class_folder(root: str, folder: str) -> list[str]:
    """Image files below a class folder. Links to folders are followed like the class folder
    itself; a folder reached twice (a loop, or two links to one folder) is listed once."""
    found = []
    visited = {os.path.realpath(os.path.join(root, folder))}
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder), followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and d.lower() not in MASK_FOLDERS and real not in visited:
                visited.add(real)
                keep.append(d)
        dirnames[:] = keep
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_candidate(f))
    return found


def _subfolders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _group_of(relpath: str, pattern: re.Pattern | None) -> str:
    if pattern is None:
        return ""
    m = pattern.search(os.path.basename(relpath))
    return (m.group(1) if m.groups() else m.group(0)) if m else ""


def find_mask(path: str, relpath: str, masks_dir: str | None = None) -> str | None:
    """The lung mask of the image at `path`, or None.

    With `masks_dir`, a tree mirroring SRC: `masks_dir/relpath`, or the same path
    with a `.png` suffix. Without, the Kaggle layout (COVID-19 Radiography
    Database): `.../images/NAME` has its mask at `.../masks/NAME` (or `NAME.png`
    with the image's stem).
    """
    if masks_dir is not None:
        candidates = [os.path.join(masks_dir, relpath)]
    else:
        folder, name = os.path.split(path)
        if os.path.basename(folder).lower() != "images":
            return None
        candidates = [os.path.join(os.path.dirname(folder), m, name) for m in ("masks", "mask")]
    for c in list(candidates):
        candidates.append(os.path.splitext(c)[0] + ".png")
    return next((c for c in candidates if os.path.isfile(c)), None)


def discover(
    src: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    group_by: str | None = None,
    group_pattern: str | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    masks: str | os.PathLike | None = None,
    allow_outside_src: bool = False,
) -> Listing:
    """Lists the images under `src`, sorted, with their labels.

    Args:
        src: a class-folder tree (`src/<class>/**/image`; `masks/` folders are
            skipped), a tree with split folders (`src/train|val|test/<class>/...`),
            or the folder that a labels CSV's relative paths start from.
        labels: a CSV with columns `path` and `label`, and optionally a group
            column (`group_by`) and a `split` column (train, val or test).
        group_by: the CSV column holding the patient / group id.
        group_pattern: for folder trees, a regular expression on the file name
            whose first group is the patient id (e.g. `r"^(person\\d+)_"`).
        class_names: the expected classes, in label order. Defaults to the
            sorted class folder names, or the sorted CSV labels.
        masks: a folder of lung masks mirroring `src` (same relative paths; a
            `.png` suffix may replace the image's). Without it, a folder tree's
            masks are found in the Kaggle layout (`CLASS/masks/NAME` beside
            `CLASS/images/NAME`) and a CSV's in its optional `mask` column
            (paths relative to `src`). An image without a mask is converted
            without one.
        allow_outside_src: accept CSV paths that lead outside `src` (`../x.png`,
            absolute paths, links out of it). Defaults to False.

    Returns:
        A `Listing`.

    Raises:
        FileNotFoundError: `src` or the CSV does not exist.
        ValueError: no class, a class with no image file, an unknown label,
            a missing CSV column, or an ambiguous folder layout; a CSV that is
            not UTF-8, a row with the wrong number of fields, a path outside
            `src`, or one file given twice with different labels, groups or
            splits (each names the lines; exact duplicate rows are dropped
            with a warning).
    """
    src = os.fspath(src)
    if not os.path.isdir(src):
        raise FileNotFoundError(
            f"Source folder not found: {src!r}. Pass the folder that holds the class folders."
        )
    pattern = re.compile(group_pattern) if group_pattern else None
    masks = None if masks is None else os.fspath(masks)
    if masks is not None and not os.path.isdir(masks):
        raise FileNotFoundError(
            f"Masks folder not found: {masks!r}. Pass a folder mirroring the source tree."
        )
    if labels is not None:
        return _discover_csv(src, os.fspath(labels), group_by, class_names, masks, allow_outside_src)
    if group_by is not None:
        raise ValueError(
            "`group_by` names a CSV column and needs `labels`. For folder trees use "
            f"`group_pattern`. Received: group_by={group_by!r}, labels=None"
        )
    top = _subfolders(src)
    split_dirs = [d for d in top if d.lower() in SPLIT_ALIASES]
    items: list[tuple[str, str, str | None]] = []  # (abs path, class, split)
    if split_dirs and len(split_dirs) == len(top):
        layout = "splits"
        for d in split_dirs:
            for cls in _subfolders(os.path.join(src, d)):
                items += [
                    (p, cls, SPLIT_ALIASES[d.lower()]) for p in _walk_class_folder(os.path.join(src, d), cls)
                ]
        found_classes = sorted({c for d in split_dirs for c in _subfolders(os.path.join(src, d))})
    elif split_dirs:
        raise ValueError(
            f"{src!r} mixes split folders ({', '.join(split_dirs)}) with other folders "
            f"({', '.join(d for d in top if d not in split_dirs)}). Use either class folders "
            "or train/val/test folders that hold class folders."
        )
    else:
        layout = "classes"
        found_classes = top
        for cls in top:
            items += [(p, cls, None) for p in _walk_class_folder(src, cls)]
    if not found_classes:
        raise ValueError(
            f"{src!r} has no class folders. Expected {src}/<class name>/<images>, "
            "or pass a labels CSV with --labels."
        )
    names = _resolve_class_names(found_classes, class_names, "class folders")
    per_class = {c: 0 for c in names}
    for _, cls, _ in items:
        per_class[cls] = per_class.get(cls, 0) + 1
    empty = [c for c in names if per_class.get(c, 0) == 0]
    if empty:
        raise ValueError(
            f"Class folder(s) {', '.join(repr(c) for c in empty)} hold no image file. "
            "Remove the folder or add images."
        )
    sources = tuple(
        Source(
            path=p,
            relpath=os.path.relpath(p, src),
            label=cls,
            group=_group_of(os.path.relpath(p, src), pattern),
            split=split,
            mask=find_mask(p, os.path.relpath(p, src), masks),
        )
        for p, cls, split in items
        if cls in names
    )
    return Listing(sources=sources, class_names=names, layout=layout)


def _resolve_class_names(found, requested, what) -> tuple[str, ...]:
    if requested is None:
        return tuple(sorted(found))
    requested = tuple(requested)
    unknown = sorted(set(found) - set(requested))
    if unknown:
        raise ValueError(
            f"Found {what} not in `class_names`: {', '.join(map(repr, unknown))}. "
            f"Received: class_names={list(requested)}"
        )
    return requested


def _read_csv_rows(labels: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The CSV's columns and its rows with their line numbers; refuses text that is not UTF-8."""
    with open(labels, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{labels!r} is not UTF-8 text: line {line} holds the byte {data[e.start]:#04x}. "
            "Save the CSV as UTF-8."
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    rows, ragged = [], []
    for row in reader:
        if None in row or None in row.values():  # more fields than the header, or fewer
            ragged.append(reader.line_num)
        rows.append((reader.line_num, row))
    if ragged:
        raise ValueError(
            f"{labels!r}: line(s) {', '.join(map(str, ragged[:10]))} do not have the "
            f"{len(columns)} fields of the header ({','.join(columns)}). Quote fields "
            "that hold commas."
        )
    return columns, rows


def _discover_csv(src, labels, group_by, class_names, masks_dir=None, allow_outside_src=False) -> Listing:
    if not os.path.isfile(labels):
        raise FileNotFoundError(f"Labels CSV not found: {labels!r}")
    columns, rows = _read_csv_rows(labels)
    needed = ["path", "label"] + ([group_by] if group_by else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"{labels!r} lacks column(s) {', '.join(missing)}. Its columns: "
            f"{', '.join(columns) or '(none)'}. Expected path,label[,{group_by or 'group'}]."
        )
    if not rows:
        raise ValueError(f"{labels!r} has no rows.")
    bad = [n for n, r in rows if not (r["label"] or "").strip() or not (r["path"] or "").strip()]
    if bad:
        raise ValueError(f"{labels!r}: empty path or label on line(s) {', '.join(map(str, bad[:10]))}.")
    found = sorted({r["label"].strip() for _, r in rows})
    if class_names is not None:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise ValueError(
                f"{labels!r} has label(s) not in `class_names`: {', '.join(map(repr, unknown))}. "
                f"Add them to class_names or fix the CSV. Received: class_names={list(class_names)}"
            )
    names = tuple(class_names) if class_names is not None else tuple(found)
    root = os.path.realpath(src)
    seen: dict[str, tuple[int, Source]] = {}
    outside, duplicates = [], []
    for line, r in rows:
        split = (r.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLIT_ALIASES:
            raise ValueError(
                f"{labels!r}: unknown split {r['split']!r} on line {line}; use train, val or test."
            )
        rel = r["path"].strip()
        path = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(src, rel))
        if not allow_outside_src and os.path.commonpath([root, os.path.realpath(path)]) != root:
            outside.append(f"line {line}: {rel!r}")
            continue
        mask = (r.get("mask") or "").strip() or None
        if mask is not None:
            mask = os.path.normpath(mask if os.path.isabs(mask) else os.path.join(src, mask))
        elif masks_dir is not None:
            mask = find_mask(path, os.path.normpath(rel), masks_dir)
        source = Source(
            path=path,
            relpath=os.path.normpath(rel),
            label=r["label"].strip(),
            group=(r[group_by] or "").strip() if group_by else "",
            split=SPLIT_ALIASES[split] if split else None,
            mask=mask,
        )
        key = os.path.realpath(path)
        if key in seen:
            first, other = seen[key]
            if (other.label, other.group, other.split) != (source.label, source.group, source.split):
                raise ValueError(
                    f"{labels!r}: lines {first} and {line} give the file {rel!r} different labels, groups "
                    f"or splits ({other.label!r}/{other.group!r}/{other.split} and {source.label!r}/"
                    f"{source.group!r}/{source.split}). Keep one row per file."
                )
            duplicates.append(line)
            continue
        seen[key] = (line, source)
    if outside:
        raise ValueError(
            f"{labels!r} names file(s) outside SRC {src!r}: {'; '.join(outside[:10])}"
            f"{f' and {len(outside) - 10} more' if len(outside) > 10 else ''}. Fix the paths, "
            "or pass --allow-outside-src (allow_outside_src=True) if that is intended."
        )
    if duplicates:
        print(
            f"warning: {labels}: dropped {len(duplicates)} duplicate row(s) (line(s) "
            f"{', '.join(map(str, duplicates[:10]))}{', ...' if len(duplicates) > 10 else ''})",
            file=sys.stderr,
        )
    sources = sorted((s for _, s in seen.values()), key=lambda s: s.relpath)
    return Listing(sources=tuple(sources), class_names=names, layout="csv")


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def check_pixel_count(width: int, height: int) -> None:
    """Raises DecodeError if an image has more pixels than `PIL.Image.MAX_IMAGE_PIXELS`.

    The cap is Pillow's own defence against decompression bombs (89,478,485
    pixels unless changed; None lifts it), read at each call. Pillow alone only
    warns between one and two times the cap; here anything over it is rejected.
    """
    from PIL import Image

    cap = Image.MAX_IMAGE_PIXELS
    if cap is not None and width * height > cap:
        raise DecodeError(
            f"image too large: {width}x{height} = {width * height} pixels, over the limit of "
            f"{cap} (PIL.Image.MAX_IMAGE_PIXELS)"
        )


def decode_image(
    data: bytes | str | os.PathLike, *, name: str = "", dicom_window: str = "auto"
) -> np.ndarray:
    """Decodes one image file into a 2-D uint8 grayscale array.

    8-bit data is kept as is; 16-bit data is scaled to 8 bits over its full
    range; color is converted with ITU-R 601 luma (as Keras' `color_mode="grayscale"`).
    An image of more than `PIL.Image.MAX_IMAGE_PIXELS` pixels is rejected
    before its pixels are decoded. DICOM: see `cxrdata.dicom`; the header is
    checked against the pixel data first, only the first frame is decoded,
    and MONOCHROME1 images are inverted.

    Args:
        data: the file's bytes, or its path.
        name: the file name, used to recognize DICOM files without a preamble.
        dicom_window: how DICOM stored values become 8 bits: "auto" (Rescale
            Slope/Intercept, then the file's VOI LUT or first window; without
            one, 8-bit data as is and other data over its 0.5th-99.5th
            percentile range), "minmax" (always that percentile range) or
            "none" (cxrdata 0.1's scaling over the full BitsStored range).
            Defaults to "auto".

    Returns:
        A uint8 array of shape (height, width).

    Raises:
        DecodeError: the data is empty, truncated, corrupt, too large or not an image.
        ValueError: `dicom_window` is not one of the above.

    Example:
        >>> image = decode_image("chest.dcm", dicom_window="auto")  # doctest: +SKIP
    """
    from cxrdata.dicom import DICOM_WINDOWS, decode_dicom
    from cxrdata.utils.argument_validation import check_choice

    check_choice("dicom_window", dicom_window, DICOM_WINDOWS)
    if not isinstance(data, (bytes, bytearray)):
        name = name or os.fspath(data)
        with open(data, "rb") as f:
            data = f.read()
    if not data:
        raise DecodeError("empty file")
    if is_dicom(data, name):
        return decode_dicom(bytes(data), dicom_window=dicom_window)
    return _decode_pillow(bytes(data))


_STRIP_PIXELS = 1 << 18  # 16-bit and float images are scaled one strip of rows at a time


@functools.lru_cache(maxsize=1)
def _lut16() -> np.ndarray:
    """16-bit value to 8 bits over the full range, rounded: (v * 255 + 32767) // 65535."""
    return ((np.arange(65536, dtype=np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def _scale_to_8_bits(im) -> np.ndarray:
    """A 16-bit, 32-bit integer or float Pillow image to uint8, strip by strip.

    Only the uint8 result and one strip of temporaries are allocated beside
    Pillow's decoded pixels (a 9000x9000 16-bit PNG needs about 81 MB more, not
    gigabytes of int64 temporaries): integers go through a lookup table, floats
    are stretched over their range (`getextrema` reads it without a copy).
    """
    width, height = im.size
    out = np.empty((height, width), np.uint8)
    lo, hi = (float(v) for v in im.getextrema())
    step = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, step):
        bottom = min(height, top + step)
        strip = np.asarray(im.crop((0, top, width, bottom)))
        if strip.dtype.kind == "f":
            if hi > lo:
                out[top:bottom] = np.clip(np.rint((strip - lo) * (255.0 / (hi - lo))), 0, 255)
            else:
                out[top:bottom] = 0
        else:
            if strip.dtype != np.uint16:  # 32-bit "I" images, and byte-swapped 16-bit ones
                strip = np.clip(strip, 0, 65535).astype(np.uint16)
            out[top:bottom] = _lut16()[strip]
    return out


def _decode_pillow(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixel_count(*im.size)  # before any pixel is decoded
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no copy unless the image must turn
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return _scale_to_8_bits(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA").convert("RGB")
            if im.mode != "L":
                im = im.convert("L")
            return np.array(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"truncated or corrupt image: {e}") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image too large: {e}") from None
