"""`LocalEqualization` against `skimage.filters.rank.equalize(image, disk(radius))`, byte for byte."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.filters.rank import equalize
from skimage.morphology import disk

from cxrdata.layers.local_equalization import LocalEqualization, disk_half_widths

ROOT = pathlib.Path(__file__).resolve().parents[3]


def reference(images: np.ndarray, radius: int) -> np.ndarray:
    """scikit-image on each image of a `[B, H, W, 1]` uint8 batch."""
    return np.stack([equalize(image[..., 0], disk(radius)) for image in images])[..., None]


def random_images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_disk_half_widths_match_skimage_disk():
    for radius in (0, 1, 2, 5, 70):
        widths = disk(radius).sum(axis=1) // 2
        assert disk_half_widths(radius) == widths.tolist()


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    radius=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([2, 16, 256]),  # few levels: many ties
)
def test_matches_skimage_on_random_images(height, width, radius, seed, levels):
    rng = np.random.default_rng(seed)
    images = (rng.integers(0, levels, (1, height, width, 1)) * (255 // (levels - 1))).astype(np.uint8)
    outputs = keras.ops.convert_to_numpy(LocalEqualization(radius)(images))
    assert outputs.dtype == np.uint8 and outputs.shape == images.shape
    np.testing.assert_array_equal(outputs, reference(images, radius))


@pytest.mark.slow
def test_matches_skimage_on_real_radiographs_at_299_radius_70(realdata):
    from PIL import Image

    paths = sorted((realdata / "png" / "COVID").glob("*.png"))[:2]
    paths += sorted((realdata / "png" / "Normal").glob("*.png"))[:1]
    if len(paths) < 3:
        pytest.skip(f"fewer than 3 PNGs under {realdata / 'png'}")
    images = np.stack(
        [np.asarray(Image.open(p).convert("L").resize((299, 299), Image.BILINEAR)) for p in paths]
    )[..., None]
    assert images.dtype == np.uint8 and len(np.unique(images)) > 100
    # Compiled (XLA under TF and JAX): about 1 s per image on a CPU core, eager is slower.
    model = keras.Sequential([keras.Input((299, 299, 1), dtype="uint8"), LocalEqualization(70)])
    outputs = model.predict(images, batch_size=len(images), verbose=0)
    expected = reference(images, 70)
    np.testing.assert_array_equal(outputs, expected)
    assert not np.array_equal(expected, images)  # the check is not vacuous


def test_one_image_without_batch_axis_and_non_square():
    images = random_images((1, 23, 41, 1), seed=3)
    outputs = keras.ops.convert_to_numpy(LocalEqualization(6)(images[0]))
    assert outputs.shape == (23, 41, 1)
    np.testing.assert_array_equal(outputs, reference(images, 6)[0])


def test_float_input_holding_gray_levels_keeps_its_dtype():
    images = random_images((2, 17, 12, 1), seed=4)
    outputs = keras.ops.convert_to_numpy(LocalEqualization(5)(images.astype("float32")))
    assert outputs.dtype == np.float32
    np.testing.assert_array_equal(outputs, reference(images, 5).astype("float32"))


def test_batch_of_different_images_is_equalized_image_by_image():
    images = random_images((3, 20, 20, 1), seed=5)
    images[1] //= 4  # a darker image: its own histogram, not the batch's
    outputs = keras.ops.convert_to_numpy(LocalEqualization(8)(images))
    np.testing.assert_array_equal(outputs, reference(images, 8))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="needs the TF backend")
def test_xla_compiled_model_keeps_jit_compile_and_gives_the_same_bytes():
    images = random_images((4, 48, 40, 1), seed=6)
    model = keras.Sequential([keras.Input((48, 40, 1), dtype="uint8"), LocalEqualization(radius=11)])
    model.compile(jit_compile=True)
    outputs = model.predict(images, batch_size=2, verbose=0)
    assert model.jit_compile is True
    assert outputs.dtype == np.uint8
    np.testing.assert_array_equal(outputs, reference(images, 11))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="needs the TF backend")
def test_in_a_tf_data_pipeline_uint8_stays_uint8():
    import tensorflow as tf

    images = random_images((2, 30, 25, 1), seed=7)
    layer = LocalEqualization(4)
    outputs = next(iter(tf.data.Dataset.from_tensors(images).map(layer))).numpy()
    assert outputs.dtype == np.uint8
    np.testing.assert_array_equal(outputs, reference(images, 4))


JAX_SCRIPT = """
import sys
import jax
import keras
import numpy as np
from cxrdata import LocalEqualization

assert keras.backend.backend() == "jax", keras.backend.backend()
images = np.load(sys.argv[1])
layer = LocalEqualization(radius=9)
eager = np.asarray(layer(images))
jitted = np.asarray(jax.jit(lambda x: layer(x))(images))
assert eager.dtype == jitted.dtype == np.uint8, (eager.dtype, jitted.dtype)
assert np.array_equal(eager, jitted)
np.save(sys.argv[2], jitted)
"""


@pytest.mark.slow
def test_jax_backend_gives_the_same_bytes(tmp_path):
    pytest.importorskip("jax")
    images = random_images((2, 37, 29, 1), seed=8)
    np.save(tmp_path / "in.npy", images)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npy")
    assert outputs.dtype == np.uint8
    np.testing.assert_array_equal(outputs, reference(images, 9))


@pytest.mark.parametrize(
    ("radius", "error"),
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError), ("70", TypeError)],
)
def test_bad_radius_is_rejected(radius, error):
    with pytest.raises(error, match=rf"`radius` must be an integer >= 1\. Received: radius={radius!r}"):
        LocalEqualization(radius=radius)


@pytest.mark.parametrize("shape", [(8, 8), (2, 8, 8, 3), (1, 1, 8, 8, 1)])
def test_wrong_input_shape_is_rejected(shape):
    images = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match=r"`images` must have shape \[B, H, W, 1\] or \[H, W, 1\]"):
        LocalEqualization(3)(images)
    with pytest.raises(ValueError, match=re.escape(f"Received: images.shape={tuple(shape)}")):
        LocalEqualization(3)(images)


def test_config_round_trip_and_saved_model(tmp_path):
    layer = LocalEqualization(radius=12, name="eq")
    config = layer.get_config()
    assert config["radius"] == 12 and config["name"] == "eq"
    clone = LocalEqualization.from_config(config)
    assert clone.radius == 12 and clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, LocalEqualization) and restored.radius == 12

    images = random_images((1, 26, 26, 1), seed=9)
    model = keras.Sequential([keras.Input((26, 26, 1), dtype="uint8"), layer])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[-1].radius == 12
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), reference(images, 12))
