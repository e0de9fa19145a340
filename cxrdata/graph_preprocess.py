"""The converter's decode, grayscale and resize as TensorFlow graph ops, pixel for pixel.

`cxr export` puts these ops in the SavedModel's serving signature, so a raw
PNG, JPEG or BMP sent by a clinic's system becomes the same uint8 image that
`cxrdata.decode_image` and `cxrdata.preprocess_image` (Pillow) make of the
same file, and the model sees the same input as in `cxr predict`.

* Each file's header is read first with string ops
  (`cxrdata.graph_headers`): its format, its size against the pixel cap, its
  EXIF orientation. A file refused there never reaches a decoder.

* PNG: decoded to 16 bits (`tf.io.decode_png`, 8-bit data comes out times
  257), then as Pillow reads it: one channel (L, I;16) becomes
  `(v * 255 + 32767) // 65535` (`v` again for 8-bit files), more channels
  (LA, RGB, RGBA, 16-bit ones included) keep the high byte.
* JPEG: `tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")`, libjpeg-turbo's
  "islow" IDCT with fancy upsampling, which is what Pillow uses.
* BMP: `tf.io.decode_bmp`, for the kinds it reads as Pillow does (see
  `cxrdata.graph_headers`).
* The image is turned as its EXIF orientation says, as
  `PIL.ImageOps.exif_transpose` turns it (`cxrdata.graph_orientation`).
* Color becomes gray with Pillow's integer ITU-R 601 luma
  `(19595 R + 38470 G + 7471 B + 2**15) >> 16`; alpha is dropped.
* Resizing is Pillow's two-pass convolution (`libImaging/Resample.c`),
  rewritten: filter weights computed in float64 in Pillow's order of
  operations (the weight sum accumulated one tap after another), rounded to
  22-bit fixed point, then integer sums, a horizontal pass into uint8 and a
  vertical one. Bilinear and bicubic filters; "stretch", "crop" and "pad"
  aspects, with Python's rounding (half to even).

`preprocess_batch` does it for a batch with a status per item: the decoders
of TensorFlow fail the whole batch on one bad file, so each runs first alone
in a `tf.data` map whose `ignore_errors` finds the files it fails on.

Not reproduced: formats other than PNG, JPEG and BMP (DICOM included: refused
by name), the "nearest" and "lanczos" filters and Pillow's own `Image.resize`
(`resampler="pillow"`); `check_graph_preprocessing` refuses the last three.
Stricter than Pillow: a PNG that lost its last chunk or whose checksum is
wrong, a BMP with bytes missing or left over, a BMP whose gray palette is not
exactly 0-255 are refused where Pillow reads them.
"""

from __future__ import annotations

from cxrdata._decode_common import SOURCE_CONSTANT
from cxrdata.decoding import JPEG_DRAFT_PIXELS
from cxrdata.graph_headers import FORMATS, read_header
from cxrdata.graph_orientation import orient
from cxrdata.preprocess import PreprocessConfig
from cxrdata.utils.argument_validation import check_int

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


def decode_gray(data, *, max_image_pixels: int | None | str = "pillow"):
    """PNG, JPEG or BMP bytes (a scalar `tf.string`) to a uint8 `[height, width]` gray image.

    The image is turned as its EXIF orientation says (as `PIL.ImageOps.exif_transpose`).
    A file that `cxrdata.graph_headers.read_header` refuses raises
    `tf.errors.InvalidArgumentError` with the reason when run; so does a file
    the decoder finds corrupt.

    Args:
        data: A scalar `tf.string`: the bytes of one file.
        max_image_pixels: The pixel cap; "pillow" (the default) takes
            `PIL.Image.MAX_IMAGE_PIXELS` when the graph is built, None lifts it.
    """
    import tensorflow as tf

    header = read_header(data, _pixel_cap(max_image_pixels))
    check = tf.debugging.Assert(header["error"] == "", [header["error"]])
    with tf.control_dependencies([check]):
        return orient(_decode_as(data, header["format"]), header["orientation"])


