"""Tests for `cxrmodels.predict` (with Grad-CAM), `cxrmodels.export` and their commands."""

from __future__ import annotations

import io
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import cxrdata
from cxrdata.records import iter_records, parse_record
from cxrmodels.cli import main
from cxrmodels.models import create_model
from cxrmodels.serving.exporting import export
from cxrmodels.serving.prediction import gradcam, predict


@pytest.fixture(scope="module")
def model(trained_run):
    return keras.saving.load_model(os.path.join(trained_run, "model.keras"), compile=False)


@pytest.fixture(scope="module")
def test_batch(converted_dataset):
    """The test split's images (uint8, as converted) and labels."""
    x, y = next(iter(cxrdata.load(converted_dataset, "test", batch_size=64, shuffle=False)))
    return x.numpy(), y.numpy()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0], mode="L").save(buf, format="PNG")
    return buf.getvalue()


# --- predict ------------------------------------------------------------------------------------


def test_predict_real_png_and_dicom_files(trained_run, realdata):
    paths = sorted((realdata / "png").glob("*/*.png"))[::5] + sorted((realdata / "dicom").glob("*.dcm"))[:3]
    results = predict(trained_run, paths)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    for r in results:
        assert r["ok"] and r["error"] is None
        assert list(r["probabilities"]) == ["COVID", "Normal"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["predicted_class"] == max(r["probabilities"], key=r["probabilities"].get)


def test_predict_feeds_files_exactly_as_the_training_images(trained_run, converted_dataset, model):
    """A source file predicted from disk gives the probabilities of its converted record."""
    shard = sorted(converted_dataset.glob("test-*.tfrecord"))[0]
    records = [parse_record(r) for r in iter_records(shard)][:3]
    pixels = np.stack([np.frombuffer(r["image"], np.uint8).reshape(64, 64, 1) for r in records])
    expected = model.predict(pixels, verbose=0)
    src = converted_dataset.parent / "src"
    results = predict(trained_run, [src / r["path"] for r in records])
    got = np.array([[r["probabilities"]["COVID"], r["probabilities"]["Normal"]] for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_corrupt_file_is_named_and_the_others_are_predicted(trained_run, realdata, tmp_path, capsys):
    good = sorted((realdata / "png").glob("*/*.png"))[0]
    bad = tmp_path / "truncated.png"
    bad.write_bytes(good.read_bytes()[:300])
    missing = tmp_path / "missing.dcm"
    results = predict(trained_run, [good, bad, missing])
    assert [r["ok"] for r in results] == [True, False, False]
    assert "truncated or corrupt" in results[1]["error"] and results[1]["probabilities"] == {}
    assert results[2]["error"] == "file not found"

    assert main(["predict", str(trained_run), str(good), str(bad)]) == 1  # some file failed: exit 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["file", "COVID", "Normal", "predicted"]
    assert str(bad) in lines[2] and "error: truncated or corrupt image" in lines[2]
    assert "1 of 2 files could not be read" in captured.err
    assert main(["predict", str(trained_run), str(good)]) == 0


def test_gradcam_writes_one_side_by_side_overlay_per_input(trained_run, realdata, tmp_path):
    paths = sorted((realdata / "png").glob("*/*.png"))[:2] + sorted((realdata / "dicom").glob("*.dcm"))[:1]
    results = predict(trained_run, paths, gradcam_dir=tmp_path / "cams")
    written = sorted(os.listdir(tmp_path / "cams"))
    assert written == sorted(f"{p.stem}.gradcam.png" for p in paths)
    for r in results:
        with Image.open(r["gradcam"]) as im:
            # image | overlay, 64-pixel inputs scaled 4x to reach 256
            assert (im.size, im.mode) == ((2 * 256, 256), "RGB")


def _reference_cam(model, images, class_index, *, logits):
    """Grad-CAM written out by hand for a flat seed_cnn (the textbook recipe)."""
    import tensorflow as tf

    head = model.get_layer("predictions")
    probe = keras.Model(model.inputs[0], [model.get_layer("block2_conv2").output, head.input, model.output])
    with tf.GradientTape() as tape:
        features, hidden, probs = probe(images, training=False)
        scores = tf.matmul(hidden, head.kernel) + head.bias if logits else probs
        score = scores[:, class_index]
    grads = tape.gradient(score, features).numpy()
    cam = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * features.numpy()).sum(-1), 0)
    cam = tf.image.resize(cam[..., None], (40, 40), method="bilinear").numpy()[..., 0]
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def test_gradcam_matches_the_textbook_recipe_also_inside_a_nested_model():
    keras.utils.set_random_seed(1)
    inner = create_model("seed_cnn", input_shape=(40, 40, 1), filters=(4, 8), dense_units=0)
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 1), dtype=np.uint8)
    heat = gradcam(inner, images, class_index=1)
    assert heat.shape == (3, 40, 40) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max(axis=(1, 2)).tolist() == pytest.approx([1.0] * 3)
    # The flat model ends in a softmax Dense layer: its logit is the class score.
    np.testing.assert_allclose(heat, _reference_cam(inner, images, 1, logits=True), atol=1e-5)

    inputs = keras.Input((40, 40, 1), dtype="uint8", name="image")
    outer = keras.Model(inputs, keras.layers.Identity(name="after")(inner(inputs)), name="outer")
    nested = gradcam(outer, images, class_index=1)  # finds "seed_cnn/block2_conv2" inside
    assert nested.max() == pytest.approx(1.0)
    # Its last layer is not the softmax Dense, so the probability is the class score.
    np.testing.assert_allclose(nested, _reference_cam(inner, images, 1, logits=False), atol=1e-5)


