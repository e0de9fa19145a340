"""cxrdata: chest X-ray folders into equalized TFRecord shards, and a fast tf.data pipeline.

Importing `cxrdata` does not import TensorFlow: the functions that need it load
it when first used, so `cxrdata.RandomAffine` works under any Keras backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0"

from cxrdata.utils.lazy import lazy_exports  # noqa: E402  (after __version__)

# Public name -> the module that defines it. Loaded on first use (PEP 562) so
# that `import cxrdata` stays free of TensorFlow; no module is named like one of
# these functions, so importing a module never shadows its function.
_EXPORTS = {
    "convert": "cxrdata.conversion",
    "ConvertConfig": "cxrdata.conversion_config",
    "LoadConfig": "cxrdata._load_config",
    "ConversionResult": "cxrdata.conversion",
    "verify": "cxrdata.verification",
    "inspect": "cxrdata.verification",
    "load": "cxrdata.pipeline",
    "class_weights": "cxrdata.pipeline",
    "LocalEqualization": "cxrdata.layers.local_equalization",
    "RandomAffine": "cxrdata.layers.random_affine",
    "augmentation": "cxrdata.layers.random_affine",
    "read_manifest": "cxrdata.manifest",
    "Manifest": "cxrdata.manifest",
    "preprocess_image": "cxrdata.preprocess",
    "PreprocessConfig": "cxrdata.preprocess",
    "decode_image": "cxrdata.decoding",
}
_SUBMODULES = ("synthetic", "layers", "utils")

if TYPE_CHECKING:  # what IDEs and type checkers see
    from cxrdata import layers, synthetic, utils
    from cxrdata._load_config import LoadConfig
    from cxrdata.conversion import ConversionResult, convert
    from cxrdata.conversion_config import ConvertConfig
    from cxrdata.decoding import decode_image
    from cxrdata.layers.local_equalization import LocalEqualization
    from cxrdata.layers.random_affine import RandomAffine, augmentation
    from cxrdata.manifest import Manifest, read_manifest
    from cxrdata.pipeline import class_weights, load
    from cxrdata.preprocess import PreprocessConfig, preprocess_image
    from cxrdata.verification import inspect, verify

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES, eager=("__version__",))
