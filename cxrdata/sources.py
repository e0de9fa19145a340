"""Finding input images: class folders, split folders or a labels CSV (decoding: `cxrdata.decoding`).

Discovery reads names and folders only, never pixels. Links are followed, to
files and folders alike, but each file is labelled by its real path: a folder
reached twice is listed once, a link to a folder above it (a loop) is not
followed, a file reached twice under one class is listed once, and a file
reached under two classes is left out and reported (`Listing.rejects`), as is
a folder that cannot be read. A labels CSV is read and checked, every
refusal naming its line, by `cxrdata._labels_csv`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from cxrdata._labels_csv import check_labels, read_rows

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
    rejects: tuple[tuple[str, str], ...] = ()  # (relative path, reason): left out while listing


def is_candidate(name: str) -> bool:
    """Whether a file name may be an image (hidden and text-like files are not)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() not in SKIPPED_SUFFIXES


def _walk_class_folder(root: str, folder: str, errors: list[tuple[str, str]]) -> list[str]:
    """Image files below a class folder, with links to folders followed like the class folder.

    A folder reached twice (two links to one folder) is listed once; a link to
    a folder above the one holding it (a loop such as `COVID/up -> ..`) is not
    followed. A folder that cannot be listed is added to `errors` as (path, reason).
    """
    found = []
    top = os.path.join(root, folder)
    visited = {os.path.realpath(top)}

    def failed(error: OSError) -> None:
        errors.append((error.filename or top, f"unreadable folder: {error.strerror or error}"))

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=failed):
        here = os.path.realpath(dirpath)
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if d.startswith(".") or d.lower() in MASK_FOLDERS or real in visited:
                continue
            if os.path.commonpath([real, here]) == real:  # a folder above this one: a loop
                continue
            visited.add(real)
            keep.append(d)
        dirnames[:] = keep
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_candidate(f))
    return found


def _one_record_per_file(src: str, items: list) -> tuple[list, list[tuple[str, str]]]:
    """Items labelled by real path: a file reached twice under one class (and split) is kept
    once; a file reached under two classes is left out, each of its paths a reject."""
    by_real: dict[str, list[int]] = {}
    for i, (path, _, _) in enumerate(items):
        by_real.setdefault(os.path.realpath(path), []).append(i)
    drop, rejects = set(), []
    for indices in by_real.values():
        if len(indices) == 1:
            continue
        labels = sorted({items[i][1] for i in indices})
        if len(labels) > 1:
            paths = [os.path.relpath(items[i][0], src) for i in indices]
            for rel in paths:
                others = ", ".join(p for p in paths if p != rel)
                rejects.append(
                    (
                        rel,
                        f"the same file is reached under classes {', '.join(labels)} (also as {others}); left out",
                    )
                )
            drop.update(indices)
            continue
        seen_splits = set()
        for i in indices:  # the first path per split stays; given splits that differ are kept
            drop.update([i] if items[i][2] in seen_splits else [])
            seen_splits.add(items[i][2])
    return [it for i, it in enumerate(items) if i not in drop], rejects


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
        A `Listing`; its `rejects` are the files and folders left out while
        listing a folder tree (a file reached under two classes, a folder
        that cannot be read), each with its reason.

    Raises:
        FileNotFoundError: `src` or the CSV does not exist.
        ValueError: no class, a class with no image file, an unknown label,
            a missing CSV column, or an ambiguous folder layout; a CSV that is
            not UTF-8 or holds a NUL byte, a field over `csv.field_size_limit()`,
            a row with the wrong number of fields, a path outside `src`, or
            one file given twice with different labels, groups or splits
            (each names the CSV and the lines; exact duplicate rows are
            dropped with a warning).
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
    items, found_classes, layout, errors = _list_folders(src)
    if not found_classes:
        raise ValueError(
            f"{src!r} has no class folders. Expected {src}/<class name>/<images>, "
            "or pass a labels CSV with --labels."
        )
    names = _resolve_class_names(found_classes, class_names, "class folders")
    items, rejects = _one_record_per_file(src, items)
    per_class = {c: 0 for c in names}
    for _, cls, _ in items:
        per_class[cls] = per_class.get(cls, 0) + 1
    empty = [c for c in names if per_class.get(c, 0) == 0]
    if empty:
        unreadable = [p for p, _ in errors]
        raise ValueError(
            f"Class folder(s) {', '.join(repr(c) for c in empty)} hold no image file"
            f"{f' (unreadable: {unreadable[:5]})' if unreadable else ''}. Remove the folder or add images."
        )
    rejects += [(os.path.relpath(p, src), reason) for p, reason in errors]
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
    return Listing(sources=sources, class_names=names, layout=layout, rejects=tuple(sorted(rejects)))


