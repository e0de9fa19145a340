"""Options of `cxrmodels.train` (and those `cxrmodels.search` shares), checked before any I/O."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any

from cxrdata.utils.argument_validation import check_choice, check_int, check_seed, is_int

AUGMENT_MODES = ("gpu", "cpu", "none")
BALANCE_MODES = ("none", "oversample", "class-weight")
VERBOSE_MODES = ("auto", 0, 1, 2)
# Legacy `ImageDataGenerator` arguments of the reference training, scaled by `augment_strength`.
REFERENCE_AUGMENTATION = {
    "rotation_range": 15.0,
    "zoom_range": 0.2,
    "width_shift_range": 0.2,
    "height_shift_range": 0.2,
    "shear_range": 0.2,
}
_MAX_STRENGTH = 4.0  # shifts stay below 1, a fraction of the size, as in ImageDataGenerator
_POLICIES = {
    "float16": "mixed_float16",
    "mixed_float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
}
_RESERVED = ("input_shape", "num_classes", "augment")


_is_int = is_int


def _positive_int(name: str, value, minimum: int = 1) -> int:
    return check_int(name, value, minimum=minimum)


@dataclasses.dataclass(frozen=True)
class SharedOptions:
    """The options `train`, `search` and `CXRHyperModel` share, checked by one set of rules.

    Build it with `SharedOptions.check(...)`, which raises TypeError for a
    value of the wrong type and ValueError for one out of range.
    """

    model: str
    batch_size: int
    seed: int
    policy: str | None  # the Keras dtype policy of `mixed_precision` (None: float32)
    augment: str
    augment_strength: float = 1.0
    patience: int | None = None
    verbose: str | int = "auto"

    @classmethod
    def check(
        cls,
        *,
        model,
        batch_size,
        seed,
        mixed_precision=False,
        augment="gpu",
        augment_strength=1.0,
        patience=None,
        verbose="auto",
    ) -> SharedOptions:
        if not isinstance(model, str) or not model:
            raise TypeError(f"`model` must be a registered model name (a string). Received: model={model!r}")
        check_choice("augment", augment, AUGMENT_MODES)
        if (
            isinstance(augment_strength, bool)
            or not isinstance(augment_strength, numbers.Real)
            or not 0 <= augment_strength <= _MAX_STRENGTH
        ):
            raise ValueError(
                f"`augment_strength` must be a number from 0 to {_MAX_STRENGTH:g}. "
                f"Received: augment_strength={augment_strength!r}"
            )
        if verbose not in VERBOSE_MODES or isinstance(verbose, bool):
            raise ValueError(f"`verbose` must be one of {VERBOSE_MODES}. Received: verbose={verbose!r}")
        return cls(
            model=model,
            batch_size=check_int("batch_size", batch_size, minimum=1),
            seed=check_seed(seed, allow_none=False),
            policy=policy_name(mixed_precision),
            augment=augment,
            augment_strength=float(augment_strength),
            patience=check_int("patience", patience, minimum=0, allow_none=True),
            verbose=verbose,
        )


def policy_name(mixed_precision) -> str | None:
    """The Keras dtype policy for `mixed_precision` (None: float32)."""
    if mixed_precision is None or mixed_precision is False:
        return None
    if mixed_precision is True:
        return "mixed_float16"
    if isinstance(mixed_precision, str) and mixed_precision in _POLICIES:
        return _POLICIES[mixed_precision]
    raise ValueError(
        "`mixed_precision` must be False, True, 'float16' or 'bfloat16'. "
        f"Received: mixed_precision={mixed_precision!r}"
    )


def _image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if _is_int(image_size) else image_size
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(_is_int(s) and s > 0 for s in size):
        raise ValueError(
            "`image_size` must be None, a positive int or a (height, width) pair. "
            f"Received: image_size={image_size!r}"
        )
    return (int(size[0]), int(size[1]))


def _strategy(strategy) -> tuple[Any, str | None]:
    """The strategy to use and its name for `config.json`."""
    if strategy is None:
        return None, None
    if isinstance(strategy, str):
        if strategy in ("mirrored", "multi-worker"):
            return strategy, strategy
        raise ValueError(
            f"`strategy` must be None, 'mirrored', 'multi-worker' or a tf.distribute.Strategy. "
            f"Received: strategy={strategy!r}"
        )
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError(
            "A MultiWorkerMirroredStrategy cannot drive `Model.fit` of Keras 3 in "
            "TensorFlow 2.16: pass strategy='multi-worker' (a custom loop under it). "
            f"Received: strategy={strategy!r}"
        )
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            f"`strategy` must be None, 'mirrored', 'multi-worker' or a tf.distribute.Strategy. "
            f"Received: strategy={strategy!r} of type {type(strategy).__name__}"
        )
    return strategy, type(strategy).__name__


def _model_kwargs(model_kwargs) -> dict[str, Any]:
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise TypeError(
            f"`model_kwargs` must be a dict of option names to values, or None. "
            f"Received: model_kwargs={model_kwargs!r}"
        )
    reserved = sorted(set(model_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"`model_kwargs` must not set {reserved}: train sets them (use `image_size` "
            f"and `augment`). Received: model_kwargs={model_kwargs!r}"
        )
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in model_kwargs.items()}
    if "weights" in kwargs and kwargs["weights"] is not None and not isinstance(kwargs["weights"], str):
        kwargs["weights"] = str(kwargs["weights"])  # a path-like, kept as text in config.json
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise TypeError(
            f"`model_kwargs` must hold plain values (numbers, strings, lists), as they "
            f"are saved in config.json: {e}. Received: model_kwargs={model_kwargs!r}"
        ) from None
    return kwargs


def check_train_args(
    *,
    model,
    out,
    epochs,
    batch_size,
    learning_rate,
    mixed_precision,
    augment,
    balance,
    image_size,
    resize_in_model,
    seed,
    strategy,
    equalize_in_model=None,
    model_kwargs,
    augment_strength,
    patience,
    verbose,
) -> dict[str, Any]:
    """Checks `train`'s arguments and returns them normalized (see `train` for their meaning)."""
    shared = SharedOptions.check(
        model=model,
        batch_size=batch_size,
        seed=seed,
        mixed_precision=mixed_precision,
        augment=augment,
        augment_strength=augment_strength,
        patience=patience,
        verbose=verbose,
    )
    if out is None or (not isinstance(out, str) and not hasattr(out, "__fspath__")) or not str(out):
        raise ValueError(f"`out` must be the path of the run folder. Received: out={out!r}")
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not math.isfinite(learning_rate)
        or learning_rate <= 0
    ):
        raise ValueError(
            f"`learning_rate` must be a positive number. Received: learning_rate={learning_rate!r}"
        )
    if balance is None or balance == "class_weight":
        balance = "none" if balance is None else "class-weight"
    if balance not in BALANCE_MODES:
        check_choice("balance", balance, BALANCE_MODES)
    if not isinstance(resize_in_model, bool):
        raise TypeError(f"`resize_in_model` must be a bool. Received: resize_in_model={resize_in_model!r}")
    equalize_in_model = check_int("equalize_in_model", equalize_in_model, minimum=1, allow_none=True)
    if equalize_in_model is not None and augment == "cpu":
        raise ValueError(
            "`equalize_in_model` equalizes inside the model, so augmentation must run there too, after "
            "it: pass augment='gpu' (--augment gpu) or 'none'. Received: augment='cpu'"
        )
    policy = shared.policy
    strategy_obj, strategy_name = _strategy(strategy)
    return {
        "model": model,
        "epochs": _positive_int("epochs", epochs),
        "batch_size": shared.batch_size,
        "learning_rate": float(learning_rate),
        "mixed_precision": policy,
        "policy": policy,
        "augment": augment,
        "augment_strength": float(augment_strength),
        "balance": balance,
        "image_size": _image_size(image_size),
        "resize_in_model": resize_in_model,
        "equalize_in_model": equalize_in_model,
        "seed": shared.seed,
        "strategy": strategy_name,
        "strategy_obj": strategy_obj,
        "model_kwargs": _model_kwargs(model_kwargs),
        "patience": check_int("patience", patience, minimum=0),
        "verbose": verbose,
    }


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


def augmentation_layer(opts: dict[str, Any]):
    """The `cxrdata.RandomAffine` for `opts` (None for augment "none" or strength 0)."""
    strength = opts["augment_strength"]
    if opts["augment"] == "none" or strength == 0:
        return None
    from cxrdata.layers.random_affine import RandomAffine

    args = {k: v * strength for k, v in REFERENCE_AUGMENTATION.items()}
    return RandomAffine.from_image_data_generator(seed=opts["seed"], **args)
