"""An image file's header read with TensorFlow string ops: format, size, EXIF orientation, or why not.

`cxr export` runs `read_header` on each item sent to the SavedModel before any
decoder sees it, so that one bad item is refused by name while the others of
its batch are predicted (TensorFlow's decoders fail the whole batch on bad
data). It never raises, whatever the bytes: every read is a bounded substring
zero-padded past the end, every loop has a cap.

* PNG: the IHDR chunk (size, bit depth and color type checked), then every
  chunk to IEND for an `eXIf` chunk (Pillow reads those after the pixels too)
  and XMP text.
* JPEG: the markers up to the scan: the frame header (size, components,
  precision), APP1 `Exif` segments (joined as Pillow joins them) and XMP.
* BMP: what `tf.io.decode_bmp` decodes exactly as Pillow: uncompressed 24 and
  32 bits, and 8 bits with a gray palette, with the file's size matching the
  header (the TensorFlow decoder needs it).
* Refused by name: WebP, GIF, TIFF and DICOM (no TensorFlow 2.16 decoder
  that reads them as Pillow or `cxrdata.dicom` does), lossless and 12-bit
  JPEG, other BMP kinds, EXIF in PNG text chunks and compressed XMP (Pillow
  reads an orientation there that string ops cannot), what
  `cxrdata.graph_orientation` refuses, more than 65536 PNG chunks or 4096
  JPEG markers, and a size over the pixel cap (width times height from the
  header, as `cxrdata.decode_image` checks `PIL.Image.MAX_IMAGE_PIXELS`).

The orientation is read by `cxrdata.graph_orientation.read_orientation`
from the EXIF and XMP collected here.
"""

from __future__ import annotations

from cxrdata import _graph_bytes as gb
from cxrdata.graph_orientation import EXIF_PREFIX, read_orientation

