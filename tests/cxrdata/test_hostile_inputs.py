"""Hostile files: codestreams that disagree with their DICOM header, flat and non-finite images,
and files whose memory must follow what they hold, not what they claim (issue 18)."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from cxrdata.decoding import DecodeError, FlatImageError, decode_image
from tests.cxrdata import hostile_files as hostile

pytest.importorskip("pydicom")

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRADIENT_12 = hostile.gradient(48, 40, 4095)


def _dicom(**kwargs) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values these tests write
        return hostile.dicom(**kwargs)


# --- codestreams checked against the DICOM header before a native decoder sees them ---------


def test_a_16_bit_jpeg2000_codestream_under_an_8_bit_header_is_rejected_before_decoding():
    data = hostile.crashing_dicom()
    assert len(data) < 1000  # the ~900-byte file that crashed tensorflow-io ("double free")
    with pytest.raises(
        DecodeError,
        match=r"inconsistent DICOM: the JPEG 2000 codestream is 32x32 with 1 component\(s\) of 16 bits, "
        r"the header says Rows=32, Columns=32, SamplesPerPixel=1, BitsAllocated=8, BitsStored=8",
    ):
        decode_image(data, name="crash.dcm")


def test_an_8_bit_jpeg2000_codestream_under_a_16_bit_header_is_rejected_not_scrambled():
    with pytest.raises(DecodeError, match=r"JPEG 2000 codestream is 32x32 .* of 8 bits.*BitsAllocated=16"):
        decode_image(hostile.scrambled_dicom(), name="scrambled.dcm")


@pytest.mark.parametrize(
    "tags, reason",
    [
        (
            dict(shape=(32, 64)),
            r"the JPEG codestream is 64x64 with 1 component\(s\) of 8 bits.*Rows=32, Columns=64",
        ),
        (dict(shape=(64, 64), SamplesPerPixel=3), r"1 component\(s\).*SamplesPerPixel=3"),
        (dict(shape=(64, 64), bits_stored=12), r"of 8 bits.*BitsAllocated=16, BitsStored=12"),
    ],
)
def test_jpeg_frames_that_disagree_with_the_header_are_rejected_naming_both(tags, reason):
    from pydicom.uid import JPEGBaseline8Bit

    samples = tags.pop("SamplesPerPixel", None)
    extra = {"SamplesPerPixel": samples, "PhotometricInterpretation": "RGB"} if samples else {}
    data = _dicom(syntax=JPEGBaseline8Bit, pixel_data=hostile.jpeg(hostile.gradient(64, 64)), **tags, **extra)
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, name="x.dcm")


def test_jpeg2000_and_jpeg_frames_that_fit_their_header_still_decode():
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    ramp = hostile.gradient(32, 32)
    j2k = _dicom(shape=(32, 32), syntax=JPEG2000Lossless, pixel_data=hostile.j2k(ramp.astype(np.uint8)))
    np.testing.assert_array_equal(decode_image(j2k, name="a.dcm"), ramp)  # lossless, 8 bits as stored
    wide = hostile.gradient(32, 32, 4095).astype(np.uint16)
    j2k16 = _dicom(shape=(32, 32), bits_stored=12, syntax=JPEG2000Lossless, pixel_data=hostile.j2k(wide))
    assert decode_image(j2k16, name="b.dcm", dicom_window="none").max() == 255
    jpg = _dicom(shape=(64, 64), syntax=JPEGBaseline8Bit, pixel_data=hostile.jpeg(hostile.gradient(64, 64)))
    assert np.abs(decode_image(jpg, name="c.dcm").astype(int) - hostile.gradient(64, 64)).max() <= 3


# --- nothing flat or non-finite is kept -----------------------------------------------------


@pytest.mark.parametrize(
    "tags, reason",
    [
        (dict(RescaleSlope=0), r"invalid DICOM rescale: RescaleSlope=0, .*flattens the image"),
        (dict(RescaleSlope="NaN"), r"invalid DICOM rescale: RescaleSlope=nan.*non-finite"),
        (dict(RescaleSlope="inf"), r"invalid DICOM rescale: RescaleSlope=inf.*non-finite"),
        (dict(RescaleSlope=1e308), r"invalid DICOM rescale: RescaleSlope=1e\+308.*non-finite"),
        (dict(RescaleIntercept="-inf"), r"invalid DICOM rescale: .*RescaleIntercept=-inf"),
        (dict(WindowCenter="NaN", WindowWidth=400), r"invalid DICOM window: WindowCenter=nan.*not finite"),
        (dict(WindowCenter=2000, WindowWidth="NaN"), r"invalid DICOM window: .*WindowWidth=nan"),
        (dict(WindowCenter=2000, WindowWidth=1e30), r"constant after windowing \(every pixel is 128\) with"),
        (dict(WindowCenter=1e30, WindowWidth=100), r"constant after windowing \(every pixel is 0\) with"),
    ],
)
def test_degenerate_rescale_and_window_values_are_named_rejects(tags, reason):
    data = _dicom(pixels=GRADIENT_12, bits_stored=12, **tags)
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, name="x.dcm")
    if "WindowCenter" in tags:  # the way out the message names
        assert decode_image(data, name="x.dcm", dicom_window="minmax").max() == 255


def test_a_constant_source_has_its_own_reason_apart_from_a_constant_result():
    flat = np.full((48, 40), 700)
    with pytest.raises(FlatImageError, match=r"the source image is constant \(every stored value is 700\)"):
        decode_image(_dicom(pixels=flat, bits_stored=12), name="x.dcm")
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), 9, np.uint8)).save(buf, format="PNG")
    with pytest.raises(FlatImageError, match=r"the source image is constant \(every pixel is 9\)"):
        decode_image(buf.getvalue())
    # Two 16-bit values that map to one 8-bit level: not constant in the source, flat in 8 bits.
    two_levels = np.tile(np.array([0, 100], np.uint16), (20, 15))
    buf = io.BytesIO()
    Image.fromarray(two_levels).save(buf, format="PNG")
    with pytest.raises(FlatImageError, match=r"constant after conversion to 8 bits \(every pixel is 0\)"):
        decode_image(buf.getvalue())
    # The same for DICOM in the legacy scaling: 0 and 100 over 16 bits are both 0.
    with pytest.raises(FlatImageError, match="constant after conversion to 8 bits"):
        decode_image(_dicom(pixels=two_levels, bits_stored=16), name="x.dcm", dicom_window="none")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_tiff_holding_nan_or_an_infinity_is_rejected(bad):
    floats = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    floats[17, 3] = bad
    buf = io.BytesIO()
    Image.fromarray(floats, mode="F").save(buf, format="TIFF")
    with pytest.raises(DecodeError, match="non-finite pixel values"):
        decode_image(buf.getvalue())


# --- memory follows what a file holds --------------------------------------------------------

# Decodes (and preprocesses to 299 px, as `cxr convert` would) one file in a fresh process; prints
# the result and the peak resident memory above the baseline taken after the imports.
_PEAK = """
import sys
import numpy as np, PIL.Image, PIL.JpegImagePlugin, PIL.PngImagePlugin, pydicom, zlib
from cxrdata.decoding import decode_image, DecodeError
from cxrdata.preprocess import PreprocessConfig, preprocess_image

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

