"""The audit's blanking: it removes the lungs and nothing else, proven on the phantoms' ground truth."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

from cxrdata.preprocess import PreprocessConfig, preprocess_image
from cxrdata.synthetic import make_phantom
from cxrmodels.evaluation import _audit_blanking as blanking


@pytest.mark.parametrize("size", [64, 299])
def test_films_that_differ_only_in_the_lungs_are_identical_once_the_lungs_are_blanked(size):
    # One seed draws the same film with and without findings; the findings lie inside the mask only.
    config = PreprocessConfig(image_size=size, equalize_radius=70)  # the default local equalization
    for seed, kind in [(0, "covid"), (1, "pneumonia"), (2, "covid")]:
        sick, mask = make_phantom(size, label=kind, seed=seed, return_mask=True)
        plain = make_phantom(size, label="normal", seed=seed)
        assert (sick != plain).sum() > 50
        films = []
        for film in (sick, plain):
            made, _ = blanking.variants(film, mask, np.random.default_rng([0, seed]))
            films.append(preprocess_image(made["lungs_blanked"], config))
        differ = int((films[0] != films[1]).sum())
        assert (
            differ == 0
        ), f"{kind} seed {seed}: {differ} pixels differ after lungs-blanking and preprocessing"
        # Blanking the stored (equalized) film instead leaves the lungs' information around them.
        stored = [preprocess_image(f, config) for f in (sick, plain)]
        grown = blanking.grow(mask, 3)
        assert (stored[0] != stored[1])[~grown].sum() > 50


def test_the_fill_comes_from_the_kept_region_alone_and_is_neither_flat_nor_white():
    film, mask = make_phantom(128, label="covid", seed=3, return_mask=True)
    rng = np.random.default_rng
    filled = blanking.fill(film, mask, rng(0))
    scrambled = film.copy()
    scrambled[mask] = rng(9).integers(0, 256, int(mask.sum()))
    np.testing.assert_array_equal(
        filled, blanking.fill(scrambled, mask, rng(0))
    )  # nothing of the hole enters
    np.testing.assert_array_equal(filled[~mask], film[~mask])
    hole = filled[mask].astype(float)
    assert hole.std() > 3 and np.bincount(filled[mask]).max() < 0.2 * mask.sum()  # texture, not one gray
    equalized = preprocess_image(filled, PreprocessConfig(image_size=128, equalize_radius=30))
    assert equalized[mask].mean() < 200 and equalized[mask].std() > 20  # not the white a flat region becomes
    assert not np.array_equal(filled, blanking.fill(film, mask, rng(1)))  # the texture follows the seed


def test_the_placebo_has_the_lungs_area_and_lies_outside_them():
    _, mask = make_phantom(64, seed=4, return_mask=True)
    lungs = blanking.grow(mask, 1)
    region = blanking.placebo_region(lungs, np.random.default_rng(0))
    assert not (region & lungs).any()
    assert 0.8 <= region.sum() / lungs.sum() <= 1.0
    np.testing.assert_array_equal(region, blanking.placebo_region(lungs, np.random.default_rng(0)))
    made, ratio = blanking.variants(make_phantom(64, seed=4), mask, np.random.default_rng(1))
    assert set(made) == set(blanking.VARIANTS) and 0.8 <= ratio <= 1.0


@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory):
    import cxrdata
    from cxrdata.synthetic import write_tree

    base = tmp_path_factory.mktemp("masked")
    write_tree(base / "src", per_class=3, image_size=48, masks=True, seed=1)
    for equalize in ("local", "none"):
        cxrdata.convert(
            base / "src",
            base / equalize,
            image_size=48,
            radius=12,
            equalize=equalize,
            workers=1,
            progress=False,
        )
    return base


def _first_record(dataset):
    import cxrdata
    from cxrmodels.evaluation._audit_data import records

    manifest = cxrdata.read_manifest(dataset)
    split = next(s for s in manifest.splits if manifest.splits[s].masks)
    return manifest, next(records(str(dataset), manifest, split))


def test_the_unequalized_film_comes_from_the_checked_source_or_an_unequalized_record(
    masked_dataset, tmp_path
):
    manifest, (record, image, mask) = _first_record(masked_dataset / "local")
    source, lungs, how = blanking.unequalized(record, manifest, record_image=image, record_mask=mask)
    assert how == "source" and source.shape == lungs.shape == (48, 48)
    assert np.array_equal(preprocess_image(source, PreprocessConfig.from_dict(manifest.preprocessing)), image)
    np.testing.assert_array_equal(lungs, mask)

    moved = dataclasses.replace(manifest, source={**manifest.source, "src": str(tmp_path / "gone")})
    with pytest.raises(blanking.Unusable, match="source file not found"):
        blanking.unequalized(record, moved, record_image=image, record_mask=mask)
    copy = tmp_path / "copy"
    shutil.copytree(manifest.source["src"], copy)
    with open(os.path.join(copy, record["path"]), "ab") as f:
        f.write(b"\0")
    changed = dataclasses.replace(manifest, source={**manifest.source, "src": str(copy)})
    with pytest.raises(blanking.Unusable, match="source file changed since conversion"):
        blanking.unequalized(record, changed, record_image=image, record_mask=mask)

    manifest, (record, image, mask) = _first_record(masked_dataset / "none")
    moved = dataclasses.replace(manifest, source={**manifest.source, "src": str(tmp_path / "gone")})
    source, lungs, how = blanking.unequalized(record, moved, record_image=image, record_mask=mask)
    assert how == "record" and source is image and lungs is mask
