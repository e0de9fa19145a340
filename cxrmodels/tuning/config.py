"""`SearchConfig`: every option of `cxr tune` / `cxrmodels.search`, declared once.

`cxr tune`'s options, `cxr tune --config FILE`, the keywords of
`cxrmodels.search` and the options saved in a search folder's `search.json`
are all views of this one dataclass (see `cxrdata.utils.config`). The options
a search shares with training (`model`, `batch_size`, `seed`,
`mixed_precision`, `augment`, `model_kwargs`, `verbose`) are `TrainConfig`'s
own declarations, with their checks and spellings, and each trial trains
a `TrainConfig` (see `CXRHyperModel.train_config`).

This module imports neither TensorFlow nor keras-tuner (`cxr tune --help`
stays instant); a `keras_tuner.HyperParameters` passed as `hyperparameters`
is turned into plain values here, so the config saves and compares as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import re
from typing import Any, ClassVar

from cxrdata.utils.argument_validation import check_bool, check_int, check_path, is_number
from cxrdata.utils.config import Config, option, option_of
from cxrmodels.training.config import TrainConfig

TUNERS = ("hyperband", "random", "bayesian")
METRIC_NAMES = ("loss", "accuracy", "auc", "precision", "recall", "specificity")
MIN_WORKER_TIMEOUT = 5.0  # seconds; workers beat every 2
_RANGE_KEYS = ("min", "max")
_HP_FORMS = (
    "a value (fixed), a list of choices, (low, high) or {'min': low, 'max': high} (a range), "
    "or a keras-tuner entry ({'class_name': ..., 'config': ...})"
)


def objective_names(num_classes: int) -> list[str]:
    """The metrics a trial logs (specificity for two classes only), and their `val_` versions."""
    names = [n for n in METRIC_NAMES if n != "specificity" or num_classes == 2]
    return names + [f"val_{n}" for n in names]


def check_objective(objective: Any, num_classes: int) -> tuple[str, str]:
    """Returns `(name, direction)`: "min" for a loss, "max" otherwise.

    Raises:
        ValueError: The model does not log `objective`; the message lists what it logs.
    """
    valid = objective_names(num_classes)
    if not isinstance(objective, str) or objective not in valid:
        raise ValueError(
            f"`objective` must be a metric the model logs: {', '.join(valid)}. "
            f"Received: objective={objective!r}"
        )
    return objective, "min" if objective.endswith("loss") else "max"


# --- `--hp NAME=SPEC` and the plain form of `hyperparameters` ------------------------------------


def parse_hp(specs: list[str]) -> dict:
    """`["lr=1e-4:1e-2", "pooling=max", "base_filters=16,32"]` -> `{"lr": (1e-4, 1e-2), ...}`."""
    out = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ValueError(f"--hp must be NAME=VALUE, NAME=LOW:HIGH or NAME=A,B,C. Received: {spec!r}")
        if name in out:
            raise ValueError(f"--hp names {name!r} twice. Received: {spec!r}")
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 2:
                raise ValueError(f"--hp {name} range must be LOW:HIGH. Received: {spec!r}")
            out[name] = tuple(_value(p, spec) for p in parts)
        elif "," in text:
            out[name] = [_value(p, spec) for p in text.split(",")]
        else:
            out[name] = _value(text, spec)
    return out


def _value(text: str, spec: str):
    text = text.strip()
    if not text:
        raise ValueError(f"--hp has an empty value. Received: {spec!r}")
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def standardize_hyperparameters(name: str, value: Any) -> dict[str, Any] | None:
    """`hyperparameters` as plain JSON values: `{name: spec}`, or None for no overrides.

    Accepts None, a dict `{name: value | [choices] | (low, high) | {"min": low,
    "max": high} | keras-tuner entry}`, a list of `"NAME=SPEC"` strings (`--hp`),
    or a `keras_tuner.HyperParameters` (each entry kept as keras-tuner serializes
    it). A `(low, high)` tuple becomes `{"min": low, "max": high}`, so the value
    survives JSON. Whether a name and its values fit the model is checked by
    the search space (`cxrmodels.tuning.space`), which knows the model.

    Raises:
        TypeError: Not one of the forms above.
        ValueError: A spec that is none of the forms (the message lists them).
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = parse_hp(list(value))
    elif not isinstance(value, dict):
        value = _from_keras_tuner(name, value)
    out = {}
    for key, spec in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"`{name}` names must be strings. Received: {name}={value!r}")
        out[key] = _plain_spec(name, key, spec)
    return out or None


