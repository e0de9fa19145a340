"""DICOM files into 2-D uint8 arrays: the header checked before any pixel is decoded.

The header is parsed with pydicom. Before anything is decoded, a file is
rejected (`DecodeError`, whose message is the reason) when its pixel data is
shorter or longer than Rows x Columns x SamplesPerPixel x BitsAllocated x
frames says (uncompressed), when its compressed pixel data is cut off, when
one frame has more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (the cap Pillow
uses against decompression bombs, read when the file is decoded: set it to
change the cap, or to None to lift it), or when a compressed frame's own
codestream header disagrees with the DICOM header (`cxrdata._codestream`).
So a tiny file cannot make the decoder allocate gigabytes, a short file is
never padded with zeros, and no native decoder is handed a frame that does
not fit the buffers the header sizes.

A deflated file (Deflated Explicit VR Little Endian) is inflated here, not by
pydicom (which inflates the whole data set at once): the header first, then
the pixel data with the limit its header gives, keeping only the first
frame's bytes; a stream that inflates past that limit is rejected when it
gets there. So a 1 MB file that inflates to 1 GiB costs the first frame, not
the gigabyte.

Only the first frame of a multi-frame file is decoded (policy "first"):
pydicom decodes that frame alone for the native transfer syntaxes
(uncompressed, deflated, RLE); for JPEG, JPEG-LS and JPEG 2000 the first
frame's fragments are wrapped in a minimal single-frame file (the image pixel
attributes only, MONOCHROME1 relabelled MONOCHROME2) that tensorflow-io
(DCMTK) decodes to the stored values, in a helper process where a crash costs
this file only (`cxrdata._native`).

Stored values become 8 bits in floating point, one rounding at the end
(`cxrdata._windowing`): `dicom_window="auto"` applies the Modality LUT
(Rescale Slope/Intercept), then the first VOI LUT or window (Window
Center/Width, VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID) the file
carries, both with pydicom; without one, 8-bit unsigned data with no rescale
is kept as is (like an 8-bit PNG) and anything else is stretched over its
robust range, the 0.5th to 99.5th percentile of the rescaled values.
`"minmax"` always uses that robust range. `"none"` reproduces cxrdata 0.1's
scaling: the stored value (signed values as offset binary, value +
2**(BitsStored - 1)) times 255 / (2**BitsStored - 1), no rescale, no window.
MONOCHROME1 images are inverted last (255 - x), so that they look like
MONOCHROME2. Color images are turned to gray with ITU-R 601 luma and scaled
over BitsStored; they are not windowed. A rescale that flattens the image or
overflows, a non-finite window, a constant source and an image that comes out
constant are rejected.
"""

from __future__ import annotations

import io
import warnings
import zlib

import numpy as np

from cxrdata import _native
from cxrdata._codestream import check_frame
from cxrdata._decode_common import DecodeError, check_pixel_count
from cxrdata._windowing import ROBUST_PERCENTILES, color_to_gray, to_uint8

__all__ = ["DICOM_WINDOWS", "MULTI_FRAME_POLICY", "ROBUST_PERCENTILES", "decode_dicom"]

DICOM_WINDOWS = ("auto", "minmax", "none")
MULTI_FRAME_POLICY = "first"  # which frame of a multi-frame file is kept
DEFLATED_HEADER_LIMIT = 16 << 20  # inflated bytes allowed before a deflated file's pixel data
DEFLATED_TRAILER_LIMIT = 1 << 20  # and after it

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"}


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
            header, too large, flat, or in a format this library does not decode.
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
        return color_to_gray(stored, bits)
    return to_uint8(stored, ds, bits, dicom_window)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _read(data: bytes):
    import pydicom
    from pydicom import uid

    offset, syntax = _meta_end(data)
    if syntax == _DEFLATED:
        return _read_deflated(data, offset)
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