def _pixel_cap(max_image_pixels):
    if max_image_pixels == "pillow":
        from PIL import Image

        return Image.MAX_IMAGE_PIXELS
    return max_image_pixels


def _decode_as(data, kind):
    """Decodes `data` as `kind` (`read_header`'s format code: 0 PNG, 1 JPEG, 2 BMP) to uint8 gray `[h, w]`."""
    import tensorflow as tf

    def png():
        image = tf.cast(_DECODERS[0](data), tf.int32)
        return tf.cond(
            tf.shape(image)[-1] == 1,
            lambda: (image[..., 0] * 255 + 32767) // 65535,
            lambda: _to_gray(tf.bitwise.right_shift(image, 8)),
        )

    def jpeg():
        return _to_gray(tf.cast(_DECODERS[1](data), tf.int32))

    def bmp():
        return _to_gray(tf.cast(_DECODERS[2](data), tf.int32))

    return tf.cast(tf.switch_case(tf.maximum(kind, 0), [png, jpeg, bmp]), tf.uint8)


# The decode op of each format code, with the attributes that reproduce Pillow's pixels. The same
# ops run twice per file in `preprocess_batch`: once to find the files they fail on, once for real.
_DECODERS = (
    lambda data: _tf().io.decode_png(data, channels=0, dtype=_tf().uint16),
    lambda data: _tf().io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"),
    lambda data: _tf().io.decode_bmp(data, channels=0),
)


