"""Blanking for the shortcut audit: remove the lungs (or all but them), and nothing else.

Records are stored after the dataset's equalization; local equalization (`disk(70)`)
spreads every lung pixel over 70 pixels around it, so blanking the stored pixels would
leave the lungs' information in their surroundings. The audit therefore blanks the
*unequalized* image and then runs the dataset's own preprocessing on it:

- the source file the record was converted from (the manifest's `src` and the record's
  `path`, checked against the record's SHA-256 and against the record's pixels), with its
  lung mask at the source's resolution (found as `cxr convert` found it), so that no
  lung pixel reaches the resize either; or
- for a dataset converted with `--equalize none` (the model equalizes, or nothing does)
  whose sources are gone, the record's own pixels and mask.

The removed region is not painted one gray (a flat region in the lungs' exact shape is
itself a cue, and a model's own equalization turns a flat region white): it is filled
from the kept region only, with its smooth continuation (a push-pull pyramid of the kept
pixels) plus texture, residuals of the kept pixels copied in tiles from random places of
it (seeded), so the film's grain carries over. Nothing of the removed region enters the
fill, so two films that differ only inside the lungs are identical after lungs-blanking
and preprocessing.

A placebo region has the lungs' area and their shape piece by piece: the lung mask cut
into blocks, each moved (seeded) to where it overlaps neither the lungs nor another
block. Blanking it (or keeping only it) shows what removing any region of the lungs'
size does to the model.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from cxrdata.decoding import DecodeError, decode_image
from cxrdata.preprocess import PreprocessConfig, preprocess_image
from cxrdata.sources import find_mask

VARIANTS = ("lungs_blanked", "lungs_only", "placebo_blanked", "placebo_only")
_BLOCKS = 8  # the placebo's pieces: the mask cut into blocks of 1/8 of the shorter side
_TILES = 16  # the fill's texture: tiles of 1/16 of the shorter side (at least 2 pixels)
MARGIN = 0.01  # the lungs blanked: the mask grown by 1% of the shorter side (at least one pixel)


class Unusable(Exception):
    """A record whose unequalized image cannot be had: the reason is the message."""


def fill(image: np.ndarray, hole: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image` (2-D uint8) with `hole` replaced by what the rest of the image continues into.

    The fill is the kept pixels' smooth continuation (a push-pull pyramid: weighted means of
    kept pixels over ever larger blocks, blended back from coarse to fine) plus texture:
    residuals (kept pixel minus its local mean) copied in tiles from random places of the kept
    region. Only kept pixels and `rng` decide it.

    Args:
        image: 2-D uint8.
        hole: bool, the same shape: the pixels to replace.
        rng: The generator the texture is drawn from.

    Returns:
        A uint8 array of the same shape, equal to `image` outside `hole`.
    """
    kept = ~hole
    if not hole.any() or not kept.any():
        return image.copy()
    values = image.astype(np.float32)
    levels = _pyramid(values * kept, kept.astype(np.float32))
    smooth = _pull(levels)
    local = _pull(levels[2:], shape=image.shape)  # the mean of the kept pixels around each one
    residuals = np.where(kept, values - local, 0.0)
    low, high = np.percentile(residuals[kept], [1, 99])
    residuals = np.clip(residuals, low, high)  # texture, not the kept region's edges
    out = values.copy()
    out[hole] = smooth[hole] + _texture(residuals, kept, hole, rng)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _texture(
    residuals: np.ndarray, kept: np.ndarray, hole: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Residuals for the hole's pixels, copied in square tiles from random places of the kept region.

    Tiles keep the texture's grain (a blurred film's smooth noise, a noisy detector's coarse one);
    where no tile fits wholly in the kept region, single kept pixels are drawn instead.
    """
    from scipy import ndimage

    h, w = hole.shape
    t = max(2, round(min(h, w) / _TILES))
    whole = ndimage.minimum_filter(kept.astype(np.uint8), size=t, origin=-(t // 2)) > 0
    whole[h - t + 1 :], whole[:, w - t + 1 :] = False, False  # a tile starting here would leave the image
    ys, xs = np.nonzero(hole)
    starts = np.argwhere(whole)
    if len(starts) == 0:
        return rng.choice(residuals[kept], size=len(ys))
    tiles = (ys // t) * (w // t + 1) + xs // t
    _, index = np.unique(tiles, return_inverse=True)
    pick = starts[rng.integers(0, len(starts), size=index.max() + 1)][index]
    return residuals[pick[:, 0] + ys % t, pick[:, 1] + xs % t]


def _pyramid(values: np.ndarray, weights: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(weighted sum, weight)] from full size down to one pixel, by 2x2 blocks."""
    levels = [(values, weights)]
    while max(values.shape) > 1:
        h, w = values.shape
        pad = ((0, h % 2), (0, w % 2))
        values, weights = np.pad(values, pad), np.pad(weights, pad)
        values = values.reshape(-1, 2, values.shape[1] // 2, 2).mean(axis=(1, 3))
        weights = weights.reshape(-1, 2, weights.shape[1] // 2, 2).mean(axis=(1, 3))
        levels.append((values, weights))
    return levels


def _pull(levels, shape=None) -> np.ndarray:
    """The estimate at `levels[0]`'s size (or `shape`): kept means, holes from the level above."""
    from PIL import Image

    values, weights = levels[-1]
    estimate = np.divide(values, weights, out=np.zeros_like(values), where=weights > 0)
    for values, weights in reversed(levels[:-1]):
        up = np.asarray(
            Image.fromarray(estimate.astype(np.float32), mode="F").resize(
                values.shape[::-1], Image.Resampling.BILINEAR
            )
        )
        mean = np.divide(values, weights, out=np.zeros_like(values), where=weights > 0)
        estimate = np.where(weights > 0, weights * mean + (1 - weights) * up, up)
    if shape is not None and estimate.shape != shape:
        estimate = np.asarray(
            Image.fromarray(estimate.astype(np.float32), mode="F").resize(
                shape[::-1], Image.Resampling.BILINEAR
            )
        )
    return estimate


def placebo_region(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A region of the lungs' area outside them, made of the mask's own pieces (see the module).

    Pieces that fit nowhere are left out, so the region can be smaller than the lungs; the
    audit reports the ratio of the areas.
    """
    h, w = mask.shape
    b = max(2, round(min(h, w) / _BLOCKS))
    step = max(1, b // 2)
    taken = mask.copy()
    region = np.zeros_like(mask)
    pieces = [
        mask[r : r + b, c : c + b]
        for r in range(0, h, b)
        for c in range(0, w, b)
        if mask[r : r + b, c : c + b].any()
    ]
    spots = [(r, c) for r in range(0, h - b + 1, step) for c in range(0, w - b + 1, step)]
    for k in rng.permutation(len(pieces)):
        piece = pieces[k]
        ph, pw = piece.shape
        free = [(r, c) for r, c in spots if not (taken[r : r + ph, c : c + pw] & piece).any()]
        if not free:
            continue
        r, c = free[rng.integers(len(free))]
        taken[r : r + ph, c : c + pw] |= piece
        region[r : r + ph, c : c + pw] |= piece
    return region


def variants(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[dict, float]:
    """The four blanked variants of a 2-D uint8 image, and the placebo's area over the lungs'.

    "The lungs" are the mask grown by `MARGIN` of the shorter side: a mask's edge pixels still
    hold the lungs' dark rim, which would draw their outline around the fill.
    """
    lungs = grow(mask, max(1, round(MARGIN * min(mask.shape))))
    placebo = placebo_region(lungs, rng)
    out = {
        "lungs_blanked": fill(image, lungs, rng),
        "lungs_only": fill(image, ~lungs, rng),
        "placebo_blanked": fill(image, placebo, rng),
        "placebo_only": fill(image, ~placebo, rng),
    }
    return out, float(placebo.sum() / max(1, lungs.sum()))


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` dilated by a disk of radius `pixels`."""
    from scipy import ndimage
    from skimage.morphology import disk

    return ndimage.binary_dilation(mask, structure=disk(pixels))


def unequalized(record: dict, manifest, *, record_image: np.ndarray, record_mask: np.ndarray):
    """`(image, lung mask, how)`: the record's image before equalization, where to blank it.

    Raises:
        Unusable: Neither the source file nor (for an unequalized dataset) the record serves.
    """
    try:
        image, mask = _from_source(record, manifest, record_image, record_mask)
        return image, mask, "source"
    except Unusable:
        if manifest.preprocessing.get("equalize") != "none":
            raise
    return record_image, record_mask, "record"


def _from_source(record, manifest, record_image, record_mask):
    """The source file's decoded pixels and its lung mask at that resolution, checked against the record."""

    src = manifest.source.get("src")
    path = os.path.join(src, record["path"]) if src else None
    if path is None or not os.path.isfile(path):
        raise Unusable(f"source file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if record["sha256"] and hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise Unusable(f"source file changed since conversion: {path}")
    try:
        original = decode_image(data, name=os.path.basename(path), dicom_window=manifest.dicom_window)
    except DecodeError as e:
        raise Unusable(f"source file unreadable: {e}") from None
    config = PreprocessConfig.from_dict(manifest.preprocessing)
    if not np.array_equal(preprocess_image(original, config), record_image):
        raise Unusable(f"preprocessing the source does not give the record's pixels: {path}")
    mask_path = find_mask(path, record["path"], manifest.source.get("masks"))
    if mask_path is not None:
        return original, _source_mask(mask_path, original.shape)
    if original.shape == record_image.shape and config.aspect == "stretch":
        return original, record_mask  # nothing resized: the record's mask is the source's
    raise Unusable(f"no lung mask at the source's resolution found beside {path}")


def _source_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A lung mask file brought to the source image's size as `cxr convert` does (nearest), as bools."""
    from PIL import Image

    try:
        mask = decode_image(path)
    except (DecodeError, OSError) as e:
        raise Unusable(f"lung mask unreadable: {e}") from None
    if mask.shape != shape:
        mask = np.array(Image.fromarray(mask, mode="L").resize(shape[::-1], Image.Resampling.NEAREST))
    return mask >= 128
