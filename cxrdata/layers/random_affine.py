"""`RandomAffine`: ImageDataGenerator's geometric augmentation as one Keras 3 layer.

Rotation, zoom, shift, shear and an optional horizontal flip are composed into
one affine map per image and the batch is resampled once (bilinear), with
`keras` backend ops only: the layer runs inside the model on the accelerator,
compiles with XLA (`jit_compile=True` stays on), and works under JAX and in a
`tf.data` pipeline. Given the same parameters it reproduces
`tf_keras.preprocessing.image.apply_affine_transform` on square images. On
non-square ones tf_keras turns about a swapped centre (`(h - 1) / 2` as the
column, `(w - 1) / 2` as the row); the layer turns about the true centre.
"""

import math

import keras
import numpy as np

from cxrdata.layers._base import ImageLayer
from cxrdata.layers._image_data_generator import from_generator_kwargs
from cxrdata.utils.argument_validation import check_seed
from cxrdata.utils.argument_validation import is_number as _is_number

FILL_MODES = ("nearest", "constant", "reflect")
INTERPOLATIONS = ("bilinear", "nearest")
SHIFT_UNITS = ("fraction", "pixel")
# Points this close outside the image still count as inside for "constant":
# float32 coordinates of exact edges may land a rounding error outside.
_EDGE_TOLERANCE = 1e-4


_PAIR = "a non-negative number or a (low, high) pair"
# name: (centre of a symmetric range, bounds, what the error message expects)
_RANGES = {
    "rotation": (0.0, (-180.0, 180.0), f"{_PAIR} of degrees in [-180, 180]"),
    "zoom": (
        1.0,
        (0.01, 100.0),
        "a number in [0, 0.99] or a (low, high) pair of factors in [0.01, 100]",
    ),
    "width_shift": (0.0, (-1.0, 1.0), f"{_PAIR} in [-1, 1] (fractions)"),
    "height_shift": (0.0, (-1.0, 1.0), f"{_PAIR} in [-1, 1] (fractions)"),
    "shear": (0.0, (-89.0, 89.0), f"{_PAIR} of degrees in [-89, 89]"),
}


