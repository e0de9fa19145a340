"""`cxr predict` and `cxrmodels.predict` with a file that crashes a native decoder (issue 18)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.cxrdata import hostile_files as hostile

pytest.importorskip("pydicom")

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A seed_cnn run at 40 px (its smallest input is 36), one epoch, on converted phantoms; and the phantom tree."""
    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree
    from cxrmodels.training.trainer import train

    base = tmp_path_factory.mktemp("predict_faults")
    write_tree(base / "src", per_class=10, image_size=40, seed=5)
    convert(base / "src", base / "data", image_size=40, radius=8, shard_size=0.01, workers=1, progress=False)
    train(
        base / "data",
        out=base / "run",
        epochs=1,
        batch_size=8,
        verbose=0,
        model_kwargs={"filters": (4, 8, 8), "dense_units": 8},
    )
    return base / "run", base / "src"


def _inputs(src: pathlib.Path, folder: pathlib.Path) -> tuple[list[pathlib.Path], pathlib.Path]:
    """20 files: 17 phantom PNGs, a JPEG 2000 and a JPEG DICOM that decode, and the crashing DICOM."""
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    pngs = sorted(src.glob("*/*.png"))[:17]
    ramp = hostile.gradient(32, 32)
    j2k = folder / "good-j2k.dcm"
    j2k.write_bytes(
        hostile.dicom(shape=(32, 32), syntax=JPEG2000Lossless, pixel_data=hostile.j2k(ramp.astype(np.uint8)))
    )
    jpg = folder / "good-jpeg.dcm"
    jpg.write_bytes(hostile.dicom(shape=(32, 32), syntax=JPEGBaseline8Bit, pixel_data=hostile.jpeg(ramp)))
    crash = folder / "crash.dcm"
    crash.write_bytes(hostile.crashing_dicom())
    paths = pngs[:9] + [j2k, crash, jpg] + pngs[9:]
    assert len(paths) == 20
    return paths, crash


@pytest.mark.slow
def test_cxr_predict_on_20_files_with_the_crashing_dicom_predicts_19_and_names_1(tiny_run, tmp_path):
    run, src = tiny_run
    paths, crash = _inputs(src, tmp_path)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    out = subprocess.run(
        [sys.executable, "-m", "cxrmodels.cli", "predict", str(run), *map(str, paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 1, f"rc {out.returncode}\n{out.stderr[-3000:]}"  # was 139: nothing predicted
    rows = out.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [str(p) for p in paths]
    errors = [r.split(maxsplit=1) for r in rows if "error:" in r]
    assert errors == [
        [
            str(crash),
            "error: inconsistent DICOM: the JPEG 2000 codestream is 32x32 with 1 component(s) of 16 bits, "
            "the header says Rows=32, Columns=32, SamplesPerPixel=1, BitsAllocated=8, BitsStored=8",
        ]
    ]
    predicted = [r for r in rows if "error:" not in r]
    assert len(predicted) == 19 and all(r.split()[-1] in ("COVID", "Normal") for r in predicted)
    assert "1 of 20 files could not be read" in out.stderr


@pytest.mark.slow
def test_predict_in_a_notebook_survives_a_native_decoder_crash(tiny_run, tmp_path, monkeypatch):
    """`cxrmodels.predict` called in this process: the crash happens in the decoder's helper."""
    import cxrdata.dicom
    from cxrdata import _native
    from cxrmodels.serving.prediction import predict

    run, src = tiny_run
    paths, crash = _inputs(src, tmp_path)
    # Without the header check the codestream reaches the helper, whose decode (pydicom's here, so
    # that the helper starts without TensorFlow) crashes on it for sure: the real tensorflow-io
    # corrupts its heap and crashes at some later point.
    monkeypatch.setattr(cxrdata.dicom, "check_frame", lambda data, **header: None)
    monkeypatch.setattr(_native, "_HELPER", _native._Helper())
    crashing = hostile.j2k(hostile.gradient(32, 32, 65535).astype(np.uint16))
    monkeypatch.setattr(
        _native,
        "_SERVE",
        "import io, os, signal, numpy as np, pydicom, cxrdata._native as n\n"
        "def decode_here(data):\n"
        f"    if {crashing!r} in data:\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    return pydicom.dcmread(io.BytesIO(data)).pixel_array.astype(np.uint16)[None, ..., None]\n"
        "n.decode_here, n._load = decode_here, lambda: None\n"
        "n.serve()\n",
    )
    try:
        results = predict(run, paths)
    finally:
        _native._HELPER.close()
    assert [r["ok"] for r in results] == [p != crash for p in paths]
    assert results[paths.index(crash)]["error"].startswith("the native decoder crashed on it (SIGSEGV")
