"""Checking a converted dataset against its manifest, and looking at it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from cxrdata.manifest import Manifest, read_manifest
from cxrdata.utils.figures import save_picture


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of `verify`: `problems` names each bad shard and what is wrong."""

    num_shards: int
    num_records: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, dataset_dir: str) -> str:
        if self.ok:
            return f"OK: {self.num_shards} shards, {self.num_records} records in {dataset_dir} match the manifest"
        return f"FAILED: {len(self.problems)} problem(s) in {dataset_dir}:\n" + "\n".join(
            f"  {p}" for p in self.problems
        )


def _check_shard(
    path: str, expected, manifest: Manifest, split: str
) -> tuple[int, dict[str, int], list[str]]:
    import tensorflow as tf

    from cxrdata.records import parse_record  # deferred: records imports TensorFlow

    name = os.path.basename(path)
    problems: list[str] = []
    counts: dict[str, int] = {}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    size = os.path.getsize(path)
    if size != expected.size:
        problems.append(f"{name}: size {size} bytes, manifest says {expected.size}")
    if h.hexdigest() != expected.sha256:
        problems.append(f"{name}: SHA-256 does not match the manifest (the file changed or is corrupt)")
    n = 0
    height, width, _ = manifest.image_shape
    try:
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            rec = parse_record(raw)
            n += 1
            if (
                not 0 <= rec["label"] < manifest.num_classes
                or manifest.class_names[rec["label"]] != rec["class_name"]
            ):
                problems.append(
                    f"{name}: record {n} has label {rec['label']} / class {rec['class_name']!r}, "
                    "not in the manifest's classes"
                )
                break
            if (rec["height"], rec["width"]) != (height, width) or (
                manifest.encoding == "raw" and len(rec["image"]) != height * width
            ):
                problems.append(f"{name}: record {n} has the wrong image size")
                break
            counts[rec["class_name"]] = counts.get(rec["class_name"], 0) + 1
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as e:
        problems.append(f"{name}: unreadable after record {n}: {str(e).splitlines()[0]}")
    except Exception as e:  # a record that does not parse as an Example
        problems.append(f"{name}: record {n + 1} does not parse: {type(e).__name__}: {e}")
    if not problems and n != expected.records:
        problems.append(f"{name}: {n} records, manifest says {expected.records}")
    return n, counts, problems


def verify(dataset_dir: str | os.PathLike, *, progress: bool = False) -> VerifyResult:
    """Re-reads every shard and checks it against the manifest.

    Checks each shard's size and SHA-256, parses every record, and compares
    record counts and per-class counts with the manifest.

    Args:
        dataset_dir: a folder written by `cxrdata.convert`.
        progress: show a progress bar over shards.

    Returns:
        A `VerifyResult`; `result.ok` is True when everything matches.

    Raises:
        FileNotFoundError: no dataset (manifest) in `dataset_dir`.

    Example:
        >>> result = verify("data/")  # doctest: +SKIP
        >>> result.ok  # doctest: +SKIP
        True
    """
    from tqdm.auto import tqdm

    dataset_dir = os.fspath(dataset_dir)
    manifest = read_manifest(dataset_dir)
    problems: list[str] = []
    total = shards = 0
    jobs = [(split, s) for split, info in manifest.splits.items() for s in info.shards]
    for split in manifest.splits:
        counts: dict[str, int] = {}
        for s in tqdm(
            [s for sp, s in jobs if sp == split],
            desc=f"Verifying {split}",
            unit="shard",
            disable=not progress,
            leave=False,
        ):
            shards += 1
            path = os.path.join(dataset_dir, s.name)
            if not os.path.isfile(path):
                problems.append(f"{s.name}: missing")
                continue
            n, c, p = _check_shard(path, s, manifest, split)
            total += n
            problems += p
            for k, v in c.items():
                counts[k] = counts.get(k, 0) + v
        expected = {k: v for k, v in manifest.splits[split].counts.items() if v}
        if not problems and counts != expected:
            problems.append(f"split {split}: class counts {counts} differ from the manifest's {expected}")
    return VerifyResult(num_shards=shards, num_records=total, problems=tuple(problems))


