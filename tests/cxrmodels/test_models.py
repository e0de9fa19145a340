"""Tests for the model registry, the input block and the model factories."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from cxrmodels.models import _registry as registry
from cxrmodels.models import (  # noqa: F401  (registers the models)
    cnn,
    create_model,
    last_conv_layer_name,
    list_models,
    register_model,
    transfer,
)
from cxrmodels.models.inputs import ImagePreprocessing

BUILTIN = ["densenet121", "efficientnet_b0", "resnet50", "seed_cnn", "vgg19_transfer"]
TINY_CNN = dict(filters=(4, 8, 8), dense_units=8)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _images(n=2, size=32, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _n_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _train_once(model, x, y):
    """One eager train step (eager: tracing a 400-layer graph costs more than the step)."""
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", run_eagerly=True
    )
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    changed = sum(not np.array_equal(b, a) for b, a in zip(before, after))
    return float(loss), changed


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test, then restores the previous one."""
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


# --- registry -------------------------------------------------------------------------------


def test_list_models_has_the_builtin_models():
    assert set(BUILTIN) <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"registered models \[.*'seed_cnn'.*'vgg19_transfer'.*\]"):
        create_model("seed_cnnn")


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(TypeError, match=r"unexpected options \['filterz'\].*'dense_units'.*'filters'"):
        create_model("seed_cnn", filterz=(4,))
    with pytest.raises(TypeError, match="trainable_blocks"):
        create_model("vgg19_transfer", filters=(4,))


def test_model_options_lists_defaults():
    assert registry.model_options("seed_cnn") == {
        "filters": (32, 64, 128),
        "dense_units": 128,
        "dropout": 0.0,
        "pooling": "max",
    }
    assert registry.model_options("vgg19_transfer")["pooling"] == "max"
    assert registry.model_options("densenet121")["pooling"] == "avg"


def test_register_model_with_a_name(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model(name="tiny_dense")
    def _tiny(*, input_shape, num_classes, weights=None, augment=None, units=3):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))

    assert "tiny_dense" in list_models()
    model = create_model("tiny_dense", input_shape=(4, 4, 1), num_classes=5, units=2)
    assert model.output_shape == (None, 5)
    with pytest.raises(ValueError, match="already registered"):
        register_model(name="tiny_dense")(lambda **kw: None)


# --- parameter counts -------------------------------------------------------------------------


def test_seed_cnn_has_the_reference_parameter_count():
    model = create_model("seed_cnn", input_shape=(299, 299, 1), num_classes=2)
    assert model.count_params() == 18_129_890
    assert model.name == "seed_cnn"
    assert [layer.name for layer in model.layers[-5:]] == [
        "block3_bn",
        "block3_pool",
        "flatten",
        "fc1",
        "predictions",
    ]
    assert model.get_layer("block1_bn").momentum == 0.9
    assert model.input.dtype == "uint8"


def test_vgg19_transfer_parameter_counts():
    model = create_model("vgg19_transfer", input_shape=(224, 224, 3), weights=None)
    assert model.count_params() == 20_090_306
    assert _n_params(model.trainable_weights) == 65_922
    assert isinstance(model.get_layer("global_pool"), keras.layers.GlobalMaxPooling2D)


# --- input block ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, reference",
    [
        ("caffe", keras.applications.vgg19.preprocess_input),
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
        ("raw", lambda x: x),
        ("unit", lambda x: x / 255.0),
    ],
)
def test_preprocessing_matches_keras_applications(mode, reference):
    x = _images(n=2, size=4, channels=3, seed=1)
    got = keras.ops.convert_to_numpy(ImagePreprocessing(mode)(x))
    np.testing.assert_allclose(got, reference(x.astype("float32")), rtol=1e-5, atol=1e-4)


def test_preprocessing_repeats_grayscale_and_round_trips_config():
    layer = ImagePreprocessing("caffe", channels=3)
    got = keras.ops.convert_to_numpy(layer(np.full((1, 2, 2, 1), 255, "uint8")))
    assert got.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(got[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68], rtol=1e-6)
    clone = ImagePreprocessing.from_config(layer.get_config())
    assert (clone.mode, clone.channels) == ("caffe", 3)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        ImagePreprocessing("tf")


