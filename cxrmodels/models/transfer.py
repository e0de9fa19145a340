"""Transfer learning models: `keras.applications` backbones with a small head.

`vgg19_transfer`, `densenet121` (CheXNet's architecture), `resnet50` and
`efficientnet_b0`. Each takes uint8 images (1 or 3 channels), repeats
grayscale to 3 channels and applies its backbone's own preprocessing inside the
model, so it is fed exactly like `seed_cnn`.

The backbone layers are built directly on the model's graph (not nested as a
sub-model), so `model.get_layer("block5_conv4")` works for Grad-CAM and the
model saves as a plain `.keras` file. The backbone starts frozen;
`trainable_blocks=N` unfreezes its last N blocks for fine-tuning.
"""

from __future__ import annotations

import dataclasses
import os
import re

import keras

from cxrmodels.models import inputs as _inputs
from cxrmodels.models._registry import register_model
from cxrmodels.models.saving import _count_h5_arrays, load_weights_file

# The smallest input keras.applications builds these backbones for.
MIN_INPUT_SIZE = 32
_STAGE = re.compile(r"^(?:block|conv|pool)(\d+)")
_TOP_NAMES = ("bn", "relu")  # DenseNet's final normalization and activation
# keras.applications only adds this rescaling to EfficientNet when it downloads
# the ImageNet weights itself (see `_fix_efficientnet_variance`).
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_KERAS_ZIP_CONFIG = "config.json"  # the model's architecture inside a .keras file


@dataclasses.dataclass(frozen=True)
class _Backbone:
    """One row of the backbone table: everything that differs between the transfer models."""

    name: str  # the registered model name
    application: str  # the keras.applications constructor
    preprocessing: str  # the ImagePreprocessing mode it expects
    imagenet_file: str  # the file keras.applications downloads
    num_blocks: int  # blocks that `trainable_blocks` can unfreeze
    pooling: str  # the head's default global pooling
    dense_units: int  # the head's default hidden Dense units
    summary: str  # the first lines of the model function's docstring
    # keras.applications adds Rescaling(1 / sqrt(std)) to the graph only when it loads the ImageNet
    # weights; built without it and with the std folded into the variance, every build path of the
    # model has the same layers, so its saved weights rebuild to the same outputs.
    folds_imagenet_std: bool = False


# The stem counts as block 0 of EfficientNet, the top convolution goes with block 7.
_BACKBONES = (
    _Backbone(
        "vgg19_transfer",
        "VGG19",
        "caffe",
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        5,
        "max",
        128,
        """VGG19 without its top, global max pooling, Dense 128 relu, Dense softmax.

    At (224, 224, 3) and 2 classes: 20,090,306 parameters, 65,922 of them
    trainable with the backbone frozen. Blocks are VGG's block1..block5; the
    last conv layer is `block5_conv4`. Preprocessing: caffe (BGR, mean pixel).""",
    ),
    _Backbone(
        "densenet121",
        "DenseNet121",
        "torch",
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        5,
        "avg",
        0,
        """DenseNet121 (CheXNet's architecture), global average pooling, Dense softmax.

    Blocks are conv1..conv5 (each dense block with its transition); the last
    feature map is `relu`. Preprocessing: torch (ImageNet mean and std).""",
    ),
    _Backbone(
        "resnet50",
        "ResNet50",
        "caffe",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        5,
        "avg",
        0,
        """ResNet50, global average pooling, Dense softmax.

    Blocks are the stages conv1..conv5; the last feature map is
    `conv5_block3_out`. Preprocessing: caffe (BGR, mean pixel).""",
    ),
    _Backbone(
        "efficientnet_b0",
        "EfficientNetB0",
        "raw",
        "efficientnetb0_notop.h5",
        8,
        "avg",
        0,
        """EfficientNetB0, global average pooling, Dense softmax.

    Blocks are the stem (0) and block1..block7 (with the top convolution), 8
    in all; the last feature map is `top_activation`. The backbone rescales
    0..255 inputs itself.""",
        folds_imagenet_std=True,
    ),
)
_BY_NAME = {b.name: b for b in _BACKBONES}


