"""keras-tuner searches: `search`, `SearchConfig`, `CXRHyperModel`, the space, tuners, distributed mode.

As keras-tuner keeps `engine/`, `tuners/` and `distribute/` apart: `config`
(`SearchConfig`, every option of a search), `hypermodel` (what a trial builds
and fits: a `TrainConfig`), `space` (the hyperparameters), `tuners` (the
oracles), `distribute` (chief and workers), `search_folder` (the search folder:
its state, tables and figures) and `searcher` (the `search` entry point).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrdata.utils.lazy import lazy_exports

_EXPORTS = {
    "search": "cxrmodels.tuning.searcher",
    "SearchResult": "cxrmodels.tuning.searcher",
    "CXRHyperModel": "cxrmodels.tuning.hypermodel",
    "SearchConfig": "cxrmodels.tuning.config",
}

if TYPE_CHECKING:
    from cxrmodels.tuning.config import SearchConfig
    from cxrmodels.tuning.hypermodel import CXRHyperModel
    from cxrmodels.tuning.searcher import SearchResult, search

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
