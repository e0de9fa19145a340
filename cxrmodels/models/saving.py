"""Saving and loading models and weight files: atomic, strict, with clear errors."""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import keras

from cxrmodels.runs import run_folder


def _count_h5_arrays(path) -> int:
    import h5py  # a Keras dependency

    count = 0

    def visit(_, obj):
        nonlocal count
        count += isinstance(obj, h5py.Dataset)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return count


def load_weights_file(model: keras.Model, path, *, strict: bool = True) -> None:
    """Loads a weights file into `model`, raising ValueError on any mismatch.

    Keras ignores arrays in a `.weights.h5` file that the model does not
    use; with `strict=True` the file must hold exactly the model's arrays, so
    a file saved from another model never loads halfway.

    Args:
        model: The built model.
        path: A `.weights.h5`, legacy `.h5` or `.keras` file.
        strict: Whether a `.weights.h5` must hold as many arrays as the model
            has weights. Defaults to `True`.

    Raises:
        ValueError: If the file does not match the model, naming the file.
    """
    path = os.fspath(path)
    if strict and path.endswith(".weights.h5"):
        count = _count_h5_arrays(path)
        if count != len(model.weights):
            raise ValueError(
                f"The weights file {path} does not match model {model.name!r}: it holds "
                f"{count} arrays, the model has {len(model.weights)} weights."
            )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except (ValueError, KeyError) as err:
            # The error says it all; Keras' warnings about the same load are noise.
            raise ValueError(
                f"The weights file {path} does not match model {model.name!r}: {_short_reason(err)}"
            ) from err
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _short_reason(err: Exception) -> str:
    """Keras' loading error without the variable values it prints."""
    message = str(err)
    first = message.splitlines()[0] if message else type(err).__name__
    parts = [first.split(". Example", 1)[0].rstrip(".:")]
    shapes = re.search(r"variable\.shape=\(.*?\), Received: value\.shape=\(.*?\)", message)
    if shapes:
        parts.append(shapes.group(0))
    names = re.findall(r"<\w+ name=([^,>]+), built=", message)
    if names:
        parts.append(f"layers not loaded: {sorted(set(names))}")
    return "; ".join(parts)[:1000]


def load_model(path: str | os.PathLike, *, compile: bool = True) -> keras.Model:
    """Loads a `.keras` model saved by this library (or any Keras model).

    Importing this library's custom layers and metrics first registers them,
    so `keras.saving.load_model` finds `ImagePreprocessing`, `RandomAffine`
    and `Specificity` without `custom_objects`.

    Args:
        path: a `.keras` file.
        compile: whether to restore the optimizer and compiled metrics.
            Defaults to True.

    Returns:
        The `keras.Model`.

    Raises:
        FileNotFoundError: There is no file at `path`.
        ValueError: The file is damaged (truncated, or not a `.keras` zip file).
    """
    import zipfile

    import cxrdata.layers.random_affine  # noqa: F401  registers RandomAffine
    import cxrmodels.metrics.keras_metrics  # noqa: F401  registers Specificity
    import cxrmodels.models.inputs  # noqa: F401  registers ImagePreprocessing

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    damaged = (
        f"The model file {path!r} ({os.path.getsize(path)} bytes) is damaged: "
        "it is not a complete .keras zip file (cut short by a kill or a full disk, or not a model)"
    )
    # Keras says "File not found" for a file that is there but is not a zip file.
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(damaged + ".")
    try:
        return keras.saving.load_model(path, compile=compile)
    except (zipfile.BadZipFile, EOFError) as err:  # a zip whose members are damaged
        raise ValueError(f"{damaged}: {err}.") from err


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Saves `model` to a `.keras` file atomically: never half-written under `path`.

    Keras wants the `.keras` suffix on the temporary name too. BatchNormalization
    layers synchronized for multi-replica training are saved unsynchronized, so
    the file loads as an ordinary model (under any backend).
    """
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp.keras")
    synced = [layer for layer in all_layers(model) if getattr(layer, "synchronized", False) is True]
    try:
        for layer in synced:
            layer.synchronized = False
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        for layer in synced:
            layer.synchronized = True
        if os.path.exists(tmp):
            os.unlink(tmp)


def all_layers(layer):
    """`layer` and every layer nested in it."""
    yield layer
    for sub in getattr(layer, "layers", None) or []:
        yield from all_layers(sub)


def load_run_model(run_dir: str | os.PathLike, config: dict[str, Any] | None = None):
    """Loads a run's `model.keras` (uncompiled), warning when the run did not finish.

    Raises:
        FileNotFoundError: the run holds no `model.keras`.
        ValueError: `model.keras` is damaged, or its number of outputs is not
            the number of classes in `config.json`.
    """
    run_dir = os.fspath(run_dir)
    config = run_folder.read_config(run_dir) if config is None else config
    path = os.path.join(run_dir, run_folder.MODEL_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Run {run_dir!r} holds no {run_folder.MODEL_NAME}: its training stopped before the first "
            f"epoch ended. Rerun the same `cxr train` command to resume it."
        )
    if not config.get("finished"):
        warnings.warn(f"Run {run_dir!r} did not finish: using its best model so far.", stacklevel=3)
    model = load_model(path, compile=False)
    outputs = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if outputs != len(config["class_names"]):
        raise ValueError(
            f"The model in run {run_dir!r} has {outputs} class outputs but the run's {run_folder.CONFIG_NAME} names "
            f"{len(config['class_names'])} classes {config['class_names']}: {run_folder.MODEL_NAME} does not belong "
            f"to this run."
        )
    return model
