"""The dataset manifest (`dataset.json`): what a converted dataset holds.

Pure Python on purpose: reading a manifest never imports TensorFlow, so model
code running under another Keras backend can still read shapes and classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cxrdata.utils.io import atomic_write_text

MANIFEST_NAME = "dataset.json"
REJECTS_NAME = "rejects.csv"
FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")


def dicom_window_of(preprocessing: dict[str, Any]) -> str:
    """The `dicom_window` that DICOM files were decoded with, from a `preprocessing` dict.

    Works on a manifest's `preprocessing` and on the copy a training run keeps.
    Manifests written before the option existed lack the key; their DICOM files
    were scaled over the full BitsStored range, which is `"none"`.

    Example:
        >>> decode_image(path, dicom_window=dicom_window_of(manifest.preprocessing))  # doctest: +SKIP
    """
    return str(preprocessing.get("dicom_window", "none"))


def shard_name(split: str, index: int, count: int) -> str:
    """File name of shard `index` (0-based) of `count` in `split`."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: its name, record count, size in bytes and SHA-256."""

    name: str
    records: int
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    """One split: examples per class name and its shards, in order.

    `masks` counts its records that carry a lung mask; `groups` (None when the
    conversion had no groups) gives the examples per group (patient or source).
    Both are written to the manifest only when set, so older manifests keep
    their digest.
    """

    counts: dict[str, int]
    shards: tuple[ShardInfo, ...]
    masks: int = 0
    groups: dict[str, int] | None = None

    @property
    def num_examples(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to know about a converted dataset.

    Attributes:
        class_names: class names; a record's label is an index into this.
        image_shape: `(height, width, channels)` of every image.
        encoding: `"raw"` (uint8 pixels) or `"png"`.
        preprocessing: every parameter that shaped the pixels (image size,
            aspect handling, equalization and its radius; `dicom_window` and
            `dicom_frames`, how DICOM files were decoded: see `dicom_window`).
        splits: split name to `SplitInfo`.
        source: where the data came from and how it was split.
        library_version: the `cxrdata` version that wrote it.
        format_version: version of this manifest's layout.
    """

    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    encoding: str
    preprocessing: dict[str, Any]
    splits: dict[str, SplitInfo]
    source: dict[str, Any] = field(default_factory=dict)
    library_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dicom_window(self) -> str:
        """How DICOM files were decoded ("auto", "minmax" or "none"); "none" for older manifests."""
        return dicom_window_of(self.preprocessing)

    def split(self, name: str) -> SplitInfo:
        """Returns the split called `name`, or raises a ValueError listing those there are."""
        if name not in self.splits:
            raise ValueError(
                f"This dataset has no split {name!r}. Available splits: "
                f"{', '.join(sorted(self.splits)) or '(none)'}. Received: split={name!r}"
            )
        return self.splits[name]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["image_shape"] = list(self.image_shape)
        for info in d["splits"].values():
            info["num_examples"] = sum(info["counts"].values())
            info["shards"] = list(info["shards"])
            for key in ("masks", "groups"):
                if not info[key]:
                    del info[key]
        order = [
            "format_version",
            "library_version",
            "class_names",
            "image_shape",
            "encoding",
            "preprocessing",
            "source",
            "splits",
        ]
        return {k: d[k] for k in order}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"This manifest has format version {d['format_version']}, newer than this "
                f"library reads ({FORMAT_VERSION}). Upgrade cxr."
            )
        splits = {
            name: SplitInfo(
                counts={str(k): int(v) for k, v in info["counts"].items()},
                shards=tuple(ShardInfo(**s) for s in info["shards"]),
                masks=int(info.get("masks", 0)),
                groups=({str(k): int(v) for k, v in info["groups"].items()} if info.get("groups") else None),
            )
            for name, info in d["splits"].items()
        }
        return cls(
            class_names=tuple(d["class_names"]),
            image_shape=tuple(int(x) for x in d["image_shape"]),
            encoding=d["encoding"],
            preprocessing=dict(d["preprocessing"]),
            splits=splits,
            source=dict(d.get("source", {})),
            library_version=d.get("library_version", ""),
            format_version=int(d.get("format_version", FORMAT_VERSION)),
        )

    def digest(self) -> str:
        """SHA-256 of the canonical manifest: identifies this exact dataset."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def write(self, directory: str | os.PathLike) -> None:
        atomic_write_text(os.path.join(directory, MANIFEST_NAME), self.to_json())


def read_manifest(dataset_dir: str | os.PathLike) -> Manifest:
    """Reads `dataset.json` from a converted dataset folder.

    Args:
        dataset_dir: a folder written by `cxrdata.convert`.

    Returns:
        The `Manifest`.

    Raises:
        FileNotFoundError: the folder or its manifest is missing.
        ValueError: the manifest cannot be parsed.
    """
    dataset_dir = os.fspath(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"No such dataset folder: {dataset_dir!r}")
    path = os.path.join(dataset_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{dataset_dir!r} holds no {MANIFEST_NAME}: it is not a converted dataset, or its "
            f"conversion did not finish. Run `cxr convert SRC {dataset_dir}` (add --resume to "
            f"finish an interrupted one)."
        )
    try:
        with open(path, encoding="utf-8") as f:
            return Manifest.from_dict(json.load(f))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path!r} is not a valid manifest: {e}") from e