def _build(
    name: str,
    backbone: _Backbone,
    *,
    input_shape,
    num_classes,
    weights,
    augment,
    pooling,
    dense_units,
    dropout,
    trainable_blocks,
    freeze_batchnorm,
) -> keras.Model:
    input_shape = _inputs.check_input_shape(input_shape, min_size=MIN_INPUT_SIZE, model=name)
    _inputs.check_num_classes(num_classes)
    _inputs.check_head(dense_units=dense_units, dropout=dropout, pooling=pooling)
    _inputs.check_augment(augment)
    weights = _inputs.check_weights(weights, model=name, imagenet=True)
    if (
        not isinstance(trainable_blocks, int)
        or isinstance(trainable_blocks, bool)
        or not 0 <= trainable_blocks <= backbone.num_blocks
    ):
        raise ValueError(
            f"`trainable_blocks` must be an int from 0 (frozen backbone) to {backbone.num_blocks} "
            f"(all of {backbone.application}). Received: trainable_blocks={trainable_blocks!r}"
        )

    inputs = _inputs.image_input(input_shape)
    x = _inputs.prepare_images(inputs, mode=backbone.preprocessing, channels=3, augment=augment)
    own_layers = {id(layer) for layer in keras.Model(inputs, x).layers}
    application = getattr(keras.applications, backbone.application)
    if weights == "imagenet" and not backbone.folds_imagenet_std:
        features = _imagenet_application(application, backbone, include_top=False, input_tensor=x)
    else:
        features = application(include_top=False, weights=None, input_tensor=x)
    backbone_layers = [layer for layer in features.layers if id(layer) not in own_layers]

    if pooling == "max":
        y = keras.layers.GlobalMaxPooling2D(name="global_pool")(features.output)
    else:
        y = keras.layers.GlobalAveragePooling2D(name="global_pool")(features.output)
    outputs = _inputs.classifier_head(y, num_classes=num_classes, dense_units=dense_units, dropout=dropout)
    model = keras.Model(inputs, outputs, name=name)

    if weights == "imagenet" and backbone.folds_imagenet_std:
        standalone = _imagenet_application(
            application, backbone, include_top=False, input_shape=(*input_shape[:2], 3)
        )
        _fix_efficientnet_variance(standalone)
        _copy_backbone(standalone, backbone_layers)
    elif weights not in (None, "imagenet"):
        _load_local_weights(
            model, weights, backbone=backbone, backbone_layers=backbone_layers, input_shape=input_shape
        )
    _set_trainable(backbone_layers, trainable_blocks=trainable_blocks, freeze_batchnorm=freeze_batchnorm)
    return model


def _imagenet_application(application, backbone: _Backbone, **kwargs) -> keras.Model:
    try:
        return application(weights="imagenet", **kwargs)
    except Exception as err:  # keras' get_file wraps download errors in a bare Exception
        raise ValueError(
            f"Could not get the ImageNet weights of {backbone.application} ({err}). Without "
            f"a network, put {backbone.imagenet_file} in ~/.keras/models/, or pass its path: "
            f"weights='/path/to/{backbone.imagenet_file}'."
        ) from err


def _copy_backbone(standalone: keras.Model, backbone_layers) -> None:
    sources = [layer for layer in standalone.layers if layer.weights]
    targets = [layer for layer in backbone_layers if layer.weights]
    for source, target in zip(sources, targets, strict=True):
        store = {}
        source.save_own_variables(store)
        target.load_own_variables(store)


def _has_std_rescaling(path: str) -> bool:
    """Whether a `.keras` file holds keras.applications' per-channel ImageNet std Rescaling.

    Models built with `weights="imagenet"` before the std was folded into the
    variance have it; their weights need the same folding to give the same outputs.
    """
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(_KERAS_ZIP_CONFIG))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    layers = config.get("config", {}).get("layers", [])
    return any(
        layer.get("class_name") == "Rescaling"
        and isinstance(layer.get("config", {}).get("scale"), list)
        and len(layer["config"]["scale"]) == len(_IMAGENET_STD_RGB)
        for layer in layers
    )


def _load_local_weights(model, path, *, backbone, backbone_layers, input_shape) -> None:
    """Loads a file of the whole model or of the backbone alone, whichever it is."""
    if path.endswith(".keras") or (
        path.endswith(".weights.h5") and _count_h5_arrays(path) == len(model.weights)
    ):
        load_weights_file(model, path)
        if backbone.folds_imagenet_std and path.endswith(".keras") and _has_std_rescaling(path):
            _fix_efficientnet_variance(model)
        return
    application = getattr(keras.applications, backbone.application)
    standalone = application(include_top=False, weights=None, input_shape=(*input_shape[:2], 3))
    try:
        load_weights_file(standalone, path)
    except ValueError as err:
        raise ValueError(
            f"The weights file {path} matches neither model {model.name!r} "
            f"({len(model.weights)} weights) nor its {backbone.application} backbone "
            f"({len(standalone.weights)} weights): {err}"
        ) from err
    if backbone.folds_imagenet_std and os.path.basename(path) == backbone.imagenet_file:
        _fix_efficientnet_variance(standalone)
    _copy_backbone(standalone, backbone_layers)


