"""The exported SavedModel on hostile input: a status per item, EXIF orientation, BMP and WebP, a pixel cap.

One SavedModel is exported for the module. Its answers are compared with `cxr predict`'s
(`cxrmodels.predict`, Pillow's decoding) on the same files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrmodels.serving.prediction import predict
from tests import image_bytes

CLASSES = ("COVID", "Normal")


@pytest.fixture(scope="module")
def served(exported_savedmodel):
    """`(folder, serve)`: the exported model and a function from a list of bytes to numpy outputs."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported_savedmodel))
    signature = loaded.signatures["serving_default"]

    def serve(items: list[bytes]) -> dict:
        result = signature(image_bytes=tf.constant(items, tf.string))
        return {k: v.numpy() for k, v in result.items()}

    serve.loaded = loaded  # the signature needs its object alive
    return exported_savedmodel, serve


def _predicted(trained_run, items: list[bytes], folder) -> list[dict]:
    """`cxr predict` on the same bytes, written to files."""
    paths = []
    for i, data in enumerate(items):
        paths.append(folder / f"item{i:03d}")
        paths[-1].write_bytes(data)
    return predict(trained_run, paths)


def _agrees_with_predict(got: dict, expected: list[dict], items: list[bytes]) -> None:
    """The probabilities of the items `cxr predict` read, then the status of every item."""
    read = [i for i, row in enumerate(expected) if row["ok"]]
    np.testing.assert_allclose(
        got["probabilities"][read],
        [[expected[i]["probabilities"][c] for c in CLASSES] for i in read],
        atol=1e-5,
        rtol=0,
    )
    for i, row in enumerate(expected):
        assert bool(got["ok"][i]) == row["ok"], (i, got["error"][i], row["error"], items[i][:16])
        assert (got["error"][i] == b"") == row["ok"]


def test_one_bad_item_does_not_fail_its_batch(served, trained_run, realdata, tmp_path):
    good = [p.read_bytes() for p in sorted((realdata / "png").glob("*/*.png"))[:10]]
    items = good[:5] + [b"garbage", good[0][:400], b""] + good[5:]
    got = served[1](items)
    expected = _predicted(trained_run, items, tmp_path)
    assert got["probabilities"].shape == (13, 2) and got["ok"].dtype == bool
    assert got["ok"].tolist() == [True] * 5 + [False] * 3 + [True] * 5
    _agrees_with_predict(got, expected, items)
    errors = [e.decode() for e in got["error"][5:8]]
    assert errors[0] == "unrecognized format: the exported model reads PNG, JPEG and BMP files"
    assert errors[1].startswith("truncated or corrupt PNG")
    assert errors[2] == "empty file"
    assert np.isnan(got["probabilities"][5:8]).all()  # never a number for an item without an image
    assert [c.decode() for c in got["class_names"]] == list(CLASSES)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_exif_orientation_gives_cxr_predicts_probabilities(served, trained_run, realdata, tmp_path, fmt):
    from PIL import Image

    with Image.open(sorted((realdata / "png").glob("*/*.png"))[0]) as im:
        source = im.convert("L").resize((160, 96), Image.Resampling.BILINEAR)
    builder = image_bytes.exif_jpeg if fmt == "jpeg" else image_bytes.exif_png
    items = [builder(source, orientation) for orientation in range(1, 9)]
    got = served[1](items)
    expected = _predicted(trained_run, items, tmp_path)
    _agrees_with_predict(got, expected, items)
    assert got["ok"].all()
    # The orientations reach the model: the 8 turned images do not all score alike.
    assert np.ptp(got["probabilities"][:, 0]) > 1e-4


def test_bmp_is_served_and_webp_gif_tiff_dicom_are_refused_by_name(served, trained_run, realdata, tmp_path):
    from PIL import Image

    with Image.open(sorted((realdata / "png").glob("*/*.png"))[3]) as im:
        source = im.convert("L").resize((120, 100), Image.Resampling.BILINEAR)
    rgb = Image.merge("RGB", [source, source.point(lambda v: 255 - v), source])
    bmps = [image_bytes.encode(source, "BMP"), image_bytes.encode(rgb, "BMP"), image_bytes.top_down_bmp(rgb)]
    refused = [image_bytes.encode(source, fmt) for fmt in ("WEBP", "GIF", "TIFF")]
    dicom = sorted((realdata / "dicom").glob("*.dcm"))[2].read_bytes()
    items = bmps + refused + [dicom]
    expected = _predicted(trained_run, items, tmp_path)
    assert all(row["ok"] for row in expected)  # `cxr predict` reads them all
    _agrees_with_predict(served[1](bmps), expected[:3], bmps)
    got = served[1](items)
    assert got["ok"].tolist() == [True] * 3 + [False] * 4
    errors = [e.decode() for e in got["error"][3:]]
    assert errors[0] == "WebP is not supported by the exported model; convert to PNG"
    assert errors[1] == "GIF is not supported by the exported model; convert to PNG"
    assert errors[2] == "TIFF is not supported by the exported model; convert to PNG"
    assert errors[3].startswith("DICOM is not supported by the exported model")


def test_the_pixel_cap_is_checked_from_the_header_before_decoding(served, realdata):
    from PIL import Image

    out, serve = served
    cap = Image.MAX_IMAGE_PIXELS
    good = sorted((realdata / "png").glob("*/*.png"))[0].read_bytes()
    side = int(cap**0.5) + 1  # just over the cap
    items = [
        image_bytes.png_header(side, side),
        image_bytes.jpeg_header(side, side),
        image_bytes.bmp_header(side, side),
        image_bytes.png_header(1, cap + 1),
        good,
    ]
    got = serve(items)
    assert got["ok"].tolist() == [False] * 4 + [True]
    for error in got["error"][:3]:
        assert error.decode() == (
            f"image too large: {side}x{side} = {side * side} pixels, over the limit of {cap} "
            "(PIL.Image.MAX_IMAGE_PIXELS when exported)"
        )
    assert got["error"][3].decode().startswith(f"image too large: 1x{cap + 1} = ")
    assert json.loads((out / "cxr.json").read_text())["max_image_pixels"] == cap


def test_what_cxr_predict_refuses_the_exported_model_refuses(served, trained_run, tmp_path):
    from PIL import Image

    # A constant image (decoding refuses it) and a JPEG whose header claims more pixels than
    # `cxr predict` decodes at full scale (it would decode it reduced in the DCT; the graph cannot).
    constant = image_bytes.encode(Image.new("L", (40, 30), 77), "PNG")
    big = image_bytes.jpeg_header(9000, 9000)
    ordinary = image_bytes.encode(image_bytes.gradient(), "PNG")
    got = served[1]([ordinary, constant, big])
    assert got["ok"].tolist() == [True, False, False]
    assert got["error"][1].decode() == "the source image is constant"
    assert got["error"][2].decode().startswith("JPEG over 33554432 pixels")
    expected = _predicted(trained_run, [ordinary, constant], tmp_path)
    assert [row["ok"] for row in expected] == [True, False]  # cxr predict refuses the constant one too
    _agrees_with_predict(
        {k: v[:2] for k, v in got.items() if k != "class_names"}, expected, [ordinary, constant]
    )
