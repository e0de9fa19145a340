"""`LocalEqualization`: scikit-image's rank `equalize` with a disk, as a Keras 3 layer.

The study equalizes every image with `skimage.filters.rank.equalize(image,
disk(70))`. The conversion (`cxrdata.convert`) keeps calling scikit-image on the
CPU; this layer gives the same bytes on the accelerator and inside a model,
with `keras` backend ops only: it compiles with XLA (`jit_compile=True` stays
on) and runs under JAX and in a `tf.data` pipeline.

What scikit-image computes (`skimage/filters/rank/generic_cy.pyx`,
`_kernel_equalize`, with `n_bins = 256` for uint8 images): for the pixel `p`
of gray level `g`, `out = <uint8>((n_bins - 1) * sum / pop)` where `pop` (a
double) counts the footprint's pixels that lie inside the image and `sum`
(an integer) counts those of level `<= g`. The division is a float one and the
cast truncates, so `out = floor(255 * sum / pop)`: a correctly rounded double
quotient `a / b` of integers below 2**53 never crosses an integer, hence the
exact integer `(255 * sum) // pop` here. `disk(r)` is `x**2 + y**2 <= r**2` on
the `(2r+1) x (2r+1)` grid, that is row `dy` spans `|dx| <= isqrt(r*r - dy*dy)`.

How: per image, a table of prefix counts `table[y, level, x]` (pixels of row
`y` before column `x` with a gray level `<= level`). A disk row `dy` then adds
`table[y+dy, g, x+w+1] - table[y+dy, g, x-w]` (columns clipped to the image,
rows outside it skipped) with `w` its half-width: two gathers per disk row and
pixel, exact int32 arithmetic throughout.
"""

import math

import keras
import numpy as np

from cxrdata.layers._base import ImageLayer
from cxrdata.utils.argument_validation import check_int

_LEVELS = 256  # scikit-image's `n_bins` for uint8 images
# Disk rows added per loop step: fewer, larger gathers are faster on CPU
# (measured 0.85 s per 299x299 image at 8 against 1.8 s at 1, XLA, 2 cores).
_ROWS_PER_STEP = 8
# Flat table indices are int32: height * 256 * (width + 1) must stay below
# 2**31. Under that bound `255 * pop` fits in int32 too.
_MAX_TABLE_SIZE = 2**31 - 1


def disk_half_widths(radius):
    """Half-widths of the rows of `skimage.morphology.disk(radius)`.

    Args:
        radius: Disk radius, an integer >= 0.

    Returns:
        A list of `2 * radius + 1` ints; entry `radius + dy` is the largest
        `w` with `w**2 + dy**2 <= radius**2`.
    """
    return [math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)]


@keras.saving.register_keras_serializable(package="cxrdata")
class LocalEqualization(ImageLayer):
    """Local histogram equalization over a disk, bit-identical to scikit-image.

    Each pixel becomes `floor(255 * n / m)`, where `m` counts the pixels of
    the disk of radius `radius` around it that lie inside the image and `n`
    those among them whose gray level is at most the pixel's: exactly
    `skimage.filters.rank.equalize(image, skimage.morphology.disk(radius))`
    for every uint8 image, of any size and any radius.

    Inputs are `[batch, height, width, 1]` or one `[height, width, 1]` image.
    uint8 in gives uint8 out. Other integer and float dtypes are accepted
    when they hold gray levels 0 to 255 (floats are rounded, values outside
    are clipped); the output keeps the input's dtype and holds whole numbers
    0 to 255. The layer has no weights and no randomness, and does the same
    with `training=True` or `False`.

    Memory: images are equalized one after another (`keras.ops.map`), each
    with an int32 table of 256 counts per pixel, about 1 KiB per pixel: 92 MB
    for 299x299, 269 MB for 512x512. Building it takes about as much again
    for a moment, so the peak is about 2 KiB per pixel of one image (measured
    RSS growth, TF graph on a CPU: 169 MB at 299x299, 490 MB at 512x512).
    Under XLA and JAX the images run strictly one after another; a TF graph
    without XLA (`tf.map_fn`) may run a few at once, so its peak can reach a
    few times that (up to 1.8 GB seen at 512x512, batch 2). `height * 256 * (width + 1)` must stay below 2**31
    (images up to about 2,890 x 2,890).

    Speed: two gathers per pixel and disk row (282 per pixel for radius 70).
    That suits a GPU; on a CPU scikit-image's sliding histogram is much
    faster (see `benchmarks/equalize_speed.py`) and the conversion keeps it.

    Args:
        radius: Radius of the disk in pixels, an integer >= 1. Defaults to
            `70`, the study's `disk(70)`.
        **kwargs: Base layer arguments such as `name`.

    Raises:
        TypeError: If `radius` is not an integer (bools included).
        ValueError: If `radius` is below 1; when called, if the input is not
            `[B, H, W, 1]` or `[H, W, 1]` or too large.

    Example:

    >>> layer = LocalEqualization(radius=5)
    >>> images = np.arange(64, dtype="uint8").reshape(1, 8, 8, 1)
    >>> out = layer(images)
    >>> str(out.dtype), tuple(out.shape)
    ('uint8', (1, 8, 8, 1))
    """

    def __init__(self, radius=70, **kwargs):
        super().__init__(**kwargs)
        self.radius = check_int("radius", radius, minimum=1)

    def call(self, inputs, training=None):
        xp = self.backend
        inputs = xp.convert_to_tensor(inputs)
        shape = tuple(inputs.shape)
        rank = len(shape)
        if rank not in (3, 4) or shape[-1] != 1:
            raise ValueError(
                "`images` must have shape [B, H, W, 1] or [H, W, 1] (one gray "
                f"channel). Received: images.shape={shape}"
            )
        height, width = shape[-3], shape[-2]
        if (
            isinstance(height, int)
            and isinstance(width, int)
            and height * _LEVELS * (width + 1) > _MAX_TABLE_SIZE
        ):
            raise ValueError(
                "`images` must have height * 256 * (width + 1) < 2**31. " f"Received: images.shape={shape}"
            )
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if dtype == "bool" or not ("int" in dtype or "float" in dtype):
            raise TypeError(
                "`images` must be uint8 (or an integer or float dtype holding "
                f"gray levels 0 to 255). Received: images.dtype={dtype}"
            )
        levels = inputs
        if "float" in dtype:
            levels = xp.numpy.round(levels)
        if dtype != "uint8":
            levels = xp.numpy.clip(levels, 0, _LEVELS - 1)
        levels = xp.cast(levels, "int32")
        batch = levels if rank == 4 else xp.numpy.expand_dims(levels, 0)
        batch = xp.numpy.squeeze(batch, -1)
        outputs = xp.core.map(lambda image: _equalize(xp, image, self.radius), batch)
        outputs = xp.cast(xp.numpy.expand_dims(outputs, -1), dtype)
        return outputs if rank == 4 else xp.numpy.squeeze(outputs, 0)

    def get_config(self):
        return {**super().get_config(), "radius": self.radius}


