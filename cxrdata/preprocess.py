"""Per-image preprocessing: grayscale uint8 in, resized and equalized uint8 out.

The order is fixed: (decode, to grayscale: `cxrdata.decoding`) then resize, then
equalize. `equalize="local"` calls `skimage.filters.rank.equalize` with
`disk(radius)` on the resized image, so its output is bit-identical to the
reference notebook's per-image call.

Resizing (`resampler="cxrdata"`, the default since datasets record it) is
Pillow's published two-pass convolution (`libImaging/Resample.c`: float64
weights, 22-bit fixed point, a horizontal pass into uint8, then a vertical
one), written out here in numpy and, identically, as TensorFlow ops in
`cxrdata.graph_preprocess`, so an exported model resizes raw images in its
graph to the very bytes the converter makes. Pillow 13's own `Image.resize`
runs the two passes in an order of its choosing, which changes the last bit
of some pixels; `resampler="pillow"` (what manifests without the key were
made with) keeps calling it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cxrdata.utils.argument_validation import check_int, standardize_image_size

EQUALIZE_MODES = ("local", "clahe", "global", "none")
RESAMPLERS = ("cxrdata", "pillow")
# Filters `resampler="cxrdata"` computes itself (support, the filter function below).
_SUPPORTS = {"bilinear": 1.0, "bicubic": 2.0}
_PRECISION_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
ASPECT_MODES = ("stretch", "crop", "pad")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter that shapes the pixels of a converted image.

    Attributes:
        image_size: `(height, width)` of the output. Defaults to (299, 299).
        aspect: "stretch" (resize ignoring aspect, as `flow_from_directory`
            does), "crop" (center-crop to the target aspect, then resize) or
            "pad" (fit inside, pad with black). Defaults to "stretch".
        equalize: "local" (rank equalization over a disk, the reference
            method), "clahe", "global" (histogram equalization) or "none".
            Defaults to "local".
        equalize_radius: disk radius in pixels for `equalize="local"` (one name
            for it everywhere: conversion, training, tuning, the manifest). Defaults to 70.
        clip_limit: CLAHE clip limit. Defaults to 0.01.
        interpolation: resampling filter for resizing. Defaults to "bilinear".
        resampler: "cxrdata" (Pillow's algorithm with a fixed pass order, the
            same bytes as `cxrdata.graph_preprocess` in an exported model;
            bilinear and bicubic) or "pillow" (`PIL.Image.resize`, how
            datasets without this key in their manifest were made). Defaults
            to "cxrdata".
    """

    image_size: tuple[int, int] = (299, 299)
    aspect: str = "stretch"
    equalize: str = "local"
    equalize_radius: int = 70
    clip_limit: float = 0.01
    interpolation: str = "bilinear"
    resampler: str = "cxrdata"

    def __post_init__(self):
        object.__setattr__(self, "image_size", standardize_image_size(self.image_size, minimum=8))
        _check_choice("aspect", self.aspect, ASPECT_MODES)
        _check_choice("equalize", self.equalize, EQUALIZE_MODES)
        _check_choice("interpolation", self.interpolation, tuple(INTERPOLATIONS))
        _check_choice("resampler", self.resampler, RESAMPLERS)
        if self.resampler == "cxrdata" and self.interpolation not in _SUPPORTS:
            object.__setattr__(self, "resampler", "pillow")  # nearest, lanczos: Pillow's own
        object.__setattr__(
            self, "equalize_radius", check_int("equalize_radius", self.equalize_radius, minimum=1)
        )
        if not 0 < float(self.clip_limit) <= 1:
            raise ValueError(f"`clip_limit` must be in (0, 1]. Received: clip_limit={self.clip_limit!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {("equalize_radius" if k == "radius" else k): v for k, v in d.items()}  # manifests before 0.2
        kwargs = {k: v for k, v in d.items() if k in fields}
        if "image_size" in kwargs:
            kwargs["image_size"] = tuple(kwargs["image_size"])
        kwargs.setdefault("resampler", "pillow")  # what datasets without the key were resized with
        return cls(**kwargs)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(choices)}. Received: {name}={value!r}")


@functools.lru_cache(maxsize=8)
def _disk(radius: int) -> np.ndarray:
    from skimage.morphology import disk

    return disk(radius)


