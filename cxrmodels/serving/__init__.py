"""Serving: `predict` (with Grad-CAM) on image files, and `export` for deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrdata.utils.lazy import lazy_exports

_EXPORTS = {
    "predict": "cxrmodels.serving.prediction",
    "gradcam": "cxrmodels.serving.prediction",
    "export": "cxrmodels.serving.exporting",
}

if TYPE_CHECKING:
    from cxrmodels.serving.exporting import export
    from cxrmodels.serving.prediction import gradcam, predict

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
