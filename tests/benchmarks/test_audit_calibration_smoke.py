"""Smoke test: `benchmarks/audit_calibration.py --smoke` runs end to end (one marker and one clean run).

Checks the exit code, the printed tables and targets and the JSON keys; the error rates
themselves come from the full battery (benchmarks/README.md), not from CI.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import cxrdata

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_audit_calibration_smoke(tmp_path):
    out, work = tmp_path / "cal.json", tmp_path / "work"
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/audit_calibration.py",
            "--smoke",
            "--out",
            str(out),
            "--work",
            str(work),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    stdout = result.stdout
    assert "| cue | runs | learned | flagged | inconclusive | ok |" in stdout
    assert re.search(r"^\| marker \| 1 \| [01] \| detected \d", stdout, re.MULTILINE), stdout
    assert re.search(r"^\| clean \| 1 \| [01] \| false alarm \d", stdout, re.MULTILINE), stdout
    assert re.search(r"^(PASS|FAIL) detected >= 0.95: (\d\.\d\d|n/a)$", stdout, re.MULTILINE), stdout
    assert re.search(r"^(PASS|FAIL) false_alarm <= 0.05: (\d\.\d\d|n/a)$", stdout, re.MULTILINE), stdout
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "audit_calibration" and payload["config"]["smoke"] is True
    assert [(r["kind"], r["seed"]) for r in payload["runs"]] == [("marker", 0), ("clean", 0)]
    for row in payload["runs"]:
        assert row["status"] in ("flagged", "inconclusive", "ok")
        assert row["blanked"] in ("flagged", "inconclusive", "ok", "skipped")
        assert 0 <= row["original_auc"] <= 1 and row["gradcam_map"] == "9x9" and row["finer_map"] == "26x26"
    assert set(payload["summaries"]) == {"audit", "lungs_blanked", "gradcam", "finer_gradcam"}
    assert set(payload["rates"]["audit"]) == {"detected", "false_alarm"}
    # The default report folder, RUN/audit/<dataset>-<digest[:8]>-<split>/, beside the finer layer's.
    digest = cxrdata.read_manifest(work / "marker-0" / "data").digest()[:8]
    audits = work / "marker-0" / "run" / "audit"
    assert sorted(p.name for p in audits.iterdir()) == [f"data-{digest}-test", "finer"]
    assert (audits / f"data-{digest}-test" / "audit.json").is_file()
