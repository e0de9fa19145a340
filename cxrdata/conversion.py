"""`cxrdata.convert`: an image folder or CSV into equalized, sharded TFRecords.

How a conversion stays exact under interruption: the whole plan (which image
goes to which split, shard and position) is fixed from the sorted listing, the
file digests and the seed before any pixel is touched. Images are processed in
parallel but written in plan order, each shard under a hidden temporary name;
a small record of the shard (its digest, counts and rejects) is saved before
the shard is renamed to its final name, and the manifest is written last. A
rerun with `resume=True` skips the shards that exist under their final names,
so a run killed at any moment and resumed yields the same bytes as one that
never stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cxrdata import __version__
from cxrdata._pool import printable
from cxrdata._shards import _Item, _write_shards
from cxrdata.dicom import DICOM_WINDOWS, MULTI_FRAME_POLICY
from cxrdata.manifest import MANIFEST_NAME, REJECTS_NAME, Manifest, ShardInfo, SplitInfo, shard_name
from cxrdata.preprocess import PreprocessConfig
from cxrdata.sources import Source, discover
from cxrdata.splits import assign_splits, describe_overlaps, find_overlaps, parse_ratios
from cxrdata.utils.argument_validation import check_choice
from cxrdata.utils.io import atomic_write_text, sha256_file
from cxrdata.utils.output_dir import (
    FINISHED,
    OVERWRITE,
    check_output_dir,
    lock_output_dir,
    refuse_other_options,
)

PARTIAL_DIR = ".cxr-partial"
FINISHING_DIR = ".cxr-partial.removing"  # the partial folder, renamed once the manifest is written
ENCODINGS = ("raw", "png")
RUNNERS = ("local", "beam")


@dataclass(frozen=True)
class Reject:
    """An input that was not converted, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ConversionResult:
    """What `convert` did: the manifest written, and the rejected inputs."""

    manifest: Manifest
    rejects: tuple[Reject, ...]
    seconds: float
    split_overlaps: dict = dataclasses.field(default_factory=dict)

    @property
    def num_converted(self) -> int:
        return sum(s.num_examples for s in self.manifest.splits.values())

    def summary(self, out: str) -> str:
        parts = ", ".join(f"{n} {s.num_examples}" for n, s in self.manifest.splits.items())
        shards = sum(len(s.shards) for s in self.manifest.splits.values())
        rate = self.num_converted / self.seconds if self.seconds > 0 else 0.0
        masks = sum(s.masks for s in self.manifest.splits.values())
        line = (
            f"Converted {self.num_converted} images ({parts}) into {shards} shards in {out} "
            f"in {self.seconds:.1f}s ({rate:.0f} images/s){f', {masks} with lung masks' if masks else ''}; "
            f"{len(self.rejects)} rejected"
        )
        line += f" (see {os.path.join(out, REJECTS_NAME)})" if self.rejects else ""
        return line + "".join(f"\nwarning: {w}" for w in describe_overlaps(self.split_overlaps))


def _check_out(out: str, *, overwrite: bool, resume: bool) -> str:
    """The output folder rule (`cxrdata.utils.output_dir`) for a dataset; returns what to do."""
    if overwrite and resume:
        raise ValueError("Pass at most one of `overwrite` and `resume`.")
    return check_output_dir(
        out,
        what="dataset",
        markers=(MANIFEST_NAME, PARTIAL_DIR, FINISHING_DIR),
        overwrite=overwrite,
        finished=lambda p: os.path.exists(os.path.join(p, MANIFEST_NAME))
        and not any(os.path.exists(os.path.join(p, d)) for d in (PARTIAL_DIR, FINISHING_DIR)),
        keep_finished=resume,
        finished_hint=" Pass --resume (resume=True) to keep it as it is.",
    )


