"""Shared fixtures: small synthetic trees and converted datasets in tmp_path."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# `../shared/realdata` beside the checkout; from a git worktree nested one level deeper
# (e.g. wt/<branch>/), the nearest ancestor that has one.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
REALDATA = next(
    (p / "shared" / "realdata" for p in _ROOT.parents if (p / "shared" / "realdata").is_dir()),
    _ROOT.parent / "shared" / "realdata",
)


@pytest.fixture(scope="session")
def realdata() -> pathlib.Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real samples not found at {REALDATA}")
    return REALDATA


@pytest.fixture
def phantom_tree(tmp_path):
    """A factory: writes a class-folder tree of small phantoms and returns its path."""

    def make(name="src", **kwargs):
        from cxrdata.synthetic import write_tree

        kwargs.setdefault("per_class", 12)
        kwargs.setdefault("image_size", 64)
        root = tmp_path / name
        write_tree(root, **kwargs)
        return root

    return make


def _convert_phantoms(base, *, per_class, image_size, radius=70, equalize="local"):
    """Writes phantoms under `base/src` and converts them into `base/data` (small shards)."""
    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree

    write_tree(base / "src", per_class=per_class, image_size=image_size, seed=3)
    convert(
        base / "src",
        base / "data",
        image_size=image_size,
        equalize=equalize,
        radius=radius,
        shard_size=0.02,
        workers=1,
        progress=False,
    )
    return base / "data"


@pytest.fixture(scope="session")
def converted_dataset(tmp_path_factory):
    """A converted phantom dataset (2 classes, 64x64, a few shards per split), shared by tests."""
    return _convert_phantoms(
        tmp_path_factory.mktemp("converted"), per_class={"COVID": 24, "Normal": 40}, image_size=64, radius=20
    )


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory):
    """Phantoms converted with equalize="none" (2 classes, 48x48): for equalization in the model."""
    return _convert_phantoms(
        tmp_path_factory.mktemp("raw"), per_class={"COVID": 12, "Normal": 16}, image_size=48, equalize="none"
    )


@pytest.fixture(scope="session")
def trained_run(converted_dataset, tmp_path_factory):
    """A tiny seed_cnn run (2 epochs, GPU-style augmentation in the model) on `converted_dataset`.

    Shared by the training, evaluation, prediction and export tests: do not
    train into it again (tests that need their own run make one).
    """
    from cxrmodels.training.trainer import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(
        converted_dataset,
        out=run,
        epochs=2,
        batch_size=16,
        verbose=0,
        model_kwargs={"filters": (4, 8, 8), "dense_units": 8},
    )
    return run


@pytest.fixture(scope="session")
def exported_savedmodel(trained_run, tmp_path_factory) -> pathlib.Path:
    """`trained_run` exported once as a SavedModel, shared by the export and serving tests."""
    from cxrmodels.serving.exporting import export

    return pathlib.Path(export(trained_run, tmp_path_factory.mktemp("exported") / "sm", format="savedmodel"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A converted phantom dataset for tuning: 2 classes, 48x48, 28 train and 7 val images."""
    return _convert_phantoms(
        tmp_path_factory.mktemp("tune_data"), per_class={"COVID": 16, "Normal": 24}, image_size=48, radius=12
    )


@pytest.fixture(autouse=True)
def _global_keras_state_is_left_as_found():
    """A test (or the library) that leaves a global dtype policy behind fails here, by name.

    A leaked `mixed_float16` makes later models wrap their optimizer in a loss-scale optimizer
    whose first step is skipped, which shows up as a confusing failure in another file.
    """
    import sys

    keras = sys.modules.get("keras")
    before = keras.config.dtype_policy().name if keras is not None else None
    yield
    keras = sys.modules.get("keras")
    if keras is None:
        return
    after = keras.config.dtype_policy().name
    if after != (before or "float32"):
        keras.config.set_dtype_policy(before or "float32")
        pytest.fail(f"the global Keras dtype policy was left at {after!r} (was {before or 'float32'!r})")
