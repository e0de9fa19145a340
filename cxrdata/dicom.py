"""DICOM files into 2-D uint8 arrays: the header checked before any pixel is decoded.

The header is parsed with pydicom. Before anything is decoded, a file is
rejected (`DecodeError`, whose message is the reason) when its pixel data is
shorter or longer than Rows x Columns x SamplesPerPixel x BitsAllocated x
frames says (uncompressed), when its compressed pixel data is cut off, or when
one frame has more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (the cap Pillow
uses against decompression bombs, read when the file is decoded: set it to
change the cap, or to None to lift it). So a tiny file cannot make the decoder
allocate gigabytes, and a short file is never padded with zeros.

Only the first frame of a multi-frame file is decoded (policy "first"):
pydicom decodes that frame alone for the native transfer syntaxes
(uncompressed, deflated, RLE); for JPEG, JPEG-LS and JPEG 2000 the first
frame's fragments are wrapped in a minimal single-frame file (the image pixel
attributes only, MONOCHROME1 relabelled MONOCHROME2) that tensorflow-io
(DCMTK) decodes to the stored values.

Stored values become 8 bits in floating point, one rounding at the end:
`dicom_window="auto"` applies the Modality LUT (Rescale Slope/Intercept),
then the first VOI LUT or window (Window Center/Width, VOI LUT Function
LINEAR, LINEAR_EXACT or SIGMOID) the file carries, both with pydicom; without
one, 8-bit unsigned data with no rescale is kept as is (like an 8-bit PNG) and
anything else is stretched over its robust range, the 0.5th to 99.5th
percentile of the rescaled values. `"minmax"` always uses that robust range.
`"none"` reproduces cxrdata 0.1's scaling: the stored value (signed values as
offset binary, value + 2**(BitsStored - 1)) times 255 / (2**BitsStored - 1),
no rescale, no window. MONOCHROME1 images are inverted last (255 - x), so
that they look like MONOCHROME2. Color images are turned to gray with ITU-R
601 luma and scaled over BitsStored; they are not windowed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from cxrdata.sources import DecodeError, check_pixel_count

DICOM_WINDOWS = ("auto", "minmax", "none")
ROBUST_PERCENTILES = (0.5, 99.5)  # of the rescaled values, for the "minmax" range
MULTI_FRAME_POLICY = "first"  # which frame of a multi-frame file is kept

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")


def _uids():
    from pydicom import uid

    native = {
        uid.ImplicitVRLittleEndian,
        uid.ExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.RLELossless,
    }
    dcmtk = {
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
    }
    return native, dcmtk


def decode_dicom(data: bytes, *, dicom_window: str = "auto") -> np.ndarray:
    """Decodes the first frame of a DICOM file into a 2-D uint8 array.

    Args:
        data: the file's bytes.
        dicom_window: "auto", "minmax" or "none" (see the module docstring).
            Defaults to "auto".

    Returns:
        A uint8 array of shape (Rows, Columns).

    Raises:
        DecodeError: the file is unreadable, truncated, inconsistent with its
            header, too large, or in a format this library does not decode.
    """
    ds = _read(data)
    syntax = ds.file_meta.TransferSyntaxUID
    rows, columns, samples, bits, frames = _check(ds, syntax)
    native, _ = _uids()
    try:
        stored = _decode_native(ds) if syntax in native else _decode_dcmtk(ds, syntax, frames)
    except DecodeError:
        raise
    except Exception as e:  # decoders raise many types on corrupt data
        raise DecodeError(f"corrupt DICOM pixel data: {_first_line(e)}") from None
    if stored.shape[:2] != (rows, columns):
        raise DecodeError(
            f"corrupt DICOM: decoded {stored.shape[0]}x{stored.shape[1]} pixels, "
            f"the header says {rows}x{columns}"
        )
    if samples == 3:
        return _color_to_gray(stored, bits)
    return _to_uint8(stored, ds, bits, dicom_window)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _read(data: bytes):
    import pydicom
    from pydicom import uid

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as e:  # pydicom raises many types on garbage
            raise DecodeError(f"unreadable DICOM: {_first_line(e)}") from None
    if "PixelData" not in ds:
        if any("delimiter" in str(w.message) for w in caught):
            raise DecodeError("truncated DICOM: compressed pixel data cut off")
        raise DecodeError("unreadable DICOM: no pixel data")
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare data set: pydicom found its encoding
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            uid.ImplicitVRLittleEndian
            if implicit
            else uid.ExplicitVRLittleEndian
            if little
            else uid.ExplicitVRBigEndian
        )
    return ds


def _check(ds, syntax) -> tuple[int, int, int, int, int]:
    """Checks the header against itself and the pixel data; returns (rows, columns, samples, bits, frames)."""
    missing = [
        k
        for k in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation")
        if ds.get(k) in (None, "")
    ]
    if missing:
        raise DecodeError(f"unreadable DICOM: no {', '.join(missing)} in the header")
    rows, columns, allocated, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated), int(ds.BitsStored)
    samples, frames = int(ds.get("SamplesPerPixel") or 1), int(ds.get("NumberOfFrames") or 1)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if rows < 1 or columns < 1 or frames < 1:
        raise DecodeError(f"unreadable DICOM: Rows={rows}, Columns={columns}, NumberOfFrames={frames}")
    if allocated not in (8, 16) or not 1 <= bits <= allocated:
        raise DecodeError(f"unsupported DICOM BitsAllocated={allocated}, BitsStored={bits}")
    if int(ds.get("PixelRepresentation") or 0) not in (0, 1):
        raise DecodeError(f"unreadable DICOM: PixelRepresentation={ds.PixelRepresentation}")
    if not ((samples == 1 and photometric in _MONOCHROME) or (samples == 3 and photometric in _COLOR)):
        raise DecodeError(
            f"unsupported DICOM PhotometricInterpretation={photometric} " f"with SamplesPerPixel={samples}"
        )
    try:
        check_pixel_count(columns, rows)
    except DecodeError as e:
        raise DecodeError(f"{e} (DICOM header: Rows={rows}, Columns={columns})") from None
    native, dcmtk = _uids()
    if syntax not in native | dcmtk:
        raise DecodeError(f"unsupported DICOM transfer syntax {syntax.name}")
    if not syntax.is_encapsulated:
        expected = -(-rows * columns * samples * allocated * frames // 8)
        actual = len(ds.PixelData)
        shape = f"{rows}x{columns}x{samples}x{allocated} bits x {frames} frame(s)"
        if actual < expected:
            raise DecodeError(
                f"truncated DICOM: pixel data holds {actual} bytes, the header " f"({shape}) needs {expected}"
            )
        if actual > expected + 1:  # one byte pads odd lengths
            raise DecodeError(
                f"inconsistent DICOM: pixel data holds {actual} bytes, the header "
                f"({shape}) says {expected}"
            )
    return rows, columns, samples, bits, frames


def _decode_native(ds) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return pixel_array(ds, index=0).astype(np.int64)  # only frame 0 is decoded


def _decode_dcmtk(ds, syntax, frames: int) -> np.ndarray:
    """The stored values of frame 0, decoded by tensorflow-io from a minimal single-frame file."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    try:
        fragments = next(generate_fragmented_frames(ds.PixelData, number_of_frames=frames))
    except Exception as e:
        raise DecodeError(f"truncated or corrupt DICOM: {_first_line(e)}") from None
    # Only the attributes DCMTK needs to decode stored values: no rescale, no window, no
    # presentation LUT, and MONOCHROME2 (DCMTK's own MONOCHROME1 inversion is off by one
    # on some pixels; inversion happens exactly in _to_uint8).
    single = Dataset()
    for key in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PlanarConfiguration",
    ):
        if key in ds:
            setattr(single, key, ds[key].value)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    single.PhotometricInterpretation = "MONOCHROME2" if photometric == "MONOCHROME1" else photometric
    single.PixelData = encapsulate([b"".join(fragments)])
    single["PixelData"].VR = "OB"
    single.file_meta = FileMetaDataset()
    single.file_meta.TransferSyntaxUID = syntax
    single.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    single.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, single, enforce_file_format=True)

    import tensorflow as tf
    import tensorflow_io as tfio

    try:
        image = tfio.image.decode_dicom_image(
            buf.getvalue(), dtype=tf.uint16, scale="preserve", on_error="strict"
        ).numpy()
    except tf.errors.OpError as e:
        raise DecodeError(f"unreadable DICOM: {_first_line(e)}") from None
    if image.size == 0:
        raise DecodeError("DICOM without pixel data")
    arr = image[0].astype(np.int64)
    arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    if int(ds.get("PixelRepresentation") or 0) == 1:  # DCMTK returns signed values as offset binary
        arr -= 1 << (int(ds.BitsStored) - 1)
    return arr