def _fix_efficientnet_variance(model) -> None:
    """Folds into the variance the ImageNet std scaling keras adds to EfficientNet on download.

    The ImageNet file stores the channel standard deviations as the
    Normalization layer's variance, and keras.applications compensates with a
    Rescaling(1 / sqrt(std)) layer that it adds only when it loads that file
    itself (`weights="imagenet"`). Multiplying the variance by the std is the
    same correction; this library always builds EfficientNet without that
    layer and folds the std instead, whatever the weights, so a model and the
    same model rebuilt from its saved weights have the same layers.
    """
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    std = keras.ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=norm.adapt_variance.dtype)
    norm.adapt_variance.assign(norm.adapt_variance * std)
    norm.finalize_state()


def _stage(layer_name: str):
    """The backbone block a layer belongs to: an int, "top", or None."""
    match = _STAGE.match(layer_name)
    if match:
        return int(match.group(1))
    if layer_name.startswith("stem_"):
        return 0
    if layer_name in _TOP_NAMES or layer_name.startswith(("top_", "post_")):
        return "top"
    return None


def _set_trainable(layers, *, trainable_blocks: int, freeze_batchnorm: bool) -> None:
    stages = [_stage(layer.name) for layer in layers]
    numbered = sorted({s for s in stages if isinstance(s, int)})
    unfrozen = set(numbered[len(numbered) - trainable_blocks :]) if trainable_blocks else set()
    for layer, stage in zip(layers, stages):
        if stage == "top":
            stage = numbered[-1]
        frozen_bn = freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = stage in unfrozen and not frozen_bn


_DOC_ARGS = """
    Args:
        input_shape: `(height, width, channels)`, 1 or 3 channels, at least
            32x32. Defaults to `(299, 299, 1)`.
        num_classes: Number of classes. Defaults to `2`.
        weights: None (random), `"imagenet"` (downloaded by
            `keras.applications`, or found in `~/.keras/models`) or the path
            of a local file: the `keras.applications` ImageNet `.h5` file, a
            `.weights.h5` of the backbone, or a `.weights.h5`/`.keras` of this
            whole model. Defaults to `None`.
        augment: A Keras layer applied at the input. Defaults to `None`.
        pooling: Global pooling after the backbone, `"avg"` or `"max"`.
        dense_units: Units of a hidden Dense relu layer (0: none).
        dropout: Dropout rate before the last Dense layer (0: none).
        trainable_blocks: How many of the backbone's last blocks to unfreeze
            (0: frozen backbone, the maximum: all of it). Defaults to `0`.
        freeze_batchnorm: Keep the backbone's BatchNormalization layers
            frozen, in inference mode, also in unfrozen blocks (the usual
            practice when fine-tuning pretrained weights on small batches).
            Defaults to `True`.

    Returns:
        A `keras.Model`.
"""


def _entrypoint(backbone: _Backbone):
    """The registered model function of one backbone row (timm's generated entrypoints)."""

    def model_fn(
        *,
        input_shape: tuple[int, int, int] = (299, 299, 1),
        num_classes: int = 2,
        weights: str | os.PathLike | None = None,
        augment: keras.layers.Layer | None = None,
        pooling: str = backbone.pooling,
        dense_units: int = backbone.dense_units,
        dropout: float = 0.0,
        trainable_blocks: int = 0,
        freeze_batchnorm: bool = True,
    ) -> keras.Model:
        return _build(
            backbone.name,
            backbone,
            input_shape=input_shape,
            num_classes=num_classes,
            weights=weights,
            augment=augment,
            pooling=pooling,
            dense_units=dense_units,
            dropout=dropout,
            trainable_blocks=trainable_blocks,
            freeze_batchnorm=freeze_batchnorm,
        )

    model_fn.__name__ = model_fn.__qualname__ = backbone.name
    model_fn.__doc__ = backbone.summary + "\n" + _DOC_ARGS
    return register_model(
        model_fn, family="transfer", num_blocks=backbone.num_blocks, min_input_size=MIN_INPUT_SIZE
    )


vgg19_transfer = _entrypoint(_BY_NAME["vgg19_transfer"])
densenet121 = _entrypoint(_BY_NAME["densenet121"])
resnet50 = _entrypoint(_BY_NAME["resnet50"])
efficientnet_b0 = _entrypoint(_BY_NAME["efficientnet_b0"])