FORMATS = ("PNG", "JPEG", "BMP")  # the format codes 0, 1, 2 of `read_header`
_MAX_PNG_CHUNKS = 1 << 16
_MAX_JPEG_MARKERS = 1 << 12
_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_KEY = b"XML:com.adobe.xmp"
_NO_METADATA = (b"", False, b"", False)  # (EXIF payload, found, XMP packet, found)
_REFUSED_SIGNATURES = (  # (offset, bytes, name)
    (8, b"WEBP", "WebP"),
    (0, b"GIF8", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (128, b"DICM", "DICOM"),
)


def read_header(data, max_image_pixels: int | None):
    """Reads one file's header; never raises.

    Args:
        data: A scalar `tf.string`: the bytes of one file.
        max_image_pixels: The pixel cap (width times height), or None for none.

    Returns:
        A dict of scalars: `format` (int32: 0 PNG, 1 JPEG, 2 BMP, -1 refused),
        `height` and `width` (int64, as stored), `orientation` (int32, 1-8 as
        EXIF numbers them; 1 leaves the image as stored) and `error` (a
        `tf.string`, empty when the file can be decoded in the graph).
    """
    tf = gb.tf_module()
    head = gb.text(data, 0, 132)
    kind = tf.constant(-1)
    kind = tf.where(tf.strings.substr(head, 0, 2) == b"BM", 2, kind)
    kind = tf.where(tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff", 1, kind)
    kind = tf.where(tf.strings.substr(head, 0, 8) == b"\x89PNG\r\n\x1a\n", 0, kind)
    unknown = tf.where(
        tf.strings.length(data) == 0,
        "empty file",
        "unrecognized format: the exported model reads PNG, JPEG and BMP files",
    )
    for offset, signature, name in reversed(_REFUSED_SIGNATURES):
        refused = f"{name} is not supported by the exported model; convert to PNG"
        if name == "DICOM":
            refused = "DICOM is not supported by the exported model; use `cxr predict` or convert to PNG"
        unknown = tf.where(gb.text(head, offset, len(signature)) == signature, refused, unknown)
    zero = tf.constant(0, tf.int64)
    branches = [
        lambda: _png(data, max_image_pixels),
        lambda: _jpeg(data, max_image_pixels),
        lambda: _bmp(data, max_image_pixels),
        lambda: (zero, zero, unknown, _NO_METADATA),
    ]
    height, width, error, metadata = tf.switch_case(tf.where(kind < 0, 3, kind), branches)
    orientation, orientation_error = tf.cond(
        error == "", lambda: read_orientation(*metadata), lambda: (tf.constant(1), tf.constant(b""))
    )
    error = tf.where(error == "", orientation_error, error)
    kind = tf.where(error == "", kind, -1)
    return {"format": kind, "height": height, "width": width, "orientation": orientation, "error": error}


def _size_error(name: str, width, height, max_image_pixels):
    """The error of an image of this header size, or "" (a zero side is corrupt; over the cap, too large)."""
    tf = gb.tf_module()
    error = tf.where(
        (width <= 0) | (height <= 0),
        gb.message(f"truncated or corrupt {name}: size ", width, "x", height),
        "",
    )
    if max_image_pixels is not None:
        cap = tf.cast(max_image_pixels, tf.int64)
        pixels = width * height
        too_large = gb.message(
            "image too large: ", width, "x", height, " = ", pixels, " pixels, over the limit of ", cap,
            " (PIL.Image.MAX_IMAGE_PIXELS when exported)",
        )  # fmt: skip
        error = tf.where((error == "") & (pixels > cap), too_large, error)
    return error


def _png(data, max_image_pixels):
    """(height, width, error, metadata) of a file that starts with PNG's signature."""
    tf = gb.tf_module()
    ihdr = gb.at(data, 8, 25)
    width, height = gb.number(ihdr[8:12], True), gb.number(ihdr[12:16], True)
    depth, color = ihdr[16], ihdr[17]
    valid = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
    known = tf.reduce_any(
        tf.stack([(color == c) & (depth == d) for c, depths in valid.items() for d in depths])
    )
    header_ok = (gb.number(ihdr[0:4], True) == 13) & (gb.text(data, 12, 4) == b"IHDR") & known
    error = tf.where(
        header_ok,
        _size_error("PNG", width, height, max_image_pixels),
        "truncated or corrupt PNG: no valid IHDR chunk",
    )

    *metadata, error = tf.cond(error == "", lambda: _png_metadata(data), lambda: (*_NO_METADATA, error))
    return height, width, error, tuple(metadata)


def _png_metadata(data):
    """Walks the chunks to IEND: (eXIf payload, found, XMP text, found, error), the last of each wins."""
    tf = gb.tf_module()
    length = tf.cast(tf.strings.length(data), tf.int64)
    empty = tf.constant(b"")

    def read(pos, size, kind, found):
        """The metadata `found` with this chunk's added: (exif, has_exif, xmp, has_xmp, error)."""
        exif, has_exif, xmp, has_xmp, error = found
        payload = gb.text(data, pos + 8, size)
        keyword = _split(payload, 1)[0][0]
        is_exif, is_text = kind == b"eXIf", kind != b"eXIf"
        exif_text = is_text & ((keyword == b"exif") | (keyword == b"Raw profile type exif"))
        xmp_text = is_text & (keyword == _XMP_KEY)
        use, refuse, value = _png_xmp(payload, kind)
        error = tf.where(
            exif_text, gb.message("EXIF in a PNG ", kind, " chunk is not read by the exported model"), error
        )
        error = tf.where(
            xmp_text & refuse, "compressed XMP in a PNG is not read by the exported model", error
        )
        return (
            tf.where(is_exif, tf.strings.join([EXIF_PREFIX, payload]), exif),
            has_exif | is_exif,
            tf.where(xmp_text & use, value, xmp),
            has_xmp | (xmp_text & use),
            error,
        )

    def body(pos, i, done, *found):
        size = gb.number(gb.at(data, pos, 4), True)
        kind = gb.text(data, pos + 4, 4)
        fits = pos + 12 + size <= length
        meta = fits & ((kind == b"eXIf") | (kind == b"tEXt") | (kind == b"zTXt") | (kind == b"iTXt"))
        found = tf.cond(meta, lambda: read(pos, size, kind, found), lambda: found)  # pixel data is skipped
        return (pos + 12 + size, i + 1, ~fits | (kind == b"IEND") | (found[4] != ""), *found)

    state = (tf.constant(8, tf.int64), tf.constant(0), tf.constant(False), empty, False, empty, False, empty)
    state = tf.while_loop(lambda pos, i, done, *_: ~done & (i < _MAX_PNG_CHUNKS), body, state)
    error = tf.where(
        ~state[2], f"a PNG of more than {_MAX_PNG_CHUNKS} chunks is not read by the exported model", state[7]
    )
    return state[3], state[4], state[5], state[6], error


def _split(text, maxsplit: int):
    """`text.split(b"\\0", maxsplit)` padded with b"" to `maxsplit + 1` parts, and the real count."""
    tf = gb.tf_module()
    parts = tf.strings.split(text, "\x00", maxsplit=maxsplit)
    count = tf.size(parts)
    return tf.concat([parts, tf.fill([maxsplit + 1], b"")], 0)[: maxsplit + 1], count


def _png_xmp(payload, kind):
    """(use, refuse, text) of a text chunk's value, as Pillow reads tEXt, zTXt and iTXt chunks."""
    tf = gb.tf_module()
    rest = _split(payload, 1)[0][1]  # tEXt: the text; iTXt: flag, method, language\0key\0text
    itxt, parts = _split(gb.text(rest, 2, tf.strings.length(rest)), 2)
    itxt_ok = (tf.strings.length(rest) >= 2) & (parts == 3)  # else Pillow skips the chunk
    itxt_compressed = gb.text(rest, 0, 1) != b"\x00"
    use = (kind == b"tEXt") | ((kind == b"iTXt") & itxt_ok & ~itxt_compressed)
    refuse = (kind == b"zTXt") | ((kind == b"iTXt") & itxt_ok & itxt_compressed)
    return use, refuse, tf.where(kind == b"tEXt", rest, itxt[2])


def _jpeg(data, max_image_pixels):
    """(height, width, error, metadata) of a file that starts with JPEG's SOI marker."""
    tf = gb.tf_module()
    walk = _jpeg_markers(data)
    sof, precision, height, width, components = walk["sof"], *walk["frame"]
    error = walk["error"]
    error = tf.where((error == "") & (sof < 0), "truncated or corrupt JPEG: no frame header", error)
    lossless = (sof == 0xC3) | (sof == 0xC7) | (sof == 0xCB) | (sof == 0xCF)
    error = tf.where(
        (error == "") & lossless,
        "lossless JPEG is not supported by the exported model; convert to PNG",
        error,
    )
    error = tf.where(
        (error == "") & (precision != 8),
        gb.message(
            "JPEG of ", precision, "-bit samples is not supported by the exported model; convert to PNG"
        ),
        error,
    )
    error = tf.where(
        (error == "") & (components != 1) & (components != 3) & (components != 4),
        gb.message("truncated or corrupt JPEG: ", components, " components"),
        error,
    )
    error = tf.where(error == "", _size_error("JPEG", width, height, max_image_pixels), error)
    return height, width, error, (walk["exif"], walk["has_exif"], walk["xmp"], walk["has_xmp"])


def _jpeg_markers(data):
    """Walks the markers from SOI to the first scan, as Pillow's JPEG reader does."""
    tf = gb.tf_module()
    length = tf.cast(tf.strings.length(data), tf.int64)
    empty = tf.constant(b"")

    def body(pos, i, done, sof, frame, exif, has_exif, xmp, has_xmp, error):
        b = gb.at(data, pos, 4)
        marker, size = b[1], gb.number(b[2:4], True)
        standalone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8)) | (marker == 0xFF)  # 0xFF: fill
        segment = (marker >= 0xC0) & (marker <= 0xFE) & ~standalone & (marker != 0xD9) & (marker != 0xDA)
        fits = pos + 2 + size <= length
        error = tf.where(
            pos + 2 > length,
            "truncated or corrupt JPEG: no image data",
            tf.where(
                (b[0] != 0xFF)
                | (marker == 0x00)
                | (marker == 0xD9)
                | ~(standalone | segment | (marker == 0xDA)),
                gb.message("truncated or corrupt JPEG: no marker at byte ", pos),
                tf.where(
                    segment & ((size < 2) | ~fits),
                    "truncated or corrupt JPEG: a segment ends past the file",
                    "",
                ),
            ),
        )
        is_sof = (
            segment
            & (marker >= 0xC0)
            & (marker <= 0xCF)
            & (marker != 0xC4)
            & (marker != 0xC8)
            & (marker != 0xCC)
        )
        header = gb.at(data, pos + 4, 6)
        new_frame = tf.stack(
            [header[0], gb.number(header[1:3], True), gb.number(header[3:5], True), header[5]]
        )
        app1 = segment & (marker == 0xE1) & (error == "")
        payload = gb.text(data, pos + 4, tf.where(app1, size - 2, gb.int64(0)))
        is_exif = app1 & (gb.text(payload, 0, 6) == EXIF_PREFIX)
        is_xmp = app1 & (gb.text(payload, 0, len(_XMP_JPEG)) == _XMP_JPEG)
        more_exif = tf.where(has_exif, gb.text(payload, 6, tf.strings.length(payload)), payload)
        step = tf.where(segment, 2 + size, tf.where(marker == 0xFF, gb.int64(1), 2))
        step = tf.where(b[0] == 0xFF, step, gb.int64(0))
        return (
            pos + step,
            i + 1,
            (error != "") | (marker == 0xDA),
            tf.where(is_sof & (error == ""), marker, sof),
            tf.where(is_sof & (error == ""), new_frame, frame),
            tf.where(is_exif, tf.strings.join([exif, more_exif]), exif),
            has_exif | is_exif,
            tf.where(is_xmp, gb.text(payload, len(_XMP_JPEG), tf.strings.length(payload)), xmp),
            has_xmp | is_xmp,
            error,
        )

    state = (
        tf.constant(2, tf.int64), tf.constant(0), tf.constant(False), tf.constant(-1, tf.int64),
        tf.zeros([4], tf.int64), empty, False, empty, False, empty,
    )  # fmt: skip
    state = tf.while_loop(lambda pos, i, done, *_: ~done & (i < _MAX_JPEG_MARKERS), body, state)
    error = tf.where(
        state[2],
        state[9],
        f"a JPEG of more than {_MAX_JPEG_MARKERS} markers is not read by the exported model",
    )
    names = ("sof", "frame", "exif", "has_exif", "xmp", "has_xmp")
    return dict(zip(names, state[3:9])) | {"frame": tf.unstack(state[4]), "error": error}


