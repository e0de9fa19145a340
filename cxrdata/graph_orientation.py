"""EXIF orientation in a TensorFlow graph, read and applied as `PIL.ImageOps.exif_transpose` does.

`read_orientation` takes what `cxrdata.graph_headers` collected from a file
(its EXIF payload: the APP1 `Exif` segments of a JPEG joined as Pillow joins
them, or a PNG's `eXIf` chunk; and its XMP packet) and finds what Pillow's
`Image.getexif()` finds:

* the Orientation tag (274) of the EXIF's first IFD, read from a TIFF header
  of either byte order (Pillow's four accepted prefixes; leading `Exif\0\0`
  stripped, as often as they repeat), the last entry winning, and only the
  entries that lie inside the payload (Pillow keeps those it could read);
* else the first `tiff:Orientation="N"` or `tiff:Orientation>N` in the XMP.

An Orientation stored other than as one SHORT value (Pillow may read some of
those, or skip them) and a BigTIFF header are refused by name rather than
guessed; EXIF data that is not TIFF is corrupt, as Pillow finds it. `orient`
then turns the image; values other than 2-8 leave it as stored.
"""

from __future__ import annotations

from cxrdata import _graph_bytes as gb

EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION_TAG = 274


def orient(image, orientation):
    """Turns a `[h, w]` image as EXIF `orientation` (1-8) says, as Pillow's `exif_transpose` does."""
    tf = gb.tf_module()
    turns = [
        lambda: image,
        lambda: image[:, ::-1],  # FLIP_LEFT_RIGHT
        lambda: image[::-1, ::-1],  # ROTATE_180
        lambda: image[::-1, :],  # FLIP_TOP_BOTTOM
        lambda: tf.transpose(image),  # TRANSPOSE
        lambda: tf.transpose(image)[:, ::-1],  # ROTATE_270
        lambda: tf.transpose(image)[::-1, ::-1],  # TRANSVERSE
        lambda: tf.transpose(image)[::-1, :],  # ROTATE_90
    ]
    return tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), turns)


def read_orientation(exif, has_exif, xmp, has_xmp):
    """(orientation, error) as `ImageOps.exif_transpose` reads it: EXIF first, else XMP."""
    tf = gb.tf_module()
    value, found, error = tf.cond(
        has_exif, lambda: _exif_orientation(exif), lambda: (tf.constant(1, tf.int64), False, tf.constant(b""))
    )
    value = tf.where(found | ~has_xmp, value, _xmp_orientation(xmp))
    value = tf.where((value >= 1) & (value <= 8), value, gb.int64(1))
    return tf.cast(value, tf.int32), error


def _exif_orientation(exif):
    """(value, found, error) of IFD0's Orientation in an EXIF payload (TIFF data after its "Exif\\0\\0")."""
    tf = gb.tf_module()
    length = tf.cast(tf.strings.length(exif), tf.int64)
    start = tf.while_loop(
        lambda pos: (pos < length) & (gb.text(exif, pos, 6) == EXIF_PREFIX),
        lambda pos: (pos + 6,),
        (gb.int64(0),),
    )[0]  # Pillow strips every leading "Exif\0\0"
    prefix = gb.text(exif, start, 4)
    classic = (
        (prefix == b"MM\x00*") | (prefix == b"II*\x00") | (prefix == b"MM*\x00") | (prefix == b"II\x00*")
    )
    big_tiff = (prefix == b"MM\x00+") | (prefix == b"II+\x00")
    big_endian = gb.text(exif, start, 1) == b"M"
    ifd = start + gb.number(gb.at(exif, start + 4, 4), big_endian)
    count = tf.where(ifd + 2 <= length, gb.number(gb.at(exif, ifd, 2), big_endian), gb.int64(0))
    count = tf.minimum(count, tf.maximum(length - ifd - 2, 0) // 12)  # Pillow keeps the entries it could read
    raw = tf.io.decode_raw(
        gb.text(exif, ifd + 2, 12 * count), tf.uint8, fixed_length=tf.cast(12 * count + 12, tf.int32)
    )
    entries = tf.reshape(tf.cast(raw, tf.int64)[: 12 * count], [-1, 12])
    tag, kind = gb.number(entries[:, 0:2], big_endian), gb.number(entries[:, 2:4], big_endian)
    values, short = gb.number(entries[:, 4:8], big_endian), gb.number(entries[:, 8:10], big_endian)
    is_orientation = tag == _ORIENTATION_TAG
    last = tf.reduce_max(tf.concat([tf.where(is_orientation)[:, 0], gb.int64([-1])], 0))  # the last one wins
    odd = tf.where(is_orientation & ((kind != 3) | (values != 1)))[:, 0]
    odd = tf.concat([tf.gather(tf.stack([kind, values], 1), odd), [[0, 0]]], 0)[0]
    error = tf.where(
        odd[0] != 0,
        gb.message(
            "an EXIF Orientation of type ",
            odd[0],
            " and ",
            odd[1],
            " values is not read by the exported model; save the image turned, without it",
        ),  # fmt: skip
        "",
    )
    error = tf.where(
        classic | (length == start),
        error,
        tf.where(
            big_tiff,
            "BigTIFF EXIF is not read by the exported model",
            "truncated or corrupt image: EXIF data that is not TIFF",
        ),
    )
    error = tf.where(
        classic & (length - start < 8), "truncated or corrupt image: EXIF data of less than 8 bytes", error
    )
    found = classic & (last >= 0)
    value = tf.concat([short, gb.int64([1])], 0)[tf.where(found, last, tf.size(short, tf.int64))]
    return value, found, error


def _xmp_orientation(xmp):
    """The first `tiff:Orientation="N"` or `tiff:Orientation>N` of an XMP packet, as Pillow's regex finds it, or 1."""
    tf = gb.tf_module()
    after = tf.strings.split(xmp, "tiff:Orientation")[1:]  # what follows each occurrence
    after = tf.strings.join([tf.strings.substr(after, 0, 3), "\x00\x00\x00"])  # 3 bytes at least
    quoted = tf.strings.regex_full_match(tf.strings.substr(after, 0, 3), '="[0-9]')
    element = tf.strings.regex_full_match(tf.strings.substr(after, 0, 2), ">[0-9]")
    digits = tf.where(quoted, tf.strings.substr(after, 2, 1), tf.strings.substr(after, 1, 1))
    digits = tf.concat([tf.boolean_mask(digits, quoted | element), ["1"]], 0)
    return tf.strings.to_number(digits[0], tf.int64)
