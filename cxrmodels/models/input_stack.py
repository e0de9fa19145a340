"""The model's input stack, built in one place: resize, equalization, augmentation, cast.

Training, the tuning hypermodel and export all need the same answer to two
questions, so both live here:

- what a dataset's preprocessing allows (`check_equalization`): equalizing in
  the model needs a dataset converted with `equalize="none"`; a dataset already
  equalized at conversion would be equalized twice;
- which layers go in front of the model (`build_model`): an optional
  `Resizing` (the dataset's size to the model's), `cxrdata.LocalEqualization`
  (the radius), then the augmentation, then the model's own cast and scaling
  (`ImagePreprocessing`, inside every registered model).

Export adds, in front of a model trained on a dataset equalized at conversion,
the same equalization conversion ran (`serving_equalizer`).
"""

from __future__ import annotations

from typing import Any

import keras

from cxrdata.layers.local_equalization import LocalEqualization
from cxrmodels.models._registry import create_model


def dataset_is_equalized(preprocessing: dict[str, Any]) -> bool:
    """Whether conversion equalized the images (anything but `equalize="none"`)."""
    return preprocessing.get("equalize", "local") != "none"


def check_equalization(preprocessing: dict[str, Any], equalize_radius: int | None, *, dataset: str) -> None:
    """The one rule: equalizing in the model needs a dataset converted with `equalize="none"`.

    Raises:
        ValueError: `equalize_radius` is set and the dataset is already equalized.
    """
    if equalize_radius is not None and dataset_is_equalized(preprocessing):
        raise ValueError(
            f"The dataset {dataset!r} is already equalized (equalize={preprocessing.get('equalize')!r}); "
            f"equalizing again in the model would do it twice. Convert with --equalize none "
            f"(equalize='none') to equalize in the model. Received: equalize_radius={equalize_radius}"
        )


def input_shapes(dataset_shape, image_size, *, resize_in_model: bool):
    """`(model_shape, input_shape)`: the size the model computes at, and the size it takes.

    Raises:
        ValueError: `image_size` differs from the dataset's and `resize_in_model` is off.
    """
    height, width, channels = (int(d) for d in dataset_shape)
    data_shape = (height, width, channels)
    if image_size is None or tuple(image_size) == (height, width):
        return data_shape, data_shape
    if not resize_in_model:
        h, w = image_size
        raise ValueError(
            f"The dataset's images are {height}x{width} but `image_size` asks for a {h}x{w} model. "
            f"Convert the dataset at that size (`cxr convert SRC DATA --image-size {h}x{w}`), leave "
            f"`image_size` out to train at {height}x{width}, or pass --resize-in-model "
            f"(resize_in_model=True) to resize inside the model. Received: image_size={tuple(image_size)}"
        )
    return (*image_size, channels), data_shape


def equalization_layer(radius: int | None):
    """`cxrdata.LocalEqualization(radius)` named as every run names it (None for no radius)."""
    if not radius:
        return None
    return LocalEqualization(int(radius), name="local_equalization")


def build_model(
    name: str,
    *,
    data_shape,
    model_shape,
    num_classes: int,
    equalize_radius: int | None = None,
    augment: keras.layers.Layer | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> keras.Model:
    """A registered model with its input stack: resize, equalization, augmentation, then the model.

    Args:
        name: A registered model name.
        data_shape: `(height, width, channels)` of the images fed to the model.
        model_shape: The shape the model computes at; a `Resizing` layer goes
            first when it differs from `data_shape`.
        num_classes: Number of classes.
        equalize_radius: `LocalEqualization`'s radius, or None.
        augment: The augmentation layer (training only), or None.
        model_kwargs: The model's own options (`filters` may be a list).
    """
    front = augment
    if tuple(data_shape) != tuple(model_shape):
        # Inside the `augment` slot the resize stays in the model's own graph (no nested
        # model, so Grad-CAM finds the conv layers) and runs in inference too.
        resize = keras.layers.Resizing(*model_shape[:2], interpolation="bilinear", name="resize")
        front = keras.Sequential([resize] + ([augment] if augment is not None else []), name="input_block")
    kwargs = dict(model_kwargs or {})
    if "filters" in kwargs:
        kwargs["filters"] = tuple(kwargs["filters"])
    return create_model(
        name,
        input_shape=tuple(data_shape),
        num_classes=num_classes,
        augment=front,
        equalize=equalization_layer(equalize_radius),
        **kwargs,
    )


def serving_equalizer(preprocessing: dict[str, Any]):
    """For export: the equalization conversion applied, as a layer (None when the model does its own)."""
    if preprocessing.get("equalize") != "local":
        return None
    return equalization_layer(
        preprocessing.get("equalize_radius", preprocessing.get("radius"))
    )  # "radius": before 0.2
