"""The model registry: `create_model`, `list_models`, `@register_model`.

Each model is a small function registered under its name (timm and keras-hub
style). The functions take keyword-only arguments: the common ones
(`input_shape`, `num_classes`, `weights`, `augment`) and their own options.

Example:

>>> import cxrmodels
>>> cxrmodels.list_models()
['densenet121', 'efficientnet_b0', 'resnet50', 'seed_cnn', 'vgg19_transfer']
>>> model = cxrmodels.create_model("seed_cnn", input_shape=(128, 128, 1))
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from collections.abc import Callable

import keras

# Modules whose import registers the built-in models; imported on first use, so
# `cxrmodels.models._registry` works without `cxrmodels/__init__.py` importing them.
_BUILTIN_MODULES = ("cxrmodels.models.cnn", "cxrmodels.models.transfer")
_COMMON_ARGS = ("input_shape", "num_classes", "weights", "augment")
_MODELS: dict[str, Callable[..., keras.Model]] = {}
_INFO: dict[str, ModelInfo] = {}
FAMILIES = ("cnn", "transfer", "custom")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Facts about a registered model that other parts of the library act on.

    Attributes:
        name: The registered name.
        family: "cnn" (the reference CNN, whose `filters` set its blocks and
            width), "transfer" (an ImageNet backbone with a classifier head)
            or "custom" (a user's model: only its own options are known).
        num_blocks: For "transfer": blocks that `trainable_blocks` can unfreeze.
        min_input_size: The smallest height and width the model builds for,
            or None when it depends on the model's options (the CNN).
    """

    name: str
    family: str = "custom"
    num_blocks: int | None = None
    min_input_size: int | None = None


# Layers that only move, pool or rescale a feature map: Grad-CAM skips them.
_NOT_FEATURE_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.BatchNormalization,
    keras.layers.Rescaling,
    keras.layers.Normalization,
)
_CONV_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)


def register_model(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    family: str = "custom",
    num_blocks: int | None = None,
    min_input_size: int | None = None,
):
    """Registers a model function under its name (a decorator).

    The function takes keyword-only arguments `input_shape`, `num_classes`,
    `weights` and `augment`, plus its own options, and returns a `keras.Model`.

    Args:
        fn: The model function (when used as `@register_model`).
        name: The registered name. Defaults to the function's name.
        family: "cnn", "transfer" or "custom" (see `ModelInfo`). Defaults to "custom".
        num_blocks: For "transfer": blocks `trainable_blocks` can unfreeze.
        min_input_size: The smallest height and width the model takes.

    Returns:
        The function, unchanged (or a decorator, when called with `name=`).

    Raises:
        ValueError: If the name is already registered to another function.

    Example:

    >>> @register_model(name="tiny_cnn")
    ... def tiny(*, input_shape, num_classes, weights=None, augment=None):
    ...     ...
    """

    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {', '.join(FAMILIES)}. Received: family={family!r}")

    def decorator(f):
        key = name or f.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"`name` must be a non-empty string. Received: name={key!r}")
        existing = _MODELS.get(key)
        if existing is not None and existing.__qualname__ != f.__qualname__:
            raise ValueError(f"A model named {key!r} is already registered ({existing.__module__}).")
        _MODELS[key] = f
        _INFO[key] = ModelInfo(key, family, num_blocks, min_input_size)
        return f

    return decorator if fn is None else decorator(fn)


def _load_builtin_models() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def model_info(name: str) -> ModelInfo:
    """The registered facts of model `name` (see `ModelInfo`).

    Raises:
        ValueError: An unknown name, listing the registered ones.
    """
    _get(name)
    return _INFO[name]


def list_models() -> list[str]:
    """Returns the names of the registered models, sorted."""
    _load_builtin_models()
    return sorted(_MODELS)


def model_options(name: str) -> dict[str, object]:
    """Returns a model's own options (beyond the common ones) and their defaults.

    Example:

    >>> model_options("seed_cnn")["filters"]
    (32, 64, 128)
    """
    fn = _get(name)
    params = inspect.signature(fn).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON_ARGS}


def _get(name: str) -> Callable[..., keras.Model]:
    _load_builtin_models()
    if name not in _MODELS:
        raise ValueError(
            f"`name` must be one of the registered models {sorted(_MODELS)}. " f"Received: name={name!r}"
        )
    return _MODELS[name]


