"""`seed_cnn`: the reference convolutional network, trained from scratch.

Three blocks of [Conv2D 3x3 relu, Conv2D 3x3 relu, BatchNormalization,
MaxPooling2D 2x2] with 32, 64 and 128 filters and "valid" padding, then
Flatten, Dense 128 relu and Dense softmax. At (299, 299, 1) and 2 classes it
has 18,129,890 parameters.
"""

from __future__ import annotations

import os

import keras

from cxrmodels.models import inputs as _inputs
from cxrmodels.models._registry import register_model
from cxrmodels.models.saving import load_weights_file


def min_input_size(num_blocks: int) -> int:
    """The smallest height and width `seed_cnn` takes with `num_blocks` blocks.

    Each block loses 4 pixels to its two "valid" 3x3 convolutions and then
    halves the size, and the last block must leave at least one pixel.
    """
    size = 1
    for _ in range(num_blocks):
        size = 2 * size + 4
    return size


@register_model(family="cnn")
def seed_cnn(
    *,
    input_shape: tuple[int, int, int] = (299, 299, 1),
    num_classes: int = 2,
    weights: str | os.PathLike | None = None,
    augment: keras.layers.Layer | None = None,
    filters: tuple[int, ...] = (32, 64, 128),
    dense_units: int = 128,
    dropout: float = 0.0,
    pooling: str = "max",
) -> keras.Model:
    """The reference CNN: conv blocks, Flatten, Dense relu, Dense softmax.

    Images are cast to the compute dtype and scaled to [0, 1] inside the model.

    Args:
        input_shape: `(height, width, channels)`, at least 36x36 with the
            default 3 blocks. Defaults to `(299, 299, 1)`.
        num_classes: Number of classes. Defaults to `2`.
        weights: None or the path of a `.weights.h5` (or `.keras`) file of
            this same model. Defaults to `None`.
        augment: A Keras layer applied at the input. Defaults to `None`.
        filters: Filters of each conv block; one block per entry. Defaults to
            `(32, 64, 128)`.
        dense_units: Units of the hidden Dense layer (0: none). Defaults to
            `128`.
        dropout: Dropout rate before the last Dense layer (0: none). Defaults
            to `0.0`.
        pooling: `"max"` or `"avg"` pooling at the end of each block.
            Defaults to `"max"`.

    Returns:
        A `keras.Model` named `"seed_cnn"`; its last conv layer is
        `f"block{len(filters)}_conv2"`.

    Example:

    >>> model = seed_cnn(input_shape=(128, 128, 1), filters=(16, 32), dropout=0.3)
    """
    if (
        not isinstance(filters, (tuple, list))
        or not filters
        or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters)
    ):
        raise ValueError(
            f"`filters` must be a non-empty tuple of positive ints. Received: filters={filters!r}"
        )
    input_shape = _inputs.check_input_shape(
        input_shape, min_size=min_input_size(len(filters)), model="seed_cnn"
    )
    _inputs.check_num_classes(num_classes)
    _inputs.check_head(dense_units=dense_units, dropout=dropout, pooling=pooling)
    _inputs.check_augment(augment)
    weights = _inputs.check_weights(weights, model="seed_cnn", imagenet=False)

    inputs = _inputs.image_input(input_shape)
    x = _inputs.prepare_images(inputs, mode="unit", augment=augment)
    pool = keras.layers.MaxPooling2D if pooling == "max" else keras.layers.AveragePooling2D
    for i, n in enumerate(filters, start=1):
        x = keras.layers.Conv2D(n, 3, activation="relu", padding="valid", name=f"block{i}_conv1")(x)
        x = keras.layers.Conv2D(n, 3, activation="relu", padding="valid", name=f"block{i}_conv2")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = pool(2, name=f"block{i}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = _inputs.classifier_head(x, num_classes=num_classes, dense_units=dense_units, dropout=dropout)
    model = keras.Model(inputs, outputs, name="seed_cnn")
    if weights is not None:
        load_weights_file(model, weights)
    return model