# --- export -------------------------------------------------------------------------------------


SERVE_SCRIPT = """
import json, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
files = [open(p, "rb").read() for p in sys.argv[2:]] + [b"not an image"]
out = serve(image_bytes=tf.constant(files))
assert not any(m.split(".")[0] in ("cxrdata", "cxrmodels") for m in sys.modules), "library imported"
print(json.dumps({"probabilities": out["probabilities"].numpy()[:-1].tolist(),
                  "ok": out["ok"].numpy().tolist(), "error": [e.decode() for e in out["error"].numpy()]}))
"""


def _raw_files(realdata, folder) -> list[str]:
    """Raw radiographs of three sizes other than the model's 64x64, as PNG (gray, RGB) and JPEG."""
    source = Image.open(sorted((realdata / "png").glob("*/*.png"))[0]).convert("L")
    paths = []
    for i, (w, h) in enumerate([(97, 80), (150, 173), (301, 256)]):
        gray = source.resize((w, h), Image.Resampling.BILINEAR)
        rgb = Image.merge("RGB", [gray, gray.point(lambda v: v * 0.9), gray.point(lambda v: 255 - v // 3)])
        for image, ext, kwargs in [(gray, "png", {}), (rgb, "png", {}), (gray, "jpg", {"quality": 90})]:
            path = folder / f"raw{i}-{image.mode}.{ext}"
            image.save(path, **kwargs)
            paths.append(str(path))
        rgb.save(folder / f"raw{i}-rgb.jpg", quality=85)
        paths.append(str(folder / f"raw{i}-rgb.jpg"))
    return paths


def test_savedmodel_turns_raw_png_and_jpeg_bytes_into_cxr_predicts_probabilities(
    trained_run, exported_savedmodel, realdata, tmp_path
):
    """In a fresh process without this library, raw files of other sizes give `cxr predict`'s output,
    and an item that is not an image gets its own status without failing the others."""
    import subprocess
    import sys

    out = str(exported_savedmodel)
    sidecar = json.loads((exported_savedmodel / "cxr.json").read_text())
    assert sidecar["class_names"] == ["COVID", "Normal"] and sidecar["input_shape"] == [64, 64, 1]
    assert sidecar["preprocessing"]["equalize"] == "local"
    paths = _raw_files(realdata, tmp_path)
    expected = np.array(
        [[r["probabilities"][c] for c in ("COVID", "Normal")] for r in predict(trained_run, paths)]
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, out, *paths], capture_output=True, text=True, env=env, cwd=root
    )
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(served["probabilities"]), expected, atol=1e-5, rtol=0)
    assert served["ok"] == [True] * len(paths) + [False]
    assert served["error"] == [""] * len(paths) + [
        "unrecognized format: the exported model reads PNG, JPEG and BMP files"
    ]


def test_savedmodel_predict_images_takes_the_datasets_pixels(exported_savedmodel, model, test_batch):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported_savedmodel))
    direct = loaded.signatures["predict_images"](images=tf.constant(test_batch[0]))
    np.testing.assert_allclose(
        direct["probabilities"].numpy(), model.predict(test_batch[0], verbose=0), atol=1e-5
    )
    assert [c.decode() for c in direct["class_names"].numpy()] == ["COVID", "Normal"]


def test_savedmodel_export_refuses_a_preprocessing_the_graph_cannot_reproduce(trained_run, tmp_path):
    config = json.loads((trained_run / "config.json").read_text())
    run = tmp_path / "run"
    run.mkdir()
    for name in os.listdir(trained_run):
        if os.path.isfile(trained_run / name):
            (run / name).write_bytes((trained_run / name).read_bytes())
    config["preprocessing"]["equalize"] = "clahe"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot be exported as a self-contained SavedModel.*equalize"):
        export(run, tmp_path / "sm", format="savedmodel")
    assert not (tmp_path / "sm").exists()


def test_keras_export_reloads_with_identical_predictions(trained_run, model, test_batch, tmp_path):
    out = export(trained_run, tmp_path / "k", format="keras")
    assert sorted(os.listdir(out)) == ["cxr.json", "model.keras"]
    reloaded = keras.saving.load_model(os.path.join(out, "model.keras"))
    np.testing.assert_array_equal(
        reloaded.predict(test_batch[0], verbose=0), model.predict(test_batch[0], verbose=0)
    )
    assert json.loads((tmp_path / "k" / "cxr.json").read_text())["format"] == "keras"


def test_export_refuses_a_non_empty_folder_unless_overwrite(trained_run, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        export(trained_run, tmp_path / "out", format="keras")
    assert (
        main(["export", str(trained_run), "--format", "keras", "--out", str(tmp_path / "out"), "--overwrite"])
        == 0
    )
    assert sorted(os.listdir(tmp_path / "out")) == ["cxr.json", "model.keras"]
    with pytest.raises(ValueError, match="`format` must be one of savedmodel, keras"):
        export(trained_run, tmp_path / "x", format="onnx")


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, realdata):
    image = sorted((realdata / "png").glob("*/*.png"))[0]
    with pytest.raises(FileNotFoundError, match="not a training run"):
        predict(tmp_path, [image])
    with pytest.raises(FileNotFoundError, match="not a training run"):
        export(tmp_path, tmp_path / "out")
    assert main(["predict", str(tmp_path), str(image)]) == 2
