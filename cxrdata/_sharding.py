"""Which shard files an input pipeline of `load` reads, and how workers share a split.

`plan` reads the manifest and checks every shard of a split at its listed size
(a truncated shard is named before anything is read). `pipeline_share` keeps
the files of one input pipeline under `tf.distribute` (file `i` goes to
pipeline `i % n`). `shard_policy` says how a strategy that shards a dataset
itself (`experimental_distribute_dataset` in a `TF_CONFIG` cluster) splits it:
by file, or by batch when that cannot work, with one seed for all workers
(`shared_seed`), so that their copies of the stream agree batch for batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass

import tensorflow as tf

from cxrdata.manifest import read_manifest


@dataclass(frozen=True)
class Plan:
    """What the pipeline needs to know about one split (or one pipeline's share of it)."""

    paths: tuple[str, ...]
    records: tuple[int, ...]
    image_shape: tuple[int, int, int]
    encoding: str
    class_counts: tuple[int, ...]  # of the whole split: a share's are not in the manifest
    class_names: tuple[str, ...]
    stored_record_bytes: int
    split: str
    share: tuple[int, int] | None = None  # (input pipeline id, number of pipelines)
    split_files: int = 0  # shard files of the whole split

    @property
    def num_examples(self) -> int:
        return sum(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


def plan(dataset_dir: str | os.PathLike, split: str) -> Plan:
    """Reads the manifest and checks that every shard of `split` is there at its size."""
    dataset_dir = os.fspath(dataset_dir)
    manifest = read_manifest(dataset_dir)
    info = manifest.split(split)
    if manifest.encoding not in ("raw", "png"):
        raise ValueError(
            f"Unknown image encoding {manifest.encoding!r} in {dataset_dir!r}: "
            f"expected 'raw' or 'png'. Upgrade cxr."
        )
    if not info.shards:
        raise ValueError(f"Split {split!r} of {dataset_dir!r} has no shards.")
    paths = tuple(os.path.join(dataset_dir, s.name) for s in info.shards)
    for shard, path in zip(info.shards, paths):
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Shard {path!r} is listed in the manifest but missing. Check the dataset with "
                f"`cxr verify {dataset_dir}`, or convert it again."
            ) from None
        if size != shard.size:
            raise ValueError(
                f"Shard {path!r} is {size} bytes but the manifest lists {shard.size}: it is "
                f"truncated or was replaced. Check the dataset with `cxr verify {dataset_dir}`."
            )
    records = sum(s.records for s in info.shards)
    return Plan(
        paths=paths,
        records=tuple(s.records for s in info.shards),
        image_shape=tuple(manifest.image_shape),
        encoding=manifest.encoding,
        class_counts=tuple(info.counts.get(name, 0) for name in manifest.class_names),
        class_names=tuple(manifest.class_names),
        stored_record_bytes=max(1, sum(s.size for s in info.shards) // max(records, 1)),
        split=split,
        split_files=len(paths),
    )


def pipeline_share(plan: Plan, context: tf.distribute.InputContext) -> Plan:
    """The part of `plan` that input pipeline `context.input_pipeline_id` reads: every n-th file."""
    i, n = context.input_pipeline_id, context.num_input_pipelines
    if len(plan.paths) < n:
        raise ValueError(
            f"Split {plan.split!r} has {len(plan.paths)} shard files for {n} input pipelines "
            f"(workers): each needs at least one file. Convert again with a smaller --shard-size."
        )
    return dataclasses.replace(plan, paths=plan.paths[i::n], records=plan.records[i::n], share=(i, n))


def shard_policy(
    num_files: int, split: str, balance: str | None = None
) -> tf.data.experimental.AutoShardPolicy:
    """FILE sharding across workers, or DATA when there are fewer files than workers.

    Oversampling reads the files once per class (`sample_from_datasets` over
    several sources), which FILE sharding cannot split: it shards by DATA.
    """
    workers = num_input_workers()
    if balance == "oversample":
        return tf.data.experimental.AutoShardPolicy.DATA
    if num_files < workers:
        warnings.warn(
            f"Split {split!r} has {num_files} shard files for {workers} workers, so each worker "
            f"reads every file and keeps 1/{workers} of the batches (AutoShardPolicy.DATA, in "
            f"order, with one seed for all workers). Convert with at least {workers} shards per "
            f"split to shard by file.",
            stacklevel=5,
        )
        return tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.experimental.AutoShardPolicy.FILE


def shared_seed(dataset_dir: str | os.PathLike, split: str) -> int:
    """A seed every worker of the TF_CONFIG cluster derives alike (the same in every run)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    key = json.dumps(
        [cluster, os.path.basename(os.path.abspath(os.fspath(dataset_dir))), split], sort_keys=True
    )
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") >> 1


def num_input_workers() -> int:
    """Workers in the multi-worker cluster described by TF_CONFIG (1 without one)."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except (ValueError, AttributeError):
        return 1
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))
