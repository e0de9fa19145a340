"""`cxrdata.graph_headers` and `graph_preprocess.preprocess_batch`: a status per item, never a failed batch.

One traced `preprocess_batch` (pixel cap as an input) serves the module. What it accepts is
compared with `cxrdata.decode_image` (Pillow) and `preprocess_image` on the same bytes.
"""

from __future__ import annotations

import functools
import random
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from cxrdata.decoding import decode_image
from cxrdata.graph_preprocess import preprocess_batch
from cxrdata.preprocess import PreprocessConfig, preprocess_image
from tests import image_bytes

CONFIG = PreprocessConfig(image_size=(24, 20), equalize="none")


@functools.lru_cache(maxsize=1)
def _batch():
    import tensorflow as tf

    return tf.function(
        lambda items, cap: preprocess_batch(items, CONFIG, max_image_pixels=cap),
        input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int64)],
        autograph=False,
    )


def _run(items: list[bytes], cap: int | None = None) -> dict:
    import tensorflow as tf

    cap = Image.MAX_IMAGE_PIXELS if cap is None else cap
    out = _batch()(tf.constant(items, tf.string), tf.constant(cap, tf.int64))
    out = {k: v.numpy() for k, v in out.items()}
    out["error"] = [e.decode() for e in out["error"]]
    return out


