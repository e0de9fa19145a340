"""Model factories: the registry, one module per family, inputs, saving and loading.

Each model is a small function registered under its name (timm and keras-hub
style) with its facts (blocks, input preprocessing, minimum size) beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrdata.utils.lazy import lazy_exports

_EXPORTS = {
    "create_model": "cxrmodels.models._registry",
    "list_models": "cxrmodels.models._registry",
    "register_model": "cxrmodels.models._registry",
    "model_options": "cxrmodels.models._registry",
    "model_info": "cxrmodels.models._registry",
    "ModelInfo": "cxrmodels.models._registry",
    "last_conv_layer_name": "cxrmodels.models._registry",
    "load_model": "cxrmodels.models.saving",
    "save_model": "cxrmodels.models.saving",
    "load_weights_file": "cxrmodels.models.saving",
    "ImagePreprocessing": "cxrmodels.models.inputs",
}

if TYPE_CHECKING:
    from cxrmodels.models._registry import (
        ModelInfo,
        create_model,
        last_conv_layer_name,
        list_models,
        model_info,
        model_options,
        register_model,
    )
    from cxrmodels.models.inputs import ImagePreprocessing
    from cxrmodels.models.saving import load_model, load_weights_file, save_model

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
