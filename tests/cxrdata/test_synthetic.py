import csv
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from cxrdata.synthetic import kind_of, make_phantom, write_tree


def _read(root, relative):
    with Image.open(os.path.join(root, relative)) as image:
        return np.asarray(image)


def _digests(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _csv_rows(root):
    with open(os.path.join(root, "labels.csv"), newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("size, shape", [(64, (64, 64)), ((48, 80), (48, 80)), (299, (299, 299))])
def test_make_phantom_dtype_shape_and_range(size, shape):
    image = make_phantom(size, label="normal", seed=1)
    assert image.dtype == np.uint8
    assert image.shape == shape
    assert image.min() < 30  # air around the body
    assert int(image.max()) - int(image.min()) > 100


def test_make_phantom_is_deterministic():
    a = make_phantom(64, label="covid", seed=7)
    np.testing.assert_array_equal(a, make_phantom(64, label="covid", seed=7))
    np.testing.assert_array_equal(a, make_phantom(64, label="COVID", rng=np.random.default_rng(7)))
    assert not np.array_equal(a, make_phantom(64, label="covid", seed=8))
    assert not np.array_equal(make_phantom(64), make_phantom(64))  # no seed: fresh entropy


def test_lung_fields_are_dark_and_mediastinum_bright():
    image = make_phantom(128, seed=3).astype(float)
    lungs = np.r_[image[40:70, 25:45].ravel(), image[40:70, 83:103].ravel()]
    assert lungs.mean() < image[40:70, 60:68].mean() - 20


def test_covid_adds_peripheral_bilateral_opacity_to_the_same_film():
    # Findings have their own random stream, so one seed gives the same film with and without them.
    diffs = np.mean(
        [
            make_phantom(128, label="covid", seed=s).astype(float) - make_phantom(128, label="normal", seed=s)
            for s in range(10)
        ],
        axis=0,
    )
    right_outer, left_outer = diffs[45:100, 8:35].mean(), diffs[45:100, 93:120].mean()
    assert right_outer > 3 and left_outer > 3  # both lungs, outer parts
    assert abs(diffs[:, 58:70].mean()) < 1  # not in the mediastinum
    assert abs(diffs[:15].mean()) < 0.5  # nor above the lungs


def test_covid_lungs_are_brighter_at_the_periphery(tmp_path):
    rows = write_tree(tmp_path, per_class=20, image_size=96, masks=True, seed=3)
    contrast = {"COVID": [], "Normal": []}
    for row in rows:
        image, lung = _read(tmp_path, row["path"]).astype(float), _read(tmp_path, row["mask"]) > 0
        outer = np.abs(np.arange(96) - 47.5)[None, :] > 0.3 * 96
        contrast[row["label"]].append(image[lung & outer].mean() - image[lung & ~outer].mean())
    assert np.mean(contrast["COVID"]) > np.mean(contrast["Normal"]) + 10


def test_whole_image_mean_is_a_weak_cue():
    covid = np.array([make_phantom(64, label="covid", seed=1000 + i).mean() for i in range(40)])
    normal = np.array([make_phantom(64, label="normal", seed=2000 + i).mean() for i in range(40)])
    values, is_covid = np.r_[covid, normal], np.r_[np.ones(40, bool), np.zeros(40, bool)]
    best = max(max(np.mean((values > t) == is_covid), np.mean((values <= t) == is_covid)) for t in values)
    assert best < 0.8
    assert covid.std() > 10 and normal.std() > 10  # exposure varies a lot


def test_pneumonia_is_one_sided():
    ratios = []
    for s in range(8):
        diff = make_phantom(128, label="pneumonia", seed=s).astype(float) - make_phantom(128, seed=s)
        right, left = diff[30:110, 5:60].mean(), diff[30:110, 68:123].mean()
        ratios.append(max(right, left) / max(min(right, left), 0.1))
    assert np.median(ratios) > 4


def test_write_tree_classes_layout(tmp_path):
    rows = write_tree(tmp_path, per_class=3, image_size=32, seed=0)
    assert [r["path"] for r in rows] == [
        "COVID/COVID-00001.png",
        "COVID/COVID-00002.png",
        "COVID/COVID-00003.png",
        "Normal/Normal-00001.png",
        "Normal/Normal-00002.png",
        "Normal/Normal-00003.png",
    ]
    assert [r["label"] for r in rows] == ["COVID"] * 3 + ["Normal"] * 3
    assert [r["patient"] for r in rows] == [f"P{i:05d}" for i in range(1, 7)]
    assert sorted(os.listdir(tmp_path)) == ["COVID", "Normal", "labels.csv"]
    assert _csv_rows(tmp_path) == [["path", "label", "patient"]] + [
        [r["path"], r["label"], r["patient"]] for r in rows
    ]
    with Image.open(tmp_path / rows[0]["path"]) as image:
        assert (image.mode, image.size, image.format) == ("L", (32, 32), "PNG")
    images = [_read(tmp_path, r["path"]) for r in rows]
    assert len({im.tobytes() for im in images}) == 6


def test_write_tree_is_byte_identical_for_the_same_arguments(tmp_path):
    kwargs = dict(per_class=2, image_size=40, masks=True, patients=2, seed=5)
    write_tree(tmp_path / "a", **kwargs)
    write_tree(tmp_path / "b", **kwargs)
    write_tree(tmp_path / "c", **{**kwargs, "seed": 6})
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 9  # 4 images, 4 masks, labels.csv
    assert sorted(a) == sorted(c) and a != c


def test_write_tree_splits_layout(tmp_path):
    rows = write_tree(
        tmp_path,
        classes=("NORMAL", "PNEUMONIA"),
        per_class=10,
        image_size=32,
        layout="splits",
        splits=(0.6, 0.2, 0.2),
        format="jpeg",
    )
    for split, count in (("train", 6), ("val", 2), ("test", 2)):
        for name in ("NORMAL", "PNEUMONIA"):
            files = sorted(os.listdir(tmp_path / split / name))
            assert len(files) == count and all(f.endswith(".jpeg") for f in files)
    assert rows[6] == {
        "path": "val/NORMAL/NORMAL-00007.jpeg",
        "label": "NORMAL",
        "patient": "P00007",
        "split": "val",
    }
    assert len(_csv_rows(tmp_path)) == 21
    with Image.open(tmp_path / rows[0]["path"]) as image:
        assert (image.format, image.size) == ("JPEG", (32, 32))


def test_write_tree_masks(tmp_path):
    rows = write_tree(
        tmp_path,
        classes=("COVID", "Normal", "Viral Pneumonia"),
        per_class={"COVID": 2, "Normal": 1, "Viral Pneumonia": 1},
        image_size=(64, 48),
        masks=True,
    )
    assert sorted(os.listdir(tmp_path / "COVID")) == ["images", "masks"]
    assert os.listdir(tmp_path / "Viral Pneumonia" / "masks") == ["Viral Pneumonia-00001.png"]
    for row in rows:
        assert row["mask"] == row["path"].replace("/images/", "/masks/")
        image, mask = _read(tmp_path, row["path"]), _read(tmp_path, row["mask"])
        assert image.shape == mask.shape == (64, 48)
        assert set(np.unique(mask)) == {0, 255}
        assert 0.1 < (mask > 0).mean() < 0.5
        assert image[mask > 0].mean() < image[:, 20:28].mean()  # lungs darker than the middle
    assert [r[0] for r in _csv_rows(tmp_path)[1:]] == [r["path"] for r in rows]


def test_write_tree_16_bit(tmp_path):
    rows16 = write_tree(tmp_path / "16", per_class=1, image_size=32, bit_depth=16)
    rows8 = write_tree(tmp_path / "8", per_class=1, image_size=32)
    with Image.open(tmp_path / "16" / rows16[0]["path"]) as image:
        assert image.mode.startswith("I")
        deep = np.asarray(image).astype(np.int64)
    assert deep.max() > 255 and deep.max() <= 65535
    shallow = _read(tmp_path / "8", rows8[0]["path"]).astype(np.int64)
    assert np.abs(deep / 257 - shallow).max() <= 0.5 + 1e-9


def test_write_tree_patient_groups(tmp_path):
    rows = write_tree(tmp_path, per_class=5, image_size=48, patients=2, seed=3)
    assert [r["patient"] for r in rows] == [
        "P00001",
        "P00001",
        "P00002",
        "P00002",
        "P00003",
        "P00004",
        "P00004",
        "P00005",
        "P00005",
        "P00006",
    ]
    images = [_read(tmp_path, r["path"]).astype(float).ravel() for r in rows[:5]]
    assert not np.array_equal(images[0], images[1])
    same = np.corrcoef(images[0], images[1])[0, 1]
    others = [np.corrcoef(images[i], images[j])[0, 1] for i in (0, 1) for j in (2, 3, 4)]
    assert same > max(others)


def test_write_tree_keeps_patients_inside_one_split(tmp_path):
    rows = write_tree(tmp_path, per_class=20, image_size=32, patients=3, layout="splits")
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"]
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [2 * 15, 2 * 3, 2 * 2]


def test_kind_of():
    assert [
        kind_of(n)
        for n in (
            "COVID",
            "covid-19",
            "Normal",
            "NORMAL",
            "healthy",
            "PNEUMONIA",
            "Viral Pneumonia",
            "Lung_Opacity",
        )
    ] == (["covid"] * 2 + ["normal"] * 3 + ["pneumonia"] * 3)
    with pytest.raises(ValueError, match="Received: class name 'Tuberculosis'"):
        kind_of("Tuberculosis")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(label="tb"), "`label` must be one of"),
        (dict(image_size=8), "`image_size` must be an int or a"),
        (dict(seed=1, rng=np.random.default_rng(1)), "not both"),
        (dict(rng=1), "`rng` must be a numpy.random.Generator"),
    ],
)
def test_make_phantom_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(**{"image_size": 32, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes=("COVID", "Cats")), "Received: class name 'Cats'"),
        (dict(classes=()), "`classes` must be a non-empty sequence"),
        (dict(classes=("Normal", "Normal")), "distinct"),
        (dict(per_class=-1), "`per_class` must be a non-negative int"),
        (dict(per_class={"COVID": 2}), "one count per class"),
        (dict(format="tiff"), r"`format` must be 'png' or 'jpeg'. Received: format='tiff'"),
        (dict(layout="flat"), "`layout` must be 'classes' or 'splits'"),
        (dict(splits=(0.7, 0.2, 0.2)), r"add up to 1. Received: splits=\(0.7, 0.2, 0.2\)"),
        (dict(patients=0), "`patients` must be None or a positive int"),
        (dict(bit_depth=12), "`bit_depth` must be 8 or 16. Received: bit_depth=12"),
        (dict(bit_depth=16, format="jpeg"), "16-bit images need format='png'"),
        (dict(masks="yes"), "`masks` must be True or False"),
    ],
)
def test_write_tree_rejects_bad_arguments_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_tree(tmp_path / "tree", **{"per_class": 1, "image_size": 32, **kwargs})
    assert not (tmp_path / "tree").exists()


