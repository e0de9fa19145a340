"""Assigning images to train / val / test: stratified, seeded and patient-safe.

Images that share a patient (group) id, or whose source files are
byte-identical, form one unit that always lands in a single split. Splits
given as folders or a CSV column are kept as given; `find_overlaps` reports
the groups and identical files they put in more than one split. Units are
shuffled with the seed and then dealt greedily to the split whose per-class
shortfall against its target is largest, which keeps class ratios close to
the requested ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from cxrdata.manifest import SPLIT_NAMES


def parse_ratios(splits: str | Sequence[float]) -> tuple[float, ...]:
    """Validates split ratios `(train, val[, test])` that add up to 1."""
    if isinstance(splits, str):
        try:
            splits = [float(s) for s in splits.split(",")]
        except ValueError:
            raise ValueError(
                f"`splits` must be comma-separated numbers like 0.7,0.15,0.15. Received: splits={splits!r}"
            ) from None
    ratios = tuple(float(s) for s in splits)
    if not 2 <= len(ratios) <= 3 or not all(r >= 0 for r in ratios):  # NaN is not >= 0
        raise ValueError(
            f"`splits` must be 2 or 3 non-negative ratios (train, val[, test]); 0,0,1 makes a "
            f"test-only dataset (an external test set). Received: splits={ratios}"
        )
    if not abs(sum(ratios) - 1.0) <= 1e-6:
        raise ValueError(f"`splits` must add up to 1. Received: splits={ratios} (sum {sum(ratios):g})")
    return ratios


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def units(groups: Sequence[str], digests: Sequence[str]) -> list[list[int]]:
    """Indices grouped so that a shared group id or file digest joins them."""
    uf = _UnionFind(len(groups))
    for keys in (groups, digests):
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key:
                uf.union(i, first.setdefault(key, i))
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(groups)):
        members[uf.find(i)].append(i)
    return [members[r] for r in sorted(members)]


def assign_splits(
    labels: Sequence[int],
    groups: Sequence[str],
    digests: Sequence[str],
    *,
    ratios: Sequence[float],
    seed: int,
    num_classes: int,
) -> list[str]:
    """Returns a split name for each image.

    Args:
        labels: class index of each image.
        groups: patient / group id of each image ("" for none).
        digests: SHA-256 of each image's source file.
        ratios: `(train, val[, test])`, adding up to 1.
        seed: shuffles the units.
        num_classes: number of classes.

    Returns:
        One of "train", "val", "test" per image, in input order.
    """
    names = SPLIT_NAMES[: len(ratios)]
    all_units = units(groups, digests)
    rng = np.random.default_rng(seed)
    order = [all_units[i] for i in rng.permutation(len(all_units))]
    order.sort(key=len, reverse=True)  # big units first pack better; stable, so ties stay shuffled
    totals = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    target = np.outer(np.asarray(ratios, float), totals)
    current = np.zeros_like(target)
    result = [""] * len(labels)
    for unit in order:
        counts = np.bincount([labels[i] for i in unit], minlength=num_classes)
        shortfall = ((target - current) * counts).sum(axis=1) / max(1, counts.sum())
        shortfall[np.asarray(ratios) == 0] = -np.inf
        s = int(np.argmax(shortfall))  # ties go to the earlier (larger) split
        current[s] += counts
        for i in unit:
            result[i] = names[s]
    return result


def find_overlaps(items: Sequence, split_of: Sequence[str]) -> dict:
    """Groups and byte-identical files found in more than one split; empty when none.

    Splits given as folders or a CSV column are honoured as given; this says
    where they break the rule that a patient or a file lies in one split.

    Args:
        items: converted inputs, each with `.source.group`, `.source.relpath` and `.sha256`.
        split_of: the split of each item.

    Returns:
        `{"groups": [{"group", "splits", "paths"}...], "duplicates": [{"sha256",
        "splits", "paths"}...]}`, each key present only when something overlaps.
    """
    found = {}
    for key, what in (("groups", lambda it: it.source.group), ("duplicates", lambda it: it.sha256)):
        splits: dict[str, set] = {}
        paths: dict[str, list] = {}
        for it, split in zip(items, split_of):
            if what(it):
                splits.setdefault(what(it), set()).add(split)
                paths.setdefault(what(it), []).append(it.source.relpath)
        name = "group" if key == "groups" else "sha256"
        rows = [
            {name: k, "splits": sorted(v, key=SPLIT_NAMES.index), "paths": sorted(paths[k])}
            for k, v in sorted(splits.items())
            if len(v) > 1
        ]
        if rows:
            found[key] = rows
    return found


def describe_overlaps(overlaps: dict, limit: int = 10) -> list[str]:
    """One line per kind of overlap in `find_overlaps`' result, naming up to `limit` of them."""
    lines = []
    for key, what in (("groups", "group(s)"), ("duplicates", "byte-identical file(s)")):
        rows = overlaps.get(key, [])
        if not rows:
            continue
        shown = [
            f"{r['group']} ({', '.join(r['splits'])})"
            if key == "groups"
            else f"{' = '.join(r['paths'])} ({', '.join(r['splits'])})"
            for r in rows[:limit]
        ]
        more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
        lines.append(
            f"{len(rows)} {what} in more than one of the given splits: {'; '.join(shown)}{more} "
            "(all listed in dataset.json, source.split_overlaps)"
        )
    return lines
