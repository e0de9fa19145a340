"""`export`: a trained run as a deployable TF SavedModel or `.keras` file, with a sidecar.

Both formats get `cxr.json` beside the model: the class names, the positive
class, the model's input shape and the preprocessing the training images had
(see `cxrmodels.runs.run_folder.sidecar`).

The SavedModel's `serving_default` signature takes the bytes of raw PNG, JPEG
or BMP files of any size, as a clinic's system would send them, and applies
the whole preprocessing of the run's training set inside the graph
(`cxrdata.graph_preprocess`): read the header (format, the pixel cap, EXIF
orientation), decode (JPEG with libjpeg's integer IDCT, as Pillow), turn as
the EXIF says (as Pillow's `exif_transpose`), grayscale (Pillow's integer
luma), resize with the dataset's `image_size`, `aspect` and filter (the
converter's exact resampler), then `cxrdata.LocalEqualization(radius)` when
the dataset was equalized with `equalize="local"`; a run that equalizes
inside its model needs nothing more. Its probabilities are those of `cxr
predict` on the same files.

The contract is per item: the signature never fails a batch for its content.
Each item gets `ok` and `error`; an item that is refused (WebP, GIF, TIFF,
DICOM or an unknown format, an image over the pixel cap, an EXIF orientation
stored in an unusual way: see `cxrdata.graph_headers`) or that its decoder
finds truncated or corrupt gets `ok=False`, its reason in `error` and NaN
probabilities, and the other items of the batch are predicted. The pixel cap
is `PIL.Image.MAX_IMAGE_PIXELS` when `export` runs (the cap `cxr convert` and
`cxr predict` apply), recorded as `max_image_pixels` in `cxr.json`. A run
whose preprocessing the graph cannot reproduce exactly (`equalize` "clahe" or
"global", filters "nearest" or "lanczos", or a dataset resized by Pillow
before cxrdata recorded its `resampler`) is refused with a ValueError.

`predict_images` takes uint8 pixels as they are stored in the run's dataset
(`cxrdata.load` batches): for checking the deployed model against `cxr
evaluate` on the converted shards, without decoding anything.
"""

from __future__ import annotations

import json
import os
import shutil

from PIL import Image

from cxrdata.graph_preprocess import check_graph_preprocessing, preprocess_batch
from cxrdata.preprocess import PreprocessConfig
from cxrdata.utils.io import atomic_write_text
from cxrmodels.models.input_stack import serving_equalizer
from cxrmodels.models.saving import load_run_model
from cxrmodels.runs import run_folder

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

    * `serving_default(image_bytes)`: a `tf.string [None]` batch of raw PNG,
      JPEG or BMP files of any size; the graph decodes, turns, converts to
      gray, resizes and equalizes them as the training set was (see the
      module docstring). It returns `probabilities` (float32
      `[None, num_classes]`, NaN for an item without an image), `ok` (bool
      `[None]`), `error` (`tf.string [None]`: why an item has no image, ""
      when it has one) and `class_names` (a constant `tf.string [num_classes]`).
    * `predict_images(images)`: uint8 pixels `[None, height, width, channels]`
      as stored in the run's dataset; it returns `probabilities` and
      `class_names`.

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
        ValueError: An unknown `format`, or (savedmodel) a preprocessing the
            graph cannot reproduce exactly.

    Example:
        >>> export("runs/a", "serving/cxr/1", format="savedmodel")  # doctest: +SKIP
        >>> import tensorflow as tf
        >>> serve = tf.saved_model.load("serving/cxr/1").signatures["serving_default"]  # doctest: +SKIP
        >>> out = serve(image_bytes=tf.constant([open("case.png", "rb").read()]))  # doctest: +SKIP
        >>> out["probabilities"], out["ok"], out["error"]  # doctest: +SKIP
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {', '.join(FORMATS)}. Received: format={format!r}")
    out = os.fspath(out)
    config = run_folder.read_config(run_dir)
    if format == "savedmodel":
        try:
            check_graph_preprocessing(PreprocessConfig.from_dict(config["preprocessing"]))
        except ValueError as e:
            raise ValueError(
                f"The run {os.fspath(run_dir)!r} cannot be exported as a self-contained SavedModel: {e}. "
                "Export it with format='keras' (--format keras), or retrain on a dataset converted "
                "by this version with --interpolation bilinear and --equalize local or none."
            ) from None
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise FileExistsError(
            f"{out!r} already exists and is not empty. Choose a new folder, or pass "
            "--overwrite (overwrite=True) to replace it."
        )
    model = load_run_model(run_dir, config)
    sidecar = {"format": format, **run_folder.sidecar(config)}
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.{os.getpid()}.tmp")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        if format == "keras":
            os.makedirs(tmp)
            shutil.copyfile(
                os.path.join(os.fspath(run_dir), run_folder.MODEL_NAME),
                os.path.join(tmp, run_folder.MODEL_NAME),
            )
        else:
            sidecar["max_image_pixels"] = Image.MAX_IMAGE_PIXELS  # the cap `cxr convert` applies now
            _write_savedmodel(model, config, tmp, sidecar["max_image_pixels"])
        atomic_write_text(os.path.join(tmp, SIDECAR_NAME), json.dumps(sidecar, indent=2) + "\n")
        if os.path.isdir(out):
            shutil.rmtree(out)
        elif os.path.exists(out):
            os.unlink(out)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out


def _write_savedmodel(model, config: dict, path: str, max_image_pixels: int | None) -> None:
    import keras
    import tensorflow as tf

    height, width, channels = (int(d) for d in config["model"]["input_shape"])
    class_names = [str(c) for c in config["class_names"]]
    preprocessing = PreprocessConfig.from_dict(config["preprocessing"])
    equalizer = serving_equalizer(config["preprocessing"])

    def predict_images(images):
        return {
            "probabilities": tf.cast(model(images, training=False), tf.float32),
            "class_names": tf.constant(class_names),
        }

    def serving_default(image_bytes):
        batch = preprocess_batch(image_bytes, preprocessing, max_image_pixels=max_image_pixels)
        images = batch["images"]
        if equalizer is not None:
            images = equalizer(images)
        if channels == 3:
            images = tf.image.grayscale_to_rgb(images)
        probabilities = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: predict_images(images)["probabilities"],
            lambda: tf.zeros([0, len(class_names)], tf.float32),
        )
        # An item without an image gets NaN, never a number that could be read as a prediction.
        unread = tf.fill([tf.shape(image_bytes)[0], len(class_names)], float("nan"))
        return {
            "probabilities": tf.tensor_scatter_nd_update(unread, batch["indices"][:, None], probabilities),
            "ok": batch["ok"],
            "error": batch["error"],
            "class_names": tf.constant(class_names),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        # No AutoGraph: the graph ops hold no Python control flow, and converting them takes long.
        fn=tf.function(
            serving_default,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
            autograph=False,
        ),
    )
    archive.add_endpoint(
        name="predict_images",
        fn=predict_images,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")],
    )
    archive.write_out(path, verbose=False)
