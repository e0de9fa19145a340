"""The input block every `cxrmodels` model starts with, and shared argument checks.

Models take uint8 images straight from the data pipeline (`[B, H, W, C]`,
values 0..255) and do their own casting and scaling, so the same model serves
training, evaluation and deployment without a separate preprocessing step. The
optional augmentation layer sits right at the input, so it runs on the device
with the rest of the model (and only in training, as Keras' augmentation layers
do).

Only `keras.ops` and Keras layers are used here: building a model does not
import TensorFlow under another Keras backend.
"""

from __future__ import annotations

import os

import keras
from keras import ops

# ImageNet channel statistics used by `keras.applications.imagenet_utils`.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
_TORCH_STD_RGB = (0.229, 0.224, 0.225)

MODES = ("unit", "caffe", "torch", "raw")


@keras.saving.register_keras_serializable(package="cxrmodels")
class ImagePreprocessing(keras.layers.Layer):
    """Casts images to the compute dtype and applies a backbone's preprocessing.

    Expects channels-last images with values 0..255 (any integer or float
    dtype). Grayscale images can be repeated to 3 channels first, so ImageNet
    backbones take them unchanged.

    Args:
        mode: One of `"unit"` (scale to [0, 1]), `"caffe"` (RGB to BGR, then
            subtract the ImageNet mean pixel, as VGG and ResNet50 expect),
            `"torch"` (scale to [0, 1], then normalize each channel with the
            ImageNet mean and standard deviation, as DenseNet expects) or
            `"raw"` (cast only, for backbones that rescale themselves, such as
            EfficientNet). Defaults to `"unit"`.
        channels: Number of output channels: `3` repeats a 1-channel input to
            3 channels; `None` keeps the input's channels. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`).

    Example:

    >>> layer = ImagePreprocessing(mode="caffe", channels=3)
    >>> x = layer(np.full((1, 2, 2, 1), 255, "uint8"))  # shape (1, 2, 2, 3)
    >>> keras.ops.convert_to_numpy(x)[0, 0, 0]  # 255 minus the BGR mean pixel
    array([151.061  , 138.22101, 131.32   ], dtype=float32)
    """

    def __init__(self, mode: str = "unit", *, channels: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        if channels not in (None, 3):
            raise ValueError(f"`channels` must be None or 3. Received: channels={channels!r}")
        self.mode = mode
        self.channels = channels

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.channels == 3 and x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB to BGR
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN_RGB, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD_RGB, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        if self.channels is None:
            return tuple(input_shape)
        return (*tuple(input_shape)[:-1], self.channels)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "channels": self.channels})
        return config


def image_input(input_shape: tuple[int, int, int]) -> keras.KerasTensor:
    """Returns the model input: a batch of uint8 images named `"image"`."""
    return keras.Input(shape=tuple(input_shape), dtype="uint8", name="image")


def prepare_images(
    inputs: keras.KerasTensor,
    *,
    mode: str,
    channels: int | None = None,
    augment: keras.layers.Layer | None = None,
) -> keras.KerasTensor:
    """Applies the optional augmentation, then `ImagePreprocessing`.

    Args:
        inputs: The uint8 image input, from `image_input`.
        mode: The preprocessing mode of `ImagePreprocessing`.
        channels: Output channels (`3` for ImageNet backbones). Defaults to
            `None` (unchanged).
        augment: A Keras layer (for example `cxrdata.RandomAffine`) applied
            right at the input, on 0..255 values. Defaults to `None`.

    Returns:
        The prepared float tensor in the compute dtype of the global policy.
    """
    x = inputs
    if augment is not None:
        x = augment(x)
    return ImagePreprocessing(mode, channels=channels, name="preprocessing")(x)


def check_augment(augment) -> None:
    """Raises TypeError unless `augment` is None or a Keras layer."""
    if augment is not None and not isinstance(augment, keras.layers.Layer):
        raise TypeError(
            "`augment` must be None or a Keras layer (for example "
            f"`cxrdata.RandomAffine`). Received: augment={augment!r}"
        )


def check_input_shape(input_shape, *, min_size: int, model: str) -> tuple[int, int, int]:
    """Checks `(height, width, channels)` for a model that needs `min_size` pixels.

    Args:
        input_shape: The requested input shape.
        min_size: The smallest height and width the model can take.
        model: The model name, for the message.

    Returns:
        The shape as a tuple of three ints.

    Raises:
        ValueError: If the shape is not three positive ints, channels are not
            1 or 3, or height or width is below `min_size`.
    """
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    ):
        raise ValueError(
            "`input_shape` must be (height, width, channels) with positive ints. "
            f"Received: input_shape={input_shape!r}"
        )
    height, width, channels = input_shape
    if channels not in (1, 3):
        raise ValueError(
            "`input_shape` must have 1 (grayscale) or 3 (RGB) channels. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    if height < min_size or width < min_size:
        raise ValueError(
            f"`input_shape` must be at least {min_size}x{min_size} for {model!r}. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    return (height, width, channels)


_WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")


def check_weights(weights, *, model: str, imagenet: bool) -> str | None:
    """Checks `weights`: None, `"imagenet"` (if the model has it) or an existing file.

    Returns:
        None, `"imagenet"`, or the file path as a string.

    Raises:
        ValueError: For `"imagenet"` on a model without ImageNet weights, or
            a path with a suffix Keras cannot load.
        FileNotFoundError: If the file does not exist.
        TypeError: If `weights` is neither None, a string nor a path.
    """
    if weights is None:
        return None
    if weights == "imagenet":
        if not imagenet:
            raise ValueError(
                f"Model {model!r} has no ImageNet weights: `weights` must be None or the path of "
                "a weights file. Received: weights='imagenet'"
            )
        return "imagenet"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "`weights` must be None, 'imagenet' or the path of a weights file. "
            f"Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if not path.endswith(_WEIGHT_SUFFIXES):
        raise ValueError(
            f"`weights` must be None, 'imagenet' or a file ending in one of {_WEIGHT_SUFFIXES}. "
            f"Received: weights={path!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`weights` file not found. Received: weights={path!r}")
    return path


def check_num_classes(num_classes) -> None:
    """Raises ValueError unless `num_classes` is an int >= 2 (softmax over classes)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}")


def check_head(*, dense_units, dropout, pooling) -> None:
    """Checks the classifier head arguments shared by all models."""
    if not isinstance(dense_units, int) or isinstance(dense_units, bool) or dense_units < 0:
        raise ValueError(f"`dense_units` must be an int >= 0. Received: dense_units={dense_units!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be a float in [0, 1). Received: dropout={dropout!r}")
    if pooling not in ("max", "avg"):
        raise ValueError(f"`pooling` must be 'max' or 'avg'. Received: pooling={pooling!r}")


def classifier_head(x, *, num_classes: int, dense_units: int, dropout: float):
    """Dense (optional) -> Dropout (optional) -> Dense softmax computed in float32.

    The last layer computes in float32 under a mixed precision policy, so the
    probabilities (and the loss) keep full precision.
    """
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="fc1")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    predictions = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")
    return predictions(x)