def counts_table(manifest: Manifest) -> str:
    """A plain-text table of examples per split and class."""
    names = list(manifest.class_names)
    width = max([len(n) for n in names] + [5])
    header = f"{'split':<6} " + " ".join(f"{n:>{width}}" for n in names) + f" {'total':>{width}}"
    rows = [header, "-" * len(header)]
    for split, info in manifest.splits.items():
        cells = " ".join(f"{info.counts.get(n, 0):>{width}}" for n in names)
        rows.append(f"{split:<6} {cells} {info.num_examples:>{width}}")
    return "\n".join(rows)


def inspect(
    dataset_dir: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    per_class: int = 8,
    split: str = "train",
) -> tuple[str, str]:
    """Summarizes a dataset and writes a PNG grid of sample images per class.

    Args:
        dataset_dir: a folder written by `cxrdata.convert`.
        output: where to write the grid. Defaults to `dataset_dir/samples.png`.
        per_class: images per class (one row each). Defaults to 8.
        split: the split to sample from. Defaults to "train".

    Returns:
        `(table, png_path)`: the counts table as text, and the grid's path.
    """
    import tensorflow as tf
    from PIL import Image, ImageDraw

    from cxrdata.records import parse_record  # deferred: records imports TensorFlow

    dataset_dir = os.fspath(dataset_dir)
    manifest = read_manifest(dataset_dir)
    if per_class < 1:
        raise ValueError(f"`per_class` must be at least 1. Received: per_class={per_class}")
    info = manifest.split(split)
    height, width, _ = manifest.image_shape
    samples: dict[str, list[np.ndarray]] = {c: [] for c in manifest.class_names}
    for shard in info.shards:
        for raw in tf.data.TFRecordDataset(os.path.join(dataset_dir, shard.name)).as_numpy_iterator():
            rec = parse_record(raw)
            if len(samples[rec["class_name"]]) < per_class:
                if manifest.encoding == "png":
                    img = tf.io.decode_png(rec["image"], channels=1).numpy()[..., 0]
                else:
                    img = np.frombuffer(rec["image"], np.uint8).reshape(height, width)
                samples[rec["class_name"]].append(img)
        if all(len(v) >= per_class for v in samples.values()):
            break
    tile = min(160, max(height, width))
    label_w = 110
    grid = Image.new("L", (label_w + per_class * (tile + 4), len(samples) * (tile + 4) + 4), 32)
    draw = ImageDraw.Draw(grid)
    for r, (cls, images) in enumerate(samples.items()):
        y = 4 + r * (tile + 4)
        draw.text((6, y + tile // 2 - 6), f"{cls}\n({info.counts.get(cls, 0)})", fill=255)
        for c, img in enumerate(images):
            grid.paste(Image.fromarray(img).resize((tile, tile)), (label_w + c * (tile + 4), y))

    path = save_picture(grid, os.fspath(output) if output else os.path.join(dataset_dir, "samples.png"))
    table = (
        counts_table(manifest) + f"\n\nclasses: {', '.join(manifest.class_names)}; images "
        f"{height}x{width}, {manifest.encoding}; equalize {manifest.preprocessing.get('equalize')}"
    )
    return table, path


def explain_read_error(dataset_dir: str | os.PathLike, error: BaseException) -> BaseException:
    """Turns a read error from `cxrdata.load` into one that names the damaged shards.

    The pipeline's own checks are free per record, so the errors they raise
    (a shard that ends early, a record whose CRC fails) cannot name the file.
    This runs `verify` to find it. Returns `error` unchanged when it is not a
    read error or when every shard is intact.

    Example:
        >>> try:  # doctest: +SKIP
        ...     model.fit(cxrdata.load("data/"))
        ... except Exception as e:
        ...     raise explain_read_error("data/", e) from e
    """
    message = str(error)
    if not (
        "expected to contain" in message
        or "corrupted record" in message
        or "truncated record" in message.lower()
    ):
        return error
    try:
        result = verify(dataset_dir)
    except Exception:
        return error
    if result.ok:
        return error
    return RuntimeError(
        f"Reading {os.fspath(dataset_dir)!r} failed because shards are damaged: "
        + "; ".join(result.problems)
        + f". Convert the dataset again (cxr convert SRC {os.fspath(dataset_dir)} --overwrite)."
    )
