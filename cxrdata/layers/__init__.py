"""Keras 3 layers of `cxrdata`: backend-agnostic, XLA-compatible, for inside the model."""

from cxrdata.layers.local_equalization import LocalEqualization
from cxrdata.layers.random_affine import RandomAffine, augmentation

__all__ = ["LocalEqualization", "RandomAffine", "augmentation"]
