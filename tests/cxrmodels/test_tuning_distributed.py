"""Tests for the distributed search: keras-tuner's chief and workers as separate `cxr tune` processes."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras_tuner as kt
import pytest

from cxrmodels.cli import main
from cxrmodels.tuning import distribute as _distribute
from cxrmodels.tuning import tuners as _tuners
from cxrmodels.tuning.searcher import ENV_VARS, search
from tests.loopback import free_ports

TIMEOUT = 240  # seconds: a bound on every wait, far above the ~1 minute the search takes


def _env(monkeypatch, **values):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "present, missing",
    [
        ({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1"}, "KERASTUNER_ORACLE_PORT"),
        ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}, "KERASTUNER_TUNER_ID"),
        ({"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_PORT": "8000"}, "KERASTUNER_ORACLE_IP"),
    ],
)
def test_a_distributed_launch_names_the_missing_variable(tiny_data, tmp_path, monkeypatch, present, missing):
    _env(monkeypatch, **present)
    with pytest.raises(ValueError, match=f"missing: {missing}\\. Set KERASTUNER_TUNER_ID=chief"):
        search(tiny_data, distributed=True, directory=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_cli_distributed_launch_without_the_variables_exits_2(tiny_data, tmp_path, monkeypatch, capsys):
    _env(monkeypatch)
    assert main(["tune", str(tiny_data), "--out", str(tmp_path / "t"), "--distributed"]) == 2
    err = capsys.readouterr().err
    assert "missing: KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT" in err
    _env(
        monkeypatch,
        KERASTUNER_TUNER_ID="chief",
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT="http",
    )
    assert main(["tune", str(tiny_data), "--out", str(tmp_path / "t"), "--distributed"]) == 2
    assert "KERASTUNER_ORACLE_PORT must be a port number" in capsys.readouterr().err


def test_a_local_search_hides_the_kerastuner_variables(monkeypatch):
    from cxrmodels.tuning.searcher import _kerastuner_env

    _env(
        monkeypatch,
        KERASTUNER_TUNER_ID="tuner0",
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT="8000",
    )
    with _kerastuner_env(distributed=False):
        assert not any(name in os.environ for name in ENV_VARS)  # keras-tuner would wait for a chief
    assert os.environ["KERASTUNER_TUNER_ID"] == "tuner0"
    with _kerastuner_env(distributed=True):
        assert os.environ["KERASTUNER_ORACLE_PORT"] == "8000"


def test_the_chief_ends_the_trial_of_a_worker_whose_heartbeat_stopped(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(_distribute.time, "monotonic", lambda: clock[0])
    beats = tmp_path / "beats"
    beats.mkdir()
    (beats / "tuner0").write_text("a 1")
    (beats / "tuner1").write_text("b 1")
    liveness = _distribute.Liveness(str(beats), timeout=10)
    assert liveness.lost(["tuner0", "tuner1", "tuner2"]) == {}  # first sight starts each clock
    clock[0] = 108.0
    (beats / "tuner0").write_text("a 2")
    assert liveness.lost(["tuner0", "tuner1", "tuner2"]) == {}
    clock[0] = 115.0  # tuner0 beat 7 s ago; tuner1 and tuner2 (no file at all) 15 s ago
    lost = liveness.lost(["tuner0", "tuner1", "tuner2"])
    assert sorted(lost) == ["tuner1", "tuner2"] and "no heartbeat for 15s" in lost["tuner1"]

    hp = kt.HyperParameters()
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    oracle = _tuners._RandomOracle(
        objective=kt.Objective("val_auc", "max"), max_trials=3, hyperparameters=hp, seed=1
    )
    oracle._set_project_dir(str(tmp_path), "proj")
    first, second = oracle.create_trial("tuner1"), oracle.create_trial("tuner0")
    assert first.hyperparameters.values == {"learning_rate": 1e-3}  # the reference value comes first
    assert oracle.end_lost_trials({"tuner1": lost["tuner1"]}) == [(first.trial_id, lost["tuner1"])]
    assert oracle.trials[first.trial_id].status == "FAILED"
    assert oracle.trial_tuners == {first.trial_id: "tuner1", second.trial_id: "tuner0"}
    assert list(oracle.ongoing_trials) == ["tuner0"] and oracle.tuner_ids == {"tuner0"}
    with open(tmp_path / "proj" / f"trial_{first.trial_id}" / "trial.json") as f:
        assert json.load(f)["status"] == "FAILED"


def _trial_run_by(project_dir, tuner_id) -> dict | None:
    if not os.path.isdir(project_dir):
        return None
    for name in sorted(os.listdir(project_dir)):
        record = _tuners.read_sidecar(os.path.join(project_dir, name))
        if record.get("tuner_id") == tuner_id:
            return record
    return None


def _wait_for(condition, what: str):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_chief_and_two_workers_finish_the_search_when_a_third_worker_dies(tiny_data, tmp_path):
    out, port = tmp_path / "search", free_ports(1)[0]
    args = [
        sys.executable,
        "-m",
        "cxrmodels.cli",
        "tune",
        str(tiny_data),
        "--out",
        str(out),
        "--tuner",
        "random",
        "--max-trials",
        "6",
        "--max-epochs",
        "1",
        "--batch-size",
        "8",
        "--hp",
        "base_filters=4",
        "--hp",
        "dense_units=8",
        "--distributed",
        "--worker-timeout",
        "6",
        "--verbose",
        "0",
    ]
    procs, logs = {}, {}

    def launch(tuner_id):
        logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "w")
        env = {
            **os.environ,
            "KERASTUNER_TUNER_ID": tuner_id,
            "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        procs[tuner_id] = subprocess.Popen(args, env=env, stdout=logs[tuner_id], stderr=subprocess.STDOUT)

    def log(tuner_id) -> str:
        logs[tuner_id].flush()
        return (tmp_path / f"{tuner_id}.log").read_text()[-3000:]

    try:
        launch("tuner2")  # the worker that dies during its first trial; it waits for the chief
        launch("chief")
        doomed = _wait_for(lambda: _trial_run_by(out / "cxr_tune", "tuner2"), "tuner2's first trial")
        launch("tuner0")
        launch("tuner1")
        procs["tuner2"].send_signal(signal.SIGKILL)
        assert procs["tuner2"].wait(timeout=TIMEOUT) == -signal.SIGKILL
        for tuner_id in ("tuner0", "tuner1", "chief"):
            assert procs[tuner_id].wait(timeout=TIMEOUT) == 0, log(tuner_id)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for f in logs.values():
            f.close()

    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    dead = [r for r in rows if r["tuner_id"] == "tuner2"]
    assert [r["trial_id"] for r in dead] == [doomed["trial_id"]]
    assert dead[0]["status"] == "FAILED" and "worker tuner2 lost: no heartbeat" in dead[0]["note"]
    assert _trial_run_by(out / "cxr_tune", "tuner2")["status"] == "RUNNING"  # it died mid-trial
    done = [r for r in rows if r["status"] == "COMPLETED"]
    assert len(done) == 5 and {r["tuner_id"] for r in done} == {"tuner0", "tuner1"}
    assert all(int(r["epochs"]) == 1 and float(r["seconds"]) > 0 for r in done)
    with open(out / "best_hyperparameters.json") as f:
        assert json.load(f)["trial_id"] in {r["trial_id"] for r in done}
    for name in ("best_model.keras", "search_plot.png"):
        assert (out / name).stat().st_size > 0
    assert f"trial {doomed['trial_id']} FAILED: worker tuner2 lost" in (tmp_path / "chief.log").read_text()
    assert "Worker ran" in (tmp_path / "tuner0.log").read_text()


def test_the_chief_never_suggests_listening_on_every_interface(monkeypatch):
    # 192.0.2.1 (TEST-NET-1) is on no host: the bind fails, and the message says where to listen instead.
    _env(
        monkeypatch,
        KERASTUNER_TUNER_ID="chief",
        KERASTUNER_ORACLE_IP="192.0.2.1",
        KERASTUNER_ORACLE_PORT="8000",
    )
    with pytest.raises(
        OSError, match=r"cannot listen on 192\.0\.2\.1:8000 .*private network.*no authentication"
    ) as caught:
        _distribute.serve(object(), heartbeat_dir="unused", worker_timeout=10)
    assert "0.0.0.0" not in str(caught.value)


def test_the_chief_warns_when_it_listens_on_every_interface(monkeypatch):
    with socket.socket() as taken:  # the bind fails right after the warning, so the test does not serve
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _env(
            monkeypatch,
            KERASTUNER_TUNER_ID="chief",
            KERASTUNER_ORACLE_IP="0.0.0.0",
            KERASTUNER_ORACLE_PORT=str(port),
        )
        with (
            pytest.warns(
                UserWarning, match=rf"listens on 0\.0\.0\.0:{port}, every interface.*no authentication"
            ),
            pytest.raises(OSError, match="private network"),
        ):
            _distribute.serve(object(), heartbeat_dir="unused", worker_timeout=10)
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = (pathlib.Path(__file__).resolve().parents[2] / "examples" / "distributed_tuning.md").read_text()
    assert "0.0.0.0" not in example.replace("never `0.0.0.0`", "") and "private" in readme
