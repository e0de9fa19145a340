"""`TrainConfig`: every option of `cxr train` / `cxrmodels.train`, declared once.

The CLI's `cxr train` options, `cxr train --config FILE`, the keywords of
`cxrmodels.train` and the `"config"` section of a run's `config.json` are all
views of this one dataclass (see `cxrdata.utils.config`). `SharedOptions`-style
subsets are not kept apart: `search` and the tuning hypermodel produce
`TrainConfig`s too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

from cxrdata.utils.argument_validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_path,
    check_seed,
    is_number,
    standardize_image_size,
)
from cxrdata.utils.config import Config, Option, option, parse_image_size
from cxrmodels.runs import run_folder

AUGMENT_MODES = ("gpu", "cpu", "none")
BALANCE_MODES = ("none", "oversample", "class-weight")
VERBOSE_MODES = ("auto", 0, 1, 2)
STRATEGIES = (None, "mirrored", "multi-worker")
# Legacy `ImageDataGenerator` arguments of the reference training, scaled by `augment_strength`.
REFERENCE_AUGMENTATION = {
    "rotation_range": 15.0,
    "zoom_range": 0.2,
    "width_shift_range": 0.2,
    "height_shift_range": 0.2,
    "shear_range": 0.2,
}
MAX_AUGMENT_STRENGTH = 4.0  # shifts stay below 1, a fraction of the size, as in ImageDataGenerator
_POLICIES = {
    "float16": "mixed_float16",
    "mixed_float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
}
# Set by `train` from the dataset and the other options, never through `model_kwargs`.
_RESERVED_MODEL_KWARGS = ("input_shape", "num_classes", "augment", "equalize")


def policy_name(name: str, value: Any) -> str | None:
    """The Keras dtype policy for `mixed_precision` (None: float32)."""
    if value is None or value is False:
        return None
    if value is True:
        return "mixed_float16"
    if isinstance(value, str) and value in _POLICIES:
        return _POLICIES[value]
    raise ValueError(f"`{name}` must be False, True, 'float16' or 'bfloat16'. Received: {name}={value!r}")


def _balance(name: str, value: Any) -> str:
    return {None: "none", "class_weight": "class-weight"}.get(value, value)  # older spellings


def _verbose(name: str, value: Any) -> str | int:
    if isinstance(value, bool) or value not in VERBOSE_MODES:
        raise ValueError(f"`{name}` must be one of {VERBOSE_MODES}. Received: {name}={value!r}")
    return value


def _strategy(name: str, value: Any) -> Any:
    """None, "mirrored", "multi-worker", a `tf.distribute.Strategy`, or a recorded strategy's class name."""
    if value is None or value in ("mirrored", "multi-worker"):
        return value
    if isinstance(value, str):
        if value.endswith("Strategy"):  # read back from a run's config.json
            return value
        raise ValueError(
            f"`{name}` must be None, 'mirrored', 'multi-worker' or a tf.distribute.Strategy. "
            f"Received: {name}={value!r}"
        )
    import tensorflow as tf  # deferred: only a strategy object needs TensorFlow

    if isinstance(value, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError(
            "A MultiWorkerMirroredStrategy cannot drive `Model.fit` of Keras 3 in TensorFlow 2.16: pass "
            f"strategy='multi-worker' (a custom loop under it). Received: {name}={value!r}"
        )
    if not isinstance(value, tf.distribute.Strategy):
        raise TypeError(
            f"`{name}` must be None, 'mirrored', 'multi-worker' or a tf.distribute.Strategy. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return value


def _model_kwargs(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            f"`{name}` must be a dict of option names to values, or None. Received: {name}={value!r}"
        )
    reserved = sorted(set(value) & set(_RESERVED_MODEL_KWARGS))
    if reserved:
        raise ValueError(
            f"`{name}` must not set {reserved}: train sets them (use `image_size`, `augment` and "
            f"`equalize_radius`). Received: {name}={value!r}"
        )
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
    if kwargs.get("weights") is not None and not isinstance(kwargs["weights"], str):
        kwargs["weights"] = os.fspath(kwargs["weights"])  # a path-like, kept as text in config.json
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise TypeError(
            f"`{name}` must hold plain values (numbers, strings, lists), as they are saved in "
            f"config.json: {e}. Received: {name}={value!r}"
        ) from None
    return kwargs


def _strength(name: str, value: Any) -> float:
    if not is_number(value) or not 0 <= value <= MAX_AUGMENT_STRENGTH:
        raise ValueError(
            f"`{name}` must be a number from 0 to {MAX_AUGMENT_STRENGTH:g}. Received: {name}={value!r}"
        )
    return float(value)


def _positive(name: str, value: Any) -> float:
    value = check_number(name, value)
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    return value


_MODEL_OPTIONS = (
    ("filters", Option(help="conv filters per block (seed_cnn)", parse=int, nargs="+", metavar="N")),
    ("dense_units", Option(help="units of the hidden Dense layer (0: none)", parse=int, metavar="N")),
    ("dropout", Option(help="dropout before the last Dense layer", parse=float, metavar="RATE")),
    ("pooling", Option(help="pooling of the blocks or the backbone", choices=("max", "avg"))),
    ("weights", Option(help="initial weights", metavar="PATH|imagenet")),
    ("trainable_blocks", Option(help="backbone blocks to fine-tune", parse=int, metavar="N")),
)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """The options of one training run (`cxrmodels.train`, `cxr train`).

    Build it with keywords (`TrainConfig(dataset="data/", out="runs/a", epochs=5)`),
    from a file (`TrainConfig.from_file("train.yaml")`) or from a run
    (`TrainConfig.from_dict(run_config["config"])`). Every value is checked
    when the object is made: a wrong type raises TypeError, a value out of
    range ValueError. The field docs are the `help` of each `option`.
    """

    WHAT: ClassVar[str] = "training run"

    dataset: str | None = option(
        None,
        help="converted dataset folder (with train and val splits)",
        check=lambda n, v: check_path(n, v, allow_none=True),
        cli="positional",
        aliases=("dataset_dir",),
        compare=False,
    )
    out: str | None = option(
        None,
        help="run folder (model, history, curves, config)",
        check=lambda n, v: check_path(n, v, allow_none=True),
        metavar="RUN",
        compare=False,
        cli_help_default="none: required, here or in --config",
    )
    model: str = option(
        "seed_cnn",
        help="registered model name",
        check=lambda n, v: _model_name(n, v),
    )
    epochs: int = option(30, help="epochs", check=lambda n, v: check_int(n, v, minimum=1), compare=False)
    batch_size: int = option(32, help="batch size (global)", check=lambda n, v: check_int(n, v, minimum=1))
    learning_rate: float = option(
        1e-3, help="Adam learning rate", check=_positive, flags=("--lr", "--learning-rate"), metavar="LR"
    )
    mixed_precision: str | None = option(
        None,
        help="mixed_float16 (GPU; the default when given alone) or mixed_bfloat16; put DATASET before this option",
        check=policy_name,
        flags=("--mixed-precision",),
        nargs="?",
        const="float16",
        parse=lambda text: check_choice("--mixed-precision", text, ("float16", "bfloat16")),
        metavar="{float16,bfloat16}",
        cli_help_default="float32",
    )
    augment: str = option(
        "gpu",
        help="RandomAffine in the model (gpu), in the input pipeline (cpu), or none",
        choices=AUGMENT_MODES,
    )
    augment_strength: float = option(
        1.0,
        help="scales the rotation/zoom/shift/shear ranges (0: no augmentation)",
        check=_strength,
    )
    balance: str = option("none", help="class balancing", check=_balance, choices=BALANCE_MODES)
    image_size: tuple[int, int] | None = option(
        None,
        help="model input size",
        check=lambda n, v: standardize_image_size(v, name=n, allow_none=True),
        parse=parse_image_size,
        metavar="N|HxW",
        cli_help_default="the dataset's",
    )
    resize_in_model: bool = option(
        False,
        help="resize inside the model when --image-size differs from the dataset's",
        check=check_bool,
        cli="flag",
    )
    equalize_radius: int | None = option(
        None,
        help="equalize inside the model (cxrdata.LocalEqualization(RADIUS), before augmentation, on the "
        "device); the dataset must be converted with --equalize none",
        check=lambda n, v: check_int(n, v, minimum=1, allow_none=True),
        flags=("--equalize-radius", "--equalize-in-model"),
        parse=int,
        metavar="RADIUS",
        aliases=("equalize_in_model",),
        cli_help_default="none",
    )
    seed: int = option(
        0,
        help="seeds Keras, the input order and the augmentation",
        check=lambda n, v: check_seed(v, allow_none=False, name=n),
    )
    strategy: Any = option(
        None,
        help="mirrored: this machine's GPUs; multi-worker: the processes or machines in TF_CONFIG (run "
        "the same command on each)",
        check=_strategy,
        parse=lambda text: check_choice("--strategy", text, ("mirrored", "multi-worker")),
        metavar="{mirrored,multi-worker}",
        cli_help_default="none",
    )
    patience: int = option(
        10,
        help="early stopping patience in epochs",
        check=lambda n, v: check_int(n, v, minimum=0),
        compare=False,
    )
    verbose: str | int = option(
        "auto",
        help="Keras' progress output: auto (a bar on a terminal, a line per epoch otherwise), 0, 1 or 2",
        check=_verbose,
        parse=lambda text: text if text == "auto" else int(text),
        metavar="{auto,0,1,2}",
        switches=(("--quiet", 0),),
        compare=False,
    )
    overwrite: bool = option(
        False, help="replace a finished run in RUN", check=check_bool, cli="flag", compare=False
    )
    model_kwargs: dict = option(
        None,
        help="the model's own options (see cxrmodels.model_options(name)) and `weights`",
        check=_model_kwargs,
        members=_MODEL_OPTIONS,
        group="model options (passed only when given; see each model's defaults)",
    )

    def _check_together(self) -> None:
        if self.equalize_radius is not None and self.augment == "cpu":
            raise ValueError(
                "`equalize_radius` equalizes inside the model, so augmentation must run there too, after "
                "it: pass augment='gpu' (--augment gpu) or 'none'. Received: augment='cpu'"
            )

    @classmethod
    def from_run(cls, run_dir) -> TrainConfig:
        """The config a run was trained with (the `"config"` of its `config.json`).

        Raises:
            FileNotFoundError: not a run folder.
            ValueError: a run written by a cxr older than `TrainConfig`.
        """
        saved = run_folder.read_config(run_dir)
        if "config" not in saved:
            raise ValueError(
                f"The run {os.fspath(run_dir)!r} was written by an older cxr: its config.json has no 'config'."
            )
        return cls.from_dict(saved["config"], source=f"The config.json of {os.fspath(run_dir)!r}")

    def require_paths(self) -> None:
        """Raises ValueError unless `dataset` and `out` are given (a config may leave them to the CLI)."""
        if self.dataset is None:
            raise ValueError("`dataset` must be the folder of a converted dataset. Received: dataset=None")
        if self.out is None:
            raise ValueError("`out` must be the path of the run folder. Received: out=None")


def _model_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"`{name}` must be a registered model name (a string). Received: {name}={value!r}")
    return value


def augmentation_layer(config: TrainConfig):
    """The `cxrdata.RandomAffine` of a run (None for augment "none" or strength 0)."""
    if config.augment == "none" or config.augment_strength == 0:
        return None
    from cxrdata.layers.random_affine import RandomAffine  # deferred: Keras imports TensorFlow (cxr --help)

    args = {k: v * config.augment_strength for k, v in REFERENCE_AUGMENTATION.items()}
    return RandomAffine.from_image_data_generator(seed=config.seed, **args)
