"""The search space of `CXRHyperModel`: each hyperparameter, its reference value, its range.

Every hyperparameter's default is the reference value (the hand-tuned model
of the study), so a search's first trial is the reference model. A user's
`keras_tuner.HyperParameters` (or a plain dict) fixes or narrows entries; they
are checked here, before any work.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras_tuner.engine import hyperparameters as hpt

from cxrdata.utils.argument_validation import is_int
from cxrmodels.models import model_info
from cxrmodels.models.cnn import min_input_size
from cxrmodels.training.config import MAX_AUGMENT_STRENGTH

REFERENCE_LEARNING_RATE = 1e-3  # Adam's default, as in the reference training
REFERENCE_AUGMENT_STRENGTH = 1.0  # the ImageDataGenerator ranges of the reference training
REFERENCE_EQUALIZE_RADIUS = 70  # skimage.filters.rank.equalize(image, disk(70)) of the study
EQUALIZE_RADII = (0, 35, 70, 100)  # 0: no equalization
# Every hyperparameter, in the column order of trials.csv.
ORDER = (
    "learning_rate",
    "base_filters",
    "blocks",
    "dense_units",
    "dropout",
    "pooling",
    "augment_strength",
    "trainable_blocks",
    "equalize_radius",
)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class _Param:
    """One hyperparameter: its value type, what values it may take, and its default range."""

    name: str
    kind: str  # "float", "int" or "str"
    requirement: str  # the allowed values, in words
    valid: Callable[[Any], bool]
    declare: Callable[..., Any]  # (hp, reference) -> value: the default search range
    description: str


def _choices(base, reference):
    return sorted(set(base) | {reference})


def _params(num_blocks: int | None, max_blocks: int) -> dict[str, _Param]:
    """Every hyperparameter, in column order; `num_blocks`: a transfer model's backbone blocks."""
    by_name = {p.name: p for p in (*_training_params(), *_model_params(num_blocks, max_blocks))}
    return {name: by_name[name] for name in ORDER}


def _training_params() -> tuple[_Param, ...]:
    return (
        _Param(
            "learning_rate",
            "float",
            "a positive number",
            lambda v: _is_real(v) and v > 0,
            lambda hp, ref: hp.Float("learning_rate", 1e-5, 1e-2, sampling="log", default=ref),
            "Adam's learning rate; log scale from 1e-5 to 1e-2",
        ),
        _Param(
            "augment_strength",
            "float",
            f"a number from 0 to {MAX_AUGMENT_STRENGTH:g}",
            lambda v: _is_real(v) and 0 <= v <= MAX_AUGMENT_STRENGTH,
            lambda hp, ref: hp.Float("augment_strength", 0.0, 2.0, step=0.5, default=ref),
            "scale on RandomAffine's reference ranges (0: no augmentation)",
        ),
        _Param(
            "equalize_radius",
            "int",
            "an int >= 0 (a LocalEqualization disk radius; 0: none)",
            lambda v: is_int(v) and v >= 0,
            lambda hp, ref: hp.Choice("equalize_radius", _choices(EQUALIZE_RADII, ref), default=ref),
            "radius of cxrdata.LocalEqualization at the model's input (0: none); "
            "only for a dataset converted with --equalize none",
        ),
    )


def _model_params(num_blocks: int | None, max_blocks: int) -> tuple[_Param, ...]:
    dense_choices = (32, 64, 128, 256, 512) if num_blocks is None else (0, 64, 128, 256)
    return (
        _Param(
            "base_filters",
            "int",
            "an int >= 1",
            lambda v: is_int(v) and v >= 1,
            lambda hp, ref: hp.Choice("base_filters", _choices((8, 16, 32, 64), ref), default=ref),
            "filters of the first conv block; each later block doubles them",
        ),
        _Param(
            "blocks",
            "int",
            f"an int from 1 to {max_blocks} (the input size allows no more)",
            lambda v: is_int(v) and 1 <= v <= max_blocks,
            lambda hp, ref: hp.Int("blocks", 1, max_blocks, default=ref),
            "conv blocks (not tuned unless given)",
        ),
        _Param(
            "dense_units",
            "int",
            "an int >= 0",
            lambda v: is_int(v) and v >= 0,
            lambda hp, ref: hp.Choice("dense_units", _choices(dense_choices, ref), default=ref),
            "units of the hidden Dense layer (0: none)",
        ),
        _Param(
            "dropout",
            "float",
            "a number in [0, 1)",
            lambda v: _is_real(v) and 0 <= v < 1,
            lambda hp, ref: hp.Float("dropout", 0.0, 0.5, step=0.1, default=ref),
            "dropout before the last Dense layer",
        ),
        _Param(
            "pooling",
            "str",
            "'max' or 'avg'",
            lambda v: v in ("max", "avg"),
            lambda hp, ref: hp.Choice("pooling", ["max", "avg"], default=ref),
            "pooling of each conv block",
        ),
        _Param(
            "trainable_blocks",
            "int",
            "an int >= 0" if num_blocks is None else f"an int from 0 to {num_blocks}",
            lambda v: is_int(v) and 0 <= v <= (num_blocks if num_blocks is not None else 10**6),
            lambda hp, ref: hp.Int("trainable_blocks", 0, num_blocks, default=ref),
            "backbone blocks unfrozen for fine-tuning",
        ),
    )