def test_grayscale_input_equals_repeated_rgb():
    gray = create_model("vgg19_transfer", input_shape=(32, 32, 1), dense_units=8)
    rgb = create_model("vgg19_transfer", input_shape=(32, 32, 3), dense_units=8)
    rgb.set_weights(gray.get_weights())
    x = _images(n=3, size=32, channels=1, seed=2)
    np.testing.assert_allclose(
        gray.predict(x, verbose=0), rgb.predict(np.repeat(x, 3, axis=-1), verbose=0), rtol=1e-5
    )


def test_augment_layer_sits_at_the_input():
    flip = keras.layers.RandomFlip("horizontal", seed=1, name="flip")
    model = create_model("seed_cnn", input_shape=(36, 36, 1), augment=flip, **TINY_CNN)
    assert model.layers[1] is flip
    assert model.layers[2].name == "preprocessing"
    x = _images(n=2, size=36)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(TypeError, match="`augment` must be None or a Keras layer"):
        create_model("seed_cnn", augment="flip")


# --- argument checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("seed_cnn", dict(input_shape=(35, 35, 1)), "at least 36x36"),
        ("seed_cnn", dict(input_shape=(15, 15, 1), filters=(4, 4)), "at least 16x16"),
        ("seed_cnn", dict(input_shape=(64, 64, 2)), "1 \\(grayscale\\) or 3 \\(RGB\\) channels"),
        ("seed_cnn", dict(input_shape=(64, 64)), "\\(height, width, channels\\)"),
        ("seed_cnn", dict(filters=()), "`filters` must be a non-empty tuple"),
        ("seed_cnn", dict(pooling="sum"), "`pooling` must be 'max' or 'avg'"),
        ("seed_cnn", dict(dropout=1.0), "`dropout` must be a float in \\[0, 1\\)"),
        ("seed_cnn", dict(num_classes=1), "`num_classes` must be an int >= 2"),
        ("seed_cnn", dict(weights="imagenet"), "has no ImageNet weights"),
        ("seed_cnn", dict(weights="model.pt"), "must be None, 'imagenet' or a file ending"),
        ("vgg19_transfer", dict(input_shape=(31, 31, 3)), "at least 32x32"),
        ("densenet121", dict(trainable_blocks=6), "from 0 \\(frozen backbone\\) to 5"),
        ("efficientnet_b0", dict(trainable_blocks=-1), "from 0 \\(frozen backbone\\) to 8"),
    ],
)
def test_bad_arguments_raise_before_building(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_smallest_seed_cnn_input_builds():
    assert cnn.min_input_size(3) == 36
    model = create_model("seed_cnn", input_shape=(36, 36, 1), **TINY_CNN)
    assert model.get_layer("block3_pool").output.shape[1:3] == (1, 1)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("seed_cnn", weights=tmp_path / "none.weights.h5")


# --- build, forward, backward -----------------------------------------------------------------


def test_seed_cnn_forward_and_backward():
    model = create_model(
        "seed_cnn", input_shape=(40, 40, 1), num_classes=3, dropout=0.5, pooling="avg", **TINY_CNN
    )
    x, y = _images(n=4, size=40), np.array([0, 1, 2, 1])
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    loss, changed = _train_once(model, x, y)
    assert np.isfinite(loss)
    assert changed > 0
    assert last_conv_layer_name(model) == "block3_conv2"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, last_conv",
    [
        ("vgg19_transfer", "block5_conv4"),
        ("densenet121", "relu"),
        ("resnet50", "conv5_block3_out"),
        ("efficientnet_b0", "top_activation"),
    ],
)
def test_transfer_model_forward_and_backward(name, last_conv):
    # Seeded: with 4 ReLU units a random head can be dead for both images, so that one step
    # changes nothing (the outputs are then 0.5/0.5 and the gradients all zero); which seeds
    # do that used to depend on the order the suite ran in.
    keras.utils.set_random_seed(1)
    model = create_model(name, input_shape=(32, 32, 1), num_classes=2, dense_units=4, dropout=0.2)
    assert model.name == name
    x, y = _images(n=2, size=32), np.array([0, 1])
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 2) and probs.dtype == np.float32
    loss, changed = _train_once(model, x, y)
    assert np.isfinite(loss)
    assert changed > 0
    # Grad-CAM's feature model: the layer is reachable from the model's input.
    assert last_conv_layer_name(model) == last_conv
    features = keras.Model(model.input, [model.get_layer(last_conv).output, model.output])
    maps, _ = features(x)
    assert len(maps.shape) == 4


