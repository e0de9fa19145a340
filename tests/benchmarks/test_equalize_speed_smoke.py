"""Smoke test: `benchmarks/equalize_speed.py` runs end to end at tiny sizes.

Checks the exit code, the printed table and the JSON keys, never the speed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_equalize_speed_script(tmp_path):
    out = tmp_path / "eq.json"
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/equalize_speed.py",
            "--sizes",
            "24,40",
            "--radius",
            "5",
            "--batch",
            "2",
            "--rounds",
            "1",
            "--warmup",
            "1",
            "--workers",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    assert "| size | method | images/s | vs skimage 1 proc | peak MB | identical |" in result.stdout
    methods = [
        "scikit-image, 1 process",
        "scikit-image, 2 processes",
        "layer tf.function CPU",
        "layer XLA CPU",
    ]
    for size in ("24x24", "40x40"):
        for method in methods:
            assert f"| {size} | {method} |" in result.stdout, result.stdout
    assert "| NO |" not in result.stdout

    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "equalize_speed"
    assert payload["machine"]["cpus"] == os.cpu_count()
    assert payload["radius"] == 5 and payload["sizes"] == [24, 40] and payload["batch"] == 2
    rows = payload["results"]
    assert {(r["size"], r["method"]) for r in rows} >= {(s, m) for s in (24, 40) for m in methods}
    for row in rows:
        assert set(row) == {"size", "method", "images_per_s", "vs_skimage_1_process", "peak_mb", "identical"}
        assert row["images_per_s"] > 0 and row["identical"] is True
    assert all(r["vs_skimage_1_process"] == 1.0 for r in rows if r["method"].endswith("1 process"))
