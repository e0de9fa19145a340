"""The equalization radius as a hyperparameter (`equalize_radius`) of `CXRHyperModel` and `search`."""

from __future__ import annotations

import csv
import json
import os

import keras
import keras_tuner as kt
import numpy as np
import pytest

from cxrdata.layers.local_equalization import LocalEqualization
from cxrmodels.tuning.searcher import CXRHyperModel, search

TINY = {"base_filters": 4, "dense_units": 8}


def _equalizers(model) -> list[LocalEqualization]:
    found = []
    for layer in model.layers:
        if isinstance(layer, LocalEqualization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += _equalizers(layer)
    return found


def _hypermodel(dataset_equalized: bool, **kwargs) -> CXRHyperModel:
    hyperparameters = {**TINY, **kwargs.pop("hyperparameters", {})}
    return CXRHyperModel(
        input_shape=(48, 48, 1),
        num_classes=2,
        hyperparameters=hyperparameters,
        dataset_equalized=dataset_equalized,
        **kwargs,
    )


def test_the_radius_is_searched_only_on_an_unequalized_dataset():
    hp = kt.HyperParameters()
    model = _hypermodel(True).build(hp)
    assert "equalize_radius" not in hp.values and _equalizers(model) == []
    assert _hypermodel(True).train_kwargs(_hypermodel(True).resolve(hp))["equalize_radius"] is None

    hypermodel = _hypermodel(False)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    entry = {e.name: e for e in hp.space}["equalize_radius"]
    assert isinstance(entry, kt.engine.hyperparameters.Choice)
    assert sorted(entry.values) == [0, 35, 70, 100] and entry.default == 70
    # Trial 0 (every default) is the reference: disk(70) first in the model, then the augmentation.
    assert hp.values["equalize_radius"] == 70
    assert [layer.radius for layer in _equalizers(model)] == [70]
    front = model.get_layer("equalize_augment")
    assert [type(layer).__name__ for layer in front.layers] == ["LocalEqualization", "RandomAffine"]
    assert hypermodel.reference_values["equalize_radius"] == 70
    assert hypermodel.train_kwargs(hypermodel.resolve(hp))["equalize_radius"] == 70


@pytest.mark.parametrize("radius, layers, equalize_radius", [(0, [], None), (35, [35], 35)])
def test_a_trial_radius_builds_the_matching_model(radius, layers, equalize_radius):
    hypermodel = _hypermodel(False)
    hp = kt.HyperParameters()
    hp.Fixed("equalize_radius", radius)
    model = hypermodel.build(hp)
    assert [layer.radius for layer in _equalizers(model)] == layers
    assert hypermodel.train_kwargs(hypermodel.resolve(hp))["equalize_radius"] == equalize_radius
    # The layer is the bit-exact one of `cxrmodels.train(equalize_radius=...)`, saved with its radius.
    if layers:
        config = _equalizers(model)[0].get_config()
        assert config["radius"] == 35 and config["name"] == "local_equalization"


def test_fixing_the_radius_on_an_equalized_dataset_is_refused():
    with pytest.raises(
        ValueError, match="'equalize_radius' applies only to a dataset converted with `--equalize none`"
    ):
        _hypermodel(True, hyperparameters={"equalize_radius": 35})
    hp = kt.HyperParameters()
    hp.Fixed("equalize_radius", 70)
    with pytest.raises(ValueError, match="already equalized.*--equalize none"):
        CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, hyperparameters=hp)
    with pytest.raises(ValueError, match=r"equalize_radius.*int >= 0.*-1"):
        _hypermodel(False, hyperparameters={"equalize_radius": [-1, 35]})
    with pytest.raises(TypeError, match="dataset_equalized"):
        _hypermodel("no")


def test_cpu_augmentation_is_refused_unless_the_radius_is_fixed_at_0():
    with pytest.raises(ValueError, match="augmentation must run there too.*'equalize_radius': 0"):
        _hypermodel(False, augment="cpu")
    model = _hypermodel(False, augment="cpu", hyperparameters={"equalize_radius": 0}).build(
        kt.HyperParameters()
    )
    assert _equalizers(model) == []


def test_search_refuses_a_radius_on_an_equalized_dataset_before_writing(tiny_data, tmp_path):
    out = tmp_path / "search"
    with pytest.raises(ValueError, match="already equalized.*--equalize none"):
        search(tiny_data, tuner="random", directory=out, hyperparameters={**TINY, "equalize_radius": 35})
    assert not out.exists()


@pytest.mark.slow
def test_a_random_search_on_an_unequalized_dataset_records_the_radius(raw_dataset, tmp_path):
    out = tmp_path / "search"
    result = search(
        raw_dataset,
        tuner="random",
        max_trials=2,
        max_epochs=1,
        batch_size=8,
        directory=out,
        hyperparameters={**TINY, "equalize_radius": [0, 35, 70]},
        verbose=0,
    )
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED"]
    assert int(rows[0]["equalize_radius"]) == 70  # trial 0: the reference radius
    assert all(int(r["equalize_radius"]) in (0, 35, 70) for r in rows)

    config = json.loads((out / "search.json").read_text())
    assert config["dataset_equalize"] == "none" and "equalize_radius" in config["hyperparameter_names"]
    best = json.loads((out / "best_hyperparameters.json").read_text())
    radius = best["hyperparameters"]["equalize_radius"]
    assert radius == int(next(r for r in rows if r["trial_id"] == best["trial_id"])["equalize_radius"])
    assert result.best_hyperparameters["equalize_radius"] == radius
    assert best["train_kwargs"]["equalize_radius"] == (radius or None)

    model = keras.saving.load_model(os.path.join(out, "best_model.keras"), compile=False)
    assert [layer.radius for layer in _equalizers(model)] == ([radius] if radius else [])
    probabilities = model.predict(np.zeros((1, 48, 48, 1), "uint8"), verbose=0)
    assert probabilities.shape == (1, 2)
    assert (out / "search_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "equalize_radius=" in result.summary()
