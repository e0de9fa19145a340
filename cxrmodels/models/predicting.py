"""A model's predictions on one split of a converted dataset, in manifest order.

Training uses it to choose the run's decision threshold on the "val" split;
evaluation and the audit use it on the split they report.
"""

from __future__ import annotations

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