def _meta_end(data: bytes) -> tuple[int, str | None]:
    """Where the file meta group (0002) ends, and its transfer syntax; read without pydicom,
    so that a deflated data set is not inflated to learn it is one."""
    pos, syntax = (132 if data[128:132] == b"DICM" else 0), None
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        element, vr = int.from_bytes(data[pos + 2 : pos + 4], "little"), data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, start = int.from_bytes(data[pos + 8 : pos + 12], "little"), pos + 12
        else:
            length, start = int.from_bytes(data[pos + 6 : pos + 8], "little"), pos + 8
        if element == 0x0010:
            syntax = data[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return pos, syntax


def _read_deflated(data: bytes, offset: int):
    """A deflated file's data set, inflated within the limits its header gives (module docstring).

    Only the first frame's pixel bytes are kept; the data set says one frame.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    stream = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = stream.decompress(data[offset:], DEFLATED_HEADER_LIMIT)
        fp = io.BytesIO(head)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010)
    except Exception as e:  # zlib and pydicom raise many types on garbage
        raise DecodeError(f"unreadable DICOM: {_first_line(e)}") from None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    start = fp.tell()
    if head[start : start + 4] != b"\xe0\x7f\x10\x00" or head[start + 4 : start + 6] not in (b"OB", b"OW"):
        if len(head) >= DEFLATED_HEADER_LIMIT:
            raise DecodeError(f"unreadable DICOM: no pixel data in its first {DEFLATED_HEADER_LIMIT} bytes")
        raise DecodeError("unreadable DICOM: no pixel data")
    length = int.from_bytes(head[start + 8 : start + 12], "little")
    if length == 0xFFFFFFFF:
        raise DecodeError("unreadable DICOM: deflated pixel data of undefined length")
    rows, columns, samples, _, frames = _check(ds, ExplicitVRLittleEndian, pixel_bytes=length)
    frame = -(-rows * columns * samples * int(ds.BitsAllocated) // 8)
    try:
        kept = _inflate_pixels(stream, head[start + 12 :], frame, length)
    except zlib.error as e:
        raise DecodeError(f"corrupt DICOM: deflated data: {_first_line(e)}") from None
    ds.add_new(0x7FE00010, head[start + 4 : start + 6].decode(), kept)
    if frames > 1:
        ds.NumberOfFrames = 1  # frame 0 alone was kept
    return ds


def _inflate_pixels(stream, inflated: bytes, keep: int, length: int) -> bytes:
    """The first `keep` of the `length` pixel bytes; the rest is inflated and counted, not kept."""
    kept, have, total = [inflated[:keep]], min(keep, len(inflated)), len(inflated)
    limit = length + DEFLATED_TRAILER_LIMIT  # pixel data, then whatever elements follow it
    while not stream.eof and total <= limit:
        chunk = stream.decompress(stream.unconsumed_tail, min(1 << 24, limit + 1 - total))
        if not chunk and not stream.unconsumed_tail:
            break  # the compressed data ended before the stream did
        if have < keep:
            kept.append(chunk[: keep - have])
            have += len(kept[-1])
        total += len(chunk)
    if total < length:
        raise DecodeError(
            f"truncated DICOM: the deflated pixel data holds {total} bytes, the header says {length}"
        )
    if total > limit:
        raise DecodeError(
            f"inconsistent DICOM: the deflated data goes on past the {length} bytes of pixel data "
            f"its header gives (and {DEFLATED_TRAILER_LIMIT} bytes after them)"
        )
    return b"".join(kept)


def _check(ds, syntax, pixel_bytes: int | None = None) -> tuple[int, int, int, int, int]:
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
        actual = len(ds.PixelData) if pixel_bytes is None else pixel_bytes
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

    return pixel_array(ds, index=0)  # only frame 0; its own dtype (cxrdata._windowing widens strips)


def _decode_dcmtk(ds, syntax, frames: int) -> np.ndarray:
    """The stored values of frame 0, decoded by tensorflow-io from a minimal single-frame file."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    try:
        fragments = next(generate_fragmented_frames(ds.PixelData, number_of_frames=frames))
    except Exception as e:
        raise DecodeError(f"truncated or corrupt DICOM: {_first_line(e)}") from None
    frame = b"".join(fragments)
    check_frame(
        frame,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples=int(ds.get("SamplesPerPixel") or 1),
        allocated=int(ds.BitsAllocated),
        stored=int(ds.BitsStored),
    )
    # Only the attributes DCMTK needs to decode stored values: no rescale, no window, no
    # presentation LUT, and MONOCHROME2 (DCMTK's own MONOCHROME1 inversion is off by one
    # on some pixels; inversion happens exactly in cxrdata._windowing).
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
    single.PixelData = encapsulate([frame])
    single["PixelData"].VR = "OB"
    single.file_meta = FileMetaDataset()
    single.file_meta.TransferSyntaxUID = syntax
    single.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    single.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, single, enforce_file_format=True)
    image = _native.decode(buf.getvalue())
    if image.size == 0:
        raise DecodeError("DICOM without pixel data")
    arr = image[0, ..., 0] if image.shape[-1] == 1 else image[0]
    if int(ds.get("PixelRepresentation") or 0) == 1:  # DCMTK returns signed values as offset binary
        arr = arr.astype(np.int32) - (1 << (int(ds.BitsStored) - 1))
    return arr
