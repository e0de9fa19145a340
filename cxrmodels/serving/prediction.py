"""`predict`: class probabilities for image files, and Grad-CAM overlays.

Each file goes through the code path `cxr convert` uses (`cxrdata.decode_image`,
then `cxrdata.preprocess_image` with the run's preprocessing from its
`config.json`), so a PNG, JPEG or DICOM file is fed to the model exactly as the
training images were. A file that cannot be read is reported with its reason,
and the other files are still predicted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrdata.decoding import DecodeError, decode_image
from cxrdata.manifest import dicom_window_of
from cxrdata.preprocess import PreprocessConfig, preprocess_image
from cxrdata.utils.figures import save_picture
from cxrmodels.models import last_conv_layer_name
from cxrmodels.models.saving import load_run_model
from cxrmodels.runs import run_folder

GRADCAM_ALPHA = 0.4  # weight of the heatmap over the image in the overlays
GRADCAM_MIN_SIDE = 256


def predict(
    run_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    gradcam_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Predicts class probabilities for image files with a trained run.

    Args:
        run_dir: A run folder written by `cxrmodels.train`.
        paths: Image files (PNG, JPEG or DICOM), or one path.
        gradcam_dir: If given, writes a Grad-CAM overlay of the predicted class
            for each predicted file into this folder (created if missing), as
            `{file stem}.gradcam.png` at the model's input size. Defaults to None.
        batch_size: Images per prediction batch. Defaults to 32.

    Returns:
        One dict per path, in order: `"path"`, `"ok"` (False when the file could
        not be read), `"error"` (the reason, or None), `"probabilities"`
        (`{class name: probability}`, empty on error), `"predicted_class"` (the
        most probable class, or None) and `"gradcam"` (the overlay's path, or None).

    Raises:
        FileNotFoundError: `run_dir` is not a training run.
        ValueError: No paths, or a bad `batch_size`.

    Example:
        >>> for row in predict("runs/a", ["case1.dcm", "case2.png"]):  # doctest: +SKIP
        ...     print(row["path"], row["probabilities"])
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("`paths` must name at least one image file. Received: paths=[]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    config = run_folder.read_config(run_dir)
    model = load_run_model(run_dir, config)
    class_names = list(config["class_names"])
    images, results = _read_images(paths, config)
    ok = [i for i, r in enumerate(results) if r["ok"]]
    if not ok:
        return results
    batch = np.stack([images[i] for i in ok])[..., None]
    probs = np.concatenate(
        [
            np.asarray(model.predict_on_batch(batch[s : s + batch_size]), np.float64)
            for s in range(0, len(batch), batch_size)
        ]
    )
    for i, p in zip(ok, probs):
        results[i]["probabilities"] = {name: float(v) for name, v in zip(class_names, p)}
        results[i]["predicted_class"] = class_names[int(np.argmax(p))]
    if gradcam_dir is not None:
        gradcam_dir = os.fspath(gradcam_dir)
        os.makedirs(gradcam_dir, exist_ok=True)
        names = _overlay_names([paths[i] for i in ok])
        predicted = np.argmax(probs, axis=1)
        for s in range(0, len(batch), batch_size):
            heatmaps = gradcam(model, batch[s : s + batch_size], class_index=predicted[s : s + batch_size])
            for j, heat in enumerate(heatmaps):
                path = os.path.join(gradcam_dir, names[s + j])
                write_overlay(batch[s + j, ..., 0], heat, path)
                results[ok[s + j]]["gradcam"] = path
    return results


def _read_images(paths: list[str], config: dict) -> tuple[dict[int, np.ndarray], list[dict]]:
    """Decodes and preprocesses each file as `cxr convert` did for the run's dataset."""

    preprocessing = PreprocessConfig.from_dict(config["preprocessing"])
    dicom_window = dicom_window_of(config["preprocessing"])  # as the training set's DICOMs were read
    expected = tuple(config["model"]["input_shape"][:2])
    images, results = {}, []
    for i, path in enumerate(paths):
        error = None
        try:
            image = preprocess_image(decode_image(path, dicom_window=dicom_window), preprocessing)
            if image.shape != expected:
                error = f"preprocessed to {image.shape}, the model takes {expected}"
        except DecodeError as e:
            error = str(e)
        except FileNotFoundError:
            error = "file not found"
        except OSError as e:
            error = f"unreadable: {e.strerror or e}"
        except Exception as e:  # one bad file never stops the others
            error = f"{type(e).__name__}: {e}"
        if error is None:
            images[i] = image
        results.append(
            {
                "path": path,
                "ok": error is None,
                "error": error,
                "probabilities": {},
                "predicted_class": None,
                "gradcam": None,
            }
        )
    return images, results