def _list_folders(src: str) -> tuple[list[tuple[str, str, str | None]], list[str], str, list]:
    """(abs path, class, split) of every candidate file, the classes, the layout, unreadable folders."""
    top = _subfolders(src)
    split_dirs = [d for d in top if d.lower() in SPLIT_ALIASES]
    items: list[tuple[str, str, str | None]] = []
    errors: list[tuple[str, str]] = []
    if split_dirs and len(split_dirs) == len(top):
        for d in split_dirs:
            for cls in _subfolders(os.path.join(src, d)):
                items += [
                    (p, cls, SPLIT_ALIASES[d.lower()])
                    for p in _walk_class_folder(os.path.join(src, d), cls, errors)
                ]
        found = sorted({c for d in split_dirs for c in _subfolders(os.path.join(src, d))})
        return items, found, "splits", errors
    if split_dirs:
        raise ValueError(
            f"{src!r} mixes split folders ({', '.join(split_dirs)}) with other folders "
            f"({', '.join(d for d in top if d not in split_dirs)}). Use either class folders "
            "or train/val/test folders that hold class folders."
        )
    for cls in top:
        items += [(p, cls, None) for p in _walk_class_folder(src, cls, errors)]
    return items, top, "classes", errors


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


def _discover_csv(src, labels, group_by, class_names, masks_dir=None, allow_outside_src=False) -> Listing:
    if not os.path.isfile(labels):
        raise FileNotFoundError(f"Labels CSV not found: {labels!r}")
    columns, rows = read_rows(labels)
    names = check_labels(labels, columns, rows, group_by, class_names)
    root = os.path.realpath(src)
    seen: dict[str, tuple[int, Source]] = {}
    outside, duplicates = [], []
    for line, r in rows:
        source = _csv_source(src, labels, line, r, group_by, masks_dir)
        key = os.path.realpath(source.path)
        if not allow_outside_src and os.path.commonpath([root, key]) != root:
            outside.append(f"line {line}: {r['path'].strip()!r}")
            continue
        if key in seen:
            first, other = seen[key]
            if (other.label, other.group, other.split) != (source.label, source.group, source.split):
                raise ValueError(
                    f"{labels!r}: lines {first} and {line} give the file {source.relpath!r} different labels, "
                    f"groups or splits ({other.label!r}/{other.group!r}/{other.split} and {source.label!r}/"
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


def _csv_source(src, labels, line, row, group_by, masks_dir) -> Source:
    """The `Source` one CSV row names (its path as given, its mask from the row or `masks_dir`)."""
    split = (row.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLIT_ALIASES:
        raise ValueError(
            f"{labels!r}: unknown split {row['split']!r} on line {line}; use train, val or test."
        )
    rel = row["path"].strip()
    path = os.path.normpath(rel if os.path.isabs(rel) else os.path.join(src, rel))
    mask = (row.get("mask") or "").strip() or None
    if mask is not None:
        mask = os.path.normpath(mask if os.path.isabs(mask) else os.path.join(src, mask))
    elif masks_dir is not None:
        mask = find_mask(path, os.path.normpath(rel), masks_dir)
    return Source(
        path=path,
        relpath=os.path.normpath(rel),
        label=row["label"].strip(),
        group=(row[group_by] or "").strip() if group_by else "",
        split=SPLIT_ALIASES[split] if split else None,
        mask=mask,
    )