def _bmp(data, max_image_pixels):
    """(height, width, error, metadata) of a file that starts with "BM"."""
    tf = gb.tf_module()
    length = tf.cast(tf.strings.length(data), tf.int64)
    b = gb.at(data, 0, 54)
    offset, header_size = gb.number(b[10:14], False), gb.number(b[14:18], False)
    width, raw_height = gb.number(b[18:22], False), gb.number(b[22:26], False)
    bits, compression, colors = (
        gb.number(b[28:30], False),
        gb.number(b[30:34], False),
        gb.number(b[46:50], False),
    )
    top_down = b[25] == 0xFF  # Pillow's test; TensorFlow's is a negative height, the same for any real size
    height = tf.where(top_down, (1 << 32) - raw_height, raw_height)
    known = tf.reduce_any(tf.stack([header_size == n for n in (40, 52, 56, 108, 124)]))
    error = tf.where(
        known,
        "",
        tf.where(
            header_size == 12,
            "OS/2 BMP is not supported by the exported model; convert to PNG",
            gb.message("truncated or corrupt BMP: header of ", header_size, " bytes"),
        ),
    )
    error = tf.where(error == "", _size_error("BMP", width, height, max_image_pixels), error)
    kind_ok = (compression == 0) & ((bits == 8) | (bits == 24) | (bits == 32))
    error = tf.where(
        (error == "") & ~kind_ok,
        gb.message(
            "BMP of ",
            bits,
            "-bit pixels with compression ",
            compression,
            " is not supported by the exported model; convert to PNG",
        ),  # fmt: skip
        error,
    )
    colors = tf.where(colors == 0, gb.int64(256), colors)
    palette = tf.reshape(gb.at(data, 14 + header_size, 1024), [256, 4])[:, :3]
    gray = tf.reduce_all(
        (palette == tf.range(256, dtype=tf.int64)[:, None])
        | (tf.range(256, dtype=tf.int64)[:, None] >= colors)
    )
    paletted = bits == 8
    error = tf.where(
        (error == "") & paletted & ~(gray & (colors > 2) & (colors <= 256)),
        "BMP with a color palette is not supported by the exported model; convert to PNG",
        error,
    )
    pixels_at = 14 + header_size + tf.where(paletted, 4 * colors, gb.int64(0))
    expected = offset + (bits // 8 * width + 3) // 4 * 4 * height
    error = tf.where(
        (error == "") & ((offset < pixels_at) | (expected != length)),
        gb.message(
            "BMP of ",
            length,
            " bytes where its header says ",
            expected,
            " (truncated, or data TensorFlow's decoder does not read)",
        ),  # fmt: skip
        error,
    )
    return height, width, error, _NO_METADATA