def test_last_conv_layer_name_inside_a_nested_model():
    inner = create_model("seed_cnn", input_shape=(36, 36, 1), **TINY_CNN)
    inputs = keras.Input((36, 36, 1), dtype="uint8")
    outer = keras.Model(inputs, keras.layers.Activation("linear")(inner(inputs)))
    assert last_conv_layer_name(outer) == "seed_cnn/block3_conv2"
    dense_only = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no convolution layer"):
        last_conv_layer_name(dense_only)


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_output_is_float32_under_mixed_precision(policy, name):
    policy(name)
    model = create_model("seed_cnn", input_shape=(36, 36, 1), **TINY_CNN)
    assert model.get_layer("block1_conv1").compute_dtype == name.split("_")[1]
    probs = model(_images(n=2, size=36))
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"
    loss, _ = _train_once(model, _images(n=2, size=36), np.array([0, 1]))
    assert np.isfinite(loss)


@pytest.mark.slow
def test_transfer_output_is_float32_under_mixed_float16(policy):
    policy("mixed_float16")
    model = create_model("efficientnet_b0", input_shape=(32, 32, 1))
    assert model.get_layer("top_conv").compute_dtype == "float16"
    probs = model(_images(n=2, size=32))
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"


# --- fine-tuning control ----------------------------------------------------------------------


def test_trainable_blocks_unfreezes_the_last_vgg_blocks():
    frozen = create_model("vgg19_transfer", input_shape=(32, 32, 1))
    block5 = create_model("vgg19_transfer", input_shape=(32, 32, 1), trainable_blocks=1)
    assert _n_params(frozen.trainable_weights) == 65_922
    # block5: four 3x3 convolutions of 512 -> 512 filters.
    assert _n_params(block5.trainable_weights) == 65_922 + 4 * (512 * 512 * 9 + 512)
    assert block5.get_layer("block5_conv1").trainable
    assert not block5.get_layer("block4_conv4").trainable
    everything = create_model("vgg19_transfer", input_shape=(32, 32, 1), trainable_blocks=5)
    assert _n_params(everything.trainable_weights) == everything.count_params()


@pytest.mark.slow
def test_trainable_blocks_keeps_batchnorm_frozen_by_default():
    model = create_model("resnet50", input_shape=(32, 32, 1), trainable_blocks=1)
    assert model.get_layer("conv5_block3_3_conv").trainable
    assert not model.get_layer("conv5_block3_3_bn").trainable
    assert not model.get_layer("conv4_block6_3_conv").trainable
    with_bn = create_model("resnet50", input_shape=(32, 32, 1), trainable_blocks=1, freeze_batchnorm=False)
    assert with_bn.get_layer("conv5_block3_3_bn").trainable
    assert _n_params(with_bn.trainable_weights) > _n_params(model.trainable_weights)


# --- weights ----------------------------------------------------------------------------------