@dataclass(frozen=True)
class Space:
    """The hyperparameters of one model: which apply, which are tuned by default, reference values."""

    model: str
    names: tuple[str, ...]  # every hyperparameter that applies, in column order
    tuned: tuple[str, ...]  # those searched when the user gives no narrower range
    reference: dict[str, Any]
    params: dict[str, _Param]


def space_for(model: str, options: dict[str, Any], input_shape, *, dataset_equalized: bool = True) -> Space:
    """The search space of `model`, whose own options and defaults are `options`.

    On a dataset converted with `equalize="none"` (`dataset_equalized=False`)
    the radius of the equalization inside the model, `equalize_radius`, is
    searched too (reference 70, as the study; 0 turns it off).
    """

    info = model_info(model)
    size = min(input_shape[0], input_shape[1])
    max_blocks = 1
    while min_input_size(max_blocks + 1) <= size:
        max_blocks += 1
    reference: dict[str, Any] = {"learning_rate": REFERENCE_LEARNING_RATE}
    if info.family == "cnn":
        filters = tuple(options["filters"])
        reference.update(base_filters=filters[0], blocks=len(filters))
        tuned = ("learning_rate", "base_filters", "dense_units", "dropout", "pooling", "augment_strength")
    elif "trainable_blocks" in options:
        tuned = ("learning_rate", "dense_units", "dropout", "trainable_blocks")
    else:  # another registered model: what it accepts of the head options
        tuned = ("learning_rate",) + tuple(n for n in ("dense_units", "dropout") if n in options)
    for name in ("dense_units", "dropout", "pooling", "trainable_blocks"):
        if name in options:
            reference[name] = options[name]
    reference["augment_strength"] = REFERENCE_AUGMENT_STRENGTH
    if not dataset_equalized:
        reference["equalize_radius"] = REFERENCE_EQUALIZE_RADIUS
        tuned = tuned + ("equalize_radius",)
    params = _params(info.num_blocks if info.family == "transfer" else None, max_blocks)
    if info.family != "transfer" and "trainable_blocks" in options:
        tuned = tuple(n for n in tuned if n != "trainable_blocks")  # its block count is unknown here
    names = tuple(n for n in params if n in reference)
    return Space(model=model, names=names, tuned=tuned, reference=reference, params=params)


def check_input_size(space: Space, overrides: hpt.HyperParameters, input_shape) -> None:
    """Raises ValueError when the model cannot take `input_shape` with its reference block count."""

    info = model_info(space.model)
    if info.family == "cnn" and "blocks" not in {e.name for e in overrides.space}:
        if not space.params["blocks"].valid(space.reference["blocks"]):
            need = min_input_size(space.reference["blocks"])
            raise ValueError(
                f"`input_shape` must be at least {need}x{need} for {space.model}'s {space.reference['blocks']} "
                f"blocks, or fix fewer blocks: hyperparameters={{'blocks': 2}} "
                f"(hp.Fixed('blocks', 2)). Received: input_shape={tuple(input_shape)}"
            )
    need = info.min_input_size
    if need is not None and min(input_shape[:2]) < need:
        raise ValueError(
            f"`input_shape` must be at least {need}x{need} for "
            f"{space.model!r}. Received: input_shape={tuple(input_shape)}"
        )


def normalize_overrides(hyperparameters, space: Space) -> hpt.HyperParameters:
    """Checks a user's HyperParameters (or `{name: value | (low, high) | [choices]}`); returns a copy.

    Raises:
        ValueError: An unknown name, a value out of range, min > max.
        TypeError: Neither None, a dict nor a `keras_tuner.HyperParameters`.
    """
    out = hpt.HyperParameters()
    if hyperparameters is None:
        return out
    if isinstance(hyperparameters, dict):
        for name, spec in hyperparameters.items():
            out.merge([_from_dict_entry(name, spec, space)])
        return out
    if not isinstance(hyperparameters, hpt.HyperParameters):
        raise TypeError(
            "`hyperparameters` must be None, a keras_tuner.HyperParameters or a dict "
            "{name: value, (low, high) or [choices]}. "
            f"Received: hyperparameters={hyperparameters!r}"
        )
    for entry in hyperparameters.space:
        _check_name(entry.name, space)
        _check_entry(entry, space.params[entry.name])
        out.merge([entry])
    return out


