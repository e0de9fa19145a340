"""DICOM stored values into display uint8: Modality LUT, VOI LUT or window, or a robust range.

See `cxrdata.dicom` for the policy. Nothing flat or non-finite comes out: a
Rescale Slope of 0, a non-finite slope or intercept, or one that makes the
rescaled values overflow; a non-finite window; a source image with one stored
value; and an image that one gray level covers after windowing are all
rejected (`DecodeError`, `FlatImageError`) with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cxrdata._decode_common import SOURCE_CONSTANT, DecodeError, FlatImageError, check_not_flat

ROBUST_PERCENTILES = (0.5, 99.5)  # of the rescaled values, for the "minmax" range
_STRIP_PIXELS = 1 << 18  # values are converted one strip of rows at a time


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _by_strips(stored: np.ndarray, convert) -> np.ndarray:
    """`convert` (elementwise, to uint8) over strips of rows: the float64 temporaries of the
    Modality LUT and window take one strip, not gigabytes for a large image."""
    rows, columns = stored.shape[:2]
    out = np.empty((rows, columns), np.uint8)
    step = max(1, _STRIP_PIXELS // max(1, columns))
    for top in range(0, rows, step):
        out[top : top + step] = convert(stored[top : top + step])
    return out


def color_to_gray(rgb: np.ndarray, bits: int) -> np.ndarray:
    """RGB stored values to gray by ITU-R 601 luma, scaled over BitsStored (no window)."""
    top = (1 << bits) - 1
    if int(rgb.min()) == int(rgb.max()):
        raise FlatImageError(f"{SOURCE_CONSTANT} (every stored value is {int(rgb.min())})")

    def gray(strip):
        arr = np.clip(strip.astype(np.int64), 0, top)
        arr = (arr[..., 0] * 299 + arr[..., 1] * 587 + arr[..., 2] * 114 + 500) // 1000
        return (arr * 255 + top // 2) // top if top != 255 else arr

    return check_not_flat(_by_strips(rgb, gray), "constant after conversion to 8 bits")


def to_uint8(stored: np.ndarray, ds, bits: int, window: str) -> np.ndarray:
    """Stored values (any integer dtype; signed where PixelRepresentation is 1) into display uint8."""
    monochrome1 = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    lowest, highest = int(stored.min()), int(stored.max())
    if lowest == highest:
        raise FlatImageError(f"{SOURCE_CONSTANT} (every stored value is {lowest})")
    if window == "none":  # cxrdata 0.1: stored value over the full BitsStored range
        top = (1 << bits) - 1

        def legacy(strip):
            arr = np.clip(
                strip.astype(np.int64) + (1 << (bits - 1)) if signed else strip.astype(np.int64), 0, top
            )
            arr = top - arr if monochrome1 else arr
            return (arr * 255 + top // 2) // top if top != 255 else arr

        return check_not_flat(_by_strips(stored, legacy), "constant after conversion to 8 bits")
    unit, how = _unit_map(stored, ds, bits, window, _check_rescale(ds, lowest, highest))
    out = _by_strips(
        stored, lambda strip: np.clip(strip, 0, 255) if unit is None else np.rint(unit(strip) * 255.0)
    )
    check_not_flat(out, "constant after windowing", f" with {how}; use dicom_window='minmax' or 'none'")
    return 255 - out if monochrome1 else out


def _unit_map(stored: np.ndarray, ds, bits: int, window: str, rescaled: bool):
    """The map from stored values to [0, 1] that `window` gives this file (None: 8 bits as
    stored), and how it was chosen, for messages."""
    from pydicom.pixels import apply_modality_lut

    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if window == "auto" and ds.get("VOILUTSequence"):
        return (lambda strip: _voi_lut(apply_modality_lut(strip, ds), ds)), "the file's VOI LUT"
    if window == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        how = f"the file's window (WindowCenter={ds.WindowCenter}, WindowWidth={ds.WindowWidth})"
        return (lambda strip: _window(apply_modality_lut(strip, ds), ds)), how
    if window == "auto" and bits == 8 and not signed and not rescaled:
        return None, "the stored values"  # 8-bit data without a window is kept as is, like an 8-bit PNG
    values = apply_modality_lut(stored, ds)  # `stored` itself when nothing is rescaled
    lo, hi = _robust_limits(values, overwrite=values is not stored)
    del values

    def scale(strip):
        if not hi > lo:
            return np.zeros(strip.shape, np.float64)
        return np.clip((apply_modality_lut(strip, ds).astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)

    return scale, "the 0.5-99.5th percentile range"


def _check_rescale(ds, lowest: int, highest: int) -> bool:
    """Whether a Modality LUT applies; rejects a rescale that would flatten or overflow the image."""
    if "ModalityLUTSequence" in ds:
        return True
    try:
        slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    except (TypeError, ValueError) as e:
        raise DecodeError(f"invalid DICOM rescale: {_first_line(e)}; use dicom_window='none'") from None
    ends = (lowest * slope + intercept, highest * slope + intercept) if math.isfinite(slope) else ()
    if slope == 0 or not ends or not all(math.isfinite(v) for v in (intercept, *ends)):
        raise DecodeError(
            f"invalid DICOM rescale: RescaleSlope={slope:g}, RescaleIntercept={intercept:g} "
            f"{'flattens the image' if slope == 0 else 'gives non-finite values'}; "
            "use dicom_window='none' to ignore it"
        )
    return slope != 1 or intercept != 0


def _number(ds, key: str, default: float) -> float:
    value = ds.get(key)
    return default if value is None or value == "" else float(value)


def _voi_lut(values: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_voi

    depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    try:
        out = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    except Exception as e:
        raise DecodeError(
            f"invalid DICOM VOI LUT: {_first_line(e)}; use dicom_window='minmax' to ignore it"
        ) from None
    return np.clip(out.astype(np.float64) / ((1 << depth) - 1), 0.0, 1.0)


def _window(values: np.ndarray, ds) -> np.ndarray:
    """The file's first window over `values` (already rescaled), as floats in [0, 1]."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    # pydicom maps a window onto the range of the stored values; a data set with a 1-bit
    # unsigned range and no rescale makes that range [0, 1], so the standard's formulas
    # (LINEAR, LINEAR_EXACT, SIGMOID) give the fraction of the display range directly.
    unit = Dataset()
    unit.PhotometricInterpretation, unit.BitsStored, unit.PixelRepresentation = "MONOCHROME2", 1, 0
    unit.WindowCenter, unit.WindowWidth = ds.WindowCenter, ds.WindowWidth
    if "VOILUTFunction" in ds:
        unit.VOILUTFunction = ds.VOILUTFunction
    try:
        center, width = (float(_first(v)) for v in (ds.WindowCenter, ds.WindowWidth))
        if not (math.isfinite(center) and math.isfinite(width)):
            raise ValueError(f"WindowCenter={center:g}, WindowWidth={width:g} is not finite")
        out = apply_windowing(values.astype(np.float64), unit, index=0)
    except Exception as e:
        raise DecodeError(
            f"invalid DICOM window: {_first_line(e)}; use dicom_window='minmax' to ignore it"
        ) from None
    return np.clip(out, 0.0, 1.0)


def _first(value):
    """The first of a multi-valued element (pydicom gives a list), or the value itself."""
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _robust_limits(values: np.ndarray, overwrite: bool) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles of the rescaled values, or their min and max if equal.

    `overwrite` lets numpy partition `values` in place (a temporary of ours) instead of a copy.
    """
    lowest, highest = float(np.min(values)), float(np.max(values))
    lo, hi = np.percentile(values, ROBUST_PERCENTILES, overwrite_input=overwrite)
    return (lo, hi) if hi > lo else (lowest, highest)