def create_model(
    name: str,
    *,
    input_shape: tuple[int, int, int] = (299, 299, 1),
    num_classes: int = 2,
    weights: str | os.PathLike | None = None,
    augment: keras.layers.Layer | None = None,
    equalize: keras.layers.Layer | None = None,
    **kwargs,
) -> keras.Model:
    """Builds a registered model.

    Every model takes uint8 images `[batch, height, width, channels]` with
    values 0..255 and does its own casting and scaling; it outputs float32
    class probabilities (softmax), also under a mixed precision policy.

    Args:
        name: A name from `list_models()`.
        input_shape: `(height, width, channels)` with 1 or 3 channels.
            Defaults to `(299, 299, 1)`.
        num_classes: Number of classes (>= 2). Defaults to `2`.
        weights: `None` (random initialization), `"imagenet"` (backbone
            weights from `keras.applications`; needs a network or the file in
            `~/.keras/models`) or the path of a local weights file: a
            `.weights.h5` of the whole model or of its backbone, or the
            `keras.applications` `.h5` backbone file. Defaults to `None`.
        augment: A Keras layer applied right at the input in training, for
            example `cxrdata.RandomAffine(...)`. Defaults to `None`.
        equalize: A Keras layer applied to the uint8 input before `augment`,
            in training and inference, for example
            `cxrdata.LocalEqualization(70)` for a dataset converted with
            `equalize="none"`: the equalization then runs on the device and
            travels with the saved model. Defaults to `None`.
        **kwargs: The model's own options; see `model_options(name)`.

    Returns:
        An uncompiled `keras.Model` named `name`.

    Raises:
        ValueError: For an unknown name, or an argument value the model
            cannot take (too small an input, a mismatched weights file).
        TypeError: For options the model does not accept.
        FileNotFoundError: If `weights` is a path that does not exist.

    Example:

    >>> model = create_model("densenet121", input_shape=(224, 224, 1), dropout=0.2)
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string. Received: name={name!r}")
    fn = _get(name)
    accepted = model_options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"Model {name!r} got unexpected options {unknown}. " f"Accepted options: {sorted(accepted)}."
        )
    if equalize is not None:
        if not isinstance(equalize, keras.layers.Layer):
            raise TypeError(
                "`equalize` must be None or a Keras layer (for example "
                f"`cxrdata.LocalEqualization(70)`). Received: equalize={equalize!r}"
            )
        # Equalize first, then augment: the order of the CPU path (convert, then warp).
        layers = [equalize] + ([augment] if augment is not None else [])
        augment = keras.Sequential(
            [keras.Input(shape=tuple(input_shape), dtype="uint8"), *layers], name="equalize_augment"
        )
    return fn(input_shape=input_shape, num_classes=num_classes, weights=weights, augment=augment, **kwargs)


def last_conv_layer_name(model: keras.Model) -> str:
    """Returns the name of the last convolutional feature map layer, for Grad-CAM.

    That is the last layer with a 4D output that is a convolution or the
    activation (or merge) right after it, skipping pooling, padding, dropout
    and normalization layers: `block3_conv2` for `seed_cnn`, `block5_conv4`
    for VGG19, `conv5_block3_out` for ResNet50, `relu` for DenseNet121,
    `top_activation` for EfficientNetB0. The models of this package are flat,
    so `model.get_layer(name)` finds it. In a model that nests another model,
    the search goes inside and the name is `"outer/inner"`.

    Args:
        model: A built Keras model.

    Returns:
        The layer name.

    Raises:
        ValueError: If the model has no convolution layer.
    """
    name = _last_feature_layer(model)
    if name is None:
        raise ValueError(f"Model {model.name!r} has no convolution layer with a 4D output.")
    return name


def _last_feature_layer(model) -> str | None:
    layers = list(model.layers)
    if not any(_is_conv(layer) for layer in layers):
        return None
    for layer in reversed(layers):
        if isinstance(layer, keras.Model):
            inner = _last_feature_layer(layer)
            if inner is not None:
                return f"{layer.name}/{inner}"
            continue
        if isinstance(layer, _NOT_FEATURE_LAYERS):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # not called yet, or called more than once
            continue
        if len(shape) == 4:
            return layer.name
    return None


def _is_conv(layer) -> bool:
    if isinstance(layer, keras.Model):
        return any(_is_conv(inner) for inner in layer.layers)
    return isinstance(layer, _CONV_LAYERS)
