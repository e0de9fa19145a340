"""What the shortcut audit measures on one split: predictions on the original and blanked films, Grad-CAM.

Records are read in manifest order with their source path, checksum and mask. A record
with a mask whose unequalized image can be had (`_audit_blanking.unequalized`) is
"audited": its four blanked variants go through the dataset's own preprocessing and the
model, and its class-discriminative Grad-CAM is measured against its mask. The others are
predicted on the original only, and the report says why each was left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from cxrdata.preprocess import PreprocessConfig, preprocess_image
from cxrdata.records import iter_records, parse_record
from cxrmodels.evaluation import _audit_blanking as blanking
from cxrmodels.evaluation import _audit_gradcam as cams
from cxrmodels.serving.prediction import gradcam_model


@dataclass
class AuditData:
    """Everything the checks need, one row per record of the split (variants: audited rows only)."""

    y: np.ndarray
    original: np.ndarray  # [N, K] probabilities
    has_mask: np.ndarray  # [N] bool
    audited: np.ndarray  # [N] bool
    variants: dict[str, np.ndarray]  # name -> [N, K], NaN rows where not audited
    inside: np.ndarray  # [N, K] Grad-CAM evidence inside the lungs (audited rows)
    blind: np.ndarray  # [N, K] what a map blind to anatomy would put there
    evidence: np.ndarray  # [N, K] the class's share of the image's evidence
    ideal: np.ndarray  # [audited] the share a map following the lungs at this resolution would get
    feature_map: tuple[int, int] | None
    placebo_area: list[float] = field(default_factory=list)
    blanked_from: dict[str, int] = field(default_factory=dict)  # "source" / "record" -> count
    left_out: list[dict] = field(default_factory=list)  # {"path", "reason"}
    examples: list[tuple] = field(default_factory=list)  # (image, map, mask, label, lungs blanked)


def records(dataset_dir: str, manifest, split: str):
    """Yields `(record dict, image [H, W] uint8, mask [H, W] bool or None)` in manifest order."""
    import io

    from PIL import Image

    for shard in manifest.split(split).shards:
        for raw in iter_records(os.path.join(dataset_dir, shard.name)):
            r = parse_record(raw)
            if manifest.encoding == "png":
                image = np.asarray(Image.open(io.BytesIO(r["image"])))
            else:
                image = np.frombuffer(r["image"], np.uint8).reshape(r["height"], r["width"])
            mask = np.asarray(Image.open(io.BytesIO(r["mask"]))) >= 128 if r["mask"] else None
            yield r, image, mask


def collect(model, dataset_dir: str, manifest, split: str, *, batch_size, seed, examples, layer) -> AuditData:
    """Runs the model on every record of `split` and on the blanked variants of the audited ones."""

    run = _Batches(
        model,
        gradcam_model(model, layer),
        manifest,
        PreprocessConfig.from_dict(manifest.preprocessing),
        seed,
        examples,
    )
    batch: list[tuple] = []
    for index, item in enumerate(records(dataset_dir, manifest, split)):
        batch.append((index, *item))
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    acc, k = run.acc, len(manifest.class_names)
    audited = np.asarray(acc["audited"], bool)
    return AuditData(
        y=np.asarray(acc["y"], dtype=np.int64),
        original=np.concatenate(acc["original"]) if acc["original"] else np.zeros((0, k)),
        has_mask=np.asarray(acc["has_mask"], bool),
        audited=audited,
        variants={v: _rows(acc[v], audited, k) for v in blanking.VARIANTS},
        inside=_rows(acc["inside"], audited, k),
        blind=_rows(acc["blind"], audited, k),
        evidence=_rows(acc["evidence"], audited, k),
        ideal=np.concatenate(acc["ideal"]) if acc["ideal"] else np.zeros(0),
        feature_map=run.feature_map,
        placebo_area=acc["placebo_area"],
        blanked_from=run.blanked_from,
        left_out=acc["left_out"],
        examples=acc["examples"],
    )


def _rows(chunks: list, audited: np.ndarray, k: int) -> np.ndarray:
    """`[N, K]` with the audited rows from `chunks` (in order) and NaN elsewhere."""
    out = np.full((len(audited), k), np.nan)
    if chunks:
        out[audited] = np.concatenate(chunks)
    return out


class _Batches:
    """Runs one batch of records at a time, accumulating what `AuditData` holds."""

    def __init__(self, model, grad_model, manifest, config, seed, examples):
        self.model, self.grad_model, self.manifest, self.config = model, grad_model, manifest, config
        self.seed, self.examples = seed, examples
        self.feature_map, self.blanked_from = None, {}
        keys = (
            "y",
            "original",
            "has_mask",
            "audited",
            "inside",
            "blind",
            "evidence",
            "ideal",
            "placebo_area",
            "left_out",
        )
        self.acc = {k: [] for k in (*keys, "examples", *blanking.VARIANTS)}

    def __call__(self, batch: list[tuple]) -> None:
        acc = self.acc
        images = np.stack([image for _, _, image, _ in batch])[..., None]
        acc["original"].append(np.asarray(self.model.predict_on_batch(images), np.float64))
        audited, blanked = [], {v: [] for v in blanking.VARIANTS}
        for i, (index, record, image, mask) in enumerate(batch):
            acc["y"].append(int(record["label"]))
            acc["has_mask"].append(mask is not None)
            made = None if mask is None else self._variants(index, record, image, mask)
            acc["audited"].append(made is not None)
            if made is not None:
                audited.append(i)
                for v in blanking.VARIANTS:
                    blanked[v].append(preprocess_image(made[v], self.config))
        if audited:
            self._measure(images, batch, audited, blanked)

    def _measure(self, images, batch, audited, blanked) -> None:
        acc = self.acc
        for v in blanking.VARIANTS:
            acc[v].append(
                np.asarray(self.model.predict_on_batch(np.stack(blanked[v])[..., None]), np.float64)
            )
        masks = np.stack([batch[i][3] for i in audited])
        maps, self.feature_map = cams.class_maps(self.grad_model, images[audited])
        for key, terms in zip(("inside", "blind", "evidence"), cams.share_terms(maps, masks)):
            acc[key].append(terms)
        acc["ideal"].append(cams.ideal_shares(masks, self.feature_map))
        share = -(-self.examples // len(self.manifest.class_names))  # examples per class, so all show
        for j, i in enumerate(audited):
            label = int(batch[i][1]["label"])
            if sum(e[3] == label for e in acc["examples"]) >= share or len(acc["examples"]) >= self.examples:
                continue
            pooled = maps[j].sum(axis=0)
            pooled = pooled / max(float(pooled.max()), 1e-12)
            acc["examples"].append((images[i, ..., 0], pooled, masks[j], label, blanked["lungs_blanked"][j]))

    def _variants(self, index, record, image, mask) -> dict | None:
        """The record's four blanked variants before preprocessing, or None (the reason recorded)."""
        try:
            source, lungs, how = blanking.unequalized(
                record, self.manifest, record_image=image, record_mask=mask
            )
        except blanking.Unusable as e:
            self.acc["left_out"].append({"path": record["path"], "reason": str(e)})
            return None
        made, placebo_area = blanking.variants(source, lungs, np.random.default_rng([self.seed, index]))
        self.acc["placebo_area"].append(placebo_area)
        self.blanked_from[how] = self.blanked_from.get(how, 0) + 1
        return made
