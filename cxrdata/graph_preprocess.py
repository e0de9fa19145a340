"""The converter's decode, grayscale and resize as TensorFlow graph ops, pixel for pixel.

`cxr export` puts these ops in the SavedModel's serving signature, so a raw
PNG or JPEG sent by a clinic's system becomes the same uint8 image that
`cxrdata.decode_image` and `cxrdata.preprocess_image` (Pillow) make of the
same file, and the model sees the same input as in `cxr predict`.

* PNG: decoded to 16 bits (`tf.io.decode_png`, 8-bit data comes out times
  257), then as Pillow reads it: one channel (L, I;16) becomes
  `(v * 255 + 32767) // 65535` (`v` again for 8-bit files), more channels
  (LA, RGB, RGBA, 16-bit ones included) keep the high byte.
* JPEG: `tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")`, libjpeg-turbo's
  "islow" IDCT with fancy upsampling, which is what Pillow uses.
* Color becomes gray with Pillow's integer ITU-R 601 luma
  `(19595 R + 38470 G + 7471 B + 2**15) >> 16`; alpha is dropped.
* Resizing is Pillow's two-pass convolution (`libImaging/Resample.c`),
  rewritten: filter weights computed in float64 in Pillow's order of
  operations (the weight sum accumulated one tap after another), rounded to
  22-bit fixed point, then integer sums, a horizontal pass into uint8 and a
  vertical one. Bilinear and bicubic filters; "stretch", "crop" and "pad"
  aspects, with Python's rounding (half to even).

Not reproduced: EXIF orientation (Pillow's path turns an image whose EXIF
says it is rotated; these ops do not), Pillow's pixel cap, formats other than
PNG and JPEG, DICOM, the "nearest" and "lanczos" filters and Pillow's own
`Image.resize` (`resampler="pillow"`); `check_graph_preprocessing` refuses
the last three.
"""

from __future__ import annotations

from cxrdata.preprocess import PreprocessConfig

GRAPH_INTERPOLATIONS = ("bilinear", "bicubic")
GRAPH_EQUALIZE = ("local", "none")
_PRECISION_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def check_graph_preprocessing(config: PreprocessConfig) -> None:
    """Raises ValueError if `config` has a step these graph ops cannot reproduce exactly.

    Args:
        config: The preprocessing of a run's training set.

    Raises:
        ValueError: For `interpolation` "nearest" or "lanczos", or `equalize`
            "clahe" or "global".
    """
    if config.resampler != "cxrdata":
        raise ValueError(
            "`resampler` must be 'cxrdata' (the images were resized by Pillow before cxrdata "
            f"recorded its resampler: reconvert the dataset). Received: resampler={config.resampler!r}"
        )
    if config.interpolation not in GRAPH_INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {', '.join(GRAPH_INTERPOLATIONS)} to resize inside a "
            f"TensorFlow graph exactly as the converter did. Received: interpolation={config.interpolation!r}"
        )
    if config.equalize not in GRAPH_EQUALIZE:
        raise ValueError(
            f"`equalize` must be one of {', '.join(GRAPH_EQUALIZE)} to equalize inside a TensorFlow "
            f"graph exactly as the converter did (no exact graph op for it). Received: "
            f"equalize={config.equalize!r}"
        )


def decode_gray(data):
    """PNG or JPEG bytes (a scalar `tf.string`) to a uint8 `[height, width]` gray image."""
    import tensorflow as tf

    def jpeg():
        image = tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")
        return _to_gray(tf.cast(image, tf.int32))

    def png():
        image = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.int32)
        return tf.cond(
            tf.shape(image)[-1] == 1,
            lambda: (image[..., 0] * 255 + 32767) // 65535,
            lambda: _to_gray(tf.bitwise.right_shift(image, 8)),
        )

    gray = tf.cond(tf.io.is_jpeg(data), jpeg, png)
    return tf.cast(gray, tf.uint8)


def _to_gray(image):
    """int32 `[h, w, c]` 8-bit values to int32 `[h, w]`: luma for 3 or 4 channels, else channel 0."""
    import tensorflow as tf

    def luma():
        r, g, b = image[..., 0], image[..., 1], image[..., 2]
        return tf.bitwise.right_shift(r * 19595 + g * 38470 + b * 7471 + 32768, 16)

    return tf.cond(tf.shape(image)[-1] >= 3, luma, lambda: image[..., 0])