def test_an_image_size_of_the_wrong_type_is_a_type_error_as_everywhere(tmp_path):
    # One rule for image sizes (`standardize_image_size`): a wrong type is a TypeError.
    with pytest.raises(TypeError, match=r"Received: image_size=\(64,\)"):
        make_phantom(image_size=(64,))
    with pytest.raises(TypeError, match="`image_size` must be"):
        write_tree(tmp_path / "tree", per_class=1, image_size="big")
    assert not (tmp_path / "tree").exists()


def test_shortcut_marker_follows_the_class_and_stays_outside_the_lungs(tmp_path):
    rows = write_tree(tmp_path / "a", per_class=6, image_size=64, masks=True, shortcut="marker", seed=2)
    clean = write_tree(tmp_path / "b", per_class=6, image_size=64, masks=True, seed=2)
    assert [r["shortcut"] for r in rows] == [True] * 6 + [False] * 6  # strength 1: COVID only
    for r, _c in zip(rows, clean):
        image, plain = (
            np.asarray(Image.open(root / r["path"]), np.int16) for root in (tmp_path / "a", tmp_path / "b")
        )
        lungs = np.asarray(Image.open(tmp_path / "a" / r["mask"])) > 0
        changed = image != plain
        assert changed.any() == r["shortcut"]  # the film itself is the same
        assert not (changed & lungs).any()  # never inside the lungs
        if r["shortcut"]:
            assert changed[:9, :13].mean() > 0.5 and not changed[32:].any()  # the top left corner