def _equalize(xp, image, radius):
    """Equalizes one `[H, W]` int32 image of levels 0..255; returns int32."""
    shape = xp.core.shape(image)
    height, width = shape[0], shape[1]
    stride = width + 1  # the table has a zero column in front
    # table[y, level, x]: pixels of row y left of column x with level <= level.
    # Level-major rows keep a smooth image's gathers close together in memory.
    below = xp.numpy.expand_dims(image, 1) <= xp.numpy.reshape(
        xp.numpy.arange(_LEVELS, dtype="int32"), (1, _LEVELS, 1)
    )
    table = xp.numpy.cumsum(xp.cast(below, "int32"), axis=2)
    table = xp.numpy.reshape(xp.numpy.pad(table, [[0, 0], [0, 0], [1, 0]]), (-1,))

    # Disk rows in steps of _ROWS_PER_STEP; padding rows have width -1 (empty).
    widths = disk_half_widths(radius)
    steps = -(-len(widths) // _ROWS_PER_STEP)
    padding = steps * _ROWS_PER_STEP - len(widths)
    step_shape = (steps, _ROWS_PER_STEP, 1, 1)
    all_widths = xp.convert_to_tensor(np.array(widths + [-1] * padding, "int32").reshape(step_shape))
    all_dys = xp.convert_to_tensor(
        (np.arange(steps * _ROWS_PER_STEP, dtype="int32") - radius).reshape(step_shape)
    )
    y = xp.numpy.reshape(xp.numpy.arange(height, dtype="int32"), (-1, 1))
    x = xp.numpy.reshape(xp.numpy.arange(width, dtype="int32"), (1, -1))
    start = (y * _LEVELS + image) * stride  # table[y, g(y, x), 0]

    def add_rows(step, counts):
        n, m = counts
        dy, w = all_dys[step], all_widths[step]  # [rows, 1, 1]
        inside = xp.numpy.logical_and(y + dy >= 0, y + dy < height)
        # Rows outside the image read row y instead and are masked out.
        row = start + xp.numpy.where(inside, dy, 0) * (_LEVELS * stride)
        right = xp.numpy.minimum(x + w + 1, width)
        left = xp.numpy.minimum(xp.numpy.maximum(x - w, 0), right)
        hits = xp.numpy.take(table, row + right) - xp.numpy.take(table, row + left)
        n = n + xp.numpy.sum(xp.numpy.where(inside, hits, 0), axis=0)
        m = m + xp.numpy.sum(xp.numpy.where(inside, right - left, 0), axis=0)
        return n, m

    zeros = xp.numpy.zeros_like(image)
    n, m = xp.core.fori_loop(0, steps, add_rows, (zeros, zeros))
    # m >= 1: the pixel itself is always counted.
    return xp.numpy.floor_divide((_LEVELS - 1) * n, m)
