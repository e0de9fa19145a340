"""Everything a training run decides before it writes a file: `plan_run(config) -> RunPlan`.

Both training loops (one process under `Model.fit`, several under the
multi-worker loop) start from the same plan: the dataset read and checked
against the options, the model's input and compute shapes, and the
`config.json` the run will hold.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras

import cxrdata
from cxrmodels.metrics.clinical import positive_class_index
from cxrmodels.models._registry import model_options
from cxrmodels.models.input_stack import check_equalization, input_shapes
from cxrmodels.runs import run_folder
from cxrmodels.training.config import TrainConfig

# The `training` section of config.json: these options, plus what every run uses.
_TRAINING_KEYS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "mixed_precision",
    "augment",
    "augment_strength",
    "balance",
    "seed",
    "strategy",
    "patience",
    "verbose",
)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A checked training run: its config, the dataset's facts and the shapes of the model.

    Attributes:
        config: The run's options.
        manifest: The dataset's manifest.
        data_shape: The images' shape as the dataset holds them (the model's input).
        model_shape: The shape the model computes at (differs with `resize_in_model`).
        num_classes: Number of classes.
        positive: The positive class's index (two classes), else None.
    """

    config: TrainConfig
    manifest: Any
    data_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]
    num_classes: int
    positive: int | None

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def out(self) -> str:
        return self.config.out

    def run_config(self) -> dict[str, Any]:
        """The `config.json` of the run as it starts (`"finished": false`)."""
        c, m = self.config, self.manifest
        return {
            "format_version": run_folder.FORMAT_VERSION,
            "library_version": cxrdata.__version__,
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
            "finished": False,
            "config": c.to_dict(),
            "model": {
                "name": c.model,
                "kwargs": c.model_kwargs,
                "input_shape": list(self.data_shape),
                "image_size": list(self.model_shape[:2]),
                "resize_in_model": self.data_shape != self.model_shape,
                "equalize_radius": c.equalize_radius,
                "num_classes": self.num_classes,
            },
            "class_names": list(m.class_names),
            "positive_class": None if self.positive is None else m.class_names[self.positive],
            "dataset": {
                "path": os.path.abspath(c.dataset),
                "digest": m.digest(),
                "image_shape": list(m.image_shape),
                "encoding": m.encoding,
                "counts": {s: dict(info.counts) for s, info in m.splits.items()},
            },
            "preprocessing": dict(m.preprocessing),
            "training": {k: v for k, v in c.to_dict().items() if k in _TRAINING_KEYS}
            | {"optimizer": "adam", "loss": "categorical_crossentropy", "validation_split": "val"},
        }


def plan_run(config: TrainConfig) -> RunPlan:
    """Reads the dataset and checks it against `config`; writes nothing.

    Raises:
        ValueError: no dataset/run folder given, a dataset without train and val
            splits, an equalization the dataset does not allow, or an image size
            mismatch without `resize_in_model`.
        TypeError: a model option the model does not take.
        FileNotFoundError: the dataset is missing.
    """
    config.require_paths()
    manifest = cxrdata.read_manifest(config.dataset)
    for split in ("train", "val"):
        if split not in manifest.splits or not manifest.splits[split].num_examples:
            raise ValueError(
                f"The dataset {config.dataset!r} has no {split!r} split{' for validation' * (split == 'val')} "
                f"(it has: {', '.join(manifest.splits) or 'none'}). Training needs train and val "
                f"splits: convert with `cxr convert SRC {config.dataset} --splits 0.7,0.15,0.15`."
            )
    # An unknown model name or option fails here, before any file is written.
    unknown = sorted(set(config.model_kwargs) - set(model_options(config.model)) - {"weights"})
    if unknown:
        raise TypeError(
            f"Model {config.model!r} got unexpected options {unknown}. "
            f"Accepted options: {sorted(model_options(config.model))}."
        )
    check_equalization(manifest.preprocessing, config.equalize_radius, dataset=config.dataset)
    model_shape, data_shape = input_shapes(
        manifest.image_shape, config.image_size, resize_in_model=config.resize_in_model
    )
    k = manifest.num_classes
    return RunPlan(
        config=config,
        manifest=manifest,
        data_shape=tuple(data_shape),
        model_shape=tuple(model_shape),
        num_classes=k,
        positive=positive_class_index(manifest.class_names) if k == 2 else None,
    )