def test_shortcut_strength_zero_is_independent_of_the_class(tmp_path):
    rows = write_tree(
        tmp_path, per_class=200, image_size=16, shortcut="border", shortcut_strength=0.0, seed=1
    )
    by_class = {c: np.mean([r["shortcut"] for r in rows if r["label"] == c]) for c in ("COVID", "Normal")}
    assert 0.4 < by_class["COVID"] < 0.6 and 0.4 < by_class["Normal"] < 0.6


def test_shortcut_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="`shortcut` must be None or one of"):
        write_tree(tmp_path, shortcut="watermark")
    with pytest.raises(ValueError, match="`shortcut_strength` must be between 0 and 1"):
        write_tree(tmp_path, shortcut="marker", shortcut_strength=1.5)
    with pytest.raises(ValueError, match="`severity` must be a number from 0 to 1"):
        write_tree(tmp_path, severity=2)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("size", [64, 299])
@pytest.mark.parametrize("kind", ["covid", "pneumonia"])
def test_findings_lie_inside_the_mask_only(size, kind):
    # The mask is the truth: the same seed's film without findings is the same outside it.
    for seed in range(4):
        film, mask = make_phantom(size, label=kind, seed=seed, return_mask=True)
        plain, plain_mask = make_phantom(size, label="normal", seed=seed, return_mask=True)
        np.testing.assert_array_equal(mask, plain_mask)
        differ = film != plain
        assert (
            differ & ~mask
        ).sum() == 0, f"seed {seed}: {(differ & ~mask).sum()} pixels outside the mask differ"
        assert differ[mask].mean() > 0.05  # and the findings are there, inside it


