"""Lung masks in records (Kaggle layout, --masks DIR, CSV column), test-only datasets, held-out groups."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

import cxrdata
from cxrdata.conversion import convert
from cxrdata.synthetic import write_tree


def _masks_by_path(data, split):
    from cxrdata.records import iter_records, parse_record

    manifest = cxrdata.read_manifest(data)
    out = {}
    for shard in manifest.splits[split].shards:
        for raw in iter_records(os.path.join(data, shard.name)):
            rec = parse_record(raw)
            out[rec["path"]] = rec["mask"]
    return out


def test_kaggle_masks_are_found_resized_by_nearest_neighbour_and_stored(tmp_path):
    # Images 80x80 with their masks at 40x40, as Kaggle's 256x256 masks beside 299x299 images.
    rows = write_tree(tmp_path / "src", per_class=3, image_size=80, masks=True, seed=2)
    small = {}
    for r in rows:
        path = tmp_path / "src" / r["mask"]
        mask = Image.open(path).resize((40, 40), Image.Resampling.NEAREST)
        mask.save(path)
        small[r["path"]] = np.array(mask)
    result = convert(
        tmp_path / "src",
        tmp_path / "data",
        image_size=64,
        radius=10,
        workers=1,
        progress=False,
        splits=(0, 0, 1),
    )
    assert result.manifest.splits["test"].masks == 6
    stored = _masks_by_path(tmp_path / "data", "test")
    assert len(stored) == 6
    for rel, png in stored.items():
        expected = Image.fromarray(small[rel]).resize((80, 80), Image.Resampling.NEAREST)
        expected = np.array(expected.resize((64, 64), Image.Resampling.NEAREST)) >= 128
        got = np.array(Image.open(__import__("io").BytesIO(png)))
        assert got.shape == (64, 64) and set(np.unique(got)) <= {0, 255}
        np.testing.assert_array_equal(got > 0, expected)
    # cxrdata.load yields them, aligned with the images and labels.
    images, labels, masks = next(
        iter(cxrdata.load(tmp_path / "data", "test", batch_size=6, shuffle=False, with_masks=True))
    )
    assert images.shape == masks.shape == (6, 64, 64, 1) and labels.shape == (6, 2)
    assert set(np.unique(masks.numpy())) == {0, 1}
    assert 0.1 < masks.numpy().mean() < 0.5


def test_records_without_masks_load_with_empty_masks_and_a_bad_mask_is_recorded(tmp_path):
    rows = write_tree(tmp_path / "src", per_class=2, image_size=48, masks=True, seed=1)
    os.unlink(tmp_path / "src" / rows[0]["mask"])  # no mask: converted without one
    (tmp_path / "src" / rows[1]["mask"]).write_bytes(b"not a png")  # bad mask: recorded, image kept
    result = convert(
        tmp_path / "src",
        tmp_path / "data",
        image_size=48,
        radius=8,
        workers=1,
        progress=False,
        splits="0,0,1",
    )
    assert result.manifest.splits["test"].num_examples == 4
    assert result.manifest.splits["test"].masks == 2
    assert [(r.path, r.reason.split(":")[0]) for r in result.rejects] == [(rows[1]["mask"], "mask not used")]
    _, _, masks = next(
        iter(cxrdata.load(tmp_path / "data", "test", batch_size=4, shuffle=False, with_masks=True))
    )
    assert sorted(bool(m.any()) for m in masks.numpy()) == [False, False, True, True]


def test_masks_dir_and_csv_mask_column(tmp_path):
    rows = write_tree(tmp_path / "kaggle", per_class=2, image_size=48, masks=True, seed=4)
    src, mirror = tmp_path / "src", tmp_path / "lungmasks"
    for r in rows:
        flat = r["path"].replace("/images/", "/")
        for root, rel in ((src, flat), (mirror, flat)):
            os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        os.replace(tmp_path / "kaggle" / r["path"], src / flat)
        os.replace(tmp_path / "kaggle" / r["mask"], mirror / flat)
    a = convert(
        src,
        tmp_path / "a",
        image_size=48,
        radius=8,
        workers=1,
        progress=False,
        masks=mirror,
        splits=(0, 0, 1),
    )
    assert a.manifest.splits["test"].masks == 4 and a.manifest.source["masks"] == str(mirror)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "mask"])
        w.writerows(
            [
                r["path"].replace("/images/", "/"),
                r["label"],
                os.path.join("..", "lungmasks", r["path"].replace("/images/", "/")),
            ]
            for r in rows
        )
    b = convert(
        src,
        tmp_path / "b",
        labels=tmp_path / "labels.csv",
        image_size=48,
        radius=8,
        workers=1,
        progress=False,
        splits=(0, 0, 1),
    )
    assert b.manifest.splits["test"].masks == 4
    with pytest.raises(FileNotFoundError, match="Masks folder not found"):
        convert(src, tmp_path / "c", masks=tmp_path / "nowhere", workers=1, progress=False)


def test_test_only_dataset_and_held_out_groups(tmp_path):
    write_tree(tmp_path / "src", per_class=8, image_size=40, seed=0)
    only = convert(
        tmp_path / "src", tmp_path / "ext", image_size=40, radius=8, workers=1, progress=False, splits="0,0,1"
    )
    assert list(only.manifest.splits) == ["test"] and only.manifest.splits["test"].num_examples == 16
    # Sources as groups: file numbers 1-3 come from hospital A, 4-5 from B, the rest from C.
    pattern = r"-0000([1-8])"
    groups = convert(
        tmp_path / "src",
        tmp_path / "grouped",
        image_size=40,
        radius=8,
        workers=1,
        progress=False,
        group_pattern=pattern,
        test_groups="1,2",
        splits=(0.75, 0.25, 0),
    )
    splits = groups.manifest.splits
    assert set(splits["test"].groups) == {"1", "2"} and splits["test"].groups == {"1": 2, "2": 2}
    assert set(splits["train"].groups) | set(splits["val"].groups) == set("345678")
    assert sum(s.num_examples for s in splits.values()) == 16
    saved = cxrdata.read_manifest(tmp_path / "grouped")
    assert saved.splits["test"].groups == {"1": 2, "2": 2} and saved.source["test_groups"] == ["1", "2"]
    with pytest.raises(ValueError, match=r"`test_groups` names group\(s\) no image has: '9'"):
        convert(
            tmp_path / "src",
            tmp_path / "bad",
            group_pattern=pattern,
            test_groups=["9"],
            workers=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="need `group_by`"):
        convert(tmp_path / "src", tmp_path / "bad", test_groups=["1"], workers=1, progress=False)


def test_load_with_masks_refuses_augmentation(converted_dataset):
    with pytest.raises(ValueError, match="`with_masks=True` reads images with their masks as stored"):
        cxrdata.load(converted_dataset, "train", with_masks=True, balance="oversample")
    with pytest.raises(TypeError, match="`with_masks` must be True or False"):
        cxrdata.load(converted_dataset, "train", with_masks="yes")
