"""The frame header of a compressed DICOM frame, read from its own codestream and checked.

A native decoder trusts the DICOM header to size its buffers and the
codestream to fill them: a 16-bit JPEG 2000 codestream under an 8-bit header
corrupts tensorflow-io's heap ("double free or corruption"), an 8-bit one under
a 16-bit header decodes scrambled. So before a native decoder sees a frame, its
codestream's own header is parsed here (JPEG: the SOFn segment, precision,
lines, samples per line, components; JPEG-LS: SOF55, the same fields; JPEG
2000: the SIZ segment, image size less its offsets, components, their bit
depth and subsampling) and the frame is rejected, with both sides named, when
it disagrees with Rows, Columns, SamplesPerPixel or BitsAllocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrdata._decode_common import DecodeError

# SOFn markers that start a frame header (C4 DHT, C8 JPG and CC DAC are not frames);
# F7 is JPEG-LS's SOF55.
_SOF = {m: "JPEG" for m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)}
_SOF[0xF7] = "JPEG-LS"
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length: TEM, RST0-7


@dataclass(frozen=True)
class FrameHeader:
    """What a codestream says about its image."""

    kind: str  # "JPEG", "JPEG-LS" or "JPEG 2000"
    rows: int
    columns: int
    components: int
    bits: int  # sample precision (the largest, for JPEG 2000 components)

    def describe(self) -> str:
        return (
            f"the {self.kind} codestream is {self.columns}x{self.rows} with {self.components} "
            f"component(s) of {self.bits} bits"
        )


def frame_header(data: bytes) -> FrameHeader:
    """The frame header of a JPEG, JPEG-LS or JPEG 2000 codestream (raw or in a JP2 box).

    Raises:
        DecodeError: none of them, or a header that is cut off or malformed.
    """
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    start = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: a raw codestream, or the one in a JP2 file
    if start >= 0:
        return _j2k(data, start + 4)
    raise DecodeError("corrupt DICOM: the compressed frame is not a JPEG, JPEG-LS or JPEG 2000 codestream")


def _jpeg(data: bytes) -> FrameHeader:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise DecodeError(f"corrupt DICOM: the JPEG codestream has no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # a scan or the end before any frame header
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF:
            segment = data[pos + 4 : pos + 2 + length]
            if length < 8 or len(segment) < 6:
                raise DecodeError(f"corrupt DICOM: the {_SOF[marker]} frame header is cut off")
            return FrameHeader(
                kind=_SOF[marker],
                rows=int.from_bytes(segment[1:3], "big"),
                columns=int.from_bytes(segment[3:5], "big"),
                components=segment[5],
                bits=segment[0],
            )
        pos += 2 + length
    raise DecodeError("corrupt DICOM: the JPEG codestream has no frame header (SOFn)")


def _j2k(data: bytes, pos: int) -> FrameHeader:
    fixed = data[pos : pos + 38]  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz
    if len(fixed) < 38:
        raise DecodeError("corrupt DICOM: the JPEG 2000 image header (SIZ) is cut off")
    field = [int.from_bytes(fixed[i : i + 4], "big") for i in range(4, 36, 4)]
    count = int.from_bytes(fixed[36:38], "big")
    components = data[pos + 38 : pos + 38 + 3 * count]
    if count < 1 or len(components) < 3 * count:
        raise DecodeError("corrupt DICOM: the JPEG 2000 image header (SIZ) is cut off")
    depths = {(components[3 * i] & 0x7F) + 1 for i in range(count)}
    sampling = {(components[3 * i + 1], components[3 * i + 2]) for i in range(count)}
    if len(depths) > 1 or sampling != {(1, 1)}:
        raise DecodeError(
            "unsupported DICOM: the JPEG 2000 codestream's components differ in bit depth "
            f"({sorted(depths)}) or are subsampled ({sorted(sampling)})"
        )
    return FrameHeader(
        kind="JPEG 2000",
        rows=field[1] - field[3],
        columns=field[0] - field[2],
        components=count,
        bits=depths.pop(),
    )


def check_frame(data: bytes, *, rows: int, columns: int, samples: int, allocated: int, stored: int) -> None:
    """Raises DecodeError unless the codestream `data` fits the DICOM header's image.

    Size and components must be equal; the samples must take the header's
    bytes per sample (a precision of 1-8 bits under BitsAllocated 8, 9-16 under
    16) and be no wider than BitsAllocated. A precision that differs from
    BitsStored within those bounds is kept (pydicom keeps it too).
    """
    header = frame_header(data)
    wide = header.bits > 8
    if (
        (header.rows, header.columns, header.components) != (rows, columns, samples)
        or header.bits > allocated
        or wide != (allocated > 8)
    ):
        raise DecodeError(
            f"inconsistent DICOM: {header.describe()}, the header says Rows={rows}, Columns={columns}, "
            f"SamplesPerPixel={samples}, BitsAllocated={allocated}, BitsStored={stored}"
        )
