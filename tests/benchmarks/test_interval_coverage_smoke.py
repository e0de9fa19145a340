"""Smoke test: `benchmarks/interval_coverage.py --smoke` runs end to end.

Checks the exit code, the printed table and the JSON, never the rates (a few samples say nothing).
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


def test_interval_coverage_script(tmp_path):
    out = tmp_path / "coverage.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "benchmarks/interval_coverage.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| n | model | true AUC | AUC CI |" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "interval_coverage" and payload["reps"] == 5
    assert [r["model"] for r in payload["rows"]] == [
        "calibrated",
        "overconfident",
        "too high",
        "slightly high",
    ]
    for row in payload["rows"]:
        assert set(row["rates"]) == {"auc", "sensitivity", "brier", "ece_basic", "ece_percentile", "flagged"}
        assert all(0 <= v <= 1 for v in row["rates"].values())
    calibrated = payload["rows"][0]["truth"]
    assert calibrated["ece"] < 0.01 and calibrated["brier"] == pytest.approx(1 / 6, abs=0.002)
