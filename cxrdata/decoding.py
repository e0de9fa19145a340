"""Decoding any supported image file into a 2-D uint8 grayscale array.

Pillow decodes PNG, JPEG, WebP, BMP and TIFF (8- and 16-bit gray, 32-bit
integer and float, RGB, RGBA, palette), and `cxrdata.dicom` decodes DICOM
(header by pydicom; pixels by pydicom for uncompressed, deflated and RLE, by
tensorflow-io for JPEG, JPEG-LS and JPEG 2000).

Memory follows what a file holds, not what it claims: an image over the pixel
cap is rejected before its pixels are decoded; 16-bit, 32-bit and float images
are scaled to 8 bits one strip of rows at a time; a JPEG of more than
`JPEG_DRAFT_PIXELS` pixels is decoded by libjpeg at 1/2, 1/4 or 1/8 scale
(Pillow's `draft`, scaling in the DCT), the least reduction that brings it
under that budget. Smaller JPEGs (every chest X-ray seen so far) decode at full
size, so their bytes do not change; a drafted one differs from a full decode
followed by a resize by a few gray levels.

No flat or non-finite image is returned: a float image holding NaN or an
infinity, a source with one value and an image that comes out with one gray
level are rejected (`FlatImageError`, a `DecodeError`).
"""

from __future__ import annotations

import functools
import io
import math
import os

import numpy as np

from cxrdata._decode_common import (
    SOURCE_CONSTANT,
    DecodeError,
    FlatImageError,
    check_not_flat,
    check_pixel_count,
    is_dicom,
    read_file,
)
from cxrdata.dicom import DICOM_WINDOWS, decode_dicom
from cxrdata.utils.argument_validation import check_choice

__all__ = ["DecodeError", "FlatImageError", "check_pixel_count", "decode_image", "is_dicom"]

JPEG_DRAFT_PIXELS = 32 << 20  # a JPEG over this many pixels is decoded at a reduced scale
_STRIP_PIXELS = 1 << 18  # 16-bit and float images are scaled one strip of rows at a time
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_CONVERTED = "constant after conversion to 8 bits"


def decode_image(
    data: bytes | str | os.PathLike, *, name: str = "", dicom_window: str = "auto"
) -> np.ndarray:
    """Decodes one image file into a 2-D uint8 grayscale array.

    8-bit data is kept as is; 16-bit data is scaled to 8 bits over its full
    range; color is converted with ITU-R 601 luma (as Keras' `color_mode="grayscale"`).
    An image of more than `PIL.Image.MAX_IMAGE_PIXELS` pixels is rejected
    before its pixels are decoded. DICOM: see `cxrdata.dicom`; the header is
    checked against the pixel data first, only the first frame is decoded,
    and MONOCHROME1 images are inverted.

    Args:
        data: the file's bytes, or its path (a regular file: a FIFO or a
            device is refused at once).
        name: the file name, used to recognize DICOM files without a preamble.
        dicom_window: how DICOM stored values become 8 bits: "auto" (Rescale
            Slope/Intercept, then the file's VOI LUT or first window; without
            one, 8-bit data as is and other data over its 0.5th-99.5th
            percentile range), "minmax" (always that percentile range) or
            "none" (cxrdata 0.1's scaling over the full BitsStored range).
            Defaults to "auto".

    Returns:
        A uint8 array of shape (height, width), with more than one gray level.

    Raises:
        DecodeError: the data is empty, truncated, corrupt, too large, flat
            (`FlatImageError`), non-finite or not an image.
        OSError: the path cannot be read or is not a regular file.
        ValueError: `dicom_window` is not one of the above.

    Example:
        >>> image = decode_image("chest.dcm", dicom_window="auto")  # doctest: +SKIP
    """
    check_choice("dicom_window", dicom_window, DICOM_WINDOWS)
    data, name = read_file(data, name)
    if not data:
        raise DecodeError("empty file")
    if is_dicom(data, name):
        return decode_dicom(data, dicom_window=dicom_window)
    return _decode_pillow(data)


@functools.lru_cache(maxsize=1)
def _lut16() -> np.ndarray:
    """16-bit value to 8 bits over the full range, rounded: (v * 255 + 32767) // 65535."""
    return ((np.arange(65536, dtype=np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def _scale_to_8_bits(im) -> np.ndarray:
    """A 16-bit, 32-bit integer or float Pillow image to uint8, strip by strip.

    Only the uint8 result and one strip of temporaries are allocated beside
    Pillow's decoded pixels (a 9000x9000 16-bit PNG needs about 81 MB more, not
    gigabytes of int64 temporaries): integers go through a lookup table, floats
    are stretched over their range (`getextrema` reads it without a copy; it
    skips NaN, so each float strip is checked for NaN and infinities).
    """
    width, height = im.size
    out = np.empty((height, width), np.uint8)
    lo, hi = (float(v) for v in im.getextrema())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DecodeError(f"non-finite pixel values: the image ranges from {lo} to {hi}")
    if hi == lo:
        raise FlatImageError(f"{SOURCE_CONSTANT} (every pixel is {lo:g})")
    step = max(1, _STRIP_PIXELS // max(1, width))
    for top in range(0, height, step):
        bottom = min(height, top + step)
        strip = np.asarray(im.crop((0, top, width, bottom)))
        if strip.dtype.kind == "f":
            if not np.isfinite(strip).all():
                raise DecodeError(f"non-finite pixel values: NaN in rows {top}-{bottom - 1}")
            out[top:bottom] = np.clip(np.rint((strip - lo) * (255.0 / (hi - lo))), 0, 255)
        else:
            if strip.dtype != np.uint16:  # 32-bit "I" images, and byte-swapped 16-bit ones
                strip = np.clip(strip, 0, 65535).astype(np.uint16)
            out[top:bottom] = _lut16()[strip]
    return check_not_flat(out, _CONVERTED)


def _draft(im) -> None:
    """Asks libjpeg for the least DCT scaling (1/2, 1/4, 1/8) that brings a JPEG under the budget."""
    width, height = im.size
    if im.format != "JPEG" or width * height <= JPEG_DRAFT_PIXELS:
        return
    scale = next((s for s in (2, 4, 8) if -(-width // s) * -(-height // s) <= JPEG_DRAFT_PIXELS), 8)
    im.draft("L" if im.mode in ("L", "RGB", "YCbCr") else None, (-(-width // scale), -(-height // scale)))


def _check_source(im) -> None:
    """Raises FlatImageError if every pixel of the (8-bit) Pillow image has one value."""
    extrema = im.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if all(lo == hi for lo, hi in bands):
        value = bands[0][0] if len(bands) == 1 else tuple(lo for lo, _ in bands)
        raise FlatImageError(f"{SOURCE_CONSTANT} (every pixel is {value})", value if im.mode == "L" else None)


def _decode_pillow(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            check_pixel_count(*im.size)  # before any pixel is decoded
            _draft(im)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no copy unless the image must turn
            if im.mode in _WIDE_MODES:
                return _scale_to_8_bits(im)
            _check_source(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA").convert("RGB")
            if im.mode != "L":
                im = im.convert("L")
            return check_not_flat(np.array(im, dtype=np.uint8), _CONVERTED)
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"truncated or corrupt image: {e}") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image too large: {e}") from None