def _plain_spec(name: str, key: str, spec: Any) -> Any:
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"`{name}[{key!r}]` as a tuple must be (low, high). Received: {spec!r}")
        return {k: _python(v) for k, v in zip(_RANGE_KEYS, spec)}
    if isinstance(spec, dict):
        keras_tuner_entry = set(spec) == {"class_name", "config"} and isinstance(spec["config"], dict)
        if keras_tuner_entry:
            return {"class_name": spec["class_name"], "config": {**spec["config"], "name": key}}
        if set(spec) == set(_RANGE_KEYS):
            return {k: _python(spec[k]) for k in _RANGE_KEYS}
        raise ValueError(f"`{name}[{key!r}]` must be {_HP_FORMS}. Received: {spec!r}")
    if isinstance(spec, list):
        if not all(_is_plain(v) for v in spec):
            raise TypeError(f"`{name}[{key!r}]` choices must be numbers or strings. Received: {spec!r}")
        return [_python(v) for v in spec]
    if not _is_plain(spec):
        raise TypeError(f"`{name}[{key!r}]` must be {_HP_FORMS}. Received: {spec!r}")
    return _python(spec)


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, bool)) or is_number(value)


def _python(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (JSON has none); a number's text as the number.

    YAML reads `1e-4` as text; `--hp` values are text too.
    """
    if isinstance(value, str):
        return _value(value, value) if value.strip() else value
    return value.item() if is_number(value) and not isinstance(value, (int, float)) else value


def _from_keras_tuner(name: str, value: Any) -> dict[str, Any]:
    # Deferred: keras-tuner imports TensorFlow, and only a HyperParameters object needs it.
    import keras_tuner as kt
    from keras_tuner.engine import hyperparameters as hpt

    if not isinstance(value, kt.HyperParameters):
        raise TypeError(
            f"`{name}` must be None, a keras_tuner.HyperParameters, a dict {{name: value, (low, high) "
            f"or [choices]}} or a list of 'NAME=SPEC' strings. Received: {name}={value!r}"
        )
    out = {}
    for entry in value.space:
        if entry.conditions:
            raise ValueError(
                f"`{name}` entry {entry.name!r} must not be conditional: the search space is flat. "
                f"Received: {entry!r}"
            )
        out[entry.name] = hpt.serialize(entry)
    return out


# --- the other checks ----------------------------------------------------------------------------


def _objective(name: str, value: Any) -> str:
    valid = objective_names(2)
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"`{name}` must be a metric the model logs: {', '.join(valid)} (specificity: two classes "
            f"only). Received: {name}={value!r}"
        )
    return value


def _project_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or value in (".", ".."):
        raise ValueError(
            f"`{name}` must be a folder name (letters, digits, '_', '-', '.'). Received: {name}={value!r}"
        )
    return value


def _worker_timeout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= MIN_WORKER_TIMEOUT:
        raise ValueError(
            f"`{name}` must be a number of seconds >= {MIN_WORKER_TIMEOUT:g} (workers beat every 2 s). "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _from_train(name: str, **changes) -> Any:
    """A field declared as `TrainConfig` declares `name` (check, flags, parsing), with `changes`."""
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    declared = option_of(field)
    values = {f.name: getattr(declared, f.name) for f in dataclasses.fields(declared)}
    default = changes.pop("default", field.default)
    return option(default, **{**values, **changes})


@dataclasses.dataclass(frozen=True)
class SearchConfig(Config):
    """The options of one hyperparameter search (`cxrmodels.search`, `cxr tune`).

    Build it with keywords (`SearchConfig(dataset="data/", directory="tune/a",
    max_trials=20)`), from a file (`SearchConfig.from_file("tune.yaml")`) or from a
    search folder (`search.json` holds `to_dict()`). Every value is checked when
    the object is made: a wrong type raises TypeError, a value out of range
    ValueError. Options marked `compare=False` (the trial budget, patience,
    the launch) may change when a search resumes; the others must match.
    """

    WHAT: ClassVar[str] = "search"

    dataset: str | None = option(
        None,
        help="a folder written by `cxr convert`, with train and val splits",
        check=lambda n, v: check_path(n, v, allow_none=True),
        cli="positional",
        aliases=("dataset_dir",),
        compare=False,
    )
    directory: str | None = option(
        None,
        help="the search folder; a rerun resumes it",
        check=lambda n, v: check_path(n, v, allow_none=True),
        flags=("--out", "--directory"),
        metavar="DIR",
        aliases=("out",),
        compare=False,
        cli_help_default="none: required, here or in --config",
    )
    model: str = _from_train("model", help="a registered model")
    tuner: str = option("hyperband", help="the search algorithm; bayesian needs scikit-learn", choices=TUNERS)
    objective: str = option(
        "val_auc",
        help="a logged metric: [val_]loss, accuracy, auc, precision, recall, specificity; minimized "
        "for a loss, else maximized",
        check=_objective,
    )
    max_trials: int = option(
        10,
        help="trials in all, resumed ones included; for Hyperband a cap on its own schedule",
        check=lambda n, v: check_int(n, v, minimum=1),
        compare=False,
    )
    max_epochs: int = option(
        10, help="epochs per trial, Hyperband's largest budget", check=lambda n, v: check_int(n, v, minimum=1)
    )
    batch_size: int = _from_train("batch_size", help="examples per batch")
    project_name: str = option("cxr_tune", help="keras-tuner's folder inside DIR", check=_project_name)
    overwrite: bool = option(
        False, help="replace a search already in DIR", check=check_bool, cli="flag", compare=False
    )
    seed: int = _from_train("seed", help="seeds the oracle, Keras, the shuffling and the augmentation")
    hyperparameters: dict | None = option(
        None,
        help="fix (NAME=VALUE) or narrow (NAME=LOW:HIGH or NAME=A,B,C) a hyperparameter; repeatable",
        check=standardize_hyperparameters,
        flags=("--hp",),
        action="append",
        metavar="NAME=SPEC",
        cli_help_default="none",
    )
    tune_new_entries: bool = option(
        True,
        help="also search the hyperparameters --hp does not name (no: they keep their reference values)",
        check=check_bool,
        action=argparse.BooleanOptionalAction,
    )
    mixed_precision: str | None = _from_train(
        "mixed_precision",
        help="mixed_float16 (or bfloat16) trials; put DATASET before this option",
    )
    augment: str = _from_train(
        "augment", help="RandomAffine in the model (gpu), in the input pipeline (cpu) or none"
    )
    patience: int | None = option(
        3,
        help="early stopping patience on the objective, in epochs; null in a config file: none",
        check=lambda n, v: check_int(n, v, minimum=0, allow_none=True),
        compare=False,
    )
    distributed: bool = option(
        False,
        help="run as keras-tuner's chief or worker, per KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and "
        "KERASTUNER_ORACLE_PORT",
        check=check_bool,
        cli="flag",
        compare=False,
    )
    worker_timeout: float = option(
        120.0,
        help="(chief) seconds without a worker's heartbeat before its trial fails",
        check=_worker_timeout,
        compare=False,
    )
    model_kwargs: dict = _from_train(
        "model_kwargs",
        help="fixed options of the model that are not tuned, such as `weights`",
        cli="none",
        members=(),
        group=None,
    )
    verbose: str | int = _from_train("verbose", help="keras-tuner and Keras progress output: auto, 0, 1 or 2")

    def _check_together(self) -> None:
        if not self.tune_new_entries and not self.hyperparameters:
            raise ValueError(
                "`tune_new_entries=False` searches only the entries of `hyperparameters`, "
                f"so give some. Received: hyperparameters={self.hyperparameters!r}"
            )

    def require_paths(self) -> None:
        """Raises ValueError unless `dataset` and `directory` are given (a config may leave them to the CLI)."""
        if self.dataset is None:
            raise ValueError("`dataset` must be the folder of a converted dataset. Received: dataset=None")
        if self.directory is None:
            raise ValueError("`directory` must be the path of the search folder. Received: directory=None")
