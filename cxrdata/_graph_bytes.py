"""Bounded reads of a `tf.string` that never raise, for parsing file headers in a TensorFlow graph.

`tf.strings.substr` fails when its position is past the end and `tf.io.decode_raw`
when lengths differ: these helpers clamp the position and zero-pad what is
missing, so that a parser built on them cannot fail on any bytes.
"""

from __future__ import annotations


def tf_module():
    import tensorflow as tf  # deferred: importing cxrdata does not import TensorFlow

    return tf


def int64(value):
    return tf_module().constant(value, tf_module().int64)


def at(data, pos, n: int):
    """The `n` bytes of `data` at `pos` as int64 `[n]`, zeros past the end (never raises)."""
    tf = tf_module()
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, tf.cast(tf.strings.length(data), tf.int64))
    part = tf.strings.substr(data, pos, tf.constant(n, tf.int64))
    return tf.cast(tf.io.decode_raw(part, tf.uint8, fixed_length=n), tf.int64)


def text(data, pos, n):
    """The bytes of `data` at `pos`, at most `n` of them, as a scalar string (never raises)."""
    tf = tf_module()
    length = tf.cast(tf.strings.length(data), tf.int64)
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, length)
    return tf.strings.substr(data, pos, tf.maximum(tf.cast(n, tf.int64), 0))


def number(b, big_endian):
    """The unsigned integers of the int64 bytes along the last axis of `b`.

    Big-endian when `big_endian` (a Python bool, or a bool tensor).
    """
    tf = tf_module()
    n = b.shape[-1]
    weights = [1 << (8 * (n - 1 - i)) for i in range(n)]
    be = tf.reduce_sum(b * tf.constant(weights, tf.int64), axis=-1)
    if big_endian is True:
        return be
    le = tf.reduce_sum(b * tf.constant(weights[::-1], tf.int64), axis=-1)
    if big_endian is False:
        return le
    return tf.where(big_endian, be, le)


def message(*parts):
    """A scalar string joined from str and tensor parts (ints are written in decimal)."""
    tf = tf_module()
    return tf.strings.join([p if isinstance(p, str) else tf.strings.as_string(p) for p in parts])
