"""Equalization inside the model (`train(equalize_in_model=...)`): evaluate, predict and export follow it."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

import cxrdata
from cxrmodels.cli import main
from cxrmodels.evaluation.evaluator import evaluate
from cxrmodels.models import create_model
from cxrmodels.serving.exporting import export
from cxrmodels.serving.prediction import predict
from cxrmodels.training.trainer import train

RADIUS = 9


@pytest.fixture(scope="module")
def eq_run(raw_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("eqrun") / "run"
    assert (
        main(
            [
                "train",
                str(raw_dataset),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--equalize-in-model",
                str(RADIUS),
                "--filters",
                "4",
                "8",
                "--dense-units",
                "8",
                "--quiet",
            ]
        )
        == 0
    )
    return run


@pytest.mark.slow
def test_the_run_records_it_and_its_model_equalizes_first(eq_run, raw_dataset):
    config = json.loads((eq_run / "config.json").read_text())
    assert config["model"]["equalize_radius"] == RADIUS and config["preprocessing"]["equalize"] == "none"
    model = keras.saving.load_model(os.path.join(eq_run, "model.keras"), compile=False)
    front = model.get_layer("equalize_augment")
    assert [type(layer).__name__ for layer in front.layers] == ["LocalEqualization", "RandomAffine"]
    x, _ = next(iter(cxrdata.load(raw_dataset, "test", batch_size=16, shuffle=False)))
    x = x.numpy()
    # The model on raw images = the same weights without the layer on scikit-image's equalization.
    from skimage.filters.rank import equalize
    from skimage.morphology import disk

    plain = create_model("seed_cnn", input_shape=(48, 48, 1), filters=(4, 8), dense_units=8)
    plain.set_weights(model.get_weights())
    equalized = np.stack([equalize(img[..., 0], footprint=disk(RADIUS)) for img in x])[..., None]
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(equalized, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_evaluate_predict_and_export_follow_it(eq_run, raw_dataset, tmp_path):
    import tensorflow as tf

    model = keras.saving.load_model(os.path.join(eq_run, "model.keras"), compile=False)
    metrics = evaluate(eq_run, raw_dataset, n_bootstrap=20)
    images, labels = [], []
    for x, y in cxrdata.load(raw_dataset, "test", batch_size=64, shuffle=False):
        images.append(x.numpy())
        labels.append(np.argmax(y.numpy(), axis=1))
    probs = model.predict(np.concatenate(images), verbose=0)
    from cxrmodels.metrics.clinical import roc_auc

    positive = ["COVID", "Normal"].index(json.loads((eq_run / "config.json").read_text())["positive_class"])
    assert metrics["auc"] == pytest.approx(roc_auc(np.concatenate(labels) == positive, probs[:, positive]))

    sources = sorted((raw_dataset.parent / "src").glob("*/*.png"))[:4]
    results = predict(eq_run, sources)
    out = export(eq_run, tmp_path / "sm")
    serve = tf.saved_model.load(out).signatures["serving_default"]
    served = serve(image_bytes=tf.constant([p.read_bytes() for p in sources]))["probabilities"].numpy()
    expected = np.array([[r["probabilities"][c] for c in ("COVID", "Normal")] for r in results])
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "sm" / "cxr.json").read_text())["equalize_radius"] == RADIUS


def test_equalize_in_model_is_refused_on_an_equalized_dataset_or_with_cpu_augmentation(
    converted_dataset, raw_dataset, tmp_path
):
    with pytest.raises(ValueError, match="already equalized.*--equalize none"):
        train(converted_dataset, out=tmp_path / "a", equalize_in_model=RADIUS, epochs=1)
    with pytest.raises(ValueError, match="augment='gpu'"):
        train(raw_dataset, out=tmp_path / "b", equalize_in_model=RADIUS, augment="cpu", epochs=1)
    with pytest.raises(TypeError, match="`equalize` must be None or a Keras layer"):
        create_model("seed_cnn", input_shape=(48, 48, 1), equalize="local")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