def _clear_dataset(out: str) -> None:
    """Removes what a conversion writes (and nothing else) from `out`."""
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name in (PARTIAL_DIR, FINISHING_DIR):
            shutil.rmtree(path)
        elif name in (MANIFEST_NAME, REJECTS_NAME) or name.endswith((".tfrecord", ".tfrecord.tmp")):
            os.unlink(path)
        elif name.startswith(".") and name.endswith(".tmp"):  # a killed atomic write's
            os.unlink(path)


def _hash_all(sources: Sequence[Source], workers: int, progress: bool) -> list[str | Exception]:
    """SHA-256 of each source, or the OSError that stopped it (not a regular file, unreadable).

    Threads hash the files; an interruption (Ctrl-C, SIGTERM) in the main
    thread tells them to stop between two 1 MiB blocks, so the process ends at
    once instead of waiting for the files being read.
    """
    from tqdm.auto import tqdm

    stop = threading.Event()

    def one(s: Source):
        try:
            return sha256_file(s.path, stop=stop)
        except OSError as e:
            return e

    pool = ThreadPoolExecutor(max(2, workers))
    try:
        return list(
            tqdm(
                pool.map(one, sources),
                total=len(sources),
                desc="Hashing",
                unit="file",
                disable=not progress,
                leave=False,
            )
        )
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _plan_shards(
    items: list[_Item], config: PreprocessConfig, encoding: str, shard_size_mb: float
) -> list[list[_Item]]:
    h, w = config.image_size
    per_record = h * w * (0.6 if encoding == "png" else 1.0) + 400
    per_shard = max(1, int(shard_size_mb * 1e6 // per_record))
    count = max(1, math.ceil(len(items) / per_shard))
    return [items[i * len(items) // count : (i + 1) * len(items) // count] for i in range(count)]


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    group_by: str | None = None,
    group_pattern: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | tuple[int, int] = 299,
    aspect: str = "stretch",
    equalize: str = "local",
    radius: int = 70,
    clip_limit: float = 0.01,
    interpolation: str = "bilinear",
    splits: str | Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    encoding: str = "raw",
    shard_size: float = 100,
    workers: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    dicom_window: str = "auto",
    runner: str = "local",
    beam_options: Sequence[str] | None = None,
    masks: str | os.PathLike | None = None,
    test_groups: Sequence[str] | str | None = None,
    allow_outside_src: bool = False,
    strict_splits: bool = False,
) -> ConversionResult:
    """Converts a chest X-ray folder tree or CSV into equalized, sharded TFRecords.

    Each image is decoded, turned to grayscale, resized to `image_size` and
    equalized, in parallel over `workers` processes, then written to shards
    `{split}-{index:05d}-of-{count:05d}.tfrecord` in `out`, beside a manifest
    (`dataset.json`) and `rejects.csv` (every input not converted, with its reason).

    Args:
        src: a class-folder tree, a tree of `train/ val/ test/` folders (honoured
            as given), or the folder that the relative paths of `labels` start from.
        out: output folder.
        labels: optional CSV with columns `path`, `label` (and `group_by`, `split`).
        group_by: CSV column with the patient id: no patient is in two splits.
        group_pattern: for folder trees, a regex on file names whose first group
            is the patient id.
        class_names: classes in label order. Defaults to sorted names found.
        image_size: output size, int or (height, width). Defaults to 299.
        aspect: "stretch", "crop" or "pad". Defaults to "stretch".
        equalize: "local", "clahe", "global" or "none". Defaults to "local".
        radius: disk radius for local equalization. Defaults to 70.
        clip_limit: CLAHE clip limit. Defaults to 0.01.
        interpolation: resize filter. Defaults to "bilinear".
        splits: `(train, val, test)` ratios adding up to 1, stratified by class.
            Ignored for trees with split folders. `(0, 0, 1)` makes a test-only
            dataset, such as an external test set. Defaults to (0.7, 0.15, 0.15).
        seed: seeds the split and the order of records. Defaults to 0.
        encoding: "raw" (uint8 pixels) or "png". Defaults to "raw".
        shard_size: target shard size in megabytes. Defaults to 100.
        workers: processes. Defaults to all cores.
        overwrite: replace a dataset already in `out`.
        resume: finish an interrupted conversion in `out` (or keep a finished one).
        progress: show a progress bar. Defaults to True.
        dicom_window: how DICOM stored values become 8 bits: "auto" (Rescale
            Slope/Intercept, then the file's VOI LUT or first window, else the
            0.5th-99.5th percentile range; 8-bit data without a window as is),
            "minmax" (always that range) or "none" (the full BitsStored range,
            as cxrdata 0.1 did). Recorded in the manifest's `preprocessing`.
            Defaults to "auto".
        runner: "local" (a process pool on this machine) or "beam" (an Apache
            Beam pipeline; needs `pip install cxr[beam]`). Both write the same
            bytes. Defaults to "local".
        beam_options: Beam pipeline flags for `runner="beam"`, e.g.
            `["--runner=DataflowRunner", "--project=...", "--region=..."]`.
            Defaults to the DirectRunner with `workers` processes.
        masks: a folder of lung masks mirroring `src`. Without it, masks are
            found in the Kaggle layout (`CLASS/masks/` beside `CLASS/images/`)
            or a CSV's `mask` column. Each record gets its mask (resized by
            nearest neighbour like its image); the manifest counts them per
            split. A mask that cannot be read goes to `rejects.csv` and its
            image is kept without one. Defaults to None.
        test_groups: group ids (`group_by` or `group_pattern`; a list or a
            comma-separated string) whose images all go to the test split,
            such as the sources (hospitals) held out; the other images are
            split by `splits`. Defaults to None.
        allow_outside_src: accept `labels` paths that lead outside `src`.
            Defaults to False.
        strict_splits: given splits (split folders, a `split` column) in which
            a group or a byte-identical file is in more than one split are an
            error rather than a warning. Defaults to False.

    Returns:
        A `ConversionResult`.

    Raises:
        FileNotFoundError: `src` or `labels` is missing.
        FileExistsError: `out` holds a dataset and neither flag is given.
        OutputFolderBusyError: another process is writing `out` (a FileExistsError).
        ValueError: bad arguments, or inputs with nothing usable.
        ImportError: `runner="beam"` without Apache Beam installed.

    Example:
        >>> result = convert("covid-radiography/", "data/", image_size=299)  # doctest: +SKIP
        >>> print(result.summary("data/"))  # doctest: +SKIP
    """
    start = time.perf_counter()
    config = PreprocessConfig(
        image_size=image_size if not isinstance(image_size, int) else (image_size, image_size),
        aspect=aspect,
        equalize=equalize,
        radius=radius,
        clip_limit=clip_limit,
        interpolation=interpolation,
    )
    ratios = parse_ratios(splits)
    check_choice("dicom_window", dicom_window, DICOM_WINDOWS)
    if encoding not in ENCODINGS:
        raise ValueError(f"`encoding` must be one of {', '.join(ENCODINGS)}. Received: encoding={encoding!r}")
    if not shard_size > 0:
        raise ValueError(
            f"`shard_size` must be a positive number of megabytes. Received: shard_size={shard_size!r}"
        )
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be a positive int. Received: workers={workers!r}")
    _check_runner(runner, beam_options)
    if isinstance(test_groups, str):
        test_groups = [g.strip() for g in test_groups.split(",") if g.strip()]
    test_groups = sorted(set(test_groups)) if test_groups else None
    if test_groups and not (group_by or group_pattern):
        raise ValueError(
            "`test_groups` names groups, which need `group_by` (a CSV column) or `group_pattern`. "
            f"Received: test_groups={test_groups}"
        )
    out = os.fspath(out)
    _check_out(out, overwrite=overwrite, resume=resume)
    listing = discover(
        src,
        labels=labels,
        group_by=group_by,
        group_pattern=group_pattern,
        class_names=class_names,
        masks=masks,
        allow_outside_src=allow_outside_src,
    )
    if test_groups:
        known = {s.group for s in listing.sources}
        unknown = [g for g in test_groups if g not in known]
        if unknown:
            raise ValueError(
                f"`test_groups` names group(s) no image has: {', '.join(map(repr, unknown))}. "
                f"Groups found: {', '.join(map(repr, sorted(known - {''})[:20])) or '(none)'}"
            )
    with lock_output_dir(out, what="dataset folder"):  # a second writer is refused, not raced
        return _convert_locked(
            src,
            out,
            listing,
            labels=labels,
            group_by=group_by,
            group_pattern=group_pattern,
            config=config,
            ratios=ratios,
            seed=seed,
            encoding=encoding,
            shard_size=shard_size,
            workers=workers,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
            dicom_window=dicom_window,
            strict_splits=strict_splits,
            start=start,
            runner=runner,
            beam_options=beam_options,
            masks=masks,
            test_groups=test_groups,
        )


def _convert_locked(
    src,
    out,
    listing,
    *,
    labels,
    group_by,
    group_pattern,
    config,
    ratios,
    seed,
    encoding,
    shard_size,
    workers,
    overwrite,
    resume,
    progress,
    dicom_window,
    strict_splits,
    start,
    runner,
    beam_options,
    masks,
    test_groups,
) -> ConversionResult:
    state = _check_out(out, overwrite=overwrite, resume=resume)
    if state == FINISHED or (state != OVERWRITE and _finishing(out)):
        return _already_done(out, start)
    if state == OVERWRITE:
        _clear_dataset(out)

    index = {c: i for i, c in enumerate(listing.class_names)}
    named, rejects = _reject_undecodable_names(listing.sources)
    digests = _hash_all(named, workers, progress)
    rejects += [
        Reject(s.relpath, f"unreadable: {d.strerror or d}" if isinstance(d, OSError) else str(d))
        for s, d in zip(named, digests)
        if isinstance(d, Exception)
    ]
    items = [_Item(s, index[s.label], d) for s, d in zip(named, digests) if not isinstance(d, Exception)]
    if not items:
        raise ValueError(f"No readable image under {os.fspath(src)!r}.")

    split_of = _split_items(items, listing.layout, ratios, seed, len(index), test_groups)
    overlaps = find_overlaps(items, split_of)
    if overlaps and strict_splits:
        raise ValueError(
            "The given splits overlap (--strict-splits): " + "; ".join(describe_overlaps(overlaps))
        )
    plan: dict[str, list[list[_Item]]] = {}
    for n, split in enumerate(("train", "val", "test")):
        members = [it for it, s in zip(items, split_of) if s == split]
        if not members:
            continue
        order = np.random.default_rng([seed, n]).permutation(len(members))
        plan[split] = _plan_shards([members[i] for i in order], config, encoding, shard_size)

    options = {
        "src": os.path.abspath(os.fspath(src)),
        "labels": os.fspath(labels) if labels else None,
        "group_by": group_by,
        "group_pattern": group_pattern,
        "layout": listing.layout,
        "splits": list(ratios),
        "seed": seed,
        "encoding": encoding,
        "shard_size_mb": shard_size,
    }
    if masks is not None:
        options["masks"] = os.path.abspath(os.fspath(masks))
    if test_groups:
        options["test_groups"] = test_groups
    preprocessing = _preprocessing(config, dicom_window)
    fingerprint = _fingerprint(options, preprocessing, listing.class_names, plan)
    if any(it.source.split is not None for it in items):  # given splits: say what straddles them
        options["split_overlaps"] = overlaps
    partial = os.path.join(out, PARTIAL_DIR)
    os.makedirs(partial, exist_ok=True)
    _check_plan(partial, fingerprint, resume)

    if runner == "beam":
        from cxrdata.beam_conversion import write_shards_beam

        write_shards_beam(
            out, partial, plan, listing.class_names, preprocessing, encoding, workers, beam_options
        )
    else:
        _write_shards(out, partial, plan, listing.class_names, preprocessing, encoding, workers, progress)
    result = _finish(
        out,
        partial,
        plan,
        listing,
        config,
        preprocessing,
        encoding,
        options,
        rejects,
        start,
        grouped=bool(group_by or group_pattern),
    )
    return dataclasses.replace(result, split_overlaps=overlaps)


def _reject_undecodable_names(sources: Sequence[Source]) -> tuple[list[Source], list[Reject]]:
    """Sources whose names are UTF-8 (records store names as UTF-8 text), and rejects for the others."""
    named, rejects = [], []
    for s in sources:
        try:
            s.relpath.encode("utf-8")
            named.append(s)
        except UnicodeEncodeError:
            rejects.append(Reject(printable(s.relpath), "file name is not valid UTF-8; rename the file"))
    return named, rejects


def _preprocessing(config: PreprocessConfig, dicom_window: str) -> dict:
    """The manifest's `preprocessing`: the config, and how DICOM files were decoded."""
    return {**config.to_dict(), "dicom_window": dicom_window, "dicom_frames": MULTI_FRAME_POLICY}


def _check_runner(runner, beam_options) -> None:
    if runner not in RUNNERS:
        raise ValueError(f"`runner` must be one of {', '.join(RUNNERS)}. Received: runner={runner!r}")
    if beam_options is not None:
        if runner != "beam":
            raise ValueError(
                f"`beam_options` apply to runner='beam' only. Received: runner={runner!r}, "
                f"beam_options={beam_options!r}"
            )
        if isinstance(beam_options, str) or not all(isinstance(o, str) for o in beam_options):
            raise TypeError(
                f"`beam_options` must be a list of strings such as ['--runner=DirectRunner']. "
                f"Received: beam_options={beam_options!r}"
            )
    if runner == "beam":
        import importlib.util

        if importlib.util.find_spec("apache_beam") is None:
            raise ImportError(
                "runner='beam' needs Apache Beam, which is not installed. Install it with "
                "`pip install 'cxr[beam]'`, or use runner='local'."
            )


def _split_items(items, layout, ratios, seed, num_classes, test_groups=None) -> list[str]:
    if test_groups:
        held = [it.source.group in test_groups for it in items]
        rest = [it for it, h in zip(items, held) if not h]
        rest_splits = iter(_split_items(rest, layout, ratios, seed, num_classes) if rest else [])
        return ["test" if h else next(rest_splits) for h in held]
    given = [it.source.split for it in items]
    if all(g is not None for g in given):
        return given
    if any(g is not None for g in given):
        raise ValueError(
            "The labels CSV gives a split for some rows but not all. Fill the `split` "
            "column for every row, or remove it."
        )
    return assign_splits(
        [it.label for it in items],
        [it.source.group for it in items],
        [it.sha256 for it in items],
        ratios=ratios,
        seed=seed,
        num_classes=num_classes,
    )


def _fingerprint(options, preprocessing, class_names, plan) -> str:
    h = hashlib.sha256(json.dumps([options, preprocessing, list(class_names)], sort_keys=True).encode())
    for split, shards in plan.items():
        for i, shard in enumerate(shards):
            for it in shard:
                h.update(
                    f"{split}\0{i}\0{it.source.relpath}\0{it.sha256}\0{it.label}\0{it.source.group}\n".encode()
                )
                if it.source.mask:
                    h.update(f"mask\0{it.source.mask}\n".encode())
    return h.hexdigest()


def _check_plan(partial: str, fingerprint: str, resume: bool) -> None:
    path = os.path.join(partial, "plan.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f).get("fingerprint")
        if previous != fingerprint:
            refuse_other_options(os.path.dirname(partial), "conversion", ["its inputs or options"])
    atomic_write_text(path, json.dumps({"fingerprint": fingerprint}) + "\n")


def _finish(
    out, partial, plan, listing, config, preprocessing, encoding, options, rejects, start, grouped=False
) -> ConversionResult:
    """The finish sequence; each step can be killed and a rerun finishes the dataset.

    1. rejects.csv, then 2. the manifest, each written whole under a hidden
    name and renamed (a rerun before step 3 finds the partial folder and
    writes both again, byte for byte); 3. the partial folder is renamed to
    `FINISHING_DIR` (one atomic step: from here the dataset is complete);
    4. that folder is removed (a rerun that finds it removes it, see
    `_already_done`).
    """
    splits, shard_rejects = _collect_shards(partial, plan, listing, grouped)
    listed = [Reject(printable(p), r) for p, r in listing.rejects]  # left out while listing
    all_rejects = sorted([*rejects, *listed, *shard_rejects], key=lambda r: r.path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reason"])
    w.writerows([r.path, r.reason] for r in all_rejects)
    atomic_write_text(os.path.join(out, REJECTS_NAME), buf.getvalue())
    h, wd = config.image_size
    manifest = Manifest(
        class_names=listing.class_names,
        image_shape=(h, wd, 1),
        encoding=encoding,
        preprocessing=preprocessing,
        splits=splits,
        source=options,
        library_version=__version__,
    )
    manifest.write(out)
    finishing = os.path.join(out, FINISHING_DIR)
    if os.path.exists(finishing):  # left by a run killed while removing it, before this one
        shutil.rmtree(finishing)
    os.rename(partial, finishing)
    shutil.rmtree(finishing)
    train = splits.get("train")
    if train is not None:
        missing = [c for c, n in train.counts.items() if n == 0]
        if missing:
            print(
                f"warning: no image of class(es) {', '.join(missing)} was converted into the train split",
                file=sys.stderr,
            )
    return ConversionResult(
        manifest=manifest, rejects=tuple(all_rejects), seconds=time.perf_counter() - start
    )


def _collect_shards(partial, plan, listing, grouped) -> tuple[dict[str, SplitInfo], list[Reject]]:
    """Each split's counts and shards, and the shards' rejects, from the records in `partial`."""
    splits, rejects = {}, []
    for split, shards in plan.items():
        infos, counts, masks, groups = [], {c: 0 for c in listing.class_names}, 0, {}
        for i in range(len(shards)):
            with open(os.path.join(partial, shard_name(split, i, len(shards)) + ".json")) as f:
                record = json.load(f)
            infos.append(ShardInfo(**record["shard"]))
            for c, n in record["counts"].items():
                counts[c] += n
            masks += record.get("masks", 0)
            for g, n in record.get("groups", {}).items():
                groups[g] = groups.get(g, 0) + n
            rejects += [Reject(p, r) for p, r in record["rejects"]]
        splits[split] = SplitInfo(
            counts=counts,
            shards=tuple(infos),
            masks=masks,
            groups=dict(sorted(groups.items())) if grouped else None,
        )
    return splits, rejects


def _finishing(out: str) -> bool:
    """Whether a run was killed after its dataset was complete, while removing its partial folder."""
    return os.path.isdir(os.path.join(out, FINISHING_DIR)) and not os.path.exists(
        os.path.join(out, PARTIAL_DIR)
    )


def _already_done(out: str, start: float) -> ConversionResult:
    """The result of the finished dataset in `out`, after removing what a killed finish left."""
    from cxrdata.manifest import read_manifest

    if os.path.isdir(os.path.join(out, FINISHING_DIR)):
        shutil.rmtree(os.path.join(out, FINISHING_DIR))
    for name in os.listdir(out):
        if name.startswith(".") and name.endswith(".tmp"):  # a killed atomic write's
            os.unlink(os.path.join(out, name))
    manifest = read_manifest(out)
    rejects = []
    path = os.path.join(out, REJECTS_NAME)
    if os.path.exists(path):
        with open(path, newline="") as f:
            rejects = [Reject(r["path"], r["reason"]) for r in csv.DictReader(f)]
    return ConversionResult(
        manifest=manifest,
        rejects=tuple(rejects),
        seconds=time.perf_counter() - start,
        split_overlaps=manifest.source.get("split_overlaps") or {},
    )
