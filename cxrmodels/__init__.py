"""cxrmodels: chest X-ray model factories, training, clinical evaluation, serving and tuning.

Subpackages, from the bottom of the import graph up:

- `metrics`: numpy clinical metrics and the Keras metrics of training.
- `runs`: the run folder's format (file names, `config.json`, history, curves).
- `models`: the registry (`create_model`, `list_models`, `@register_model`),
  one module per model family, input preprocessing, saving and loading.
- `training`: `train`, its config, resume and the multi-worker loop.
- `serving`: `predict` with Grad-CAM, and `export`.
- `evaluation`: plots, `evaluate` and the shortcut `audit`.
- `tuning`: keras-tuner searches (`search`, `CXRHyperModel`), distributed mode.
- `cli`: the `cxr` command line, a thin layer over the public functions.

Names are imported on first use, so `import cxrmodels` stays cheap and does
not import TensorFlow; building models works under any Keras backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrdata import __version__  # one version for the distribution
from cxrdata.utils.lazy import lazy_exports

_EXPORTS = {
    "create_model": "cxrmodels.models._registry",
    "list_models": "cxrmodels.models._registry",
    "register_model": "cxrmodels.models._registry",
    "model_options": "cxrmodels.models._registry",
    "last_conv_layer_name": "cxrmodels.models._registry",
    "load_model": "cxrmodels.models.saving",
    "save_model": "cxrmodels.models.saving",
    "ImagePreprocessing": "cxrmodels.models.inputs",
    "train": "cxrmodels.training.trainer",
    "TrainResult": "cxrmodels.training.lifecycle",
    "TrainConfig": "cxrmodels.training.config",
    "Specificity": "cxrmodels.metrics.keras_metrics",
    "evaluate_predictions": "cxrmodels.metrics.clinical",
    "evaluate": "cxrmodels.evaluation.evaluator",
    "audit": "cxrmodels.evaluation.shortcut_audit",
    "predict": "cxrmodels.serving.prediction",
    "gradcam": "cxrmodels.serving.prediction",
    "export": "cxrmodels.serving.exporting",
    "CXRHyperModel": "cxrmodels.tuning.hypermodel",
    "search": "cxrmodels.tuning.searcher",
    "SearchResult": "cxrmodels.tuning.searcher",
    "SearchConfig": "cxrmodels.tuning.config",
}
_SUBMODULES = ("models", "training", "evaluation", "serving", "tuning")

if TYPE_CHECKING:  # what IDEs and type checkers see
    from cxrmodels import evaluation, models, serving, training, tuning
    from cxrmodels.evaluation.evaluator import evaluate
    from cxrmodels.evaluation.shortcut_audit import audit
    from cxrmodels.metrics.clinical import evaluate_predictions
    from cxrmodels.metrics.keras_metrics import Specificity
    from cxrmodels.models._registry import (
        create_model,
        last_conv_layer_name,
        list_models,
        model_options,
        register_model,
    )
    from cxrmodels.models.inputs import ImagePreprocessing
    from cxrmodels.models.saving import load_model, save_model
    from cxrmodels.serving.exporting import export
    from cxrmodels.serving.prediction import gradcam, predict
    from cxrmodels.training.config import TrainConfig
    from cxrmodels.training.lifecycle import TrainResult
    from cxrmodels.training.trainer import train
    from cxrmodels.tuning.config import SearchConfig
    from cxrmodels.tuning.hypermodel import CXRHyperModel
    from cxrmodels.tuning.searcher import SearchResult, search

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, eager=("__version__",))
