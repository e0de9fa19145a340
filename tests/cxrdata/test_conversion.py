import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cxrdata.conversion import convert
from cxrdata.decoding import decode_image
from cxrdata.manifest import read_manifest
from cxrdata.preprocess import PreprocessConfig, preprocess_image
from cxrdata.records import iter_records, parse_record


def _records(out):
    manifest = read_manifest(out)
    rows = []
    for split, info in manifest.splits.items():
        for shard in info.shards:
            for raw in iter_records(out / shard.name):
                rows.append(dict(parse_record(raw), split=split))
    return manifest, rows


def _shard_digests(out):
    manifest = read_manifest(out)
    return {s.name: s.sha256 for info in manifest.splits.values() for s in info.shards}


def test_class_folder_tree_converts_every_image_exactly(phantom_tree, tmp_path):
    src = phantom_tree(per_class=10, image_size=80)
    result = convert(
        src, tmp_path / "out", image_size=48, radius=12, shard_size=0.01, workers=1, progress=False
    )
    manifest, rows = _records(tmp_path / "out")
    assert manifest.class_names == ("COVID", "Normal") and manifest.image_shape == (48, 48, 1)
    assert result.num_converted == 20 == len(rows) and not result.rejects
    assert sum(len(i.shards) for i in manifest.splits.values()) > 3  # small shards: several per split
    config = PreprocessConfig(image_size=48, equalize_radius=12)
    for row in rows[:6]:
        expected = preprocess_image(decode_image(src / row["path"]), config)
        np.testing.assert_array_equal(np.frombuffer(row["image"], np.uint8).reshape(48, 48), expected)
        assert row["class_name"] == manifest.class_names[row["label"]] == row["path"].split("/")[0]
    counts = {
        s: {c: sum(1 for r in rows if r["split"] == s and r["class_name"] == c) for c in manifest.class_names}
        for s in manifest.splits
    }
    assert counts == {s: i.counts for s, i in manifest.splits.items()}
    assert {s: i.counts for s, i in manifest.splits.items()} == {
        "train": {"COVID": 7, "Normal": 7},
        "val": {"COVID": 2, "Normal": 1},
        "test": {"COVID": 1, "Normal": 2},
    } or all(abs(i.counts["COVID"] - i.counts["Normal"]) <= 1 for i in manifest.splits.values())


def test_same_inputs_and_seed_give_identical_shards_for_any_worker_count(phantom_tree, tmp_path):
    src = phantom_tree(per_class=8)
    convert(src, tmp_path / "a", image_size=32, radius=8, shard_size=0.005, workers=1, progress=False)
    convert(src, tmp_path / "b", image_size=32, radius=8, shard_size=0.005, workers=2, progress=False)
    assert _shard_digests(tmp_path / "a") == _shard_digests(tmp_path / "b")
    convert(src, tmp_path / "c", image_size=32, radius=8, shard_size=0.005, workers=1, seed=1, progress=False)
    assert _shard_digests(tmp_path / "a") != _shard_digests(tmp_path / "c")


def test_split_folders_are_honoured(phantom_tree, tmp_path):
    src = phantom_tree(layout="splits", per_class=10, classes=("NORMAL", "PNEUMONIA"))
    convert(src, tmp_path / "out", image_size=32, equalize="none", workers=1, progress=False)
    _, rows = _records(tmp_path / "out")
    assert rows and all(r["path"].split("/")[0] == r["split"] for r in rows)


def test_csv_with_patients_keeps_each_patient_in_one_split(phantom_tree, tmp_path):
    src = phantom_tree(per_class=24, patients=3)
    convert(
        src,
        tmp_path / "out",
        labels=src / "labels.csv",
        group_by="patient",
        image_size=32,
        equalize="none",
        workers=1,
        progress=False,
    )
    _, rows = _records(tmp_path / "out")
    assert len(rows) == 48
    split_of = {}
    for r in rows:
        assert r["group"]
        assert split_of.setdefault(r["group"], r["split"]) == r["split"]
    assert len(set(split_of.values())) == 3