def _pillow(data: bytes):
    """`cxr predict`'s image of `data`, or None where it refuses the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return preprocess_image(decode_image(data), CONFIG)
    except Exception:
        return None


def _exif_jpeg(entries, endian="<", *, xmp=None) -> bytes:
    jpeg = image_bytes.encode(image_bytes.gradient(mode="RGB"), "JPEG", quality=90)
    if xmp is not None:
        jpeg = image_bytes.with_jpeg_segment(jpeg, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp)
    return image_bytes.with_jpeg_segment(jpeg, 0xE1, b"Exif\x00\x00" + image_bytes.tiff_ifd(entries, endian))


def _short(value: int, endian: str = "<") -> bytes:
    return struct.pack(endian + "HH", value, 0)


def _bmp_compression(bmp: bytes, compression: int) -> bytes:
    return bmp[:30] + struct.pack("<I", compression) + bmp[34:]


REFUSED = {
    "webp": (
        image_bytes.encode(image_bytes.gradient(), "WEBP"),
        "WebP is not supported by the exported model",
    ),
    "gif": (image_bytes.encode(image_bytes.gradient(), "GIF"), "GIF is not supported by the exported model"),
    "tiff": (
        image_bytes.encode(image_bytes.gradient(), "TIFF"),
        "TIFF is not supported by the exported model",
    ),
    "garbage": (b"garbage", "unrecognized format: the exported model reads PNG, JPEG and BMP files"),
    "empty": (b"", "empty file"),
    "palette bmp": (
        image_bytes.encode(image_bytes.gradient(mode="RGB").convert("P"), "BMP"),
        "BMP with a color palette is not supported by the exported model; convert to PNG",
    ),
    "1-bit bmp": (
        image_bytes.encode(image_bytes.gradient().convert("1"), "BMP"),
        "BMP of 1-bit pixels with compression 0 is not supported",
    ),
    "rle bmp": (
        _bmp_compression(image_bytes.encode(image_bytes.gradient(), "BMP"), 1),
        "BMP of 8-bit pixels with compression 1 is not supported",
    ),
    "bmp with a tail": (
        image_bytes.encode(image_bytes.gradient(mode="RGB"), "BMP") + b"\x00" * 4,
        "BMP of 5978 bytes where its header says 5974",
    ),
    "orientation as LONG": (
        _exif_jpeg([(274, 4, 1, struct.pack("<I", 6))]),
        "an EXIF Orientation of type 4 and 1 values is not read by the exported model",
    ),
    "EXIF that is not TIFF": (
        image_bytes.with_jpeg_segment(
            image_bytes.encode(image_bytes.gradient(), "JPEG"), 0xE1, b"Exif\x00\x00XX*\x00\x08\x00\x00\x00"
        ),
        "truncated or corrupt image: EXIF data that is not TIFF",
    ),
    "EXIF in PNG text": (
        image_bytes.with_png_chunk(
            image_bytes.encode(image_bytes.gradient(), "PNG"), b"tEXt", b"Raw profile type exif\x00\nexif\n"
        ),
        "EXIF in a PNG tEXt chunk is not read by the exported model",
    ),
    "compressed XMP in PNG": (
        image_bytes.with_png_chunk(
            image_bytes.encode(image_bytes.gradient(), "PNG"),
            b"iTXt",
            b"XML:com.adobe.xmp\x00\x01\x00\x00\x00x\x9c",
        ),
        "compressed XMP in a PNG is not read by the exported model",
    ),
    "truncated PNG": (
        image_bytes.encode(image_bytes.gradient(), "PNG")[:-30],
        "truncated or corrupt PNG: the decoder failed",
    ),
    "truncated JPEG": (
        image_bytes.encode(image_bytes.gradient(), "JPEG")[:-40],
        "truncated or corrupt JPEG: the decoder failed",
    ),
}


def test_each_refusal_is_named_and_the_good_items_are_read():
    good = image_bytes.encode(image_bytes.gradient(mode="RGB"), "PNG")
    items = [good] + [data for data, _ in REFUSED.values()] + [good]
    out = _run(items)
    assert out["ok"].tolist() == [True] + [False] * len(REFUSED) + [True]
    assert out["indices"].tolist() == [0, len(items) - 1] and out["images"].shape == (2, 24, 20, 1)
    for (name, (_, expected)), error in zip(REFUSED.items(), out["error"][1:-1]):
        assert error.startswith(expected), (name, error)
    np.testing.assert_array_equal(out["images"][0, ..., 0], _pillow(good))


def test_the_pixel_cap_is_the_header_size_checked_before_decoding():
    fits, over = (
        image_bytes.encode(image_bytes.gradient(64, 64), "PNG"),
        image_bytes.encode(image_bytes.gradient(65, 64), "PNG"),
    )
    turned = image_bytes.exif_jpeg(image_bytes.gradient(65, 64), 6)  # 64x65 once turned: still over
    claims = [
        image_bytes.png_header(1 << 20, 1 << 20),
        image_bytes.jpeg_header(65535, 65535),
        image_bytes.bmp_header(1 << 30, 4),
    ]
    out = _run([fits, over, turned, *claims], cap=64 * 64)
    assert out["ok"].tolist() == [True] + [False] * 5
    assert out["error"][1] == (
        "image too large: 65x64 = 4160 pixels, over the limit of 4096 (PIL.Image.MAX_IMAGE_PIXELS when exported)"
    )
    assert out["error"][2].startswith("image too large: 65x64 = 4160 pixels")
    assert out["error"][3].startswith("image too large: 1048576x1048576 = 1099511627776 pixels")
    assert out["error"][5].startswith("image too large: 1073741824x4 = 4294967296 pixels")
    Image.MAX_IMAGE_PIXELS, saved = 64 * 64, Image.MAX_IMAGE_PIXELS
    try:  # `cxr predict` with the same cap draws the same line
        assert [_pillow(d) is not None for d in (fits, over, turned)] == [True, False, False]
    finally:
        Image.MAX_IMAGE_PIXELS = saved


ORIENTATION_CASES = {
    "the last of two entries wins": _exif_jpeg([(274, 3, 1, _short(6)), (274, 3, 1, _short(3))]),
    "big-endian": _exif_jpeg([(256, 4, 1, b"\x00\x00\x00\x10"), (274, 3, 1, _short(8, ">"))], ">"),
    "0 and 9 leave it as stored": _exif_jpeg([(274, 3, 1, _short(9))]),
    "EXIF wins over XMP": _exif_jpeg([(274, 3, 1, _short(2))], xmp=b'<a tiff:Orientation="6"/>'),
    "XMP when EXIF has no orientation": _exif_jpeg(
        [(256, 4, 1, b"\x10\x00\x00\x00")], xmp=b"<tiff:Orientation>7<"
    ),
    "first XMP match": image_bytes.with_jpeg_segment(
        image_bytes.encode(image_bytes.gradient(mode="RGB"), "JPEG"),
        0xE1,
        b'http://ns.adobe.com/xap/1.0/\x00tiff:Orientation="x" tiff:Orientation>5 tiff:Orientation="6"',
    ),
    # The IFD entry ends the first APP1 segment; its value is the start of the second one.
    "EXIF split over two segments": image_bytes.with_jpeg_segment(
        image_bytes.with_jpeg_segment(
            image_bytes.encode(image_bytes.gradient(mode="RGB"), "JPEG"),
            0xE1,
            b"Exif\x00\x00" + _short(3) + struct.pack("<I", 0),
        ),
        0xE1,
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00",
    ),
    "IFD past the end": image_bytes.with_jpeg_segment(
        image_bytes.encode(image_bytes.gradient(mode="RGB"), "JPEG"),
        0xE1,
        b"Exif\x00\x00II*\x00\xff\x00\x00\x00",
    ),
    "PNG eXIf after the pixels, last one wins": image_bytes.with_png_chunk(
        image_bytes.exif_png(image_bytes.gradient(), 6), b"eXIf", image_bytes.orientation_exif(5)[6:]
    ),
    "PNG XMP in iTXt": image_bytes.with_png_chunk(
        image_bytes.encode(image_bytes.gradient(), "PNG"),
        b"iTXt",
        b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<tiff:Orientation>8</x>",
    ),
}


def test_orientation_edge_cases_are_read_as_pillow_reads_them():
    items = list(ORIENTATION_CASES.values())
    out = _run(items)
    assert out["error"] == [""] * len(items)
    for name, image in zip(ORIENTATION_CASES, out["images"][..., 0]):
        np.testing.assert_array_equal(image, _pillow(ORIENTATION_CASES[name]), err_msg=name)
    # The cases differ: each turns the image its own way (and the test would see a wrong turn).
    assert len({img.tobytes() for img in out["images"]}) >= 6


def _hostile_variants(seed: int) -> list[bytes]:
    """Every way of cutting, and random bit flips of, valid files of each kind the graph reads."""
    gray, rgb = image_bytes.gradient(), image_bytes.gradient(mode="RGB")
    bases = [
        image_bytes.exif_png(rgb, 6),
        image_bytes.encode(Image.fromarray(np.asarray(gray, np.uint16) * 200), "PNG"),
        image_bytes.exif_jpeg(rgb, 3),
        image_bytes.xmp_jpeg(gray, 8),
        image_bytes.encode(rgb, "JPEG", progressive=True),
        image_bytes.encode(rgb, "BMP"),
        image_bytes.encode(gray, "BMP"),
    ]
    rng = random.Random(seed)
    items = []
    for data in bases:
        cuts = sorted(
            set(range(0, 120, 3)) | set(range(0, len(data), max(1, len(data) // 25))) | {len(data) - 1}
        )
        items += [data[:n] for n in cuts]
        for _ in range(20):
            flipped = bytearray(data)
            flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            items.append(bytes(flipped))
    return items


@pytest.mark.slow
def test_hostile_bytes_never_fail_the_batch_and_what_is_read_is_pillows_image():
    """Truncations and bit flips: each item is read exactly as Pillow reads it, or refused by name.

    The graph may refuse what Pillow reads (a PNG that lost its last chunk or checksum, a BMP
    short of its last padding bytes, a gray BMP palette turned to color), never the reverse.
    """
    items = _hostile_variants(seed=0)
    out = _run(items)  # raises if any item fails the batch
    read = dict(zip(out["indices"].tolist(), out["images"][..., 0]))
    for i, data in enumerate(items):
        reference = _pillow(data)
        if out["ok"][i]:
            assert reference is not None, (i, data[:12])
            np.testing.assert_array_equal(read[i], reference, err_msg=str(i))
        else:
            assert out["error"][i] and i not in read
    assert 50 < out["ok"].sum() < len(items) - 50  # a real mix of read and refused items


def test_bad_arguments_are_refused_before_any_graph_is_built():
    with pytest.raises(ValueError, match="`parallel` must be an integer >= 1. Received: parallel=0"):
        preprocess_batch(None, CONFIG, max_image_pixels=None, parallel=0)
    with pytest.raises(ValueError, match="`equalize` must be one of local, none"):
        preprocess_batch(None, PreprocessConfig(equalize="clahe"), max_image_pixels=None)