data = open(sys.argv[1], "rb").read()
before = status("VmRSS")
try:
    image = decode_image(data, name=sys.argv[1])
    preprocess_image(image, PreprocessConfig(image_size=299, equalize="none"))
    result = "x".join(map(str, image.shape))
except DecodeError as e:
    result = "reject: " + str(e)
print(status("VmHWM") - before)
print(result)
"""


def _peak(path) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    peak, result = run.stdout.splitlines()[-2:]
    return int(peak) / 1e6, result


@pytest.mark.slow
def test_a_deflated_dicom_holding_1_gib_is_read_within_its_header_limits(tmp_path):
    frame = hostile.gradient(512, 512)
    honest = tmp_path / "honest.dcm"  # 4096 frames of 512x512: 1 GiB in 1 MB; frame 0 is decoded
    honest.write_bytes(hostile.deflated_dicom(frame, 4096))
    lying = tmp_path / "lying.dcm"  # the same 1 GiB under a header that says one frame
    lying.write_bytes(hostile.deflated_dicom(frame, 4096, claimed_frames=1))
    assert honest.stat().st_size < 2e6
    peak, result = _peak(honest)
    assert result == "512x512" and peak < 150, (peak, result)  # pydicom alone inflates all of it: 2.8 GB
    peak, result = _peak(lying)
    assert "inconsistent DICOM: pixel data holds 1073741824 bytes" in result and peak < 150, (peak, result)


def test_a_deflated_dicom_keeps_frame_0_exactly_and_refuses_a_cut_stream():
    frame = hostile.gradient(64, 48)
    data = hostile.deflated_dicom(frame, 3)
    np.testing.assert_array_equal(decode_image(data, name="x.dcm"), frame)
    with pytest.raises(DecodeError, match="truncated DICOM: the deflated pixel data holds"):
        decode_image(data[: len(data) - 40], name="x.dcm")


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, progressive, limit_mb", [("L", False, 150), ("RGB", False, 150), ("RGB", True, 400)]
)
def test_a_tiny_jpeg_claiming_9000x9000_pixels_costs_a_bounded_amount(tmp_path, mode, progressive, limit_mb):
    path = tmp_path / "claims.jpg"
    path.write_bytes(hostile.jpeg_claiming(9000, 9000, mode=mode, progressive=progressive))
    assert path.stat().st_size < 700
    peak, result = _peak(path)
    # Decoded at half scale in the DCT (under JPEG_DRAFT_PIXELS); a progressive JPEG still needs
    # libjpeg's whole-image coefficient buffer (2 bytes per coefficient).
    assert peak < limit_mb, f"peak {peak:.0f} MB above the baseline ({result})"
    assert result == "4500x4500", result


@pytest.mark.slow
def test_a_large_16_bit_png_is_resized_without_wide_temporaries(tmp_path):
    side = 6000
    wide = (np.add.outer(np.arange(side, dtype=np.uint32), np.arange(side, dtype=np.uint32)) * 5).astype(
        np.uint16
    )
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path, compress_level=1)
    del wide
    peak, result = _peak(path)
    pixels = side * side
    # Pillow's 16-bit pixels (2 bytes), the uint8 image (1 byte), a strip and the resize's
    # accumulators; the int64 resize took 20 bytes per pixel more.
    assert (
        result == f"{side}x{side}" and peak < 4 * pixels / 1e6
    ), f"peak {peak:.0f} MB, {peak * 1e6 / pixels:.1f} B/px"


def test_jpegs_under_the_draft_budget_decode_at_full_size_and_larger_ones_at_a_reduced_scale(monkeypatch):
    import cxrdata.decoding as decoding

    ramp = hostile.gradient(96, 80)
    data = hostile.jpeg(ramp, quality=95)
    full = decode_image(data)
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(full, np.asarray(im.convert("L")))  # byte for byte Pillow's decode
    monkeypatch.setattr(decoding, "JPEG_DRAFT_PIXELS", 96 * 80 // 4)  # 1/2 scale fits exactly
    half = decode_image(data)
    assert half.shape == (48, 40)
    monkeypatch.setattr(decoding, "JPEG_DRAFT_PIXELS", 96 * 80 // 5)  # 1/2 does not fit: 1/4
    assert decode_image(data).shape == (24, 20)
    coarse = np.asarray(Image.fromarray(full).resize((40, 48), Image.Resampling.BOX), dtype=int)
    assert np.abs(half.astype(int) - coarse).mean() < 3  # the same picture at half scale


@pytest.mark.slow
@pytest.mark.parametrize(
    "tags, bytes_per_pixel",
    [
        (dict(WindowCenter=2000, WindowWidth=3000), 8),  # the file, pydicom's copy, 16-bit pixels, uint8
        (dict(RescaleSlope=2, RescaleIntercept=-1024), 16),  # + the rescaled values for the percentiles
    ],
)
def test_a_large_dicom_is_windowed_strip_by_strip(tmp_path, tags, bytes_per_pixel):
    side = 2500
    path = tmp_path / "large.dcm"
    path.write_bytes(_dicom(pixels=hostile.gradient(side, side, 4095), bits_stored=12, **tags))
    peak, result = _peak(path)
    # Whole-image int64 and float64 temporaries took about 35 bytes per pixel.
    assert result == f"{side}x{side}" and peak * 1e6 < bytes_per_pixel * side * side, f"peak {peak:.0f} MB"
