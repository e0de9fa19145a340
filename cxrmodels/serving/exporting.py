"""`export`: a trained run as a deployable TF SavedModel or `.keras` file, with a sidecar.

Both formats get `cxr.json` beside the model: the class names, the positive
class, the model's input shape and the preprocessing the training images had
(see `cxrmodels.training.run_dir.sidecar`).

The SavedModel's serving signature takes encoded image bytes. What it does to
them, and what it does not:

* decodes PNG or JPEG with `tf.io.decode_image` (the first frame of a GIF;
  8-bit: a 16-bit PNG is truncated to its high byte, and JPEG EXIF
  orientation is ignored);
* converts to grayscale with Pillow's integer ITU-R 601 luma, as
  `cxrdata.decode_image` does (alpha dropped);
* resizes to the model's input with bilinear interpolation (antialiased),
  only when the size differs: this approximates the converter's Pillow resize
  and always stretches (no "crop" or "pad" aspect handling);
* does NOT equalize. The training images were equalized by the converter
  (`equalize` in `cxr.json`; "local" is a scikit-image rank filter, with no
  TensorFlow op), so the signature expects images that are already
  preprocessed like the training set: run `cxrdata.decode_image` and
  `cxrdata.preprocess_image` with the sidecar's preprocessing (or use
  `cxr predict`) and send the result as PNG. Images preprocessed that way
  already have the model's size, so then nothing is approximated.
"""

from __future__ import annotations

import json
import os
import shutil

from cxrdata.utils.io import atomic_write_text
from cxrmodels.training import run_dir as _run

FORMATS = ("savedmodel", "keras")
SIDECAR_NAME = "cxr.json"


def export(
    run_dir: str | os.PathLike, out: str | os.PathLike, *, format: str = "savedmodel", overwrite: bool = False
) -> str:
    """Exports a run's model for deployment into the folder `out`.

    `format="keras"` writes `out/model.keras` (a copy of the run's model, for
    `keras.saving.load_model`) and `out/cxr.json`. `format="savedmodel"` writes
    a TF SavedModel into `out` (for `tf.saved_model.load` and TF Serving) and
    `out/cxr.json`, with two signatures:

    * `serving_default(image_bytes)`: a `tf.string [None]` batch of PNG or JPEG
      files, already preprocessed like the training set (equalized; see the
      module docstring for what the signature does and does not do), and
    * `predict_images(images)`: uint8 pixels `[None, height, width, channels]`.

    Both return `probabilities` (float32 `[None, num_classes]`) and
    `class_names` (a constant `tf.string [num_classes]`).

    Args:
        run_dir: A run folder written by `cxrmodels.train`.
        out: The folder to write; must be new or empty unless `overwrite`.
        format: "savedmodel" or "keras". Defaults to "savedmodel".
        overwrite: Replace what `out` holds. Defaults to False.

    Returns:
        `out`, as a string.

    Raises:
        FileNotFoundError: `run_dir` is not a training run.
        FileExistsError: `out` is not empty and `overwrite` is False.
        ValueError: An unknown `format`.

    Example:
        >>> export("runs/a", "serving/cxr/1", format="savedmodel")  # doctest: +SKIP
        >>> import tensorflow as tf
        >>> serve = tf.saved_model.load("serving/cxr/1").signatures["serving_default"]  # doctest: +SKIP
        >>> serve(image_bytes=tf.constant([open("case.png", "rb").read()]))["probabilities"]  # doctest: +SKIP
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {', '.join(FORMATS)}. Received: format={format!r}")
    out = os.fspath(out)
    config = _run.read_config(run_dir)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise FileExistsError(
            f"{out!r} already exists and is not empty. Choose a new folder, or pass "
            "--overwrite (overwrite=True) to replace it."
        )
    model = _run.load_model(run_dir, config)
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.{os.getpid()}.tmp")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        if format == "keras":
            os.makedirs(tmp)
            shutil.copyfile(
                os.path.join(os.fspath(run_dir), _run.MODEL_NAME), os.path.join(tmp, _run.MODEL_NAME)
            )
        else:
            _write_savedmodel(model, config, tmp)
        atomic_write_text(
            os.path.join(tmp, SIDECAR_NAME),
            json.dumps({"format": format, **_run.sidecar(config)}, indent=2) + "\n",
        )
        if os.path.isdir(out):
            shutil.rmtree(out)
        elif os.path.exists(out):
            os.unlink(out)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out


def _write_savedmodel(model, config: dict, path: str) -> None:
    import keras
    import tensorflow as tf

    height, width, channels = (int(d) for d in config["model"]["input_shape"])
    class_names = [str(c) for c in config["class_names"]]

    def predict_images(images):
        return {
            "probabilities": tf.cast(model(images, training=False), tf.float32),
            "class_names": tf.constant(class_names),
        }

    def serving_default(image_bytes):
        images = tf.map_fn(
            lambda data: _decode(data, height, width),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, 1], tf.uint8),
        )
        if channels == 3:
            images = tf.image.grayscale_to_rgb(images)
        return predict_images(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serving_default,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    archive.add_endpoint(
        name="predict_images",
        fn=predict_images,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")],
    )
    archive.write_out(path, verbose=False)


def _decode(data, height: int, width: int):
    """One encoded image to grayscale uint8 `[height, width, 1]` (see the module docstring)."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)

    def luma():  # Pillow's convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16
        rgb = tf.cast(image[..., :3], tf.int32)
        y = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768) // 65536
        return tf.cast(y, tf.uint8)[..., None]

    gray = tf.cond(tf.shape(image)[-1] >= 3, luma, lambda: image[..., :1])
    size = tf.shape(gray)[:2]

    def resize():
        resized = tf.image.resize(
            tf.cast(gray, tf.float32), [height, width], method="bilinear", antialias=True
        )
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
    return tf.ensure_shape(tf.cond(same, lambda: gray, resize), [height, width, 1])
