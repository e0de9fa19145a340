"""`cxrdata._native`: the native DICOM decoder in a helper process, where a crash or a hang
costs one file. The helper is real (its own Python, tensorflow-io); only its decode function is
wrapped to crash or hang on a marker the test puts in a JPEG comment."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cxrdata import _native
from cxrdata.decoding import DecodeError, decode_image
from tests.cxrdata import hostile_files as hostile

pytest.importorskip("pydicom")

# Run by the helper instead of `_native._SERVE`: the real serve loop and pipes, with the decode
# replaced by pydicom's (Pillow) so that a helper starts in a second, without TensorFlow, and
# crashes or hangs on a marker. The decode itself through tensorflow-io is tested elsewhere.
_HOOKED_SERVE = """
import io, os, signal, time
import numpy as np, pydicom
import cxrdata._native as native
def decode_here(data):
    if b"CRASH-ALWAYS" in data:
        os.kill(os.getpid(), signal.SIGSEGV)
    if b"CRASH-ONCE" in data and not os.path.exists(FLAG):
        open(FLAG, "w").close()
        os.abort()
    if b"HANG" in data:
        time.sleep(3600)
    return pydicom.dcmread(io.BytesIO(data)).pixel_array.astype(np.uint16)[None, ..., None]
native.decode_here = decode_here
native._load = lambda: None
native.serve()
"""


@pytest.fixture
def helper(monkeypatch, tmp_path):
    """A fresh helper (not the process-wide one) that runs the hooked serve loop."""
    fresh = _native._Helper()
    monkeypatch.setattr(_native, "_HELPER", fresh)
    monkeypatch.setattr(_native, "_SERVE", _HOOKED_SERVE.replace("FLAG", repr(str(tmp_path / "flag"))))
    yield fresh
    fresh.close()


def _jpeg_dicom(marker: bytes = b"") -> tuple[bytes, np.ndarray]:
    from pydicom.uid import JPEGBaseline8Bit

    ramp = hostile.gradient(64, 64)
    data = hostile.dicom(
        shape=(64, 64), syntax=JPEGBaseline8Bit, pixel_data=hostile.jpeg(ramp, quality=95, comment=marker)
    )
    return data, ramp


def _pid(helper) -> int:
    return helper._proc.pid


def test_a_crash_in_the_native_decoder_rejects_the_file_and_the_next_file_decodes(helper):
    good, ramp = _jpeg_dicom()
    assert np.abs(decode_image(good, name="a.dcm").astype(int) - ramp).max() <= 3
    first = _pid(helper)
    bad, _ = _jpeg_dicom(b"CRASH-ALWAYS")
    with pytest.raises(DecodeError, match=r"^the native decoder crashed on it \(SIGSEGV"):
        decode_image(bad, name="b.dcm")
    assert helper._proc is None  # the dead helper is gone; the test process is alive
    assert np.abs(decode_image(good, name="a.dcm").astype(int) - ramp).max() <= 3
    assert _pid(helper) != first  # decoded by a fresh helper


def test_a_helper_that_dies_once_is_replaced_and_the_file_tried_again(helper, tmp_path):
    # The first death may come from damage an earlier file left: the file is tried in a fresh helper.
    data, ramp = _jpeg_dicom(b"CRASH-ONCE")
    assert np.abs(decode_image(data, name="a.dcm").astype(int) - ramp).max() <= 3
    assert (tmp_path / "flag").exists()


def test_a_decode_that_hangs_times_out_and_the_helper_is_replaced(helper, monkeypatch):
    monkeypatch.setattr(_native, "NATIVE_TIMEOUT", 3.0)
    good, ramp = _jpeg_dicom()
    decode_image(good, name="a.dcm")  # the helper has started (its start is not timed by this limit)
    hung = _pid(helper)
    bad, _ = _jpeg_dicom(b"HANG")
    with pytest.raises(DecodeError, match=r"^the native decoder timed out after 3 s$"):
        decode_image(bad, name="b.dcm")
    assert not os.path.exists(f"/proc/{hung}")  # killed and reaped
    assert np.abs(decode_image(good, name="a.dcm").astype(int) - ramp).max() <= 3


@pytest.mark.slow
def test_a_pool_worker_decodes_in_its_own_process(monkeypatch):
    # A conversion worker is disposable (cxrdata._pool survives its death): no helper is started.
    monkeypatch.setattr(_native, "_disposable", True)
    fresh = _native._Helper()
    monkeypatch.setattr(_native, "_HELPER", fresh)
    good, ramp = _jpeg_dicom()
    assert np.abs(decode_image(good, name="a.dcm").astype(int) - ramp).max() <= 3
    assert fresh._proc is None