def test_seed_cnn_weights_file_round_trip(tmp_path):
    model = create_model("seed_cnn", input_shape=(36, 36, 1), **TINY_CNN)
    model.save_weights(tmp_path / "cnn.weights.h5")
    loaded = create_model(
        "seed_cnn", input_shape=(36, 36, 1), weights=tmp_path / "cnn.weights.h5", **TINY_CNN
    )
    x = _images(n=2, size=36)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_mismatched_weights_file_raises(tmp_path):
    path = tmp_path / "cnn.weights.h5"
    create_model("seed_cnn", input_shape=(36, 36, 1), **TINY_CNN).save_weights(path)
    with pytest.raises(
        ValueError,
        match=r"cnn\.weights\.h5 does not match model 'seed_cnn': .*"
        r"variable\.shape=\(3, 3, 8, 16\), Received: value\.shape=\(3, 3, 8, 8\); "
        r"layers not loaded: "
        r"\['block3_bn', 'block3_conv1', 'block3_conv2', 'fc1'\]$",
    ):
        create_model("seed_cnn", input_shape=(36, 36, 1), weights=path, filters=(4, 8, 16), dense_units=8)
    with pytest.raises(ValueError, match=r"holds 28 arrays, the model has 26 weights"):
        create_model("seed_cnn", input_shape=(36, 36, 1), weights=path, filters=(4, 8, 8), dense_units=0)
    with pytest.raises(ValueError, match=r"matches neither model 'vgg19_transfer'.*VGG19 backbone"):
        create_model("vgg19_transfer", input_shape=(32, 32, 1), weights=path)


def test_transfer_loads_a_backbone_weights_file(tmp_path):
    backbone = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
    backbone.save_weights(tmp_path / "vgg19.weights.h5")
    model = create_model("vgg19_transfer", input_shape=(32, 32, 1), weights=tmp_path / "vgg19.weights.h5")
    for name in ("block1_conv1", "block5_conv4"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model.get_layer(name).kernel),
            keras.ops.convert_to_numpy(backbone.get_layer(name).kernel),
        )
    assert _n_params(model.trainable_weights) == 65_922


def test_transfer_loads_a_whole_model_weights_file(tmp_path):
    model = create_model("vgg19_transfer", input_shape=(32, 32, 1), dense_units=8)
    model.save_weights(tmp_path / "whole.weights.h5")
    loaded = create_model(
        "vgg19_transfer", input_shape=(32, 32, 1), dense_units=8, weights=tmp_path / "whole.weights.h5"
    )
    x = _images(n=2, size=32)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-6)


def _norm_variance(model):
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    return keras.ops.convert_to_numpy(norm.adapt_variance)


@pytest.mark.slow
def test_efficientnet_imagenet_h5_file_gets_keras_std_scaling(tmp_path):
    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    norm = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_variance.assign(np.array([2.0, 3.0, 4.0], "float32"))
    imagenet_named = tmp_path / "efficientnetb0_notop.h5"
    backbone.save(imagenet_named)  # legacy HDF5, the format of the keras.applications files
    model = create_model("efficientnet_b0", input_shape=(32, 32, 1), weights=imagenet_named)
    np.testing.assert_allclose(_norm_variance(model), [2.0 * 0.229, 3.0 * 0.224, 4.0 * 0.225], rtol=1e-6)
    other_name = tmp_path / "mine.h5"
    backbone.save(other_name)
    model = create_model("efficientnet_b0", input_shape=(32, 32, 1), weights=other_name)
    np.testing.assert_allclose(_norm_variance(model), [2.0, 3.0, 4.0])


def _fake_imagenet_efficientnet(tmp_path, monkeypatch):
    """An "ImageNet" EfficientNetB0 file (variance 2, 3, 4) that keras.applications "downloads"."""
    from cxrdata.utils.compat import keras_file_utils

    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    norm = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_variance.assign(np.array([2.0, 3.0, 4.0], "float32"))
    path = tmp_path / "efficientnetb0_notop.h5"
    backbone.save(path)  # legacy HDF5, the format of the keras.applications files
    monkeypatch.setattr(keras_file_utils(), "get_file", lambda fname, origin, **kwargs: str(path))
    return path


def _features(model, x):
    return keras.Model(model.input, model.get_layer("top_activation").output).predict(x, verbose=0)


