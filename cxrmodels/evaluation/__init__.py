"""Evaluation: numpy clinical metrics (`clinical`), Keras metrics, plots, `evaluate` and the shortcut `audit`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrdata.utils.lazy import lazy_exports

_EXPORTS = {
    "audit": "cxrmodels.evaluation.shortcut_audit",
    "evaluate": "cxrmodels.evaluation.evaluator",
    "evaluate_predictions": "cxrmodels.metrics.clinical",
    "format_metrics_table": "cxrmodels.metrics.tables",
    "Specificity": "cxrmodels.metrics.keras_metrics",
    "default_metrics": "cxrmodels.metrics.keras_metrics",
}

if TYPE_CHECKING:
    from cxrmodels.evaluation.evaluator import evaluate
    from cxrmodels.evaluation.shortcut_audit import audit
    from cxrmodels.metrics.clinical import evaluate_predictions
    from cxrmodels.metrics.keras_metrics import Specificity, default_metrics
    from cxrmodels.metrics.tables import format_metrics_table

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
