"""What every decoder shares: the reject exception, the pixel cap, reading a file, flat images.

The bottom layer of decoding: `cxrdata.dicom` and `cxrdata.decoding` build on
it, and it imports no other cxrdata module but `cxrdata.utils`.
"""

from __future__ import annotations

import os

import numpy as np

from cxrdata.utils.io import open_regular

SOURCE_CONSTANT = "the source image is constant"


class DecodeError(Exception):
    """A file that cannot be turned into an image; its message is the reject reason."""


class FlatImageError(DecodeError):
    """An image with one gray level (in its source, or after conversion to 8 bits).

    `value` is the 8-bit gray level it would have had, or None where it has none
    (a constant source is rejected before it is scaled).
    """

    def __init__(self, reason: str, value: int | None = None):
        super().__init__(reason)
        self.value = value


def is_dicom(data: bytes, name: str = "") -> bool:
    """Whether `data` is a DICOM file: the `DICM` prefix, or a `.dcm`/`.dicom` name."""
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def check_pixel_count(width: int, height: int) -> None:
    """Raises DecodeError if an image has more pixels than `PIL.Image.MAX_IMAGE_PIXELS`.

    The cap is Pillow's own defence against decompression bombs (89,478,485
    pixels unless changed; None lifts it), read at each call. Pillow alone only
    warns between one and two times the cap; here anything over it is rejected.
    """
    from PIL import Image

    cap = Image.MAX_IMAGE_PIXELS
    if cap is not None and width * height > cap:
        raise DecodeError(
            f"image too large: {width}x{height} = {width * height} pixels, over the limit of "
            f"{cap} (PIL.Image.MAX_IMAGE_PIXELS)"
        )


def read_file(data: bytes | bytearray | str | os.PathLike, name: str = "") -> tuple[bytes, str]:
    """The bytes to decode and the name to recognize them by, from bytes or a path.

    A path must name a regular file (a FIFO, a device or a socket raises
    `NotARegularFileError`, an OSError, at once: nothing waits on a pipe or
    reads an endless device).
    """
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), name
    name = name or os.fspath(data)
    with open_regular(data) as f:
        return f.read(), name


def check_not_flat(image: np.ndarray, reason: str, hint: str = "") -> np.ndarray:
    """Returns the uint8 `image`, or raises FlatImageError(`reason`) if it has one gray level."""
    low = int(image.min()) if image.size else 0
    if image.size == 0 or int(image.max()) == low:  # min and max: no temporary the image's size
        raise FlatImageError(f"{reason} (every pixel is {low}){hint}", low)
    return image
