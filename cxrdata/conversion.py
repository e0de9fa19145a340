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
from typing import Any

import numpy as np

from cxrdata import __version__
from cxrdata._pool import printable
from cxrdata._shards import _Item, _write_shards
from cxrdata.conversion_config import ConvertConfig, effective_workers
from cxrdata.dicom import MULTI_FRAME_POLICY
from cxrdata.manifest import (
    MANIFEST_NAME,
    REJECTS_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    read_manifest,
    shard_name,
)
from cxrdata.preprocess import PreprocessConfig
from cxrdata.sources import Source, discover
from cxrdata.splits import assign_splits, describe_overlaps, find_overlaps
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
    src: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    config: ConvertConfig | None = None,
    **options: Any,
) -> ConversionResult:
    """Converts a chest X-ray folder tree or CSV into equalized, sharded TFRecords.

    Each image is decoded, turned to grayscale, resized to `image_size` and
    equalized, in parallel over `workers` processes, then written to shards
    `{split}-{index:05d}-of-{count:05d}.tfrecord` in `out`, beside a manifest
    (`dataset.json`, which records the `ConvertConfig` options that shape the
    data) and `rejects.csv` (every input not converted, with its reason).

    Args:
        src: a class-folder tree, a tree of `train/ val/ test/` folders (honoured
            as given), or the folder that the relative paths of `labels` start from.
        out: output folder.
        config: a `ConvertConfig` with every option. Defaults to None: the
            defaults, with `options` on top.
        **options: any `ConvertConfig` field, on top of `config`:
            `labels` (a CSV with columns `path`, `label` and optionally
            `group_by`, `split`, `mask`), `group_by` (the CSV's patient column:
            no patient in two splits), `group_pattern` (for folder trees, a regex
            on file names whose first group is the patient id), `class_names`
            (label order; default sorted), `image_size` (299; int or (height,
            width)), `aspect` ("stretch", "crop", "pad"), `equalize` ("local",
            "clahe", "global", "none"), `equalize_radius` (70; the disk radius
            of local equalization, formerly `radius`), `clip_limit` (0.01, CLAHE),
            `interpolation` ("bilinear"), `splits` ((0.7, 0.15, 0.15): train, val,
            test ratios, stratified by class; ignored for split folders;
            (0, 0, 1) makes a test-only dataset), `seed` (0: the split and the
            order of records), `encoding` ("raw" uint8 or "png"), `shard_size`
            (100 MB), `workers` (None: all cores), `overwrite`, `resume` (finish
            an interrupted conversion, or keep a finished one), `progress`
            (True), `dicom_window` ("auto": Rescale Slope/Intercept, then the
            file's VOI LUT or first window, else the 0.5th-99.5th percentile
            range; "minmax"; "none": the full BitsStored range, as cxrdata 0.1),
            `runner` ("local" or "beam", the same bytes), `beam_options` (Beam
            pipeline flags for runner "beam", e.g. `["--runner=DataflowRunner"]`),
            `masks` (a folder of lung masks mirroring `src`; without it the
            Kaggle layout `CLASS/masks/` or a CSV `mask` column; a mask that
            cannot be read goes to `rejects.csv`, its image is kept),
            `test_groups` (group ids sent entirely to the test split, such as
            held-out hospitals), `allow_outside_src` (accept CSV paths leading
            outside `src`) and `strict_splits` (given splits that share a group
            or a byte-identical file are an error, not a warning).

    Returns:
        A `ConversionResult`.

    Raises:
        FileNotFoundError: `src` or `labels` is missing.
        FileExistsError: `out` holds a dataset and neither flag is given.
        OutputFolderBusyError: another process is writing `out` (a FileExistsError).
        ValueError: bad arguments, or inputs with nothing usable.
        TypeError: an argument of the wrong type, or an unknown option.
        ImportError: `runner="beam"` without Apache Beam installed.

    Example:
        >>> result = convert("covid-radiography/", "data/", image_size=299)  # doctest: +SKIP
        >>> print(result.summary("data/"))  # doctest: +SKIP
        >>> result = convert(config=ConvertConfig.from_file("convert.yaml"))  # doctest: +SKIP
    """
    start = time.perf_counter()
    given = {k: v for k, v in (("src", src), ("out", out)) if v is not None}
    config = ConvertConfig.from_kwargs(config, **given, **options)
    config.require_paths()
    _check_runner(config.runner)
    _check_out(config.out, overwrite=config.overwrite, resume=config.resume)
    listing = discover(
        config.src,
        labels=config.labels,
        group_by=config.group_by,
        group_pattern=config.group_pattern,
        class_names=config.class_names,
        masks=config.masks,
        allow_outside_src=config.allow_outside_src,
    )
    if config.test_groups:
        _check_test_groups(config.test_groups, listing)
    with lock_output_dir(config.out, what="dataset folder"):  # a second writer is refused, not raced
        return _convert_locked(config, listing, start)


def _check_test_groups(test_groups, listing) -> None:
    known = {s.group for s in listing.sources}
    unknown = [g for g in test_groups if g not in known]
    if unknown:
        raise ValueError(
            f"`test_groups` names group(s) no image has: {', '.join(map(repr, unknown))}. "
            f"Groups found: {', '.join(map(repr, sorted(known - {''})[:20])) or '(none)'}"
        )


