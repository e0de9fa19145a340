"""DICOM decoding: header checks before decoding, windowing, frames, and the real samples."""

import csv
import io
import shutil
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cxrdata.conversion import convert
from cxrdata.decoding import DecodeError, decode_image
from cxrdata.manifest import Manifest, dicom_window_of, read_manifest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid  # noqa: E402

REAL = ("siim-mono2-jpeg.dcm", "siim-mono1-fake-jpeg.dcm")


def _dataset(
    pixels,
    *,
    bits_stored,
    bits_allocated=None,
    signed=False,
    photometric="MONOCHROME2",
    pixel_data=None,
    **tags,
):
    """A CR file in ExplicitVRLittleEndian; `pixels` is (rows, columns) or (frames, rows, columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "TEST01"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = bits_allocated or (16 if bits_stored > 8 else 8)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(ds.BitsAllocated, signed)]
    ds.PixelData = pixels.astype(dtype).tobytes() if pixel_data is None else pixel_data
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _decode(ds, **kwargs):
    return decode_image(_bytes(ds), name="x.dcm", **kwargs)


GRADIENT_12 = np.linspace(0, 4095, 64 * 64).round().astype(np.int64).reshape(64, 64)


# --- checks before decoding ---------------------------------------------------------------


def test_huge_header_with_tiny_pixel_data_is_rejected_fast_without_allocating():
    ds = _dataset(np.zeros((2, 2)), bits_stored=16, pixel_data=b"\0" * 4096)
    ds.Rows = ds.Columns = 30000
    data = _bytes(ds)
    assert len(data) < 5000
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(
        DecodeError, match=r"image too large: 30000x30000 = 900000000 pixels.*MAX_IMAGE_PIXELS"
    ):
        decode_image(data, name="bomb.dcm")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB"
    assert elapsed < 30  # generous on a busy machine; the old decoder took about a minute


def test_compressed_header_over_the_cap_is_rejected_before_decoding(monkeypatch):
    ds = _dataset(np.zeros((64, 64)), bits_stored=12)
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = 8000  # 1 MB of RLE could claim this; the decoder would allocate 2 GB
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    with pytest.raises(DecodeError, match="image too large: 8000x8000"):
        _decode(ds)


def test_rows_edited_upwards_is_a_reject_not_a_zero_padded_image():
    ds = _dataset(GRADIENT_12, bits_stored=12)
    ds.Rows = 128
    with pytest.raises(
        DecodeError,
        match=r"truncated DICOM: pixel data holds 8192 bytes, the header "
        r"\(128x64x1x16 bits x 1 frame\(s\)\) needs 16384",
    ):
        _decode(ds)


def test_rows_edited_downwards_is_a_reject_too():
    ds = _dataset(GRADIENT_12, bits_stored=12)
    ds.Rows = 32
    with pytest.raises(DecodeError, match="inconsistent DICOM: pixel data holds 8192 bytes"):
        _decode(ds)


def test_pillow_images_over_the_cap_are_rejects_with_a_reason(monkeypatch):
    buf = io.BytesIO()
    Image.fromarray((GRADIENT_12 // 16).astype(np.uint8)).save(buf, format="PNG")  # not flat
    # 4096 pixels: between 1x and 2x the cap Pillow only warns; over 2x it raises.
    for cap in (3000, 1000):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", cap)
        with pytest.raises(DecodeError, match="image too large"):
            decode_image(buf.getvalue())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert decode_image(buf.getvalue()).shape == (64, 64)


# --- frames -------------------------------------------------------------------------------


def test_multi_frame_decodes_frame_0_alone():
    frames = np.zeros((200, 64, 64), np.int64)
    frames[0] = GRADIENT_12
    frames[1:] = 4095 - GRADIENT_12  # any other frame would show up inverted
    ds = _dataset(frames, bits_stored=12)
    out = _decode(ds, dicom_window="none")
    np.testing.assert_array_equal(out, (GRADIENT_12 * 255 + 2047) // 4095)


def test_multi_frame_rle_decodes_frame_0():
    frames = np.stack([GRADIENT_12, 4095 - GRADIENT_12, GRADIENT_12 // 2])
    ds = _dataset(frames, bits_stored=12)
    ds.compress(RLELossless)
    np.testing.assert_array_equal(_decode(ds, dicom_window="none"), (GRADIENT_12 * 255 + 2047) // 4095)


def test_multi_frame_jpeg_decodes_frame_0_through_tensorflow_io():
    def jpeg(array):
        buf = io.BytesIO()
        Image.fromarray(array.astype(np.uint8)).save(buf, format="JPEG", quality=100)
        return buf.getvalue()

    first = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    ds = _dataset(
        np.zeros((3, 64, 64)),
        bits_stored=8,
        pixel_data=encapsulate([jpeg(first), jpeg(255 - first), jpeg(first // 2)]),
    )
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "MONOCHROME2"
    out = _decode(ds)
    assert out.shape == (64, 64)
    assert np.abs(out.astype(int) - first).max() <= 2  # lossy JPEG at quality 100


# --- pixel pipeline -------------------------------------------------------------------------


def test_signed_values_keep_their_gray_levels():
    pixels = np.linspace(-1000, 1000, 64 * 64).round().astype(np.int64).reshape(64, 64)
    out = _decode(_dataset(pixels, bits_stored=16, signed=True))
    assert len(np.unique(out)) > 200
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # order kept: -1000 darkest, 1000 brightest
    # the legacy mode reproduces the old offset-binary scaling: 8 gray levels
    legacy = _decode(_dataset(pixels, bits_stored=16, signed=True), dicom_window="none")
    assert set(np.unique(legacy)) == set(range(124, 132))


@pytest.mark.parametrize("bits_stored, low, high", [(16, 0, 4095), (12, 1000, 3000)])
def test_narrow_ranges_keep_more_than_200_levels(bits_stored, low, high):
    pixels = np.linspace(low, high, 64 * 64).round().astype(np.int64).reshape(64, 64)
    out = _decode(_dataset(pixels, bits_stored=bits_stored))
    assert len(np.unique(out)) > 200
    legacy = _decode(_dataset(pixels, bits_stored=bits_stored), dicom_window="none")
    assert len(np.unique(legacy)) < 130


def test_robust_range_uses_the_documented_percentiles():
    pixels = np.linspace(1000, 3000, 64 * 64).reshape(64, 64)
    out = _decode(_dataset(pixels.round(), bits_stored=12), dicom_window="minmax")
    lo, hi = np.percentile(pixels.round(), [0.5, 99.5])
    expected = np.rint(np.clip((pixels.round() - lo) / (hi - lo), 0, 1) * 255)
    np.testing.assert_array_equal(out, expected)


def test_rescale_and_window_match_a_hand_computation():
    ds = _dataset(
        GRADIENT_12,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=[1000, 3000],
        WindowWidth=[500, 100],
    )
    out = _decode(ds)
    # PS3.3 C.11.2.1.2.1 (LINEAR) on the rescaled values, first window, output range [0, 255]
    x = GRADIENT_12 * 2.0 - 1024
    c, w = 1000 - 0.5, 500 - 1
    expected = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    np.testing.assert_array_equal(out, np.rint(expected * 255))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200


def test_sigmoid_window_is_honoured():
    ds = _dataset(GRADIENT_12, bits_stored=12, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    expected = np.rint(255 / (1 + np.exp(-4 * (GRADIENT_12 - 2048) / 1024)))
    np.testing.assert_array_equal(_decode(ds), expected)


def test_voi_lut_sequence_is_honoured():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", [int(v) for v in (np.arange(4096) ** 2 / 4095**2 * 65535).round()])
    ds = _dataset(GRADIENT_12, bits_stored=12, VOILUTSequence=[item])
    expected = np.rint((GRADIENT_12**2 / 4095**2 * 65535).round() / 65535 * 255)
    np.testing.assert_array_equal(_decode(ds), expected)
    # "minmax" ignores the LUT
    assert not np.array_equal(_decode(ds, dicom_window="minmax"), expected)


def test_none_reproduces_the_old_full_bits_stored_scaling():
    ds = _dataset(
        GRADIENT_12,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=1000,
        WindowWidth=500,
    )
    np.testing.assert_array_equal(_decode(ds, dicom_window="none"), (GRADIENT_12 * 255 + 2047) // 4095)


def test_monochrome1_is_inverted_after_windowing():
    tags = dict(WindowCenter=1500, WindowWidth=2000)
    mono2 = _decode(_dataset(GRADIENT_12, bits_stored=12, **tags))
    mono1 = _decode(_dataset(GRADIENT_12, bits_stored=12, photometric="MONOCHROME1", **tags))
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert mono2[0, 0] == 0 and mono1[0, 0] == 255  # the window is applied to stored values


def test_invalid_window_is_a_reject_that_names_the_way_out():
    ds = _dataset(GRADIENT_12, bits_stored=12, WindowCenter=100, WindowWidth=0)
    with pytest.raises(DecodeError, match="invalid DICOM window.*dicom_window='minmax'"):
        _decode(ds)
    assert _decode(ds, dicom_window="minmax").max() == 255


def test_bad_dicom_window_fails_before_reading():
    with pytest.raises(
        ValueError,
        match=r"`dicom_window` must be one of auto, minmax, none. " r"Received: dicom_window='window'",
    ):
        decode_image("/nonexistent.dcm", dicom_window="window")


# --- real files and conversion ------------------------------------------------------------


@pytest.mark.parametrize("window", ["auto", "none", "minmax"])
def test_real_monochrome1_is_exactly_255_minus_monochrome2(realdata, window):
    mono2 = decode_image(realdata / "dicom" / REAL[0], dicom_window=window)
    mono1 = decode_image(realdata / "dicom" / REAL[1], dicom_window=window)
    assert mono2.shape == (1024, 1024)
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_real_8_bit_files_keep_their_stored_values_in_auto_and_none(realdata):
    paths = sorted((realdata / "dicom").glob("*.dcm"))
    assert len(paths) >= 6
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(int)  # pydicom's own decoder (Pillow) as the reference
        expected = 255 - stored if ds.PhotometricInterpretation == "MONOCHROME1" else stored
        for window in ("auto", "none"):
            np.testing.assert_array_equal(
                decode_image(path, dicom_window=window), expected, err_msg=path.name
            )


def test_convert_records_dicom_window_and_real_dicoms_convert(tmp_path, realdata):
    src = tmp_path / "src"
    for cls, name in (("a", REAL[1]), ("b", REAL[0])):
        (src / cls).mkdir(parents=True)
        shutil.copy(realdata / "dicom" / name, src / cls / name)
    for path in sorted((realdata / "dicom").glob("siim-sample-*.dcm")):
        shutil.copy(path, src / "b" / path.name)
    bad = _dataset(GRADIENT_12, bits_stored=12)
    bad.Rows = 128
    (src / "b" / "edited.dcm").write_bytes(_bytes(bad))
    result = convert(
        src,
        tmp_path / "out",
        image_size=64,
        equalize="none",
        splits=(1.0, 0.0),
        workers=1,
        progress=False,
        dicom_window="minmax",
    )
    assert result.num_converted == 6
    with open(tmp_path / "out" / "rejects.csv", newline="") as f:
        rejects = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    assert list(rejects) == ["b/edited.dcm"] and rejects["b/edited.dcm"].startswith("truncated DICOM")
    manifest = read_manifest(tmp_path / "out")
    assert manifest.preprocessing["dicom_window"] == "minmax" and manifest.dicom_window == "minmax"
    assert manifest.preprocessing["dicom_frames"] == "first"


def test_old_manifests_read_as_dicom_window_none():
    old = Manifest(
        class_names=("a",),
        image_shape=(8, 8, 1),
        encoding="raw",
        preprocessing={"image_size": [8, 8], "equalize": "none"},
        splits={},
    )
    assert Manifest.from_dict(old.to_dict()).dicom_window == "none"
    assert dicom_window_of({"dicom_window": "auto"}) == "auto"


def test_convert_rejects_a_bad_dicom_window_before_any_work(phantom_tree, tmp_path):
    with pytest.raises(ValueError, match="dicom_window"):
        convert(phantom_tree(per_class=2), tmp_path / "out", progress=False, dicom_window="lut")
    assert not (tmp_path / "out").exists()