def _filter(x, interpolation: str):
    import tensorflow as tf

    x = tf.abs(x)
    if interpolation == "bilinear":
        return tf.where(x < 1.0, 1.0 - x, tf.zeros_like(x))
    a = -0.5  # Pillow's bicubic, term for term
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _coefficients(in_size, out_size, interpolation: str):
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: (tap indices, int32 weights).

    `in_size` and `out_size` are ints or scalar int32 tensors.
    """
    import tensorflow as tf

    f64 = tf.float64
    scale = tf.cast(in_size, f64) / tf.cast(out_size, f64)
    filterscale = tf.maximum(scale, 1.0)
    support = _SUPPORT[interpolation] * filterscale
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(out_size), f64) + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)  # C's (int): toward 0
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - xmin
    taps = tf.range(ksize)
    position = tf.cast(xmin[:, None] + taps[None, :], f64) - center[:, None] + 0.5
    weights = _filter(position * ss, interpolation)
    weights = tf.where(taps[None, :] < xmax[:, None], weights, tf.zeros_like(weights))
    # The sum one tap after another, as Pillow adds them (a reduction may pair them otherwise).
    total = tf.while_loop(
        lambda i, t: i < ksize,
        lambda i, t: (i + 1, t + weights[:, i]),
        (tf.constant(0), tf.zeros(tf.shape(center), f64)),
    )[1]
    weights = tf.where(total[:, None] != 0.0, weights / total[:, None], weights)
    fixed = weights * float(1 << _PRECISION_BITS)
    fixed = tf.cast(tf.where(weights < 0, fixed - 0.5, fixed + 0.5), tf.int32)
    index = tf.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    return index, fixed


def _pass(image, out_size, interpolation: str):
    """Resamples axis 1 of an int32 `[rows, n]` image to `out_size` (one of Pillow's passes)."""
    import tensorflow as tf

    index, weights = _coefficients(tf.shape(image)[1], out_size, interpolation)
    taps = tf.gather(image, index, axis=1)  # [rows, out, k]
    total = tf.reduce_sum(taps * weights[None], axis=-1) + (1 << (_PRECISION_BITS - 1))
    return tf.clip_by_value(tf.bitwise.right_shift(total, _PRECISION_BITS), 0, 255)


def resize_gray(image, size, interpolation: str = "bilinear"):
    """Pillow's `Image.resize` of a uint8 `[h, w]` image to `size` `(height, width)`, as graph ops.

    As in Pillow, an axis whose size does not change is not resampled.
    `size` holds ints or scalar int32 tensors.
    """
    import tensorflow as tf

    height, width = size
    x = tf.cast(image, tf.int32)
    shape = tf.shape(x)
    x = tf.cond(tf.equal(shape[1], width), lambda: x, lambda: _pass(x, width, interpolation))
    x = tf.cond(
        tf.equal(shape[0], height),
        lambda: x,
        lambda: tf.transpose(_pass(tf.transpose(x), height, interpolation)),
    )
    return tf.cast(x, tf.uint8)


def resize_like_converter(image, config: PreprocessConfig):
    """`cxrdata.preprocess.resize` (aspect and filter of `config`) as graph ops: uint8 `[H, W]`."""
    import tensorflow as tf

    height, width = config.image_size
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    if config.aspect == "crop":
        scale = tf.minimum(hf / height, wf / width)
        ch = tf.cast(tf.round(height * scale), tf.int32)  # Python's round: half to even
        cw = tf.cast(tf.round(width * scale), tf.int32)
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image[top : top + ch, left : left + cw]
    elif config.aspect == "pad":
        scale = tf.minimum(height / hf, width / wf)
        nh = tf.maximum(1, tf.cast(tf.round(hf * scale), tf.int32))
        nw = tf.maximum(1, tf.cast(tf.round(wf * scale), tf.int32))
        inner = resize_gray(image, (nh, nw), config.interpolation)
        top, left = (height - nh) // 2, (width - nw) // 2
        image = tf.pad(inner, [[top, height - nh - top], [left, width - nw - left]])
    resized = resize_gray(image, (height, width), config.interpolation)
    return tf.ensure_shape(resized, [height, width])


def preprocess_bytes(data, config: PreprocessConfig):
    """Encoded PNG or JPEG bytes to the converter's resized uint8 image `[H, W, 1]`, as graph ops.

    Decodes, converts to gray and resizes as `cxrdata.decode_image` then
    `cxrdata.preprocess.resize` do (see the module docstring for what is not
    reproduced). It does not equalize: put a `cxrdata.LocalEqualization`
    after it.

    Args:
        data: A scalar `tf.string`: the bytes of one PNG or JPEG file.
        config: The preprocessing to reproduce.

    Returns:
        A uint8 tensor of shape `[height, width, 1]` (`config.image_size`).

    Example:
        >>> import tensorflow as tf  # doctest: +SKIP
        >>> image = preprocess_bytes(tf.io.read_file("scan.png"), PreprocessConfig(image_size=64))  # doctest: +SKIP
    """
    check_graph_preprocessing(config)
    gray = decode_gray(data)
    return resize_like_converter(gray, config)[..., None]