def _color_to_gray(rgb: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    arr = np.clip(rgb, 0, top)
    arr = (arr[..., 0] * 299 + arr[..., 1] * 587 + arr[..., 2] * 114 + 500) // 1000
    if top != 255:
        arr = (arr * 255 + top // 2) // top
    return arr.astype(np.uint8)


def _to_uint8(stored: np.ndarray, ds, bits: int, window: str) -> np.ndarray:
    """Stored values (signed where PixelRepresentation is 1) into display uint8."""
    from pydicom.pixels import apply_modality_lut

    monochrome1 = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if window == "none":  # cxrdata 0.1: stored value over the full BitsStored range
        top = (1 << bits) - 1
        arr = np.clip(stored + (1 << (bits - 1)) if signed else stored, 0, top)
        if monochrome1:
            arr = top - arr
        if top != 255:
            arr = (arr * 255 + top // 2) // top
        return arr.astype(np.uint8)

    rescaled = (
        "ModalityLUTSequence" in ds
        or float(ds.get("RescaleSlope", 1) or 1) != 1
        or float(ds.get("RescaleIntercept", 0) or 0) != 0
    )
    values = apply_modality_lut(stored, ds)
    if window == "auto" and ds.get("VOILUTSequence"):
        unit = _voi_lut(values, ds)
    elif window == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        unit = _window(values, ds)
    elif window == "auto" and bits == 8 and not signed and not rescaled:
        unit = None  # 8-bit data without a window is kept as is, like an 8-bit PNG
    else:
        unit = _robust_range(values)
    out = np.clip(stored, 0, 255) if unit is None else np.rint(unit * 255.0)
    out = out.astype(np.uint8)
    return 255 - out if monochrome1 else out


def _voi_lut(values: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_voi

    depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    try:
        out = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    except Exception as e:
        raise DecodeError(
            f"invalid DICOM VOI LUT: {_first_line(e)}; use dicom_window='minmax' " "to ignore it"
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
        out = apply_windowing(values.astype(np.float64), unit, index=0)
    except Exception as e:
        raise DecodeError(
            f"invalid DICOM window: {_first_line(e)}; use dicom_window='minmax' " "to ignore it"
        ) from None
    return np.clip(out, 0.0, 1.0)


def _robust_range(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, ROBUST_PERCENTILES)
    if not hi > lo:
        lo, hi = float(np.min(values)), float(np.max(values))
    if not hi > lo:
        return np.zeros(values.shape, np.float64)
    return np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