def _range(name, value, center, bounds, expected):
    """`r` gives `(center - r, center + r)`; a `(low, high)` pair is kept."""
    pair = isinstance(value, (tuple, list))
    items = list(value) if pair else [value]
    valid = len(items) == (2 if pair else 1) and all(map(_is_number, items))
    if valid:
        low, high = items if pair else (center - items[0], center + items[0])
        valid = (pair or items[0] >= 0) and bounds[0] <= low <= high <= bounds[1]
    if not valid:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return (float(low), float(high))


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="cxrdata")
class RandomAffine(ImageLayer):
    """Random rotation, zoom, shift, shear (and flip) in one resampling pass.

    Per image it draws a rotation angle, x and y zoom factors (independently),
    x and y shifts and a shear angle, composes them into one affine map as
    Keras' legacy `ImageDataGenerator` does and resamples the image once.
    Inputs are `[batch, height, width, channels]` or one `[height, width,
    channels]` image of any integer or float dtype; the output has the same
    shape and dtype (integers are computed in float32, rounded and clipped).
    With `training=False` the input comes back unchanged.

    Args:
        rotation: Largest rotation in degrees (`r` draws from `[-r, r]`) or a
            `(low, high)` pair. Positive turns the content counter-clockwise.
            Defaults to `0.0`.
        zoom: `z` draws zoom factors from `[1 - z, 1 + z]`, or a `(low, high)`
            pair of factors; x and y are drawn independently. As in
            `ImageDataGenerator`, a factor above 1 zooms out. Defaults to `0.0`.
        width_shift: Horizontal shift, `r` for `[-r, r]` or a `(low, high)`
            pair, in `shift_unit`s; positive moves the content right.
            Defaults to `0.0`.
        height_shift: Vertical shift as `width_shift`; positive moves the
            content down. Defaults to `0.0`.
        shear: Shear angle in degrees (`r` for `[-r, r]` or a pair), as
            `ImageDataGenerator`'s `shear_range`. Defaults to `0.0`.
        shift_unit: `"fraction"` (of the width or height) or `"pixel"`.
            Defaults to `"fraction"`.
        flip_horizontal: Also mirror half of the images left to right. Off by
            default: the heart's side matters on a chest film.
        fill_mode: Points outside the image take the nearest edge pixel
            (`"nearest"`), `fill_value` (`"constant"`) or the mirrored image
            (`"reflect"`, half-sample symmetric like SciPy's). Defaults to
            `"nearest"`.
        fill_value: Value outside the image for `"constant"`. Defaults to `0.0`.
        interpolation: `"bilinear"` or `"nearest"`. Defaults to `"bilinear"`.
        seed: Integer seed of the layer's `keras.random.SeedGenerator`, or
            `None` for a random one. Defaults to `None`.
        **kwargs: Base layer arguments such as `name`.

    Example:

    >>> layer = RandomAffine(rotation=15, zoom=0.2, width_shift=0.2,
    ...                      height_shift=0.2, shear=0.2, seed=1)
    >>> images = np.zeros((2, 64, 64, 1), "uint8")
    >>> tuple(layer(images, training=True).shape)
    (2, 64, 64, 1)
    """

    def __init__(
        self,
        *,
        rotation=0.0,
        zoom=0.0,
        width_shift=0.0,
        height_shift=0.0,
        shear=0.0,
        shift_unit="fraction",
        flip_horizontal=False,
        fill_mode="nearest",
        fill_value=0.0,
        interpolation="bilinear",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.shift_unit = _choice("shift_unit", shift_unit, SHIFT_UNITS)
        ranges = dict(
            rotation=rotation,
            zoom=zoom,
            width_shift=width_shift,
            height_shift=height_shift,
            shear=shear,
        )
        for name, value in ranges.items():
            center, bounds, expected = _RANGES[name]
            if shift_unit == "pixel" and name.endswith("_shift"):
                bounds, expected = (-math.inf, math.inf), _PAIR
            setattr(self, name, _range(name, value, center, bounds, expected))
        if not isinstance(flip_horizontal, bool):
            raise ValueError(
                "`flip_horizontal` must be a bool. " f"Received: flip_horizontal={flip_horizontal!r}"
            )
        self.flip_horizontal = flip_horizontal
        self.fill_mode = _choice("fill_mode", fill_mode, FILL_MODES)
        if not _is_number(fill_value):
            raise ValueError(f"`fill_value` must be a number. Received: fill_value={fill_value!r}")
        self.fill_value = float(fill_value)
        self.interpolation = _choice("interpolation", interpolation, INTERPOLATIONS)
        self.seed = check_seed(seed)
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        inputs = self.backend.convert_to_tensor(inputs)
        if not training:
            return inputs
        transformation = self.get_random_transformation(inputs, training=True)
        return self.transform_images(inputs, transformation)

    def _seed_generator(self):
        if hasattr(self, "_get_seed_generator"):  # one generator per backend
            return self._get_seed_generator(self.backend.name)
        return self.generator

    def get_random_transformation(self, images, training=True, seed=None):
        """Draws one set of affine parameters per image.

        Args:
            images: Batch `[B, H, W, C]` or one image `[H, W, C]`; only its
                shape is read.
            training: Returns `None` when `False`. Defaults to `True`.
            seed: Seed or `keras.random.SeedGenerator`; defaults to the
                layer's generator.

        Returns:
            A dict of float32 tensors of shape `[B]` (`B = 1` for one image),
            in `apply_affine_transform`'s terms: `theta` and `shear` in
            degrees, `tx` and `ty` in pixels (the output at `(x, y)` samples
            the input near `(x + tx, y + ty)`), zoom factors `zx` and `zy`,
            and `flip_horizontal` (1.0 or 0.0).
        """
        if not training:
            return None
        xp = self.backend
        shape = xp.core.shape(images)
        batch = shape[0] if len(shape) == 4 else 1
        height, width = shape[-3], shape[-2]
        u = xp.random.uniform((batch, 7), seed=self._seed_generator() if seed is None else seed)

        def draw(column, bounds):
            low, high = bounds
            return low + (high - low) * u[:, column]

        scale_x = scale_y = 1.0
        if self.shift_unit == "fraction":
            scale_x = xp.cast(width, "float32")
            scale_y = xp.cast(height, "float32")
        flip = u[:, 6] < 0.5 if self.flip_horizontal else u[:, 6] < 0.0
        return {
            "theta": draw(0, self.rotation),
            "tx": -draw(1, self.width_shift) * scale_x,
            "ty": -draw(2, self.height_shift) * scale_y,
            "shear": draw(3, self.shear),
            "zx": draw(4, self.zoom),
            "zy": draw(5, self.zoom),
            "flip_horizontal": xp.cast(flip, "float32"),
        }

    def transform_images(self, images, transformation, training=True):
        """Applies given per-image affine parameters to a batch.

        Args:
            images: Batch `[B, H, W, C]` or one image `[H, W, C]`.
            transformation: Dict as returned by `get_random_transformation`;
                each value a scalar or a `[B]` tensor, missing keys meaning
                no change. `theta`, `tx`, `ty`, `shear`, `zx`, `zy` mean what
                they mean to `apply_affine_transform(x, theta, tx, ty, shear,
                zx, zy, row_axis=0, col_axis=1, channel_axis=2)`; a non-zero
                `flip_horizontal` then mirrors the output left to right.
            training: Returns `images` unchanged when `False`. Defaults to
                `True`.

        Returns:
            The transformed images, with the input's shape and dtype.
        """
        xp = self.backend
        images = xp.convert_to_tensor(images)
        if not training or transformation is None:
            return images
        rank = len(images.shape)
        if rank not in (3, 4):
            raise ValueError(
                "`images` must have rank 4 [B, H, W, C] or 3 [H, W, C]. "
                f"Received: images.shape={tuple(images.shape)}"
            )
        batch = images if rank == 4 else xp.numpy.expand_dims(images, 0)
        dtype = keras.backend.standardize_dtype(images.dtype)
        outputs = _warp(
            xp,
            batch,
            transformation,
            fill_mode=self.fill_mode,
            fill_value=self.fill_value,
            interpolation=self.interpolation,
        )
        if "int" in dtype:
            info = np.iinfo(dtype)
            outputs = xp.numpy.clip(xp.numpy.round(outputs), info.min, info.max)
        outputs = xp.cast(outputs, dtype)
        return outputs if rank == 4 else xp.numpy.squeeze(outputs, 0)

    def get_config(self):
        config = {
            "rotation": self.rotation,
            "zoom": self.zoom,
            "width_shift": self.width_shift,
            "height_shift": self.height_shift,
            "shear": self.shear,
            "shift_unit": self.shift_unit,
            "flip_horizontal": self.flip_horizontal,
            "fill_mode": self.fill_mode,
            "fill_value": self.fill_value,
            "interpolation": self.interpolation,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_image_data_generator(cls, *, seed=None, **kwargs):
        """Builds the layer from legacy `ImageDataGenerator` arguments.

        Args:
            seed: Seed of the layer. Defaults to `None`.
            **kwargs: `ImageDataGenerator` arguments with their meaning there:
                `rotation_range` and `shear_range` in degrees, `zoom_range`,
                `width_shift_range` and `height_shift_range` (fractions of the
                size below 1, pixels as floats from 1), `fill_mode`, `cval`,
                `horizontal_flip` and `interpolation_order` (0 or 1). Shifts
                follow the documented meaning (width is horizontal); tf_keras
                2.16 swaps the two on non-square images, which changes
                nothing on square ones with equal ranges.

        Returns:
            A `RandomAffine`.

        Raises:
            ValueError: For an argument the layer does not cover (saying what
                to use instead) or an invalid value.

        Example:

        >>> layer = RandomAffine.from_image_data_generator(
        ...     rotation_range=15, zoom_range=0.2, width_shift_range=0.2,
        ...     height_shift_range=0.2, shear_range=0.2)
        >>> layer.zoom
        (0.8, 1.2)
        """

        return cls(seed=seed, **from_generator_kwargs(kwargs))


def augmentation(*, brightness=None, contrast=None, value_range=(0, 255), seed=None, **affine):
    """`RandomAffine`, then optionally Keras' brightness and contrast jitter.

    All three layers compile with XLA. `keras.layers.RandomBrightness` and
    `keras.layers.RandomContrast` return float32 in `value_range`.

    Args:
        brightness: `factor` of `keras.layers.RandomBrightness`, or `None` to
            leave brightness alone. Defaults to `None`.
        contrast: `factor` of `keras.layers.RandomContrast`, or `None`.
            Defaults to `None`.
        value_range: Range of the pixel values. Defaults to `(0, 255)`.
        seed: Seed of the first layer; the others use the next integers.
            Defaults to `None`.
        **affine: `RandomAffine` arguments.

    Returns:
        A `keras.Sequential` named `"augmentation"`.

    Example:

    >>> aug = augmentation(rotation=15, zoom=0.2, brightness=0.1, seed=1)
    >>> [layer.__class__.__name__ for layer in aug.layers]
    ['RandomAffine', 'RandomBrightness']
    """
    seeds = [None if seed is None else seed + i for i in range(3)]
    layers = [RandomAffine(seed=seeds[0], **affine)]
    if brightness is not None:
        layers.append(keras.layers.RandomBrightness(brightness, value_range=value_range, seed=seeds[1]))
    if contrast is not None:
        layers.append(keras.layers.RandomContrast(contrast, value_range=value_range, seed=seeds[2]))
    return keras.Sequential(layers, name="augmentation")


def _warp(xp, images, params, *, fill_mode, fill_value, interpolation):
    """Resamples `images` `[B, H, W, C]` once; returns float32."""
    shape = xp.core.shape(images)
    height, width, channels = shape[1], shape[2], shape[3]

    def param(name, default):
        value = params.get(name, default)
        return xp.numpy.reshape(xp.cast(value, "float32"), (-1, 1, 1))

    theta = param("theta", 0.0) * (math.pi / 180.0)
    shear = param("shear", 0.0) * (math.pi / 180.0)
    zx = param("zx", 1.0) * (1.0 - 2.0 * param("flip_horizontal", 0.0))
    zy = param("zy", 1.0)
    tx, ty = param("tx", 0.0), param("ty", 0.0)
    cos, sin = xp.numpy.cos(theta), xp.numpy.sin(theta)
    # input = c + R t + R S Z F (output - c), ImageDataGenerator's composition
    # (rotation @ shift @ shear @ zoom) in (x, y) about the image centre c.
    m00, m01 = cos * zx, -xp.numpy.sin(theta + shear) * zy
    m10, m11 = sin * zx, xp.numpy.cos(theta + shear) * zy
    cx = (xp.cast(width, "float32") - 1.0) / 2.0
    cy = (xp.cast(height, "float32") - 1.0) / 2.0
    xs = xp.numpy.reshape(xp.numpy.arange(width, dtype="float32"), (1, 1, -1)) - cx
    ys = xp.numpy.reshape(xp.numpy.arange(height, dtype="float32"), (1, -1, 1)) - cy
    x_in = cx + cos * tx - sin * ty + m00 * xs + m01 * ys
    y_in = cy + sin * tx + cos * ty + m10 * xs + m11 * ys

    # Gathering single values from the flat batch is ~3x faster under XLA on
    # CPU than gathering rows of `channels` values.
    flat = xp.numpy.reshape(images, (-1,))
    # Index of pixel (b, 0, 0) in the batch, from a [B] tensor (B may be dynamic).
    first = xp.numpy.cumsum(xp.numpy.ones_like(images[:, 0, 0, 0], dtype="int32"))
    first = xp.numpy.reshape((first - 1) * (height * width), (-1, 1, 1))
    channel = None
    if not (isinstance(channels, int) and channels == 1):
        channel = xp.numpy.arange(channels, dtype="int32")

    def index(coordinate, size):
        i = xp.cast(coordinate, "int32")
        if fill_mode == "reflect":
            i = xp.numpy.mod(i, 2 * size)
            return xp.numpy.where(i >= size, 2 * size - 1 - i, i)
        return xp.numpy.clip(i, 0, size - 1)

    def gather(y, x):
        pixel = xp.numpy.expand_dims(first + index(y, height) * width + index(x, width), -1)
        if channel is not None:
            pixel = pixel * channels + channel
        return xp.cast(xp.numpy.take(flat, pixel, axis=0), "float32")

    if interpolation == "nearest":
        # Half up, as SciPy's order 0: `round` takes halves to even and would drop
        # every other column at a half-pixel shift.
        outputs = gather(xp.numpy.floor(y_in + 0.5), xp.numpy.floor(x_in + 0.5))
    else:
        x0, y0 = xp.numpy.floor(x_in), xp.numpy.floor(y_in)
        fx = xp.numpy.expand_dims(x_in - x0, -1)
        fy = xp.numpy.expand_dims(y_in - y0, -1)
        top = gather(y0, x0) * (1.0 - fx) + gather(y0, x0 + 1.0) * fx
        bottom = gather(y0 + 1.0, x0) * (1.0 - fx) + gather(y0 + 1.0, x0 + 1.0) * fx
        outputs = top * (1.0 - fy) + bottom * fy
    if fill_mode == "constant":
        # SciPy's "constant": no blending with the fill value across the edge.
        w_max = xp.cast(width, "float32") - 1.0 + _EDGE_TOLERANCE
        h_max = xp.cast(height, "float32") - 1.0 + _EDGE_TOLERANCE
        inside = xp.numpy.logical_and(
            xp.numpy.logical_and(x_in >= -_EDGE_TOLERANCE, x_in <= w_max),
            xp.numpy.logical_and(y_in >= -_EDGE_TOLERANCE, y_in <= h_max),
        )
        outputs = xp.numpy.where(xp.numpy.expand_dims(inside, -1), outputs, fill_value)
    return outputs
