"""The record schema of converted shards, and the shard writer.

Each record is a `tf.train.Example` with these features:

| key        | type   | meaning                                              |
|------------|--------|------------------------------------------------------|
| image      | bytes  | uint8 pixels, row-major (encoding "raw"), or a PNG   |
| height     | int64  | image height in pixels                               |
| width      | int64  | image width in pixels                                |
| label      | int64  | index into the manifest's `class_names`              |
| class_name | bytes  | the class name, for readers without the manifest     |
| group      | bytes  | patient / group id ("" when none was given)          |
| path       | bytes  | source path relative to the conversion's SRC         |
| sha256     | bytes  | hex SHA-256 of the source file's bytes               |
| mask       | bytes  | optional: the lung mask, a PNG of 0 and 255, the     |
|            |        | image's size; absent when the image has none         |
"""

from __future__ import annotations

import hashlib
import os

import tensorflow as tf

from cxrdata.manifest import ShardInfo
from cxrdata.utils.io import fsync_path

FEATURE_KEYS = ("image", "height", "width", "label", "class_name", "group", "path", "sha256")


def feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    """The spec that `tf.io.parse_example` takes for these records."""
    s, i = tf.io.FixedLenFeature([], tf.string), tf.io.FixedLenFeature([], tf.int64)
    return {
        "image": s,
        "height": i,
        "width": i,
        "label": i,
        "class_name": s,
        "group": s,
        "path": s,
        "sha256": s,
        "mask": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def _bytes(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def serialize_example(
    *,
    image: bytes,
    height: int,
    width: int,
    label: int,
    class_name: str,
    group: str = "",
    path: str = "",
    sha256: str = "",
    mask: bytes = b"",
) -> bytes:
    """Serializes one record (see the module docstring for the schema); `mask` only when given."""
    feature = {
        "image": _bytes(image),
        "height": _int(height),
        "width": _int(width),
        "label": _int(label),
        "class_name": _bytes(class_name.encode()),
        "group": _bytes(group.encode()),
        "path": _bytes(path.encode()),
        "sha256": _bytes(sha256.encode()),
    }
    if mask:
        feature["mask"] = _bytes(mask)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_record(serialized: bytes) -> dict:
    """Parses one serialized record into plain Python values (for tests and tools)."""
    ex = tf.train.Example.FromString(serialized).features.feature
    out = {}
    for k in FEATURE_KEYS:
        f = ex[k]
        out[k] = f.int64_list.value[0] if f.HasField("int64_list") else f.bytes_list.value[0]
    for k in ("class_name", "group", "path", "sha256"):
        out[k] = out[k].decode()
    out["mask"] = ex["mask"].bytes_list.value[0] if "mask" in ex else b""
    return out


class ShardWriter:
    """Writes one shard under a hidden temporary name; `close()` syncs and renames it.

    Until `close()` returns, nothing exists under the shard's final name, so a
    reader (or `--resume`) never sees a half-written shard.

    Example:
        >>> with ShardWriter("out/train-00000-of-00001.tfrecord") as w:  # doctest: +SKIP
        ...     w.write(serialize_example(...))
    """

    def __init__(self, path: str | os.PathLike, *, tmp_path: str | os.PathLike | None = None):
        self.path = os.fspath(path)
        directory, name = os.path.split(self.path)
        # A distributed runner may run two attempts at one shard at once: each passes its own name.
        self.tmp_path = (
            os.fspath(tmp_path) if tmp_path is not None else os.path.join(directory, f".{name}.tmp")
        )
        self._writer = tf.io.TFRecordWriter(self.tmp_path)
        self.records = 0

    def write(self, serialized: bytes) -> None:
        self._writer.write(serialized)
        self.records += 1

    def finish(self) -> ShardInfo:
        """Closes and syncs the temporary file and returns its `ShardInfo` (not yet visible)."""
        self._writer.close()
        fsync_path(self.tmp_path)
        h = hashlib.sha256()
        with open(self.tmp_path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        self.info = ShardInfo(
            name=os.path.basename(self.path),
            records=self.records,
            size=os.path.getsize(self.tmp_path),
            sha256=h.hexdigest(),
        )
        return self.info

    def commit(self) -> None:
        """Renames the finished shard to its final name."""
        os.replace(self.tmp_path, self.path)

    def close(self) -> ShardInfo:
        """Finishes the shard, renames it to its final name and returns its `ShardInfo`."""
        info = self.finish()
        self.commit()
        return info

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_records(path: str | os.PathLike):
    """Yields each serialized record of one shard file (raises on corruption)."""
    for raw in tf.data.TFRecordDataset(os.fspath(path)).as_numpy_iterator():
        yield raw
