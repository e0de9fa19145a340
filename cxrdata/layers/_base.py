"""The base of this package's image layers: keep the input dtype, run inside tf.data too.

Keras' preprocessing layers cast their input to the layer's compute dtype and,
inside `tf.data`, run on TensorFlow whatever the backend. Ours must keep uint8
(the model casts later, on the device) and give the same result in a model, in
`tf.data`, under XLA and under JAX. The private Keras attributes this needs are
set by `cxrdata.utils.compat`.
"""

from __future__ import annotations

import sys

import keras

from cxrdata.utils import compat


class OpsBackend:
    """`keras.ops` under the attribute names of Keras' `DynamicBackend`."""

    numpy = core = keras.ops
    random = keras.random
    cast = staticmethod(keras.ops.cast)
    convert_to_tensor = staticmethod(keras.ops.convert_to_tensor)


def is_tf_tensor(x) -> bool:
    """True for a TensorFlow tensor (tf.data, tf.function, eager TF), without importing TF."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and tf.is_tensor(x) and not isinstance(x, keras.KerasTensor)


class ImageLayer(compat.keras_data_layer_base()):
    """A layer on `[B, H, W, C]` images that keeps the input dtype (uint8 stays uint8)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(self, "backend"):
            self.backend = OpsBackend()
        compat.keep_input_dtype(self)

    def __call__(self, inputs, **kwargs):
        # TF tensors are computed with TF ops whatever the Keras backend, without
        # the cast to `compute_dtype` that Keras' data-layer base applies in tf.data.
        if is_tf_tensor(inputs) and hasattr(self.backend, "set_backend"):
            self.backend.set_backend("tensorflow")
            try:
                return keras.layers.Layer.__call__(self, inputs, **kwargs)
            finally:
                self.backend.reset()
        return super().__call__(inputs, **kwargs)

    # Same shape and dtype out as in: uint8 stays uint8.
    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)