def test_byte_identical_copies_never_straddle_splits(phantom_tree, tmp_path):
    src = phantom_tree(per_class=20)
    originals = sorted((src / "COVID").glob("*.png"))[:6]
    for i, path in enumerate(originals):
        shutil.copy(path, src / "COVID" / f"copy-{i}.png")
    convert(src, tmp_path / "out", image_size=32, equalize="none", workers=1, progress=False)
    _, rows = _records(tmp_path / "out")
    by_digest = {}
    for r in rows:
        by_digest.setdefault(r["sha256"], set()).add(r["split"])
    assert len(rows) == 46 and len(by_digest) == 40
    assert all(len(s) == 1 for s in by_digest.values())


def test_formats_and_bad_files(tmp_path, realdata):
    src = tmp_path / "src"
    (src / "COVID").mkdir(parents=True)
    (src / "Normal").mkdir()
    gray = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    Image.fromarray(gray).save(src / "COVID" / "gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(src / "COVID" / "gray16.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(src / "COVID" / "rgb.jpg", quality=95)
    Image.fromarray(np.stack([gray] * 3, -1)).save(src / "Normal" / "rgb.png")
    shutil.copy(realdata / "dicom" / "siim-mono2-jpeg.dcm", src / "Normal" / "mono2.dcm")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        good, format="PNG"
    )
    (src / "Normal" / "truncated.png").write_bytes(good.getvalue()[:2000])
    (src / "Normal" / "empty.png").write_bytes(b"")
    (src / "Normal" / "scan.dat").write_bytes(b"not an image at all")
    (src / "Normal" / "notes.doc").write_bytes(b"skipped silently")
    (src / "Normal" / "readme.txt").write_text("skipped silently")
    (src / "Normal" / ".hidden.png").write_text("skipped silently")
    result = convert(
        src, tmp_path / "out", image_size=32, equalize="none", splits=(0.5, 0.5), workers=2, progress=False
    )
    assert result.num_converted == 5
    with open(tmp_path / "out" / "rejects.csv", newline="") as f:
        rejects = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    assert set(rejects) == {"Normal/truncated.png", "Normal/empty.png", "Normal/scan.dat"}
    assert rejects["Normal/empty.png"] == "empty file"
    assert "truncated" in rejects["Normal/truncated.png"]
    assert "not an image" in rejects["Normal/scan.dat"]
    assert "3 rejected" in result.summary("out")
    assert set(read_manifest(tmp_path / "out").splits) == {"train", "val"}


def test_png_encoding_holds_the_same_pixels_as_raw(phantom_tree, tmp_path):
    src = phantom_tree(per_class=4)
    convert(src, tmp_path / "raw", image_size=32, radius=8, workers=1, progress=False)
    convert(src, tmp_path / "png", image_size=32, radius=8, workers=1, encoding="png", progress=False)
    _, raw = _records(tmp_path / "raw")
    _, png = _records(tmp_path / "png")
    assert [r["path"] for r in raw] == [r["path"] for r in png]
    for a, b in zip(raw, png):
        np.testing.assert_array_equal(
            np.frombuffer(a["image"], np.uint8).reshape(32, 32),
            np.asarray(Image.open(io.BytesIO(b["image"]))),
        )


