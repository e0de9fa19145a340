"""`CXRHyperModel`: a registered model as a keras-tuner search space (used by `cxrmodels.search`).

The space itself, its reference values and the checks of a user's overrides
live in `cxrmodels.tuning.space`.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import keras_tuner as kt

from cxrdata.utils.argument_validation import check_bool, is_int
from cxrmodels.training.config import TrainConfig, augmentation_layer
from cxrmodels.tuning import space as _tuning_space

METRIC_NAMES = ("loss", "accuracy", "auc", "precision", "recall", "specificity")
_RESERVED = ("input_shape", "num_classes", "augment")


_is_int = is_int


def objective_names(num_classes: int) -> list[str]:
    """The metrics a trial logs (specificity for two classes only), and their `val_` versions."""
    names = [n for n in METRIC_NAMES if n != "specificity" or num_classes == 2]
    return names + [f"val_{n}" for n in names]


def check_objective(objective, num_classes: int) -> tuple[str, str]:
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
    `equalize_in_model`), 0 leaves the images unequalized. Its choices are 0,
    35, 70 and 100; the default, 70, is the study's `disk(70)`, so trial 0 is
    still the reference.

    Models are compiled with Adam, categorical cross-entropy and
    `cxrmodels.metrics.keras_metrics.default_metrics`, as `cxrmodels.train` does.
    `fit` takes a converted dataset folder and builds its train and val
    pipelines once per trial with `cxrdata.load`.

    Args:
        model: A name from `cxrmodels.list_models()`. Defaults to "seed_cnn".
        input_shape: `(height, width, channels)` of the dataset's images.
        num_classes: Number of classes.
        class_names: The class names, to find the positive class of two
            (`cxrmodels.metrics.clinical.positive_class_index`). Defaults to None
            (class 1 is positive).
        hyperparameters: Fixes or narrows entries of the space: a
            `keras_tuner.HyperParameters` holding `hp.Fixed`, `hp.Choice`,
            `hp.Int` or `hp.Float` entries named as above, or a dict
            `{name: value | (low, high) | [choices]}`. Pass the checked copy,
            `hypermodel.hyperparameters`, to a tuner with `tune_new_entries`:
            True searches the other entries too, False keeps them at their
            reference values. Give a narrowed range a `default=` to keep the
            reference value first. Defaults to None.
        mixed_precision: False, True or "float16" (`mixed_float16`), or
            "bfloat16", as in `cxrmodels.train`. Defaults to False.
        augment: "gpu" (`RandomAffine` inside the model), "cpu" (in the input
            pipeline) or "none". Defaults to "gpu".
        batch_size: Examples per batch. Defaults to 32.
        seed: Seeds Keras, the pipeline's shuffling and the augmentation. Defaults to 0.
        model_kwargs: Fixed options of the model that are not tuned, such as
            `weights` or `freeze_batchnorm`. Defaults to None.
        dataset_equalized: False for a dataset converted with
            `equalize="none"` (`search` sets it from the manifest): then
            `equalize_radius` is searched. Defaults to True.
        name: The hypermodel's name. Defaults to "cxr_" + `model`.

    Raises:
        ValueError: An unknown model, objective or hyperparameter name, or a
            value out of range (a learning rate <= 0, min > max, ...);
            `equalize_radius` given for an equalized dataset, or a radius > 0
            possible with `augment="cpu"` (the warp would come before the
            equalization).
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
        model: str = "seed_cnn",
        *,
        input_shape,
        num_classes: int,
        class_names=None,
        hyperparameters=None,
        mixed_precision: bool | str = False,
        augment: str = "gpu",
        batch_size: int = 32,
        seed: int = 0,
        model_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        dataset_equalized: bool = True,
    ):
        from cxrmodels.metrics.clinical import positive_class_index
        from cxrmodels.models import model_options
        from cxrmodels.models.inputs import check_input_shape, check_num_classes

        check_bool("dataset_equalized", dataset_equalized)
        shared = TrainConfig(
            model=model, batch_size=batch_size, seed=seed, mixed_precision=mixed_precision, augment=augment
        )
        from cxrmodels.models import model_info

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
        self.policy = shared.mixed_precision
        self.augment, self.batch_size, self.seed = shared.augment, shared.batch_size, shared.seed
        self.positive_index = (
            (positive_class_index(class_names) if class_names is not None else 1)
            if num_classes == 2
            else None
        )
        self.dataset_equalized = dataset_equalized
        self.space = _tuning_space.space_for(
            model, options, self.input_shape, dataset_equalized=dataset_equalized
        )
        self.model_kwargs = self._check_model_kwargs(model_kwargs, options)
        self._overrides = _tuning_space.normalize_overrides(hyperparameters, self.space)
        _tuning_space.check_input_size(self.space, self._overrides, self.input_shape)
        self._check_equalize_with_cpu_augment()

    def _check_equalize_with_cpu_augment(self) -> None:
        if self.augment != "cpu" or "equalize_radius" not in self.space.names:
            return
        entry = next((e for e in self._overrides.space if e.name == "equalize_radius"), None)
        if isinstance(entry, kt.engine.hyperparameters.Fixed) and entry.value == 0:
            return
        raise ValueError(
            "`equalize_radius` equalizes inside the model, so augmentation must run there too, after it: "
            "pass augment='gpu' (--augment gpu) or 'none', or keep the images unequalized with "
            "hyperparameters={'equalize_radius': 0}. Received: augment='cpu'"
        )

    def _check_model_kwargs(self, model_kwargs, options) -> dict[str, Any]:
        if model_kwargs is None:
            return {}
        if not isinstance(model_kwargs, dict):
            raise TypeError(f"`model_kwargs` must be a dict or None. Received: model_kwargs={model_kwargs!r}")
        tuned = set(self.space.names) | ({"filters"} if self._family == "cnn" else set())
        for key in model_kwargs:
            if key in _RESERVED or key in tuned:
                raise ValueError(
                    f"`model_kwargs` must not set {key!r}: "
                    + (
                        "the search sets it."
                        if key in _RESERVED
                        else "it is a hyperparameter; fix it with `hyperparameters` instead "
                        "(hp.Fixed, or {name: value})."
                    )
                    + f" Received: model_kwargs={model_kwargs!r}"
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
        from cxrmodels.metrics.keras_metrics import default_metrics
        from cxrmodels.models import create_model

        previous = keras.config.dtype_policy()
        try:
            if self.policy:
                keras.config.set_dtype_policy(self.policy)
            keras.utils.set_random_seed(self.seed)
            aug = self._augmentation(values) if self.augment == "gpu" else None
            net = create_model(
                self.model_name,
                input_shape=self.input_shape,
                num_classes=self.num_classes,
                augment=aug,
                equalize=self._equalization(values),
                **self._model_args(values),
            )
            net.compile(
                optimizer=keras.optimizers.Adam(values["learning_rate"]),
                loss=keras.losses.CategoricalCrossentropy(),
                metrics=default_metrics(self.num_classes, positive_index=self.positive_index),
            )
        finally:
            keras.config.set_dtype_policy(previous)
        return net

    def fit(self, hp, model, *args, **kwargs):
        """Trains `model`; a dataset folder as first argument is read with `cxrdata.load`.

        With a folder, the "train" split (shuffled, with the augmentation when
        `augment="cpu"`) and the "val" split for validation are built once for
        the trial. Anything else goes to `model.fit` unchanged.
        """
        if args and isinstance(args[0], (str, os.PathLike)):
            import cxrdata

            dataset_dir, args = os.fspath(args[0]), args[1:]
            aug = self._augmentation(self.resolve(hp)) if self.augment == "cpu" else None
            train_ds = cxrdata.load(
                dataset_dir, "train", batch_size=self.batch_size, shuffle=True, seed=self.seed, augment=aug
            )
            kwargs["validation_data"] = cxrdata.load(
                dataset_dir, "val", batch_size=self.batch_size, shuffle=False
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

    def train_kwargs(self, values: dict[str, Any]) -> dict[str, Any]:
        """`cxrmodels.train` arguments that train the model of `values` (from `resolve`)."""
        model_kwargs = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self._model_args(values).items()
        }
        kwargs = {
            "model": self.model_name,
            "learning_rate": float(values["learning_rate"]),
            "augment_strength": float(values["augment_strength"]),
            "augment": self.augment,
            "mixed_precision": self.policy or False,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "model_kwargs": model_kwargs,
        }
        if "equalize_radius" in self.space.names:
            radius = int(values["equalize_radius"])
            kwargs["equalize_in_model"] = radius if radius > 0 else None
        return kwargs

    def _equalization(self, values: dict[str, Any]):
        """`LocalEqualization(radius)` for a radius > 0 (named as `cxrmodels.train` names it), else None."""
        radius = int(values.get("equalize_radius") or 0)
        if radius <= 0:
            return None
        from cxrdata.layers.local_equalization import LocalEqualization

        return LocalEqualization(radius, name="local_equalization")

    def _model_args(self, values: dict[str, Any]) -> dict[str, Any]:
        args = dict(self.model_kwargs)
        if self._family == "cnn":
            args["filters"] = tuple(int(values["base_filters"]) * 2**i for i in range(int(values["blocks"])))
        for name in ("dense_units", "dropout", "pooling", "trainable_blocks"):
            if name in values:
                args[name] = values[name]
        if "dropout" in args:
            args["dropout"] = round(float(args["dropout"]), 6)  # 0.30000000000000004 from a stepped Float
        return args

    def _augmentation(self, values: dict[str, Any]):
        return augmentation_layer(
            TrainConfig(
                augment=self.augment, seed=self.seed, augment_strength=float(values["augment_strength"])
            )
        )
