"""Keras 3 layers of `cxrdata`: backend-agnostic, XLA-compatible, for inside the model."""

from cxrdata.layers.random_affine import RandomAffine, augmentation

__all__ = ["RandomAffine", "augmentation"]
