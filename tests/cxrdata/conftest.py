"""Fixtures shared by the input-pipeline tests: one small dataset of each record encoding."""

from __future__ import annotations

import pytest

from tests.cxrdata.test_pipeline import _write_dataset


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    directory = tmp_path_factory.mktemp("raw")
    return directory, _write_dataset(directory, "raw")


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    directory = tmp_path_factory.mktemp("png")
    return directory, _write_dataset(directory, "png")