def test_without_findings_the_lungs_carry_no_class_information(tmp_path):
    kwargs = dict(per_class=4, image_size=48, masks=True, seed=3)
    rows = write_tree(tmp_path / "plain", findings=False, **kwargs)
    sick = write_tree(tmp_path / "sick", **kwargs)
    for r, s in zip(rows, sick):
        assert r == s
        a, b = _read(tmp_path / "plain", r["path"]), _read(tmp_path / "sick", s["path"])
        lungs = _read(tmp_path / "plain", r["mask"]) > 0
        assert not (a != b)[~lungs].any()
        assert (a != b)[lungs].any() == (r["label"] == "COVID")  # only the COVID films lost their findings
    with pytest.raises(TypeError, match="`findings` must be True or False"):
        write_tree(tmp_path / "bad", findings="no")


def test_laterality_marks_every_film_on_the_side_its_class_chooses(tmp_path):
    rows = write_tree(tmp_path / "a", per_class=3, image_size=64, masks=True, shortcut="laterality", seed=2)
    write_tree(tmp_path / "b", per_class=3, image_size=64, masks=True, seed=2)
    for r in rows:
        image, plain = (_read(tmp_path / root, r["path"]).astype(int) for root in ("a", "b"))
        changed = image != plain
        lungs = _read(tmp_path / "a", r["mask"]) > 0
        assert not (changed & lungs).any() and 8 <= changed.sum() <= 60
        right = changed[:, 32:].sum() > changed[:, :32].sum()
        assert (
            right == r["shortcut"] == (r["label"] == "COVID")
        )  # every film marked; the side follows the class
        assert not changed[12:].any() and image[changed].min() > 200  # a bright letter at the top


@pytest.mark.parametrize("shortcut", ["noise", "blur"])
def test_acquisition_shortcuts_change_the_whole_film_of_the_class_that_carries_them(tmp_path, shortcut):
    rows = write_tree(tmp_path / "a", per_class=3, image_size=64, shortcut=shortcut, seed=4)
    write_tree(tmp_path / "b", per_class=3, image_size=64, seed=4)
    for r in rows:
        image, plain = (_read(tmp_path / root, r["path"]).astype(int) for root in ("a", "b"))
        if not r["shortcut"]:
            np.testing.assert_array_equal(image, plain)
            continue
        body = plain > 40  # inside the body, where neither cue is clipped
        roughness = [np.abs(np.diff(x, axis=1))[body[:, 1:]].mean() for x in (image, plain)]
        if shortcut == "noise":
            assert roughness[0] > roughness[1] + 2 and abs((image - plain)[body].mean()) < 1
        else:
            assert roughness[0] < 0.8 * roughness[1]
    assert [r["shortcut"] for r in rows] == [True] * 3 + [False] * 3


def test_make_phantom_return_mask_is_checked():
    with pytest.raises(TypeError, match="`return_mask` must be True or False"):
        make_phantom(32, return_mask=1)
