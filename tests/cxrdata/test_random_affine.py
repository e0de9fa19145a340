"""Tests for `cxrdata.layers.random_affine`: the RandomAffine layer and its helpers."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from cxrdata.layers._base import OpsBackend
from cxrdata.layers.random_affine import RandomAffine, augmentation

REFERENCE = dict(rotation=15, zoom=0.2, width_shift=0.2, height_shift=0.2, shear=5)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _smooth_image(size=64):
    y, x = np.mgrid[0:size, 0:size].astype("float64")
    image = np.sin(x / 7.0) + np.cos(y / 5.0 + x / 11.0) + 0.002 * x * y
    return image[..., None]


def _uint8_batch(batch=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 1), "uint8")


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float16"])
def test_identity_when_not_training(dtype):
    images = _uint8_batch().astype(dtype)
    outputs = RandomAffine(**REFERENCE, seed=1)(images, training=False)
    assert _numpy(outputs).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(_numpy(outputs), images)


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float16", "bfloat16"])
def test_keeps_shape_and_dtype(dtype):
    layer = RandomAffine(**REFERENCE, seed=1)
    images = keras.ops.cast(_uint8_batch(), dtype)
    outputs = layer(images, training=True)
    assert tuple(outputs.shape) == (4, 32, 32, 1)
    assert keras.backend.standardize_dtype(outputs.dtype) == dtype
    single = layer(images[0], training=True)
    assert tuple(single.shape) == (32, 32, 1)
    assert keras.backend.standardize_dtype(single.dtype) == dtype
    values = _numpy(keras.ops.cast(outputs, "float32"))
    assert values.min() >= 0 and values.max() <= 255
    assert not np.array_equal(values, _numpy(keras.ops.cast(images, "float32")))


def test_same_seed_same_output_and_different_seeds_differ():
    images = _uint8_batch()
    first = _numpy(RandomAffine(**REFERENCE, seed=7)(images, training=True))
    again = _numpy(RandomAffine(**REFERENCE, seed=7)(images, training=True))
    other = _numpy(RandomAffine(**REFERENCE, seed=8)(images, training=True))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # The generator advances: the next call on one layer draws anew.
    layer = RandomAffine(**REFERENCE, seed=7)
    layer(images, training=True)
    assert not np.array_equal(first, _numpy(layer(images, training=True)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_matches_apply_affine_transform(fill_mode):
    image_module = pytest.importorskip("tf_keras.preprocessing.image")
    pytest.importorskip("scipy")
    image = _smooth_image()
    params = dict(theta=12.0, tx=5.5, ty=-3.25, shear=8.0, zx=1.15, zy=0.9)
    expected = image_module.apply_affine_transform(
        image,
        **params,
        row_axis=0,
        col_axis=1,
        channel_axis=2,
        fill_mode=fill_mode,
        cval=-2.0,
        order=1,
    )
    layer = RandomAffine(fill_mode=fill_mode, fill_value=-2.0)
    batch = {k: np.array([v], "float32") for k, v in params.items()}
    outputs = _numpy(layer.transform_images(image[None].astype("float32"), batch))[0]
    assert np.abs(outputs - expected).max() < 1e-4  # range of the image is ~4
    if fill_mode == "constant":
        assert (outputs == -2.0).sum() > 100  # the corners left the image


def test_transform_images_per_image_parameters_and_flip():
    image = _smooth_image(32).astype("float32")
    layer = RandomAffine()
    batch = np.stack([image, image])
    outputs = _numpy(layer.transform_images(batch, {"flip_horizontal": np.array([1.0, 0.0], "float32")}))
    np.testing.assert_allclose(outputs[0], image[:, ::-1], atol=1e-5)
    np.testing.assert_allclose(outputs[1], image, atol=1e-5)


def test_channels_are_warped_alike():
    rgb = np.random.default_rng(1).uniform(0, 1, (2, 24, 24, 3)).astype("float32")
    params = {"theta": np.array([10.0, -20.0], "float32"), "zx": 1.2, "ty": 2.5}
    layer = RandomAffine(fill_mode="reflect")
    outputs = _numpy(layer.transform_images(rgb, params))
    for c in range(3):
        single = _numpy(layer.transform_images(rgb[..., c : c + 1], params))
        np.testing.assert_allclose(outputs[..., c : c + 1], single, atol=1e-6)


def test_positive_shift_moves_content_right_and_down():
    images = np.zeros((1, 32, 32, 1), "float32")
    images[0, 10, 4, 0] = 1.0
    layer = RandomAffine(width_shift=(0.25, 0.25), height_shift=(0.125, 0.125))
    outputs = _numpy(layer(images, training=True))
    assert np.argwhere(outputs[0, ..., 0] > 0.5).tolist() == [[14, 12]]
    pixels = RandomAffine(width_shift=(3, 3), height_shift=(-2, -2), shift_unit="pixel")(
        images, training=True
    )
    assert np.argwhere(_numpy(pixels)[0, ..., 0] > 0.5).tolist() == [[8, 7]]


def test_drawn_parameters_stay_in_ranges():
    layer = RandomAffine(**REFERENCE, flip_horizontal=True, seed=3)
    params = layer.get_random_transformation(np.zeros((4096, 20, 50, 1), "uint8"))
    params = {k: _numpy(v) for k, v in params.items()}
    for name, low, high in [
        ("theta", -15, 15),
        ("shear", -5, 5),
        ("zx", 0.8, 1.2),
        ("zy", 0.8, 1.2),
        ("tx", -10, 10),
        ("ty", -4, 4),  # 0.2 of the width 50 and height 20
    ]:
        values = params[name]
        assert values.shape == (4096,)
        assert low <= values.min() < low + 0.05 * (high - low), name
        assert high - 0.05 * (high - low) < values.max() <= high, name
        assert abs(values.mean() - (low + high) / 2) < 0.05 * (high - low), name
    assert abs(np.corrcoef(params["zx"], params["zy"])[0, 1]) < 0.1
    assert set(np.unique(params["flip_horizontal"])) == {0.0, 1.0}
    assert 0.45 < params["flip_horizontal"].mean() < 0.55
    unflipped = RandomAffine(seed=3).get_random_transformation(np.zeros((64, 8, 8, 1)))
    assert _numpy(unflipped["flip_horizontal"]).max() == 0.0
    assert RandomAffine().get_random_transformation(np.zeros((2, 8, 8, 1)), training=False) is None


@pytest.mark.slow
def test_model_compiles_with_xla_and_fits():
    layer = RandomAffine(**REFERENCE, seed=1)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1), dtype="uint8"),
            layer,
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1),
        ]
    )
    assert layer.output.dtype == "uint8"
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    state = _numpy(layer.generator.state).copy()
    history = model.fit(_uint8_batch(), np.zeros(4), batch_size=4, epochs=1, verbose=0)
    assert model.jit_compile is True
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(_numpy(layer.generator.state), state)


def test_config_round_trip_and_keras_file(tmp_path):
    layer = RandomAffine(
        rotation=(-5, 10),
        zoom=(0.9, 1.3),
        width_shift=4.0,
        shift_unit="pixel",
        flip_horizontal=True,
        fill_mode="constant",
        fill_value=3.0,
        interpolation="nearest",
        seed=11,
        name="aug",
    )
    config = layer.get_config()
    assert RandomAffine.from_config(config).get_config() == config
    assert config["rotation"] == (-5.0, 10.0) and config["width_shift"] == (-4.0, 4.0)
    model = keras.Sequential([keras.Input((16, 16, 1)), layer, keras.layers.Flatten()])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("aug").get_config() == config
    images = _uint8_batch(2, 16).astype("float32")
    np.testing.assert_array_equal(_numpy(loaded.predict(images, verbose=0)), images.reshape(2, -1))


def test_works_in_tf_data_map():
    tf = pytest.importorskip("tensorflow")
    layer = RandomAffine(**REFERENCE, seed=2)
    images = _uint8_batch(5)
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(5))).batch(3)
    ds = ds.map(lambda x, y: (layer(x, training=True), y))
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(3, 32, 32, 1), (2, 32, 32, 1)]
    assert all(b[0].dtype == np.uint8 for b in batches)
    assert not np.array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.arange(5))


def test_keeps_dtype_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = RandomAffine(rotation=10, seed=1)
        images = _uint8_batch()
        assert _numpy(layer(images.astype("float32"), training=True)).dtype == np.float32
        assert _numpy(layer(images, training=True)).dtype == np.uint8
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_keras_ops_fallback_gives_the_same_images():
    images = _smooth_image(32)[None].astype("float32")
    params = {"theta": 20.0, "zx": 0.8, "tx": 3.0, "shear": 4.0}
    layer = RandomAffine(fill_mode="reflect")
    expected = _numpy(layer.transform_images(images, params))
    layer.backend = OpsBackend()
    np.testing.assert_allclose(_numpy(layer.transform_images(images, params)), expected)


def test_augmentation_adds_keras_jitter_layers_and_compiles():
    aug = augmentation(rotation=10, brightness=0.1, contrast=0.2, seed=5)
    assert [type(layer).__name__ for layer in aug.layers] == [
        "RandomAffine",
        "RandomBrightness",
        "RandomContrast",
    ]
    assert [layer.seed for layer in aug.layers] == [5, 6, 7]
    assert [type(l).__name__ for l in augmentation(zoom=0.1).layers] == ["RandomAffine"]
    outputs = aug(_uint8_batch(), training=True)
    values = _numpy(outputs)
    assert values.shape == (4, 32, 32, 1) and values.dtype == np.float32
    assert 0 <= values.min() and values.max() <= 255


def test_from_image_data_generator_maps_arguments():
    layer = RandomAffine.from_image_data_generator(
        rotation_range=15,
        zoom_range=0.2,
        width_shift_range=0.2,
        height_shift_range=0.2,
        shear_range=0.2,
        seed=4,
    )
    assert (layer.rotation, layer.zoom, layer.shear) == ((-15, 15), (0.8, 1.2), (-0.2, 0.2))
    assert (layer.width_shift, layer.height_shift) == ((-0.2, 0.2), (-0.2, 0.2))
    assert (layer.shift_unit, layer.flip_horizontal, layer.fill_mode) == ("fraction", False, "nearest")
    assert layer.seed == 4
    pixels = RandomAffine.from_image_data_generator(
        width_shift_range=12.0,
        height_shift_range=6.0,
        zoom_range=[0.9, 1.1],
        fill_mode="constant",
        cval=7,
        horizontal_flip=True,
        interpolation_order=0,
        rescale=None,
        vertical_flip=False,  # defaults are accepted
    )
    assert pixels.shift_unit == "pixel"
    assert (pixels.width_shift, pixels.height_shift) == ((-12, 12), (-6, 6))
    assert (pixels.zoom, pixels.fill_value, pixels.flip_horizontal) == ((0.9, 1.1), 7.0, True)
    assert (pixels.fill_mode, pixels.interpolation) == ("constant", "nearest")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rescale": 1 / 255}, "the model casts and scales uint8 itself"),
        ({"brightness_range": (0.8, 1.2)}, "use keras.layers.RandomBrightness"),
        ({"channel_shift_range": 10.0}, "use keras.layers.RandomBrightness"),
        ({"validation_split": 0.2}, "cxr convert --splits"),
        ({"featurewise_center": True}, "normalization happens in the model"),
        ({"samplewise_std_normalization": True}, "normalization happens in the model"),
        ({"zca_whitening": True}, "normalization happens in the model"),
        ({"vertical_flip": True}, "never upside down"),
        ({"preprocessing_function": abs}, "as a layer"),
        ({"data_format": "channels_first"}, "channels-last"),
        ({"dtype": "float16"}, "keeps its input's dtype"),
        ({"zoom": 0.2}, "Unknown ImageDataGenerator argument `zoom`"),
        ({"width_shift_range": 10}, "pass a float"),
        ({"height_shift_range": [1, 2]}, "pass a float"),
        ({"width_shift_range": 0.1, "height_shift_range": 5.0}, "both be fractions"),
        ({"fill_mode": "wrap"}, "'wrap'` is not supported"),
        ({"interpolation_order": 3}, "must be 0 \\(nearest\\) or 1"),
    ],
)
def test_from_image_data_generator_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomAffine.from_image_data_generator(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rotation": -5}, "`rotation` must be a non-negative number .* Received: rotation=-5"),
        ({"rotation": (10, 5)}, "Received: rotation=\\(10, 5\\)"),
        ({"zoom": 1.5}, "`zoom` must be a number in \\[0, 0.99\\]"),
        ({"zoom": "0.2"}, "Received: zoom='0.2'"),
        ({"width_shift": 1.5}, "`width_shift` must be .* Received: width_shift=1.5"),
        ({"shear": 90}, "`shear` must be"),
        ({"fill_mode": "wrap"}, "`fill_mode` must be one of"),
        ({"interpolation": "bicubic"}, "`interpolation` must be one of"),
        ({"shift_unit": "px"}, "`shift_unit` must be one of"),
        ({"flip_horizontal": 1}, "`flip_horizontal` must be a bool"),
        ({"fill_value": None}, "`fill_value` must be a number"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomAffine(**kwargs)


def test_seed_of_wrong_type_is_a_type_error():
    # One rule for every seed in the library (cxrdata.utils.argument_validation).
    with pytest.raises(TypeError, match=r"`seed` must be an integer >= 0 or None. Received: seed=1.5"):
        RandomAffine(seed=1.5)


def test_pixel_shifts_may_exceed_one():
    layer = RandomAffine(width_shift=30.0, shift_unit="pixel")
    assert layer.width_shift == (-30.0, 30.0)


def test_rejects_images_of_other_ranks():
    with pytest.raises(ValueError, match="must have rank 4"):
        RandomAffine(rotation=5)(np.zeros((2, 3, 8, 8, 1), "float32"), training=True)


@pytest.mark.slow
def test_runs_under_jax_without_importing_tensorflow():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import cxrdata
        layer = cxrdata.RandomAffine(rotation=15, zoom=0.2, width_shift=0.2, seed=1)
        images = np.arange(2 * 16 * 16).reshape(2, 16, 16, 1).astype("uint8")
        out = layer(images, training=True)
        assert out.shape == (2, 16, 16, 1) and str(out.dtype) == "uint8", out
        assert not np.array_equal(np.asarray(out), images)
        assert "tensorflow" not in sys.modules
        import tensorflow as tf  # tf.data still works under the JAX backend
        ds = tf.data.Dataset.from_tensor_slices(images).batch(2)
        batch = next(iter(ds.map(lambda x: layer(x, training=True))))
        assert batch.dtype == tf.uint8 and tuple(batch.shape) == (2, 16, 16, 1)
        print("ok")
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def _tf_keras_warp(image, params, **kwargs):
    image_module = pytest.importorskip("tf_keras.preprocessing.image")
    pytest.importorskip("scipy")
    return image_module.apply_affine_transform(
        image, **params, row_axis=0, col_axis=1, channel_axis=2, **kwargs
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fill_mode", ["nearest", "constant"])
def test_non_square_matches_tf_keras_about_its_swapped_centre(fill_mode):
    image = _smooth_image(64)[:48]  # 48 rows, 64 columns
    height, width = image.shape[:2]
    params = dict(theta=12.0, tx=5.5, ty=-3.25, shear=8.0, zx=1.15, zy=0.9)
    expected = _tf_keras_warp(image, params, fill_mode=fill_mode, cval=-2.0, order=1)
    layer = RandomAffine(fill_mode=fill_mode, fill_value=-2.0)

    def warp(p):
        batch = {k: np.array([v], "float32") for k, v in p.items()}
        return _numpy(layer.transform_images(image[None].astype("float32"), batch))[0]

    # The layer turns about the true centre: off by more than a pixel value here.
    assert np.abs(warp(params) - expected).max() > 1.0
    # tf_keras turns about ((h - 1) / 2, (w - 1) / 2) taken as (column, row). About a
    # centre c' instead of c, the map gains the input shift (I - A)(c' - c): reproduce it
    # with the layer's own shift (applied through the rotation R).
    t, s = np.radians(params["theta"]), np.radians(params["theta"] + params["shear"])
    a = np.array(
        [
            [np.cos(t) * params["zx"], -np.sin(s) * params["zy"]],
            [np.sin(t) * params["zx"], np.cos(s) * params["zy"]],
        ]
    )
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    d = np.array([(height - 1) / 2 - (width - 1) / 2, (width - 1) / 2 - (height - 1) / 2])
    dx, dy = r.T @ (np.eye(2) - a) @ d
    quirk = dict(params, tx=params["tx"] + dx, ty=params["ty"] + dy)
    assert np.abs(warp(quirk) - expected).max() < 1e-3
    # and the layer's own geometry is right: half a turn is a flip of both axes.
    np.testing.assert_allclose(warp({"theta": 180.0}), image[::-1, ::-1], atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nearest_rounds_half_pixels_up_as_scipy():
    image = np.tile(np.arange(32, dtype="float32") * 3, (8, 1))[..., None]  # distinct columns
    params = dict(tx=0.5, ty=0.0)
    expected = _tf_keras_warp(image, params, fill_mode="nearest", order=0)
    layer = RandomAffine(interpolation="nearest")
    outputs = _numpy(
        layer.transform_images(image[None], {k: np.array([v], "float32") for k, v in params.items()})
    )[0]
    # Column j samples x = j + 0.5, which rounds up to j + 1: no column dropped.
    np.testing.assert_array_equal(outputs[0, :, 0], image[0, list(range(1, 32)) + [31], 0])
    np.testing.assert_array_equal(outputs, expected)
