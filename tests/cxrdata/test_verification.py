import shutil
import subprocess
import sys

import pytest

from cxrdata.manifest import read_manifest
from cxrdata.verification import inspect, verify


def _copy(dataset, tmp_path):
    return shutil.copytree(dataset, tmp_path / "copy")


def test_verify_passes_on_a_fresh_dataset(converted_dataset):
    result = verify(converted_dataset)
    manifest = read_manifest(converted_dataset)
    assert result.ok, result.problems
    assert result.num_records == sum(s.num_examples for s in manifest.splits.values()) == 64
    assert result.summary("d").startswith("OK:")


def test_verify_catches_one_flipped_byte(converted_dataset, tmp_path):
    data = _copy(converted_dataset, tmp_path)
    shard = read_manifest(data).splits["train"].shards[1].name
    raw = bytearray((data / shard).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (data / shard).write_bytes(bytes(raw))
    result = verify(data)
    assert not result.ok
    assert all(shard in p for p in result.problems)
    cli = subprocess.run(
        [sys.executable, "-m", "cxrmodels.cli", "verify", str(data)], capture_output=True, text=True
    )
    assert cli.returncode == 1 and shard in cli.stdout


def test_verify_catches_missing_and_truncated_shards(converted_dataset, tmp_path):
    data = _copy(converted_dataset, tmp_path)
    shards = read_manifest(data).splits["train"].shards
    (data / shards[0].name).unlink()
    raw = (data / shards[2].name).read_bytes()
    (data / shards[2].name).write_bytes(raw[:-7])
    problems = verify(data).problems
    assert any(shards[0].name in p and "missing" in p for p in problems)
    assert any(shards[2].name in p for p in problems)


def test_verify_without_a_manifest_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="cxr convert"):
        verify(tmp_path)


def test_inspect_prints_counts_and_writes_a_grid(converted_dataset, tmp_path):
    from PIL import Image

    table, path = inspect(converted_dataset, output=tmp_path / "grid.png", per_class=3)
    manifest = read_manifest(converted_dataset)
    assert "COVID" in table and "Normal" in table
    assert str(manifest.splits["train"].num_examples) in table
    grid = Image.open(path)
    assert grid.width > 3 * 64 and grid.height > 2 * 64


def test_explain_read_error_names_the_damaged_shard(converted_dataset, tmp_path):
    import tensorflow as tf

    import cxrdata
    from cxrdata.verification import explain_read_error

    data = _copy(converted_dataset, tmp_path)
    shard = read_manifest(data).splits["train"].shards[0].name
    ds = cxrdata.load(data, batch_size=8, seed=0)
    raw = bytearray((data / shard).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (data / shard).write_bytes(bytes(raw))
    with pytest.raises(tf.errors.DataLossError) as info:
        for _ in ds:
            pass
    explained = explain_read_error(data, info.value)
    assert isinstance(explained, RuntimeError) and shard in str(explained)
    unrelated = ValueError("something else")
    assert explain_read_error(data, unrelated) is unrelated
