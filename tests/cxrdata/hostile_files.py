"""Builders of hostile input files (DICOM with pydicom, codestreams with Pillow), shared by tests.

Not a test module: `tests/cxrdata/test_hostile_inputs.py`, `test_conversion_faults.py` and
`tests/cxrmodels/test_predict_faults.py` import it. Every file is made in memory; the tests
write them into `tmp_path`.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient(rows: int = 32, columns: int = 32, top: int = 255) -> np.ndarray:
    """A diagonal ramp from 0 to `top` (int64)."""
    ramp = np.add.outer(np.arange(rows), np.arange(columns))
    return (ramp * top // max(1, ramp.max())).astype(np.int64)


def dicom(
    pixels: np.ndarray | None = None,
    *,
    bits_stored: int = 8,
    bits_allocated: int | None = None,
    syntax: str | None = None,
    pixel_data: bytes | None = None,
    shape: tuple[int, int] | None = None,
    **tags,
) -> bytes:
    """A CR DICOM file: `pixels` stored uncompressed, or `pixel_data` as given under `syntax`."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "HOSTILE"
    ds.Rows, ds.Columns = shape or pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = bits_allocated or (16 if bits_stored > 8 else 8)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if pixel_data is None:
        ds.PixelData = pixels.astype(np.uint16 if ds.BitsAllocated == 16 else np.uint8).tobytes()
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixel_data])
        ds["PixelData"].VR = "OB"
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def j2k(pixels: np.ndarray) -> bytes:
    """A lossless JPEG 2000 codestream (no JP2 box) of uint8 or uint16 `pixels`, by Pillow."""
    if pixels.dtype == np.uint16:
        image = Image.frombytes("I;16", pixels.shape[::-1], pixels.astype("<u2").tobytes())
    else:
        image = Image.fromarray(pixels.astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
    return buf.getvalue()


def crashing_dicom() -> bytes:
    """The ~900-byte file that crashes tensorflow-io: a 16-bit JPEG 2000 codestream under an
    8-bit header ("double free or corruption", rc 134)."""
    from pydicom.uid import JPEG2000Lossless

    wide = (gradient(32, 32, 65535)).astype(np.uint16)
    return dicom(shape=(32, 32), bits_stored=8, syntax=JPEG2000Lossless, pixel_data=j2k(wide))


def scrambled_dicom() -> bytes:
    """An 8-bit JPEG 2000 codestream under a 16-bit header (decoded scrambled before)."""
    from pydicom.uid import JPEG2000Lossless

    return dicom(
        shape=(32, 32), bits_stored=12, syntax=JPEG2000Lossless, pixel_data=j2k(gradient().astype(np.uint8))
    )


def jpeg(pixels: np.ndarray, *, comment: bytes = b"", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", comment=comment, **save)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int, *, mode: str = "L", progressive: bool = False) -> bytes:
    """A few hundred bytes of JPEG whose frame header claims `width` x `height`."""
    data = bytearray(jpeg(np.full((16, 16, 3) if mode == "RGB" else (16, 16), 128), progressive=progressive))
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def deflated_dicom(frame: np.ndarray, frames: int, *, claimed_frames: int | None = None) -> bytes:
    """A Deflated Explicit VR Little Endian file of `frames` 8-bit frames: `frame`, then zeros.

    Built as a deflate stream whose 16 MiB blocks of zeros are repeated, so a
    1 GiB payload takes milliseconds and about a megabyte. `claimed_frames`
    (default `frames`) goes into NumberOfFrames.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "HOSTILE"
    ds.Rows, ds.Columns = frame.shape
    ds.NumberOfFrames = claimed_frames or frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    total = frame.size * frames
    element = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", total)
    zeros, chunk = total - frame.size, 1 << 24
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = body.getvalue() + element + frame.astype(np.uint8).tobytes()
    parts = [c.compress(first), c.flush(zlib.Z_SYNC_FLUSH)]
    if zeros >= chunk:
        parts.append(c.compress(bytes(chunk)) + c.flush(zlib.Z_SYNC_FLUSH))
        repeat = c.compress(bytes(chunk)) + c.flush(zlib.Z_SYNC_FLUSH)  # zeros after zeros: the same bytes
        parts += [repeat] * (zeros // chunk - 1)
    parts += [c.compress(bytes(zeros % chunk)), c.flush()]
    return head.getvalue() + b"".join(parts)
