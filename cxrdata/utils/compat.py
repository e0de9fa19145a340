"""The one place private upstream APIs are reached, with the versions they were written for.

Keras and keras-tuner keep some things we need out of their public API. Each is
imported here, and nowhere else, so an upgrade that moves one fails in one
place with a message that says which versions are supported.
"""

from __future__ import annotations

import importlib

# Written and tested against these; the checks below fail clearly outside them.
KERAS_VERSIONS = ((3, 7), (4, 0))  # [low, high)
KERAS_TUNER_VERSIONS = ((1, 4), (1, 5))


def _version_tuple(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def _unsupported(package: str, version: str, bounds, what: str, error: Exception) -> ImportError:
    low, high = (".".join(map(str, b)) for b in bounds)
    return ImportError(
        f"cxr needs {what} from {package}, which moved in {package} {version} "
        f"(supported: >={low},<{high}). Install a supported version, for example "
        f"`pip install '{package}>={low},<{high}'`. ({type(error).__name__}: {error})"
    )


def check_version(package: str, version: str, bounds) -> None:
    """Raises ImportError if `version` of `package` is outside `bounds` = (low, high)."""
    low, high = bounds
    if not (low <= _version_tuple(version) < high):
        raise ImportError(
            f"cxr supports {package} >={'.'.join(map(str, low))},<{'.'.join(map(str, high))}. "
            f"Installed: {package} {version}."
        )


def keras_data_layer_base():
    """Keras' base for preprocessing layers that also run inside tf.data under any backend.

    Falls back to `keras.layers.Layer` (the layer then still works inside models).
    """
    import keras

    check_version("keras", keras.__version__, KERAS_VERSIONS)
    for module, name in (
        ("keras.src.layers.preprocessing.data_layer", "DataLayer"),
        ("keras.src.layers.preprocessing.tf_data_layer", "TFDataLayer"),
    ):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return keras.layers.Layer


def keep_input_dtype(layer) -> None:
    """Makes a Keras layer take its input as given: no cast to its compute dtype.

    Sets `Layer._convert_input_args` and `_allow_non_tensor_positional_args`
    (private in Keras 3).
    """
    import keras

    check_version("keras", keras.__version__, KERAS_VERSIONS)
    layer._convert_input_args = False
    layer._allow_non_tensor_positional_args = True


def keras_tuner_private():
    """keras-tuner's distributed-search internals (no public name in keras-tuner 1.4).

    Returns a namespace with `dist_utils`, `trial_module`, `oracle_client`,
    `oracle_chief` and `protos`.
    """
    import types

    import keras_tuner

    try:
        check_version("keras-tuner", keras_tuner.__version__, KERAS_TUNER_VERSIONS)
        from keras_tuner.src import protos
        from keras_tuner.src.distribute import oracle_chief, oracle_client
        from keras_tuner.src.distribute import utils as dist_utils
        from keras_tuner.src.engine import trial as trial_module
    except ImportError as e:
        raise _unsupported(
            "keras-tuner", keras_tuner.__version__, KERAS_TUNER_VERSIONS, "distributed-search internals", e
        ) from e
    return types.SimpleNamespace(
        dist_utils=dist_utils,
        trial_module=trial_module,
        oracle_client=oracle_client,
        oracle_chief=oracle_chief,
        protos=protos,
    )


def keras_file_utils():
    """`keras.src.utils.file_utils`, whose `get_file` `keras.applications` downloads through.

    The tests patch it to serve a local "ImageNet" file: there is no public hook for it.
    """
    import keras

    check_version("keras", keras.__version__, KERAS_VERSIONS)
    from keras.src.utils import file_utils

    return file_utils


# keras-tuner's private oracle and tuner methods we override or call. Each
# override lives in a mixin built here, so a keras-tuner release that renames
# one fails in this module, not deep inside a search.


def reference_first_oracle_mixin():
    """A mixin for keras-tuner oracles: the first trial takes every hyperparameter's default.

    Overrides `Oracle._random_values` (private in keras-tuner 1.4).
    """
    import keras_tuner as kt

    check_version("keras-tuner", kt.__version__, KERAS_TUNER_VERSIONS)

    class ReferenceFirst:
        def _random_values(self):
            if not self._tried_so_far:
                hps = kt.HyperParameters()
                hps.merge(self.hyperparameters.space)
                return hps.values
            return super()._random_values()

    return ReferenceFirst


def quiet_build_tuner_mixin(quiet):
    """A mixin for keras-tuner tuners that builds each trial's model inside `quiet()`.

    Overrides `Tuner._build_hypermodel` (private in keras-tuner 1.4): Hyperband
    loads an earlier trial's weights there.
    """

    class QuietBuild:
        def _build_hypermodel(self, hp):
            with quiet():
                return super()._build_hypermodel(hp)

    return QuietBuild


def oracle_save_trial(oracle, trial) -> None:
    """`Oracle._save_trial` (private in keras-tuner 1.4)."""
    oracle._save_trial(trial)


def tuner_is_worker(tuner) -> bool:
    """`Tuner._is_worker()` (private in keras-tuner 1.4)."""
    return tuner._is_worker()