def _tf():
    import tensorflow as tf  # deferred: importing cxrdata does not import TensorFlow

    return tf


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
    """Encoded PNG, JPEG or BMP bytes to the converter's resized uint8 image `[H, W, 1]`, as graph ops.

    Decodes, turns, converts to gray and resizes as `cxrdata.decode_image` then
    `cxrdata.preprocess.resize` do (see the module docstring for what is not
    reproduced). It does not equalize: put a `cxrdata.LocalEqualization`
    after it. A file it cannot read fails the op (`decode_gray`); for a batch
    with a status per item, use `preprocess_batch`.

    Args:
        data: A scalar `tf.string`: the bytes of one PNG, JPEG or BMP file.
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


def preprocess_batch(
    image_bytes, config: PreprocessConfig, *, max_image_pixels: int | None, parallel: int = 4
):
    """A batch of encoded files to the converter's images, with a status per item, as graph ops.

    Each item's header is read first (`cxrdata.graph_headers.read_header`:
    format, pixel cap, EXIF orientation); only the items it accepts reach a
    decoder. Each of those is decoded first in a `tf.data` map whose
    `ignore_errors` drops an item its decoder fails on (a truncated or corrupt
    body), then the others are decoded again, turned and resized; so one bad
    item never fails the batch.

    Args:
        image_bytes: A `tf.string [n]` batch of file contents.
        config: The preprocessing to reproduce (`check_graph_preprocessing`).
        max_image_pixels: The pixel cap (an int or an int64 scalar tensor), or
            None for none.
        parallel: Items decoded at once. Defaults to 4.

    Returns:
        A dict: `images` (uint8 `[k, height, width, 1]`, the items that were
        decoded, in order), `indices` (int64 `[k]`, their positions in
        `image_bytes`), `ok` (bool `[n]`) and `error` (`tf.string [n]`: the
        reason an item has no image, "" for those that have one).

    Raises:
        ValueError: A preprocessing the graph cannot reproduce, or a bad `parallel`.

    Example:
        >>> import tensorflow as tf  # doctest: +SKIP
        >>> files = tf.constant([open("a.png", "rb").read(), b"not an image"])  # doctest: +SKIP
        >>> out = preprocess_batch(files, PreprocessConfig(image_size=64), max_image_pixels=None)  # doctest: +SKIP
        >>> out["ok"], out["indices"]  # doctest: +SKIP
        (<tf.Tensor: ... numpy=array([ True, False])>, <tf.Tensor: ... numpy=array([0])>)
    """
    check_int("parallel", parallel, minimum=1)
    check_graph_preprocessing(config)
    import tensorflow as tf

    height, width = config.image_size
    spec = {
        "format": tf.TensorSpec([], tf.int32),
        "height": tf.TensorSpec([], tf.int64),
        "width": tf.TensorSpec([], tf.int64),
        "orientation": tf.TensorSpec([], tf.int32),
        "error": tf.TensorSpec([], tf.string),
    }
    headers = tf.map_fn(lambda d: read_header(d, max_image_pixels), image_bytes, fn_output_signature=spec)
    header_error = tf.where(
        (headers["error"] == "") & _drafted_jpeg(headers), _DRAFT_REFUSAL, headers["error"]
    )
    indices = _decodable(image_bytes, headers["format"], tf.where(header_error == "")[:, 0], parallel)

    def one(i):
        gray = orient(_decode_as(image_bytes[i], headers["format"][i]), headers["orientation"][i])
        flat = tf.reduce_min(gray) == tf.reduce_max(gray)  # `cxr predict` rejects a constant image too
        return resize_like_converter(gray, config)[..., None], flat

    images, flat = tf.map_fn(
        one,
        indices,
        fn_output_signature=(tf.TensorSpec([height, width, 1], tf.uint8), tf.TensorSpec([], tf.bool)),
        parallel_iterations=parallel,
    )
    n = tf.shape(image_bytes, out_type=tf.int64)
    decoded = tf.scatter_nd(indices[:, None], tf.ones_like(indices, tf.int32), n) > 0
    constant = tf.scatter_nd(indices[:, None], tf.cast(flat, tf.int32), n) > 0
    failed = tf.strings.join(
        [
            "truncated or corrupt ",
            tf.gather(FORMATS, tf.maximum(headers["format"], 0)),
            ": the decoder failed",
        ]
    )
    error = tf.where(
        header_error != "",
        header_error,
        tf.where(decoded, tf.where(constant, SOURCE_CONSTANT, ""), failed),
    )
    keep = ~flat
    return {
        "images": tf.boolean_mask(images, keep),
        "indices": tf.boolean_mask(indices, keep),
        "ok": error == "",
        "error": error,
    }


# `cxr predict` decodes a JPEG over this many pixels at a reduced scale (Pillow's draft, in the
# DCT), which the graph's decoder does not reproduce: the exported model refuses it by name.
_DRAFT_REFUSAL = (
    f"JPEG over {JPEG_DRAFT_PIXELS} pixels: cxr predict decodes it at a reduced scale and the exported "
    "model would not match it; resize it first"
)


def _drafted_jpeg(headers):
    jpeg = headers["format"] == FORMATS.index("JPEG")
    return jpeg & (headers["height"] * headers["width"] > JPEG_DRAFT_PIXELS)


def _decodable(image_bytes, kinds, readable, parallel: int):
    """The sorted positions among `readable` whose decode op succeeds.

    Each file's decode op runs in a `tf.data` map whose `ignore_errors` drops
    the files it fails on: the only way to catch an op's error inside a graph.
    The map holds nothing but the three ops (a map function is instantiated
    anew at each call, which costs more than a decode when it holds more),
    and the dataset skips tf.data's graph rewrites (done at each call too).
    """
    tf = _tf()

    def decodes(i, data, kind):
        return i, tf.switch_case(kind, [lambda d=d: tf.size(d(data)) for d in _DECODERS])

    items = tf.data.Dataset.from_tensor_slices(
        (readable, tf.gather(image_bytes, readable), tf.gather(kinds, readable))
    )
    items = items.map(decodes, num_parallel_calls=parallel).ignore_errors().batch(256)
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    items = items.with_options(options)
    return items.reduce(tf.zeros([0], tf.int64), lambda done, more: tf.concat([done, more[0]], 0))
