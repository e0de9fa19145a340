import numpy as np
import pytest
from skimage.filters.rank import equalize as rank_equalize
from skimage.morphology import disk

from cxrdata.decoding import decode_image
from cxrdata.preprocess import PreprocessConfig, preprocess_image, resize


def test_local_equalization_is_bit_identical_to_skimage(realdata):
    image = decode_image(next((realdata / "png" / "Normal").glob("*.png")))
    config = PreprocessConfig(image_size=299)
    resized = resize(image, config)
    expected = rank_equalize(resized, disk(70))
    out = preprocess_image(image, config)
    assert out.dtype == np.uint8 and out.shape == (299, 299)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", ["local", "clahe", "global", "none"])
def test_equalize_modes_keep_shape_and_dtype(mode):
    image = np.tile(np.arange(100, dtype=np.uint8), (80, 1))
    out = preprocess_image(image, PreprocessConfig(image_size=(40, 50), equalize=mode, equalize_radius=5))
    assert out.shape == (40, 50) and out.dtype == np.uint8
    if mode == "none":
        assert out.max() < 100  # only resized
    else:
        assert out.max() >= 250  # stretched to the full range


def test_aspect_pad_keeps_proportions_with_black_borders():
    image = np.full((100, 200), 200, np.uint8)
    out = preprocess_image(image, PreprocessConfig(image_size=64, aspect="pad", equalize="none"))
    assert out.shape == (64, 64)
    assert out[0].max() == 0 and out[-1].max() == 0  # top and bottom padding
    assert out[32, 0] == 200 and out[32, 63] == 200  # full width used


def test_aspect_crop_takes_the_center():
    image = np.zeros((100, 300), np.uint8)
    image[:, 100:200] = 255  # the central square is white
    out = preprocess_image(image, PreprocessConfig(image_size=32, aspect="crop", equalize="none"))
    assert out.min() == 255


def test_stretch_ignores_aspect():
    image = np.zeros((100, 300), np.uint8)
    image[:, 150:] = 255
    out = preprocess_image(image, PreprocessConfig(image_size=32, aspect="stretch", equalize="none"))
    assert out[:, :14].max() == 0 and out[:, 18:].min() == 255


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 4}, "image_size"),
        ({"aspect": "squash"}, "aspect"),
        ({"equalize": "adaptive"}, "equalize"),
        ({"equalize_radius": 0}, "equalize_radius"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreprocessConfig(**kwargs)


def test_config_round_trips_through_dict():
    config = PreprocessConfig(image_size=(128, 96), equalize="clahe", equalize_radius=10)
    assert PreprocessConfig.from_dict(config.to_dict()) == config


def test_preprocess_rejects_non_uint8():
    with pytest.raises(ValueError, match="2-D uint8"):
        preprocess_image(np.zeros((10, 10), np.float32))