def _overlay_names(paths: list[str]) -> list[str]:
    """`{stem}.gradcam.png` per path, numbered where two paths share a stem."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    seen: dict[str, int] = {}
    names = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.gradcam.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.gradcam.png")
    return names


def gradcam(model, images, *, class_index=None, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps (Selvaraju et al., 2017) of a class, at the input's size.

    The gradient of the class score (the logit, when the model ends in a
    softmax Dense layer, else the probability) with respect to the last
    convolutional feature map is averaged per channel; the channels weighted
    by it are summed, passed through ReLU, upsampled (bilinear) to the
    input's height and width and scaled to [0, 1] per image. The model runs in
    inference mode, so an augmentation layer inside it does nothing. A layer
    inside a nested model is named `"outer/inner"` (see
    `cxrmodels.models._registry.last_conv_layer_name`). Needs the TensorFlow backend.

    Args:
        model: A Keras model with one image input and one output.
        images: A batch `[N, H, W, C]` as the model takes it.
        class_index: The class per image (an int or `[N]` ints). Defaults to
            None: the predicted class.
        layer_name: The feature map layer. Defaults to the last convolutional one.

    Returns:
        float32 heatmaps `[N, H, W]` in [0, 1].

    Example:
        >>> heat = gradcam(model, images)  # doctest: +SKIP
    """
    import tensorflow as tf

    grad_model = _feature_model(model, (layer_name or last_conv_layer_name(model)).split("/"))
    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        features, scores, probs = grad_model(x, training=False)
        index = (
            tf.argmax(probs, axis=-1, output_type=tf.int32)
            if class_index is None
            else tf.broadcast_to(tf.cast(class_index, tf.int32), tf.shape(probs)[:1])
        )
        score = tf.gather(tf.cast(scores, tf.float32), index, axis=1, batch_dims=1)
    grads = tf.cast(tape.gradient(score, features), tf.float32)
    features = tf.cast(features, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, tf.shape(x)[1:3], method="bilinear")
    cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True))
    return np.clip(cam.numpy()[..., 0], 0.0, 1.0).astype(np.float32)


def gradcam_model(model, layer_name: str | None = None):
    """A model from `model`'s input to [feature map, class scores (logits where the head has them),
    probabilities]: what `gradcam` differentiates, for other Grad-CAM variants (the audit's)."""

    return _feature_model(model, (layer_name or last_conv_layer_name(model)).split("/"))


def _feature_model(model, path: list[str]):
    """A model from `model`'s input to [feature map at `path`, class scores, probabilities].

    The model is re-traced with its own layers (shared weights); the call of
    the nested model holding the feature layer is replaced by a model that
    also returns that layer's output.
    """
    import keras

    head = model.layers[-1]
    logits_from = (
        head
        if (isinstance(head, keras.layers.Dense) and getattr(head.activation, "__name__", "") == "softmax")
        else None
    )
    captured: dict[str, Any] = {}
    target = model.get_layer(path[0])
    inner = _feature_model(target, path[1:]) if len(path) > 1 else None

    def call(layer, *args, **kwargs):
        if layer is target and inner is not None:
            captured["features"], _, out = inner(*args, **kwargs)
            return out
        out = layer(*args, **kwargs)
        if layer is target:
            captured["features"] = out
        if layer is logits_from:
            x = keras.ops.cast(args[0], "float32")
            logits = keras.ops.matmul(x, keras.ops.cast(head.kernel, "float32"))
            captured["scores"] = logits + keras.ops.cast(head.bias, "float32") if head.use_bias else logits
        return out

    clone = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    inputs = clone.inputs[0] if len(clone.inputs) == 1 else clone.inputs
    return keras.Model(inputs, [captured["features"], captured.get("scores", clone.output), clone.output])


def write_overlay(image: np.ndarray, heatmap: np.ndarray, path: str | os.PathLike) -> str:
    """Writes a PNG: the grayscale uint8 image beside the heatmap (jet colors) blended over it.

    Both panels are scaled up by the same whole factor so the shorter side is at
    least `GRADCAM_MIN_SIDE` pixels: a 96-pixel overlay is too small to read.
    """

    from matplotlib import colormaps
    from PIL import Image

    gray = np.repeat(image.astype(np.float32)[..., None] / 255.0, 3, axis=-1)
    heat = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3]
    blend = (1 - GRADCAM_ALPHA) * gray + GRADCAM_ALPHA * heat
    panels = np.concatenate([gray, blend], axis=1)
    scale = max(1, -(-GRADCAM_MIN_SIDE // min(image.shape[:2])))
    picture = Image.fromarray(np.round(panels * 255).astype(np.uint8), mode="RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.BICUBIC)
    return save_picture(picture, path)


def format_predictions(results: list[dict], class_names: Sequence[str]) -> str:
    """A plain-text table: one row per file, a probability per class, the predicted class."""
    width = max([len("file")] + [len(r["path"]) for r in results]) + 2
    cols = [max(8, len(c) + 2) for c in class_names]
    lines = [f"{'file':<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(class_names, cols)) + "  predicted"]
    for r in results:
        if r["ok"]:
            cells = "".join(f"{r['probabilities'][c]:>{w}.3f}" for c, w in zip(class_names, cols))
            lines.append(f"{r['path']:<{width}}{cells}  {r['predicted_class']}")
        else:
            lines.append(f"{r['path']:<{width}}error: {r['error']}")
    return "\n".join(lines)
