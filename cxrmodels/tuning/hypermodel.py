"""`CXRHyperModel`: a registered model as a keras-tuner search space (used by `cxrmodels.search`).

Each trial is a `TrainConfig`: the search's fixed training options with the
trial's hyperparameters on top (`train_config`). The model and its input
stack come from `cxrmodels.models.input_stack.build_model` and are compiled by
`cxrmodels.training.session.compile_model`, as `cxrmodels.train` builds and
compiles them. The space itself, its reference values and the checks of a
user's overrides live in `cxrmodels.tuning.space`.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import keras_tuner as kt

import cxrdata
from cxrdata.utils.argument_validation import check_bool
from cxrmodels.metrics.clinical import positive_class_index
from cxrmodels.models import model_info, model_options
from cxrmodels.models.input_stack import build_model
from cxrmodels.models.inputs import check_input_shape, check_num_classes
from cxrmodels.training.config import TrainConfig, augmentation_layer
from cxrmodels.training.session import compile_model, dtype_policy
from cxrmodels.tuning import space as _tuning_space

# TrainConfig fields a trial's hyperparameters decide, and those a search does not offer (yet).
_DECIDED = ("learning_rate", "augment_strength", "equalize_radius")
_UNSUPPORTED = ("balance", "image_size", "resize_in_model", "strategy")
# TrainConfig fields of one run, not of the trained model: left out of `train_kwargs`.
RUN_FIELDS = ("dataset", "out", "epochs", "patience", "verbose", "overwrite")


class CXRHyperModel(kt.HyperModel):
    """A registered `cxrmodels` model as a keras-tuner search space.

    For `seed_cnn` the space covers `learning_rate` (log scale, 1e-5 to 1e-2),
    `base_filters` (the first block's width; later blocks double it),
    `dense_units`, `dropout`, `pooling` ("max" or "avg") and
    `augment_strength` (a scale on `cxrdata.RandomAffine`'s reference ranges; 0
    turns augmentation off); `blocks` (3) is tuned only when given. For the
    transfer models it covers `learning_rate`, `dense_units`, `dropout` and
    `trainable_blocks` (`pooling` and `augment_strength` only when given).
    Every default is the reference value (learning rate 1e-3, Adam's default;
    base filters 32; dense units 128; dropout 0; max pooling; strength 1), so
    the default hyperparameters build exactly `create_model(model)`.

    On a dataset converted with `equalize="none"` (`dataset_equalized=False`)
    the space also holds `equalize_radius`: a trial with radius r > 0 puts
    `cxrdata.LocalEqualization(r)` first in its model (as `cxrmodels.train`'s
    `equalize_radius`), 0 leaves the images unequalized. Its choices are 0,
    35, 70 and 100; the default, 70, is the study's `disk(70)`, so trial 0 is
    still the reference.

    Each trial's training options are a `TrainConfig` (`train_config(values)`):
    the fixed options (`config`, or the keywords) with the trial's learning
    rate, augmentation strength, radius and model options on top. Its model
    is built and compiled as `cxrmodels.train` builds and compiles a run's
    (Adam, categorical cross-entropy, `default_metrics`), and `fit` takes a
    converted dataset folder and builds its train and val pipelines once per
    trial with `cxrdata.load`.

    Args:
        model: A name from `cxrmodels.list_models()`. Defaults to None:
            `config.model` ("seed_cnn").
        input_shape: `(height, width, channels)` of the dataset's images.
        num_classes: Number of classes.
        class_names: The class names, to find the positive class of two
            (`cxrmodels.metrics.clinical.positive_class_index`). Defaults to None
            (class 1 is positive).
        hyperparameters: Fixes or narrows entries of the space: a
            `keras_tuner.HyperParameters` holding `hp.Fixed`, `hp.Choice`,
            `hp.Int` or `hp.Float` entries named as above, or a dict
            `{name: value | (low, high) | {"min": low, "max": high} | [choices]}`
            (as `SearchConfig` keeps them). Pass the checked copy,
            `hypermodel.hyperparameters`, to a tuner with `tune_new_entries`:
            True searches the other entries too, False keeps them at their
            reference values. Give a narrowed range a `default=` to keep the
            reference value first. Defaults to None.
        dataset_equalized: False for a dataset converted with
            `equalize="none"` (`search` sets it with
            `cxrmodels.models.input_stack.dataset_is_equalized`): then
            `equalize_radius` is searched. Defaults to True.
        name: The hypermodel's name. Defaults to "cxr_" + the model's name.
        config: The fixed training options of every trial, a `TrainConfig`
            (its `learning_rate`, `augment_strength` and `equalize_radius` are
            hyperparameters: leave them at their defaults). Defaults to None.
        **train_options: `TrainConfig` fields on top of `config`, such as
            `mixed_precision` (None: float32; True/"float16" or "bfloat16"), `augment`
            ("gpu", "cpu" or "none"), `batch_size` (32), `seed` (0) and
            `model_kwargs` (fixed options of the model that are not tuned,
            such as `weights` or `freeze_batchnorm`).

    Raises:
        ValueError: An unknown model, objective or hyperparameter name, or a
            value out of range (a learning rate <= 0, min > max, ...);
            `equalize_radius` given for an equalized dataset, or a radius > 0
            possible with `augment="cpu"` (the warp would come before the
            equalization: `TrainConfig`'s rule).
        TypeError: An argument of the wrong type.

    Example:

    >>> hp = keras_tuner.HyperParameters()
    >>> hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    >>> hp.Fixed("pooling", "max")
    >>> hypermodel = CXRHyperModel("seed_cnn", input_shape=(128, 128, 1), num_classes=2,
    ...                            hyperparameters=hp)
    >>> tuner = keras_tuner.RandomSearch(
    ...     hypermodel, objective=keras_tuner.Objective("val_auc", "max"), max_trials=8,
    ...     hyperparameters=hypermodel.hyperparameters, tune_new_entries=True)
    >>> tuner.search("data/", epochs=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        input_shape,
        num_classes: int,
        class_names=None,
        hyperparameters=None,
        dataset_equalized: bool = True,
        name: str | None = None,
        config: TrainConfig | None = None,
        **train_options: Any,
    ):
        check_bool("dataset_equalized", dataset_equalized)
        if model is not None:
            train_options["model"] = model
        self.config = _check_base(TrainConfig.from_kwargs(config, **train_options))
        model = self.config.model
        options = model_options(model)  # an unknown name lists the known ones
        self._family = model_info(model).family
        input_shape = check_input_shape(input_shape, min_size=1, model=model)
        check_num_classes(num_classes)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"`class_names` must hold {num_classes} names. Received: class_names={class_names!r}"
            )
        super().__init__(name=name or f"cxr_{model}")
        self.model_name, self.input_shape, self.num_classes = model, tuple(input_shape), num_classes
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.positive_index = None
        if num_classes == 2:
            self.positive_index = positive_class_index(class_names) if class_names is not None else 1
        self.dataset_equalized = dataset_equalized
        self.space = _tuning_space.space_for(
            model, options, self.input_shape, dataset_equalized=dataset_equalized
        )
        self.model_kwargs = self._check_model_kwargs(self.config.model_kwargs, options)
        self._overrides = _tuning_space.normalize_overrides(hyperparameters, self.space)
        _tuning_space.check_input_size(self.space, self._overrides, self.input_shape)
        self._check_equalize_with_augment()

    def _check_equalize_with_augment(self) -> None:
        """`TrainConfig`'s rule (no `augment="cpu"` with a radius) for every radius the search may try."""
        if "equalize_radius" not in self.space.names:
            return
        entry = next((e for e in self._overrides.space if e.name == "equalize_radius"), None)
        if isinstance(entry, kt.engine.hyperparameters.Fixed) and entry.value == 0:
            return
        try:
            self.config.replace(equalize_radius=self.space.reference["equalize_radius"])
        except ValueError as err:
            raise ValueError(
                f"{err}. In a search, hyperparameters={{'equalize_radius': 0}} (--hp equalize_radius=0) "
                "keeps the images unequalized instead."
            ) from None

    def _check_model_kwargs(self, model_kwargs: dict[str, Any], options) -> dict[str, Any]:
        tuned = set(self.space.names) | ({"filters"} if self._family == "cnn" else set())
        for key in model_kwargs:
            if key in tuned:
                raise ValueError(
                    f"`model_kwargs` must not set {key!r}: it is a hyperparameter; fix it with "
                    f"`hyperparameters` instead (hp.Fixed, or {{name: value}}). Received: "
                    f"model_kwargs={model_kwargs!r}"
                )
            if key not in options and key != "weights":
                raise TypeError(
                    f"Model {self.model_name!r} has no option {key!r}. Accepted: "
                    f"{sorted(set(options) - tuned)}. Received: model_kwargs={model_kwargs!r}"
                )
        return dict(model_kwargs)

    @property
    def hyperparameters(self) -> kt.HyperParameters:
        """The checked overrides, to pass to a tuner as `hyperparameters=`."""
        return self._overrides.copy()

    @property
    def reference_values(self) -> dict[str, Any]:
        """Every hyperparameter's reference value (the defaults)."""
        return dict(self.space.reference)

    def declare_hyperparameters(self, hp) -> None:
        hp.merge([e for e in self._overrides.space if e.name not in hp])

    def build(self, hp) -> keras.Model:
        """Builds and compiles the model for `hp` (under the mixed precision policy, if any).

        Overrides missing from `hp` are added to it first, so a fixed
        hyperparameter stays fixed even in a tuner that was not given them.
        """
        self.declare_hyperparameters(hp)
        values = {}
        for name in self.space.names:
            if name in self.space.tuned:
                values[name] = self.space.params[name].declare(hp, self.space.reference[name])
            else:
                values[name] = hp.get(name) if name in hp else self.space.reference[name]
        return self._compiled_model(values)

    def _compiled_model(self, values: dict[str, Any]) -> keras.Model:
        """The trial's model with its input stack, compiled as `cxrmodels.train` compiles a run's."""
        config = self.train_config(values)
        with dtype_policy(config.mixed_precision):
            keras.utils.set_random_seed(config.seed)
            aug = augmentation_layer(config) if config.augment == "gpu" else None
            net = build_model(
                config.model,
                data_shape=self.input_shape,
                model_shape=self.input_shape,
                num_classes=self.num_classes,
                equalize_radius=config.equalize_radius,
                augment=aug,
                model_kwargs=config.model_kwargs,
            )
            compile_model(
                net,
                learning_rate=config.learning_rate,
                num_classes=self.num_classes,
                positive=self.positive_index,
            )
        return net

    def fit(self, hp, model, *args, **kwargs):
        """Trains `model`; a dataset folder as first argument is read with `cxrdata.load`.

        With a folder, the "train" split (shuffled, with the augmentation when
        `augment="cpu"`) and the "val" split for validation are built once for
        the trial. Anything else goes to `model.fit` unchanged.
        """
        if args and isinstance(args[0], (str, os.PathLike)):
            config = self.train_config(self.resolve(hp), dataset=os.fspath(args[0]))
            args = args[1:]
            train_ds = cxrdata.load(
                config.dataset,
                "train",
                batch_size=config.batch_size,
                shuffle=True,
                seed=config.seed,
                augment=augmentation_layer(config) if config.augment == "cpu" else None,
            )
            kwargs["validation_data"] = cxrdata.load(
                config.dataset, "val", batch_size=config.batch_size, shuffle=False
            )
            kwargs.setdefault("shuffle", False)  # the pipeline shuffles; Keras would warn
            return model.fit(train_ds, *args, **kwargs)
        return model.fit(*args, **kwargs)

    def resolve(self, hp) -> dict[str, Any]:
        """Every hyperparameter's value in `hp`, else its override's default, else its reference value."""
        defaults = {
            e.name: e.value if isinstance(e, kt.engine.hyperparameters.Fixed) else e.default
            for e in self._overrides.space
        }
        values = hp.values if isinstance(hp, kt.HyperParameters) else dict(hp)
        return {
            name: values.get(name, defaults.get(name, self.space.reference[name]))
            for name in self.space.names
        }

    def train_config(self, values: dict[str, Any], **changes: Any) -> TrainConfig:
        """The `TrainConfig` of the trial with hyperparameter `values` (from `resolve`).

        Args:
            values: Every hyperparameter's value.
            **changes: Other `TrainConfig` fields on top, such as `dataset` and `out`.

        Example:
            >>> config = hypermodel.train_config(hypermodel.resolve(hp), dataset="data/",
            ...                                  out="runs/best")  # doctest: +SKIP
            >>> cxrmodels.train(config=config, epochs=30)  # doctest: +SKIP
        """
        decided: dict[str, Any] = {
            "learning_rate": float(values["learning_rate"]),
            "augment_strength": float(values["augment_strength"]),
            "model_kwargs": self._model_args(values),
        }
        if "equalize_radius" in self.space.names:
            decided["equalize_radius"] = int(values["equalize_radius"]) or None  # 0: none
        return self.config.replace(**decided, **changes)

    def train_kwargs(self, values: dict[str, Any]) -> dict[str, Any]:
        """`cxrmodels.train` keywords that train the model of `values`: `train_config` less `RUN_FIELDS`."""
        return {k: v for k, v in self.train_config(values).to_dict().items() if k not in RUN_FIELDS}

    def _model_args(self, values: dict[str, Any]) -> dict[str, Any]:
        args = dict(self.model_kwargs)
        if self._family == "cnn":
            args["filters"] = [int(values["base_filters"]) * 2**i for i in range(int(values["blocks"]))]
        for name in ("dense_units", "dropout", "pooling", "trainable_blocks"):
            if name in values:
                args[name] = values[name]
        if "dropout" in args:
            args["dropout"] = round(float(args["dropout"]), 6)  # 0.30000000000000004 from a stepped Float
        return args


def _check_base(config: TrainConfig) -> TrainConfig:
    """Refuses fixed options that a trial's hyperparameters decide, or that a search does not offer."""
    defaults = TrainConfig()
    for name in _DECIDED + _UNSUPPORTED:
        value = getattr(config, name)
        if value != getattr(defaults, name):
            why = (
                "it is a hyperparameter; fix or narrow it with `hyperparameters`"
                if name in _DECIDED
                else "a search does not offer it"
            )
            raise ValueError(
                f"`{name}` must keep its default in a search's fixed training options: {why}. "
                f"Received: {name}={value!r}"
            )
    return config