def _convert_locked(config: ConvertConfig, listing, start: float) -> ConversionResult:
    out = config.out
    state = _check_out(out, overwrite=config.overwrite, resume=config.resume)
    if state == FINISHED or (state != OVERWRITE and _finishing(out)):
        return _already_done(out, start)
    if state == OVERWRITE:
        _clear_dataset(out)
    workers = effective_workers(config.workers)
    items, rejects = _hashed_items(config, listing, workers)
    split_of = _split_items(
        items, listing.layout, config.splits, config.seed, len(listing.class_names), config.test_groups
    )
    overlaps = find_overlaps(items, split_of)
    if overlaps and config.strict_splits:
        raise ValueError(
            "The given splits overlap (--strict-splits): " + "; ".join(describe_overlaps(overlaps))
        )
    pixels = config.preprocess_config()
    plan = _plan(items, split_of, config, pixels)
    options = _source_options(config, listing)
    preprocessing = _preprocessing(pixels, config.dicom_window)
    fingerprint = _fingerprint(options, preprocessing, listing.class_names, plan)
    if any(it.source.split is not None for it in items):  # given splits: say what straddles them
        options["split_overlaps"] = overlaps
    partial = os.path.join(out, PARTIAL_DIR)
    os.makedirs(partial, exist_ok=True)
    _check_plan(partial, fingerprint, config)
    _write(config, partial, plan, listing.class_names, preprocessing, workers)
    result = _finish(config, partial, plan, listing, preprocessing, options, rejects, start)
    return dataclasses.replace(result, split_overlaps=overlaps)


def _hashed_items(config: ConvertConfig, listing, workers: int) -> tuple[list[_Item], list[Reject]]:
    """The listed files that can be read and named, with their digests; and rejects for the others."""
    index = {c: i for i, c in enumerate(listing.class_names)}
    named, rejects = _reject_undecodable_names(listing.sources)
    digests = _hash_all(named, workers, config.progress)
    rejects += [
        Reject(s.relpath, f"unreadable: {d.strerror or d}" if isinstance(d, OSError) else str(d))
        for s, d in zip(named, digests)
        if isinstance(d, Exception)
    ]
    items = [_Item(s, index[s.label], d) for s, d in zip(named, digests) if not isinstance(d, Exception)]
    if not items:
        raise ValueError(f"No readable image under {config.src!r}.")
    return items, rejects


def _plan(items, split_of, config: ConvertConfig, pixels: PreprocessConfig) -> dict[str, list[list[_Item]]]:
    """Which record goes to which split, shard and position: fixed before any pixel is touched."""
    plan: dict[str, list[list[_Item]]] = {}
    for n, split in enumerate(("train", "val", "test")):
        members = [it for it, s in zip(items, split_of) if s == split]
        if not members:
            continue
        order = np.random.default_rng([config.seed, n]).permutation(len(members))
        plan[split] = _plan_shards([members[i] for i in order], pixels, config.encoding, config.shard_size)
    return plan


def _source_options(config: ConvertConfig, listing) -> dict:
    """The manifest's `source`: the options that shape the data, and what the listing found."""
    options = {
        "src": config.src,
        "labels": config.labels,
        "group_by": config.group_by,
        "group_pattern": config.group_pattern,
        "layout": listing.layout,
        "splits": list(config.splits),
        "seed": config.seed,
        "encoding": config.encoding,
        "shard_size_mb": config.shard_size,
    }
    if config.masks is not None:
        options["masks"] = config.masks
    if config.test_groups:
        options["test_groups"] = list(config.test_groups)
    options["config"] = config.dataset_options()
    return options


def _write(config: ConvertConfig, partial, plan, class_names, preprocessing, workers: int) -> None:
    if config.runner == "beam":
        from cxrdata.beam_conversion import write_shards_beam  # deferred: Apache Beam is an extra

        beam_options = list(config.beam_options) if config.beam_options is not None else None
        write_shards_beam(
            config.out, partial, plan, class_names, preprocessing, config.encoding, workers, beam_options
        )
    else:
        _write_shards(
            config.out, partial, plan, class_names, preprocessing, config.encoding, workers, config.progress
        )


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


def _check_runner(runner: str) -> None:
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


def _check_plan(partial: str, fingerprint: str, config: ConvertConfig) -> None:
    """Refuses to resume a partial conversion planned with other options (naming each) or inputs."""
    path = os.path.join(partial, "plan.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous.get("fingerprint") != fingerprint:
            before = previous.get("config")
            differences = ConvertConfig.from_dict(before).differences(config) if before else []
            refuse_other_options(
                os.path.dirname(partial), "conversion", differences or ["its inputs or options"]
            )
    text = json.dumps({"fingerprint": fingerprint, "config": config.to_dict()}) + "\n"
    atomic_write_text(path, text)


def _finish(
    config: ConvertConfig, partial, plan, listing, preprocessing, options, rejects, start
) -> ConversionResult:
    """The finish sequence; each step can be killed and a rerun finishes the dataset.

    1. rejects.csv, then 2. the manifest, each written whole under a hidden
    name and renamed (a rerun before step 3 finds the partial folder and
    writes both again, byte for byte); 3. the partial folder is renamed to
    `FINISHING_DIR` (one atomic step: from here the dataset is complete);
    4. that folder is removed (a rerun that finds it removes it, see
    `_already_done`).
    """
    out, grouped = config.out, bool(config.group_by or config.group_pattern)
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
        encoding=config.encoding,
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