def _filter(x: np.ndarray, interpolation: str) -> np.ndarray:
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5  # Pillow's bicubic, term for term
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _resample_axis1(image: np.ndarray, out_size: int, interpolation: str) -> np.ndarray:
    """One of Pillow's passes: axis 1 of a uint8 `[rows, n]` image resampled to `out_size`.

    Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` in float64, in
    its order of operations (the weight sum one tap after another), then the
    fixed-point sums. `cxrdata.graph_preprocess` does the same in TensorFlow.
    The sums are integers, so the order they are added in does not matter:
    they are accumulated tap by tap in the narrowest type that holds them
    exactly (int32, Pillow's own accumulator, unless the weights could exceed
    it), and only one `[rows, out_size]` accumulator and one tap's gather are
    allocated (a 9400x9400 image to 299 px needs about 30 MB, not gigabytes).
    """
    in_size = image.shape[1]
    scale = float(in_size) / float(out_size)
    filterscale = max(scale, 1.0)
    support = _SUPPORTS[interpolation] * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): toward 0
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    position = (xmin[:, None] + taps[None, :]).astype(np.float64) - center[:, None] + 0.5
    weights = np.where(taps[None, :] < xmax[:, None], _filter(position * ss, interpolation), 0.0)
    total = np.zeros(out_size)
    for i in range(ksize):
        total = total + weights[:, i]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    fixed = weights * float(1 << _PRECISION_BITS)
    fixed = np.where(weights < 0, fixed - 0.5, fixed + 0.5).astype(np.int64)
    index = np.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    rounding = 1 << (_PRECISION_BITS - 1)
    bound = 255 * int(np.abs(fixed).sum(axis=1).max()) + rounding  # no partial sum is larger
    dtype = np.int32 if bound < 2**31 else np.int64
    sums = np.full((image.shape[0], out_size), rounding, dtype)
    for k in range(ksize):
        sums += image[:, index[:, k]].astype(dtype) * fixed[:, k].astype(dtype)
    return np.clip(sums >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def _resize_exact(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Pillow's two-pass resize of a 2-D uint8 image to `size` `(height, width)`, horizontal first."""
    height, width = size
    x = image
    if x.shape[1] != width:
        x = _resample_axis1(x, width, interpolation)
    if x.shape[0] != height:
        x = _resample_axis1(x.T, height, interpolation).T
    return np.ascontiguousarray(x, dtype=np.uint8)


def resize(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Resizes a 2-D uint8 image to `config.image_size` with `config.aspect`."""
    if config.resampler == "cxrdata":
        return _resize_cxrdata(image, config)
    height, width = config.image_size
    h, w = image.shape
    resample = INTERPOLATIONS[config.interpolation]
    pil = Image.fromarray(image, mode="L")
    if config.aspect == "crop":
        scale = min(h / height, w / width)
        ch, cw = round(height * scale), round(width * scale)
        top, left = (h - ch) // 2, (w - cw) // 2
        pil = pil.crop((left, top, left + cw, top + ch))
    elif config.aspect == "pad":
        scale = min(height / h, width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = pil.resize((nw, nh), resample=resample) if (nh, nw) != (h, w) else pil
        canvas = Image.new("L", (width, height), 0)
        canvas.paste(inner, ((width - nw) // 2, (height - nh) // 2))
        return np.array(canvas)
    if pil.size != (width, height):
        pil = pil.resize((width, height), resample=resample)
    return np.array(pil)


def _resize_cxrdata(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """`resize` with `resampler="cxrdata"`: the same crop, pad and rounding, the exact resampler."""
    height, width = config.image_size
    h, w = image.shape
    if config.aspect == "crop":
        scale = min(h / height, w / width)
        ch, cw = round(height * scale), round(width * scale)
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image[top : top + ch, left : left + cw]
    elif config.aspect == "pad":
        scale = min(height / h, width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = _resize_exact(image, (nh, nw), config.interpolation)
        canvas = np.zeros((height, width), np.uint8)
        top, left = (height - nh) // 2, (width - nw) // 2
        canvas[top : top + nh, left : left + nw] = inner
        return canvas
    return _resize_exact(image, (height, width), config.interpolation)


def equalize(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Equalizes a 2-D uint8 image as `config.equalize` says."""
    if config.equalize == "none":
        return image
    if config.equalize == "local":
        from skimage.filters.rank import equalize as rank_equalize

        return rank_equalize(image, footprint=_disk(config.equalize_radius))
    from skimage import exposure
    from skimage.util import img_as_ubyte

    if config.equalize == "clahe":
        return img_as_ubyte(exposure.equalize_adapthist(image, clip_limit=config.clip_limit))
    return img_as_ubyte(exposure.equalize_hist(image))


def preprocess_image(image: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """Resizes then equalizes one grayscale image, as `cxr convert` does.

    Args:
        image: 2-D uint8 array (see `cxrdata.decode_image`).
        config: a `PreprocessConfig`. Defaults to `PreprocessConfig()`.

    Returns:
        A uint8 array of shape `config.image_size`.

    Example:
        >>> import numpy as np
        >>> out = preprocess_image(np.zeros((512, 400), np.uint8), PreprocessConfig(image_size=64))
        >>> out.shape, out.dtype
        ((64, 64), dtype('uint8'))
    """
    config = config or PreprocessConfig()
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(
            f"`image` must be a 2-D uint8 array. Received: shape={image.shape}, dtype={image.dtype}"
        )
    return np.ascontiguousarray(equalize(resize(image, config), config))
