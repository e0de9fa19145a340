"""`cxrdata.graph_preprocess`: the converter's decode and resize as graph ops, byte for byte."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image

from cxrdata.decoding import decode_image
from cxrdata.graph_preprocess import check_graph_preprocessing, decode_gray, resize_like_converter
from cxrdata.preprocess import PreprocessConfig, resize
from tests import image_bytes


@functools.lru_cache(maxsize=1)
def _graph_decode():
    """`decode_gray` traced once for the module (eager while-loops would take seconds per file)."""
    import tensorflow as tf

    return tf.function(decode_gray, input_signature=[tf.TensorSpec([], tf.string)])


CASES = [
    ((97, 80), (64, 64), "stretch", "bilinear"),
    ((40, 211), (33, 50), "crop", "bilinear"),
    ((150, 31), (48, 40), "pad", "bicubic"),
    ((20, 25), (64, 48), "stretch", "bicubic"),
    ((232, 68), (77, 58), "stretch", "bilinear"),  # Pillow 13 runs its vertical pass first here
]


@pytest.mark.parametrize("shape, size, aspect, interpolation", CASES)
def test_graph_resize_equals_the_converters_resize(shape, size, aspect, interpolation):
    import tensorflow as tf

    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    config = PreprocessConfig(image_size=size, aspect=aspect, interpolation=interpolation)
    expected = resize(image, config)
    got = tf.function(lambda x: resize_like_converter(x, config))(tf.constant(image)).numpy()
    np.testing.assert_array_equal(got, expected)
    if interpolation == "bilinear":  # the same algorithm as Pillow's; its pass order moves a bit at most
        pillow = resize(image, PreprocessConfig(image_size=size, aspect=aspect, resampler="pillow"))
        assert np.abs(pillow.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("L", "JPEG"), ("RGB", "JPEG")],
)
def test_graph_decode_equals_pillows(mode, fmt):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    base = np.clip(np.cumsum(rng.normal(0, 9, (37, 53)), axis=1) + 128, 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    if mode == "I;16":
        image = Image.fromarray(base.astype(np.uint16) * 251 + 7)
    elif mode != "L":
        image = Image.merge("RGB", [image, image.point(lambda v: 255 - v), image.point(lambda v: v // 2)])
        if mode == "RGBA":
            image.putalpha(90)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    got = _graph_decode()(tf.constant(buf.getvalue())).numpy()
    np.testing.assert_array_equal(got, decode_image(buf.getvalue()))


def test_old_datasets_keep_pillows_resize_and_are_refused_by_the_graph():
    old = PreprocessConfig.from_dict({"image_size": [64, 64], "equalize": "local"})
    assert old.resampler == "pillow" and PreprocessConfig().resampler == "cxrdata"
    with pytest.raises(ValueError, match="`resampler` must be 'cxrdata'"):
        check_graph_preprocessing(old)
    with pytest.raises(ValueError, match="`equalize` must be one of local, none"):
        check_graph_preprocessing(PreprocessConfig(equalize="global"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_graph_decode_turns_the_image_as_pillows_exif_transpose(orientation):
    """EXIF orientation in a JPEG (either byte order), in a PNG's eXIf chunk (before or after the
    pixels) and in XMP, applied as `ImageOps.exif_transpose` applies it (through `decode_image`)."""
    import tensorflow as tf

    gray, rgb = image_bytes.gradient(), image_bytes.gradient(mode="RGB")
    files = [
        image_bytes.exif_jpeg(gray, orientation, "<"),
        image_bytes.exif_jpeg(rgb, orientation, ">"),
        image_bytes.exif_png(gray, orientation, ">"),
        image_bytes.exif_png(rgb, orientation, "<", before=b"IDAT"),
        image_bytes.xmp_jpeg(rgb, orientation),
    ]
    for data in files:
        expected = decode_image(data)
        assert expected.shape == ((37, 53) if orientation < 5 else (53, 37))
        np.testing.assert_array_equal(_graph_decode()(tf.constant(data)).numpy(), expected)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "top-down"])
def test_graph_decode_reads_bmp_as_pillow(mode):
    import tensorflow as tf

    if mode == "top-down":
        data = image_bytes.top_down_bmp(image_bytes.gradient(mode="RGB"))
    else:
        data = image_bytes.encode(image_bytes.gradient(mode=mode), "BMP")
    np.testing.assert_array_equal(_graph_decode()(tf.constant(data)).numpy(), decode_image(data))