def test_dicom_monochrome1_converts_to_255_minus_monochrome2(tmp_path, realdata):
    src = tmp_path / "src"
    for cls, name in (("a", "siim-mono1-fake-jpeg.dcm"), ("b", "siim-mono2-jpeg.dcm")):
        (src / cls).mkdir(parents=True)
        shutil.copy(realdata / "dicom" / name, src / cls / name)
    # at native size no resampling happens, so the identity is exact
    convert(
        src, tmp_path / "out", image_size=1024, equalize="none", splits=(1.0, 0.0), workers=1, progress=False
    )
    _, rows = _records(tmp_path / "out")
    img = {r["class_name"]: np.frombuffer(r["image"], np.uint8).astype(int) for r in rows}
    np.testing.assert_array_equal(img["a"], 255 - img["b"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(splits="0.6,0.3,0.3"), ValueError, "add up to 1"),
        (dict(encoding="jpeg"), ValueError, "encoding"),
        (dict(shard_size=0), ValueError, "shard_size"),
        (dict(workers=0), ValueError, "workers"),
        (dict(equalize="fancy"), ValueError, "equalize"),
    ],
)
def test_bad_arguments_fail_before_any_work(phantom_tree, tmp_path, kwargs, error, match):
    src = phantom_tree(per_class=2)
    with pytest.raises(error, match=match):
        convert(src, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_source_empty_class_and_unknown_csv_label(phantom_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        convert(tmp_path / "nowhere", tmp_path / "out", progress=False)
    src = phantom_tree(per_class=2)
    (src / "Pneumonia").mkdir()
    with pytest.raises(ValueError, match="'Pneumonia'.*no image"):
        convert(src, tmp_path / "out", progress=False)
    shutil.rmtree(src / "Pneumonia")
    with pytest.raises(ValueError, match="'COVID'"):
        convert(
            src, tmp_path / "out", labels=src / "labels.csv", class_names=["Normal", "Other"], progress=False
        )


def test_existing_dataset_is_never_overwritten_silently(phantom_tree, tmp_path):
    src = phantom_tree(per_class=3)
    out = tmp_path / "out"
    convert(src, out, image_size=32, equalize="none", workers=1, progress=False)
    before = _shard_digests(out)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        convert(src, out, image_size=32, equalize="none", workers=1, progress=False)
    (out / "keep-me.txt").write_text("user file")
    convert(src, out, image_size=32, equalize="global", workers=1, overwrite=True, progress=False)
    assert _shard_digests(out).keys() == before.keys() and _shard_digests(out) != before
    assert (out / "keep-me.txt").exists()
    other = tmp_path / "busy"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        convert(src, other, progress=False)


@pytest.mark.slow
def test_killed_conversion_resumes_to_the_same_bytes(phantom_tree, tmp_path):
    src = phantom_tree(per_class=60, image_size=96)
    args = [
        str(src),
        "--image-size",
        "96",
        "--radius",
        "30",
        "--shard-size",
        "0.03",
        "--workers",
        "1",
        "--quiet",
    ]
    cmd = [sys.executable, "-m", "cxrmodels.cli", "convert"]
    subprocess.run(cmd + [*args[:1], str(tmp_path / "whole"), *args[1:]], check=True, capture_output=True)
    expected = _shard_digests(tmp_path / "whole")
    assert len(expected) > 8
    out = tmp_path / "killed"
    kills = 0
    for attempt in range(6):
        flags = ["--resume"] if attempt else []
        proc = subprocess.Popen(
            cmd + [*args[:1], str(out), *args[1:], *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = 2 + 3 * attempt
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            if out.exists() and len([n for n in os.listdir(out) if n.endswith(".tfrecord")]) >= target:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        proc.wait()
        if (out / "dataset.json").exists():
            break
        # a killed run leaves no half-written file under a final name, and no manifest
        for name in os.listdir(out):
            if name.endswith(".tfrecord"):
                assert name in expected
    assert kills >= 1
    if not (out / "dataset.json").exists():
        subprocess.run(cmd + [*args[:1], str(out), *args[1:], "--resume"], check=True, capture_output=True)
    assert _shard_digests(out) == expected
    for name, digest in expected.items():
        import hashlib

        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert not any(n.startswith(".") for n in os.listdir(out))


def test_resume_with_other_options_is_refused(phantom_tree, tmp_path):
    src = phantom_tree(per_class=3)
    out = tmp_path / "out"
    (out / ".cxr-partial").mkdir(parents=True)
    (out / ".cxr-partial" / "plan.json").write_text('{"fingerprint": "something else"}')
    with pytest.raises(FileExistsError, match="cannot be resumed"):
        convert(src, out, image_size=32, workers=1, resume=True, progress=False)
