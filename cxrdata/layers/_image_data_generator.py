"""Legacy `ImageDataGenerator` arguments mapped onto `RandomAffine`'s.

Kept apart from the layer: this is the migration table in code, with the
reason and the replacement for every argument the layer does not cover.
"""

from cxrdata.utils.argument_validation import is_number as _is_number

_GENERATOR_DEFAULTS = {
    "rotation_range": 0,
    "width_shift_range": 0.0,
    "height_shift_range": 0.0,
    "shear_range": 0.0,
    "zoom_range": 0.0,
    "fill_mode": "nearest",
    "cval": 0.0,
    "horizontal_flip": False,
    "interpolation_order": 1,
}
_NORMALIZATION = "normalization happens in the model"
# Arguments the layer does not cover, with their default and what to use.
_GENERATOR_UNSUPPORTED = {
    "featurewise_center": (False, _NORMALIZATION),
    "samplewise_center": (False, _NORMALIZATION),
    "featurewise_std_normalization": (False, _NORMALIZATION),
    "samplewise_std_normalization": (False, _NORMALIZATION),
    "zca_whitening": (False, _NORMALIZATION),
    "zca_epsilon": (1e-6, _NORMALIZATION),
    "channel_shift_range": (0.0, "use keras.layers.RandomBrightness"),
    "brightness_range": (None, "use keras.layers.RandomBrightness"),
    "vertical_flip": (False, "a chest film is never upside down; leave it out"),
    "rescale": (None, "the model casts and scales uint8 itself"),
    "preprocessing_function": (
        None,
        "put it in the model as a layer or map it over the tf.data pipeline",
    ),
    "data_format": (None, "the layer takes channels-last images [B, H, W, C]"),
    "validation_split": (0.0, "split the data with `cxr convert --splits`"),
    "dtype": (None, "the layer keeps its input's dtype"),
}


def _generator_shift(name, value):
    """ImageDataGenerator's shift: `(range, unit)` or `None` for no shift."""
    if _is_number(value) and value == 0:
        return None
    if not _is_number(value) or isinstance(value, int) or value < 0:
        raise ValueError(
            f"`{name}` must be a positive float: below 1 a fraction of the "
            "size, from 1 pixels. Int and list forms draw whole pixels: pass "
            f"a float instead (10.0 for up to 10 pixels). Received: {name}={value!r}"
        )
    return (float(value), "fraction" if value < 1 else "pixel")


def from_generator_kwargs(kwargs):
    """Maps ImageDataGenerator arguments to `RandomAffine` arguments."""
    for name, value in kwargs.items():
        if name in _GENERATOR_UNSUPPORTED:
            default, instead = _GENERATOR_UNSUPPORTED[name]
            if not (value is default or (_is_number(value) and value == default)):
                raise ValueError(
                    f"`{name}` is not supported by RandomAffine: {instead}. " f"Received: {name}={value!r}"
                )
        elif name not in _GENERATOR_DEFAULTS:
            raise ValueError(
                f"Unknown ImageDataGenerator argument `{name}`. Expected one of "
                f"{sorted(_GENERATOR_DEFAULTS)}. Received: {name}={value!r}"
            )
    args = {**_GENERATOR_DEFAULTS, **kwargs}
    shifts = {
        "width_shift": _generator_shift("width_shift_range", args["width_shift_range"]),
        "height_shift": _generator_shift("height_shift_range", args["height_shift_range"]),
    }
    units = {shift[1] for shift in shifts.values() if shift is not None}
    if len(units) > 1:
        raise ValueError(
            "`width_shift_range` and `height_shift_range` must both be "
            "fractions (below 1) or both pixels (from 1). Received: "
            f"width_shift_range={args['width_shift_range']!r}, "
            f"height_shift_range={args['height_shift_range']!r}"
        )
    if args["fill_mode"] == "wrap":
        raise ValueError(
            "`fill_mode='wrap'` is not supported by RandomAffine: use "
            "'reflect', 'nearest' or 'constant'. Received: fill_mode='wrap'"
        )
    order = args["interpolation_order"]
    if order not in (0, 1):
        raise ValueError(
            "`interpolation_order` must be 0 (nearest) or 1 (bilinear). "
            f"Received: interpolation_order={order!r}"
        )
    return {
        "rotation": args["rotation_range"],
        "zoom": args["zoom_range"],
        "width_shift": shifts["width_shift"][0] if shifts["width_shift"] else 0.0,
        "height_shift": shifts["height_shift"][0] if shifts["height_shift"] else 0.0,
        "shear": args["shear_range"],
        "shift_unit": units.pop() if units else "fraction",
        "flip_horizontal": bool(args["horizontal_flip"]),
        "fill_mode": args["fill_mode"],
        "fill_value": args["cval"],
        "interpolation": "nearest" if order == 0 else "bilinear",
    }