def _check_name(name, space: Space) -> None:
    if name == "equalize_radius" and name not in space.names:
        raise ValueError(
            "`hyperparameters` entry 'equalize_radius' applies only to a dataset converted with "
            "`--equalize none` (equalize='none'): this dataset is already equalized, and equalizing "
            "again in the model would do it twice. Convert with --equalize none to search the radius. "
            "Received: 'equalize_radius'"
        )
    if name not in space.names:
        raise ValueError(
            f"`hyperparameters` names must be among those of {space.model!r}: {', '.join(space.names)}. "
            f"Received: {name!r}"
        )


def _describe(entry) -> str:
    config = {k: v for k, v in entry.get_config().items() if k != "conditions"}
    return f"{type(entry).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"


def _check_entry(entry, param: _Param) -> None:
    def bad(values, why=""):
        raise ValueError(
            f"`hyperparameters` entry {param.name!r} must be {param.requirement}"
            f"{why}. Received: {_describe(entry)} ({', '.join(map(repr, values))})"
        )

    if isinstance(entry, hpt.Boolean):
        bad([], ": a Boolean does not apply")
    if isinstance(entry, hpt.Fixed):
        values = [entry.value]
    elif isinstance(entry, hpt.Choice):
        values = list(entry.values)
    elif isinstance(entry, (hpt.Int, hpt.Float)):
        if param.kind == "str":
            bad([], ": use hp.Choice or hp.Fixed")
        if param.kind == "int" and isinstance(entry, hpt.Float):
            bad([], ": use hp.Int, hp.Choice or hp.Fixed (whole numbers)")
        if entry.min_value > entry.max_value:
            bad([], ", with min_value <= max_value")
        values = [entry.min_value, entry.max_value]
    else:
        bad([], f": {type(entry).__name__} is not supported")
    invalid = [v for v in values if not param.valid(v)]
    if invalid:
        bad(invalid)


def _keras_tuner_entry(name: str, spec: dict, param: _Param):
    """A keras-tuner entry as `keras_tuner` serializes it (how `SearchConfig` keeps a HyperParameters)."""
    try:
        entry = hpt.deserialize(spec)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"`hyperparameters[{name!r}]` must be a keras-tuner entry ({{'class_name': 'Float', 'config': "
            f"{{...}}}}): {err}. Received: {spec!r}"
        ) from None
    if not isinstance(entry, hpt.HyperParameter) or entry.name != name:
        raise ValueError(
            f"`hyperparameters[{name!r}]` must be a keras-tuner entry named {name!r}. Received: {spec!r}"
        )
    _check_entry(entry, param)
    return entry


def _from_dict_entry(name, spec, space: Space):
    _check_name(name, space)
    param, ref = space.params[name], space.reference[name]
    if isinstance(spec, dict) and set(spec) == {"class_name", "config"}:
        return _keras_tuner_entry(name, spec, param)
    if isinstance(spec, dict) and set(spec) == {"min", "max"}:  # a range, as SearchConfig keeps it
        spec = (spec["min"], spec["max"])
    if isinstance(spec, tuple):
        if param.kind == "str":
            raise ValueError(
                f"`hyperparameters[{name!r}]` must be a value or a list of choices, "
                f"not a range. Received: {spec!r}"
            )
        if len(spec) != 2 or not all(_is_real(v) for v in spec):
            raise ValueError(
                f"`hyperparameters[{name!r}]` as a tuple must be (low, high). " f"Received: {spec!r}"
            )
        low, high = spec
        if low > high:
            raise ValueError(f"`hyperparameters[{name!r}]` must have low <= high. Received: {spec!r}")
        if not all(param.valid(v) for v in spec):
            raise ValueError(
                f"`hyperparameters[{name!r}]` bounds must each be {param.requirement}. " f"Received: {spec!r}"
            )
        default = ref if low <= ref <= high else None
        if param.kind == "int":
            return hpt.Int(name, int(low), int(high), default=default)
        sampling = "log" if name == "learning_rate" and low < high else "linear"
        return hpt.Float(name, float(low), float(high), sampling=sampling, default=default)
    if isinstance(spec, list):
        if not spec or not all(param.valid(v) for v in spec):
            raise ValueError(
                f"`hyperparameters[{name!r}]` choices must each be {param.requirement}. "
                f"Received: {spec!r}"
            )
        values = [float(v) for v in spec] if param.kind == "float" else list(spec)
        return hpt.Choice(name, values, default=ref if ref in values else None)
    if not param.valid(spec):
        raise ValueError(f"`hyperparameters[{name!r}]` must be {param.requirement}. Received: {spec!r}")
    return hpt.Fixed(name, float(spec) if param.kind == "float" else spec)
