"""Training: `train` fills a run folder (model, history, curves, config) and resumes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrdata.utils.lazy import lazy_exports

_EXPORTS = {
    "train": "cxrmodels.training.trainer",
    "TrainResult": "cxrmodels.training.lifecycle",
    "TrainConfig": "cxrmodels.training.config",
}

if TYPE_CHECKING:
    from cxrmodels.training.config import TrainConfig
    from cxrmodels.training.lifecycle import TrainResult
    from cxrmodels.training.trainer import train

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
