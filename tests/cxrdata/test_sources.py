import io
import os

import numpy as np
import pytest
from PIL import Image

from cxrdata.decoding import DecodeError, decode_image
from cxrdata.sources import discover


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


GRADIENT = np.add.outer(np.arange(40), np.arange(50)).astype(np.uint8) * 2


def test_decode_8bit_grayscale_png_is_exact():
    np.testing.assert_array_equal(decode_image(_png(GRADIENT)), GRADIENT)


def test_decode_16bit_png_scales_to_8_bits():
    wide = GRADIENT.astype(np.uint16) * 257  # v8 * 257 spans 0..65535
    img = Image.fromarray(wide)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue()), GRADIENT)


def test_decode_16bit_and_float_strips_match_the_whole_image_formula(monkeypatch):
    import cxrdata.decoding as decoding

    monkeypatch.setattr(decoding, "_STRIP_PIXELS", 7 * 50)  # several strips, the last one short
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (40, 50)).astype(np.uint16)
    expected = ((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(_png(wide)), expected)
    signed = rng.integers(-1000, 70000, (40, 50)).astype(np.int32)  # mode "I": clipped to 0..65535
    clipped = np.clip(signed.astype(np.int64), 0, 65535)
    buf = io.BytesIO()
    Image.fromarray(signed, mode="I").save(buf, format="TIFF")
    np.testing.assert_array_equal(
        decode_image(buf.getvalue()), ((clipped * 255 + 32767) // 65535).astype(np.uint8)
    )
    floats = rng.normal(size=(40, 50)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(floats, mode="F").save(buf, format="TIFF")
    lo, hi = float(floats.min()), float(floats.max())
    expected = np.clip(np.rint((floats - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(buf.getvalue()), expected)


_PEAK_SCRIPT = """
import sys, tracemalloc
from PIL import Image, ImageOps, PngImagePlugin  # imported before the baseline
from cxrdata.decoding import decode_image

def status(key):  # VmHWM is this process's peak resident size (ru_maxrss survives exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

data = open(sys.argv[1], "rb").read()
before = status("VmRSS")
tracemalloc.start()
image = decode_image(data)
traced = tracemalloc.get_traced_memory()[1]
print(image.shape[0] * image.shape[1], traced, status("VmHWM") - before, int(image.min()), int(image.max()))
"""


@pytest.mark.slow
def test_decoding_a_large_16bit_png_needs_about_twice_its_pixel_count(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    # 4000x4000, 16 bits: a few hundred KB on disk; int64 temporaries made it >500 MB in memory
    side = 4000
    wide = (np.add.outer(np.arange(side, dtype=np.uint32), np.arange(side, dtype=np.uint32)) * 8).astype(
        np.uint16
    )
    path = tmp_path / "big16.png"
    Image.fromarray(wide).save(path)
    del wide
    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    pixels, traced, rss = (int(v) for v in out[:3])
    print(f"peak: traced {traced / pixels:.2f}, RSS {rss / pixels:.2f} bytes per pixel")
    assert pixels == side * side and (int(out[3]), int(out[4])) == (
        0,
        (16 * (side - 1) * 255 + 32767) // 65535,
    )
    # Python-side allocations: the uint8 result and one strip; in all, Pillow's 16-bit pixels too
    assert traced < 1.5 * pixels, f"traced peak {traced / pixels:.1f} bytes per pixel"
    assert rss < 4 * pixels, f"RSS grew by {rss / pixels:.1f} bytes per pixel"


def test_decode_rgb_rgba_and_palette_use_luma():
    rgb = np.stack([GRADIENT, 255 - GRADIENT, GRADIENT // 2], axis=-1)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(decode_image(_png(rgb)), expected)
    rgba = np.concatenate([rgb, np.full(GRADIENT.shape + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(decode_image(_png(rgba)), expected)
    palette = Image.fromarray(GRADIENT).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert decode_image(buf.getvalue()).shape == GRADIENT.shape


def test_decode_jpeg_is_close_to_the_source():
    buf = io.BytesIO()
    Image.fromarray(GRADIENT).save(buf, format="JPEG", quality=95)
    out = decode_image(buf.getvalue())
    assert out.shape == GRADIENT.shape and np.abs(out.astype(int) - GRADIENT).mean() < 2


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, not an image" * 10, "not an image"),
    ],
)
def test_decode_bad_bytes_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_decode_truncated_png_raises():
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(DecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_real_pngs_decode(realdata):
    for path in sorted((realdata / "png").glob("*/*.png")):
        image = decode_image(path)
        assert image.dtype == np.uint8 and image.ndim == 2 and min(image.shape) >= 512


def test_real_dicom_monochrome1_is_the_inverse_of_monochrome2(realdata):
    mono2 = decode_image(realdata / "dicom" / "siim-mono2-jpeg.dcm")
    mono1 = decode_image(realdata / "dicom" / "siim-mono1-fake-jpeg.dcm")
    assert mono2.shape == (1024, 1024)
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_real_dicom_matches_pydicom(realdata):
    pydicom = pytest.importorskip("pydicom")
    for path in sorted((realdata / "dicom").glob("siim-sample-*.dcm"))[:2]:
        expected = pydicom.dcmread(path).pixel_array
        np.testing.assert_array_equal(decode_image(path), expected)


def _write_dicom(path, pixels, *, bits_stored, photometric="MONOCHROME2", rle=False):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "TEST01"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype(np.uint16 if bits_stored > 8 else np.uint8).tobytes()
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_dicom_bits_stored_scale_to_full_8_bit_range(tmp_path, bits):
    top = (1 << bits) - 1
    pixels = np.linspace(0, top, 48 * 32).round().astype(np.int64).reshape(48, 32)
    # The full-BitsStored scaling is the legacy mode since dicom_window="auto" became the
    # default (tests/cxrdata/test_dicom.py covers "auto").
    out = decode_image(_write_dicom(tmp_path / "x.dcm", pixels, bits_stored=bits), dicom_window="none")
    np.testing.assert_array_equal(out, (pixels * 255 + top // 2) // top)
    assert out.min() == 0 and out.max() == 255


def test_dicom_uncompressed_monochrome1_and_rle(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 4096, (40, 30))
    plain = decode_image(_write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12))
    inverted = decode_image(
        _write_dicom(tmp_path / "b.dcm", pixels, bits_stored=12, photometric="MONOCHROME1")
    )
    np.testing.assert_array_equal(inverted.astype(int), 255 - plain.astype(int))
    rle = decode_image(_write_dicom(tmp_path / "c.dcm", pixels, bits_stored=12, rle=True))
    np.testing.assert_array_equal(rle, plain)


@pytest.mark.parametrize("keep", [2000, 60000, -10])
def test_truncated_dicom_is_a_decode_error_even_after_other_decodes(realdata, keep):
    # tensorflow-io alone returns the previous image for a truncated file once it has
    # decoded these two; the completeness check must catch it.
    decode_image(realdata / "dicom" / "siim-mono2-jpeg.dcm")
    decode_image(realdata / "dicom" / "siim-mono1-fake-jpeg.dcm")
    data = (realdata / "dicom" / "siim-mono2-jpeg.dcm").read_bytes()
    with pytest.raises(DecodeError, match="DICOM"):
        decode_image(data[:keep], name="cut.dcm")


def test_truncated_uncompressed_dicom_is_a_decode_error(tmp_path):
    path = _write_dicom(tmp_path / "u.dcm", np.zeros((40, 30), np.int64), bits_stored=12)
    with pytest.raises(DecodeError, match="truncated DICOM"):
        decode_image(path.read_bytes()[:-100], name="u.dcm")


def _touch_png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(np.full((8, 8), value, np.uint8)))


def test_discover_class_folders_skips_masks_hidden_and_text(tmp_path):
    _touch_png(tmp_path / "COVID" / "images" / "c1.png")
    _touch_png(tmp_path / "COVID" / "masks" / "c1.png")
    _touch_png(tmp_path / "Normal" / "deep" / "er" / "n1.png")
    (tmp_path / "Normal" / "notes.txt").write_text("x")
    (tmp_path / "Normal" / ".DS_Store").write_text("x")
    (tmp_path / "metadata.csv").write_text("x")
    listing = discover(tmp_path)
    assert listing.layout == "classes" and listing.class_names == ("COVID", "Normal")
    assert [(s.relpath, s.label) for s in listing.sources] == [
        ("COVID/images/c1.png", "COVID"),
        ("Normal/deep/er/n1.png", "Normal"),
    ]


def test_discover_split_folders_are_honoured(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            _touch_png(tmp_path / split / cls / f"{split}-{cls}.png")
    listing = discover(tmp_path)
    assert listing.layout == "splits"
    assert {(s.split, s.label) for s in listing.sources} == {
        (sp, c) for sp in ("train", "val", "test") for c in ("NORMAL", "PNEUMONIA")
    }


def test_discover_csv_with_groups(tmp_path):
    _touch_png(tmp_path / "a.png")
    _touch_png(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("path,label,patient\na.png,covid,P1\nb.png,normal,P2\n")
    listing = discover(tmp_path, labels=tmp_path / "labels.csv", group_by="patient")
    assert listing.class_names == ("covid", "normal")
    assert [(s.relpath, s.label, s.group) for s in listing.sources] == [
        ("a.png", "covid", "P1"),
        ("b.png", "normal", "P2"),
    ]


def test_discover_group_pattern_for_folders(tmp_path):
    _touch_png(tmp_path / "PNEUMONIA" / "person12_virus_3.png")
    _touch_png(tmp_path / "NORMAL" / "person7_bacteria_1.png")
    listing = discover(tmp_path, group_pattern=r"^(person\d+)_")
    assert sorted(s.group for s in listing.sources) == ["person12", "person7"]


def test_discover_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        discover(tmp_path / "missing")
    (tmp_path / "COVID").mkdir()
    _touch_png(tmp_path / "Normal" / "n.png")
    with pytest.raises(ValueError, match="'COVID'.*no image"):
        discover(tmp_path)
    (tmp_path / "labels.csv").write_text("path,label\nNormal/n.png,pneumonia\n")
    with pytest.raises(ValueError, match="not in `class_names`.*'pneumonia'"):
        discover(tmp_path, labels=tmp_path / "labels.csv", class_names=["COVID", "Normal"])
    with pytest.raises(ValueError, match="lacks column"):
        discover(tmp_path, labels=tmp_path / "labels.csv", group_by="patient")


def test_exif_orientation_is_applied():
    # Keras' load_img ignores EXIF; conversion turns the image upright as viewers show it.
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must turn 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(GRADIENT).save(buf, format="PNG", exif=exif)
    np.testing.assert_array_equal(decode_image(buf.getvalue()), np.rot90(GRADIENT, -1))


def _csv_tree(tmp_path, text, encoding="utf-8"):
    for name in ("a.png", "b.png", "c.png"):
        _touch_png(tmp_path / "src" / name)
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return tmp_path / "src", path


def test_csv_paths_outside_src_are_refused_unless_allowed(tmp_path):
    _touch_png(tmp_path / "outside.png")
    src, labels = _csv_tree(
        tmp_path, f"path,label\na.png,x\n../outside.png,y\n{tmp_path / 'outside.png'},y\n"
    )
    with pytest.raises(
        ValueError, match=r"outside SRC.*line 3: '../outside.png'; line 4: '/.*--allow-outside-src"
    ):
        discover(src, labels=labels)
    labels.write_text("path,label\na.png,x\n../outside.png,y\n")
    listing = discover(src, labels=labels, allow_outside_src=True)
    assert sorted(s.relpath for s in listing.sources) == ["../outside.png", "a.png"]


def test_csv_duplicate_rows_are_dropped_and_conflicting_labels_refused(tmp_path, capsys):
    src, labels = _csv_tree(tmp_path, "path,label\na.png,x\nb.png,y\n./a.png,x\n")
    listing = discover(src, labels=labels)
    assert [(s.relpath, s.label) for s in listing.sources] == [("a.png", "x"), ("b.png", "y")]
    assert "dropped 1 duplicate row(s) (line(s) 4)" in capsys.readouterr().err
    labels.write_text("path,label\na.png,x\nb.png,y\na.png,y\n")
    with pytest.raises(ValueError, match="lines 2 and 4 give the file 'a.png' different labels"):
        discover(src, labels=labels)


def test_csv_rows_with_the_wrong_number_of_fields_are_refused(tmp_path):
    src, labels = _csv_tree(tmp_path, "path,label\na.png,x\nb.png,y,extra\nc.png\n")
    with pytest.raises(ValueError, match=r"line\(s\) 3, 4 do not have the 2 fields"):
        discover(src, labels=labels)


def test_a_csv_that_is_not_utf8_names_the_file_and_line(tmp_path):
    src, labels = _csv_tree(tmp_path, "path,label\na.png,x\nb.png,caf\xe9\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"labels.csv' is not UTF-8 text: line 3 holds the byte 0xe9"):
        discover(src, labels=labels)


def test_symlinked_folders_are_followed_at_any_depth_and_loops_listed_once(tmp_path):
    _touch_png(tmp_path / "elsewhere" / "deep" / "e1.png")
    _touch_png(tmp_path / "other" / "c1.png")
    _touch_png(tmp_path / "src" / "Normal" / "n1.png")
    (tmp_path / "src" / "Normal" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "src" / "Normal" / "loop").symlink_to(tmp_path / "src" / "Normal", target_is_directory=True)
    (tmp_path / "src" / "COVID").symlink_to(tmp_path / "other", target_is_directory=True)
    listing = discover(tmp_path / "src")
    assert [(s.relpath, s.label) for s in listing.sources] == [
        ("COVID/c1.png", "COVID"),
        ("Normal/n1.png", "Normal"),
        ("Normal/linked/deep/e1.png", "Normal"),
    ]


def test_a_link_to_an_ancestor_folder_is_not_followed(tmp_path):
    # COVID/loopdir -> .. made every Normal image a COVID image too (issue 18).
    _touch_png(tmp_path / "src" / "COVID" / "c1.png", 1)
    _touch_png(tmp_path / "src" / "Normal" / "n1.png", 2)
    (tmp_path / "src" / "COVID" / "loopdir").symlink_to("..", target_is_directory=True)
    (tmp_path / "src" / "Normal" / "deep").mkdir()
    (tmp_path / "src" / "Normal" / "deep" / "up").symlink_to(tmp_path, target_is_directory=True)
    listing = discover(tmp_path / "src")
    assert [(s.relpath, s.label) for s in listing.sources] == [
        ("COVID/c1.png", "COVID"),
        ("Normal/n1.png", "Normal"),
    ]
    assert listing.rejects == ()


def test_a_file_reached_under_two_classes_is_a_named_reject_not_two_records(tmp_path):
    _touch_png(tmp_path / "src" / "COVID" / "c1.png", 1)
    _touch_png(tmp_path / "src" / "Normal" / "shared" / "n1.png", 2)
    _touch_png(tmp_path / "src" / "Normal" / "n2.png", 3)
    (tmp_path / "src" / "COVID" / "borrowed").symlink_to("../Normal/shared", target_is_directory=True)
    (tmp_path / "src" / "Normal" / "again.png").symlink_to("n2.png")  # one class: listed once
    listing = discover(tmp_path / "src")
    assert [(s.relpath, s.label) for s in listing.sources] == [
        ("COVID/c1.png", "COVID"),
        ("Normal/again.png", "Normal"),
    ]
    assert listing.rejects == (
        (
            "COVID/borrowed/n1.png",
            "the same file is reached under classes COVID, Normal (also as Normal/shared/n1.png); left out",
        ),
        (
            "Normal/shared/n1.png",
            "the same file is reached under classes COVID, Normal (also as COVID/borrowed/n1.png); left out",
        ),
    )


def test_an_unreadable_folder_is_named_in_the_rejects(tmp_path, monkeypatch):
    _touch_png(tmp_path / "src" / "COVID" / "c1.png", 1)
    _touch_png(tmp_path / "src" / "Normal" / "n1.png", 2)
    locked = tmp_path / "src" / "Normal" / "locked"
    _touch_png(locked / "hidden.png", 3)
    if os.geteuid() == 0:  # root reads any folder: make listing this one fail as it would for a user
        real_scandir = os.scandir

        def scandir(path="."):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        listing = discover(tmp_path / "src")
    finally:
        locked.chmod(0o755)
    assert [s.relpath for s in listing.sources] == ["COVID/c1.png", "Normal/n1.png"]
    assert listing.rejects == (("Normal/locked", "unreadable folder: Permission denied"),)


def test_a_nul_byte_in_the_csv_names_the_file_and_line(tmp_path):
    src, labels = _csv_tree(tmp_path, "path,label\na.png,x\nb.png,y\x00z\n")
    with pytest.raises(ValueError, match=r"labels.csv': line 3 holds a NUL byte"):
        discover(src, labels=labels)


def test_a_field_over_the_csv_limit_names_the_file_and_line(tmp_path):
    import csv

    src, labels = _csv_tree(
        tmp_path, f"path,label\na.png,x\nb.png,{'y' * (csv.field_size_limit() + 1)}\nc.png,z\n"
    )
    with pytest.raises(ValueError, match=r"labels.csv': line 3: field larger than field limit \(131072\)"):
        discover(src, labels=labels)


def test_an_unbalanced_quote_is_reported_on_the_line_where_its_row_starts(tmp_path):
    src, labels = _csv_tree(tmp_path, 'path,label\n"a.png,x\nb.png,y\nc.png,z\nd.png,w\n')
    with pytest.raises(
        ValueError,
        match=r"line\(s\) 2 \(its quoted field runs to line 5: an unbalanced quote\?\) do not have",
    ):
        discover(src, labels=labels)
