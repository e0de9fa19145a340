"""A model's predictions on one split of a converted dataset, and its records' groups, in manifest order.

Training uses it to choose the run's decision threshold on the "val" split;
evaluation and the audit use it on the split they report.
"""

from __future__ import annotations

import os

import numpy as np

import cxrdata


def predict_split(model, dataset_dir: str, split: str, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(labels [N], probabilities [N, K])` of a model on one split, in manifest order."""
    ds = cxrdata.load(dataset_dir, split, batch_size=batch_size, shuffle=False, label_mode="int")
    labels, probs = [], []
    for images, y in ds:
        probs.append(np.asarray(model.predict_on_batch(images), dtype=np.float64))
        labels.append(np.asarray(y))
    return np.concatenate(labels).astype(np.int64), np.concatenate(probs)


def split_groups(dataset_dir: str, split: str) -> np.ndarray:
    """The `group` of each record of one split (str [N]; "" where none was given), in manifest order.

    The order is `predict_split`'s (`cxrdata.load` with `shuffle=False` reads the
    manifest's shards one after another, each from its first record), so the
    two line up case by case.
    """
    from cxrdata.records import iter_records, parse_record  # deferred: imports TensorFlow

    manifest = cxrdata.read_manifest(dataset_dir)
    return np.array(
        [
            parse_record(raw)["group"]
            for shard in manifest.split(split).shards
            for raw in iter_records(os.path.join(dataset_dir, shard.name))
        ],
        dtype=str,
    )