@pytest.mark.slow
def test_efficientnet_rebuilt_from_its_saved_imagenet_weights_gives_the_same_outputs(tmp_path, monkeypatch):
    imagenet_file = _fake_imagenet_efficientnet(tmp_path, monkeypatch)
    model = create_model("efficientnet_b0", input_shape=(32, 32, 1), weights="imagenet")
    assert not any(
        isinstance(layer, keras.layers.Rescaling) and np.ndim(layer.scale) for layer in model.layers
    )
    model.save(tmp_path / "run.keras")
    model.save_weights(tmp_path / "run.weights.h5")
    x = _images(n=2, size=32)
    features = _features(model, x)
    for saved in ("run.keras", "run.weights.h5"):
        rebuilt = create_model("efficientnet_b0", input_shape=(32, 32, 1), weights=tmp_path / saved)
        np.testing.assert_allclose(_features(rebuilt, x), features, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    # the ImageNet weights by name or as a local file: the same backbone
    local = create_model("efficientnet_b0", input_shape=(32, 32, 1), weights=imagenet_file)
    np.testing.assert_allclose(_features(local, x), features, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_efficientnet_keras_file_with_keras_own_imagenet_scaling_rebuilds_the_same(tmp_path, monkeypatch):
    import dataclasses

    _fake_imagenet_efficientnet(tmp_path, monkeypatch)
    # As keras.applications builds it (and this library did before folding the std): with its Rescaling.
    keras_way = dataclasses.replace(transfer._BY_NAME["efficientnet_b0"], folds_imagenet_std=False)
    old = transfer._build(
        "efficientnet_b0",
        keras_way,
        input_shape=(32, 32, 1),
        num_classes=2,
        weights="imagenet",
        augment=None,
        pooling="avg",
        dense_units=0,
        dropout=0.0,
        trainable_blocks=0,
        freeze_batchnorm=True,
    )
    assert any(isinstance(layer, keras.layers.Rescaling) and np.ndim(layer.scale) for layer in old.layers)
    old.save(tmp_path / "old.keras")
    x = _images(n=2, size=32)
    rebuilt = create_model("efficientnet_b0", input_shape=(32, 32, 1), weights=tmp_path / "old.keras")
    np.testing.assert_allclose(_features(rebuilt, x), _features(old, x), rtol=1e-5, atol=1e-5)


def test_imagenet_without_network_says_to_pass_a_local_file(monkeypatch):
    from cxrdata.utils.compat import keras_file_utils

    file_utils = keras_file_utils()

    def no_network(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    with pytest.raises(
        ValueError,
        match=r"Could not get the ImageNet weights of VGG19.*"
        r"weights='/path/to/vgg19_weights_tf_dim_ordering",
    ):
        create_model("vgg19_transfer", input_shape=(32, 32, 1), weights="imagenet")


# --- saving -----------------------------------------------------------------------------------


def test_seed_cnn_keras_file_round_trip(tmp_path):
    model = create_model("seed_cnn", input_shape=(36, 36, 1), dropout=0.3, **TINY_CNN)
    model.save(tmp_path / "cnn.keras")
    loaded = keras.saving.load_model(tmp_path / "cnn.keras")  # safe mode: no Lambda layers
    x = _images(n=3, size=36)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert loaded.name == "seed_cnn" and loaded.input.dtype == "uint8"


@pytest.mark.slow
def test_transfer_keras_file_round_trip(tmp_path):
    model = create_model("efficientnet_b0", input_shape=(32, 32, 1), trainable_blocks=2)
    model.save(tmp_path / "effnet.keras")
    loaded = keras.saving.load_model(tmp_path / "effnet.keras")
    x = _images(n=2, size=32)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-5)
    assert _n_params(loaded.trainable_weights) == _n_params(model.trainable_weights)


# --- backend independence ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_models_build_under_jax_without_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "import cxrmodels\n"
        "from cxrmodels.models import create_model\n"
        "m = create_model('seed_cnn', input_shape=(64, 64, 1), filters=(4, 8, 8), dense_units=8)\n"
        "p = m(np.zeros((2, 64, 64, 1), 'uint8'))\n"
        "assert p.shape == (2, 2) and str(p.dtype) == 'float32', (p.shape, p.dtype)\n"
        "m = create_model('vgg19_transfer', input_shape=(32, 32, 1), dense_units=8)\n"
        "assert m(np.zeros((1, 32, 32, 1), 'uint8')).shape == (1, 2)\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('ok')\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
