"""Builders of image files as bytes, well formed and hostile, for the decoding and serving tests.

Pillow writes the images; the metadata a test needs (an EXIF orientation of either byte order,
XMP, a PNG chunk after the pixel data, a header that claims a huge size) is spliced in by hand.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient(width: int = 53, height: int = 37, mode: str = "L") -> Image.Image:
    """A non-square image with no symmetry, so each of the 8 orientations differs."""
    y, x = np.mgrid[0:height, 0:width]
    gray = ((x * 255) // width // 2 + (y * 255) // height // 3 + (x * y) % 37).astype(np.uint8)
    image = Image.fromarray(gray)
    if mode == "L":
        return image
    rgb = Image.merge("RGB", [image, image.point(lambda v: 255 - v), image.point(lambda v: v // 2)])
    if mode == "RGBA":
        rgb.putalpha(90)
    return rgb


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], endian: str = "<") -> bytes:
    """A TIFF header and one IFD of `(tag, type, count, 4-byte value)` entries, as EXIF holds it."""
    head = b"II*\x00" if endian == "<" else b"MM\x00*"
    body = struct.pack(endian + "IH", 8, len(entries))
    for tag, typ, count, value in entries:
        body += struct.pack(endian + "HHI", tag, typ, count) + value
    return head + body + struct.pack(endian + "I", 0)


def orientation_exif(orientation: int, endian: str = "<") -> bytes:
    """The EXIF payload (with its `Exif\\0\\0` prefix) of an Orientation (tag 274, SHORT) entry."""
    return b"Exif\x00\x00" + tiff_ifd([(274, 3, 1, struct.pack(endian + "HH", orientation, 0))], endian)


def with_jpeg_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Inserts an APPn segment right after the JPEG's SOI marker."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + jpeg[2:]


def exif_jpeg(image: Image.Image, orientation: int, endian: str = "<", quality: int = 90) -> bytes:
    return with_jpeg_segment(
        encode(image, "JPEG", quality=quality), 0xE1, orientation_exif(orientation, endian)
    )


def xmp_jpeg(image: Image.Image, orientation: int, quality: int = 90) -> bytes:
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
        + f'tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>'.encode()
    )
    return with_jpeg_segment(
        encode(image, "JPEG", quality=quality), 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_png_chunk(png: bytes, kind: bytes, data: bytes, *, before: bytes = b"IEND") -> bytes:
    """Inserts a chunk before the first chunk of type `before` (b"IDAT" or b"IEND")."""
    at = png.index(before) - 4
    return png[:at] + png_chunk(kind, data) + png[at:]


def exif_png(image: Image.Image, orientation: int, endian: str = "<", *, before: bytes = b"IEND") -> bytes:
    """A PNG whose eXIf chunk (after the pixel data by default) holds an Orientation."""
    return with_png_chunk(
        encode(image, "PNG"), b"eXIf", orientation_exif(orientation, endian)[6:], before=before
    )


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` 8-bit gray pixels and holds none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG whose frame header claims `width` x `height` gray pixels, with an empty scan."""
    sof = struct.pack(">BBHBHHBBBB", 0xFF, 0xC0, 11, 8, height, width, 1, 1, 0x11, 0)
    sos = struct.pack(">BBHBBBBBB", 0xFF, 0xDA, 8, 1, 1, 0, 0, 63, 0)
    return b"\xff\xd8" + sof + sos + b"\xff\xd9"


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP that claims `width` x `height` pixels and holds none."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


def top_down_bmp(image: Image.Image) -> bytes:
    """Pillow's BMP of `image` rewritten top-down (negative height, rows stored first to last)."""
    data = encode(image, "BMP")
    (offset,) = struct.unpack_from("<I", data, 10)
    width, height = struct.unpack_from("<ii", data, 18)
    (bpp,) = struct.unpack_from("<H", data, 28)
    row = (width * bpp // 8 + 3) // 4 * 4
    rows = [data[offset + i * row : offset + (i + 1) * row] for i in range(height)]
    return data[:22] + struct.pack("<i", -height) + data[26:offset] + b"".join(reversed(rows))
