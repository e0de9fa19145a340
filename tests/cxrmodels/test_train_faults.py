"""A training run killed at any step of its epochs or its finish is finished by a rerun, never retrained.

Every write a run makes (weights, the state commit, history, the model, curves, config, the backup's
removal) is wrapped. A kill just before write k leaves the run folder exactly as it was when write k
was called (a kill skips every later write, and writes are atomic: a kill inside one leaves a
temporary file, never a damaged final one; `test_a_write_interrupted_halfway...` checks that). So
one uninterrupted run copies its folder before each write, and each copy is what a kill at that step
leaves: a rerun on each must finish the run without training a committed epoch again. Real
`kill -9`s at chosen points are in test_train.py and test_multi_worker.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings

import keras
import numpy as np
import pytest

from cxrmodels.runs import run_folder
from cxrmodels.training import bookkeeping, lifecycle, run_state
from cxrmodels.training.trainer import train

OPTIONS = dict(epochs=3, batch_size=8, verbose=0, model_kwargs={"filters": (4, 8, 8), "dense_units": 8})
# Every write of a run, in the module that calls it.
WRITES = [
    (run_state, "_save_weights"),
    (run_state, "atomic_write_text"),
    (run_state, "_remove"),
    (run_folder, "write_history"),
    (run_folder, "write_config"),
    (run_folder, "plot_learning_curves"),
    (bookkeeping, "save_model"),
    (lifecycle, "save_model"),
    (lifecycle, "_set_backup_aside"),
    (lifecycle, "_delete_set_aside"),
]


class Killed(BaseException):
    """A kill: raised at one step, it skips every later write."""


class _Writes:
    """Wraps every write; records their names and, with `snapshots`, copies RUN before each."""

    def __init__(self, monkeypatch, run=None, snapshots=None):
        self.calls: list[str] = []
        self.run, self.snapshots = run, snapshots
        for module, name in WRITES:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), f"{module.__name__}.{name}"))

    def _wrap(self, function, label):
        def wrapped(*args, **kwargs):
            self.calls.append(label)
            if self.snapshots is not None:
                copy = self.snapshots / f"{len(self.calls):02d}"
                if self.run.exists():
                    shutil.copytree(self.run, copy, ignore=shutil.ignore_patterns(".cxr.lock"))
                else:
                    copy.mkdir()
            return function(*args, **kwargs)

        return wrapped


def _rows(run) -> dict[str, list]:
    """history.csv as `{column: values}`."""
    with open(os.path.join(run, run_folder.HISTORY_NAME), newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [int(r[k]) if k == "epoch" else float(r[k]) for r in rows] for k in rows[0]}


def _config(run):
    return json.loads((run / "config.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """A run never stopped, its writes, and a copy of RUN as it was before each write."""
    base = tmp_path_factory.mktemp("whole")
    run, snapshots = base / "run", base / "before"
    snapshots.mkdir()
    with pytest.MonkeyPatch.context() as m:
        writes = _Writes(m, run, snapshots)
        result = train(tiny_data, out=run, **OPTIONS)
    return run, result, writes.calls, snapshots


def test_every_write_is_wrapped(uninterrupted):
    calls = uninterrupted[2]
    # The epochs' and the finish's writes are all seen (so the test below kills at each of them).
    for label in (
        "cxrmodels.training.run_state._save_weights",
        "cxrmodels.training.run_state.atomic_write_text",
        "cxrmodels.training.run_state._remove",
        "cxrmodels.runs.run_folder.write_history",
        "cxrmodels.runs.run_folder.write_config",
        "cxrmodels.training.bookkeeping.save_model",
        "cxrmodels.training.lifecycle.save_model",
        "cxrmodels.runs.run_folder.plot_learning_curves",
        "cxrmodels.training.lifecycle._set_backup_aside",
        "cxrmodels.training.lifecycle._delete_set_aside",
    ):
        assert label in calls, label
    assert (
        calls.count("cxrmodels.training.run_state.atomic_write_text") == OPTIONS["epochs"]
    )  # one commit each


@pytest.mark.slow
def test_a_kill_at_any_write_is_finished_by_a_rerun_never_retrained(uninterrupted, tiny_data, tmp_path):
    whole, reference, calls, snapshots = uninterrupted
    size = tuple(reference.config["model"]["input_shape"])
    images = np.random.default_rng(0).integers(0, 256, (4, *size), dtype=np.uint8)
    expected = reference.model.predict(images, verbose=0)
    epochs = list(range(OPTIONS["epochs"]))
    commits = [k for k, label in enumerate(calls, start=1) if label.endswith("atomic_write_text")]
    for k, label in enumerate(calls, start=1):
        if commits[0] < k <= commits[1]:
            continue  # epoch 2 writes what epoch 3 writes (less the old files' removal): killed there
        run = tmp_path / f"kill{k:02d}"
        shutil.copytree(snapshots / f"{k:02d}", run)  # what a kill just before write k leaves
        where = f"killed before write {k}, {label}"
        state = run_state.read_state(str(run)) if (run / "backup").is_dir() else None
        committed = state.epoch if state is not None else 0
        if (run / "config.json").exists() and _config(run)["finished"]:
            # After the finish's commit: the rerun removes the leftovers and says the run is finished.
            with pytest.raises(FileExistsError, match="finished"):
                train(tiny_data, out=run, **OPTIONS)
            assert not (run / "backup").exists() and not (run / ".backup-deleting").exists(), where
            model = keras.saving.load_model(run / "model.keras", compile=False)
            np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5, err_msg=where)
            continue
        result = train(tiny_data, out=run, **OPTIONS)
        assert result.resumed_from == committed, where
        rows = _rows(run)
        assert rows["epoch"] == epochs, where  # each epoch once
        for key, values in (state.history if state else {}).items():  # committed epochs kept, not redone
            assert rows[key][:committed] == pytest.approx(values, nan_ok=True), (where, key)
        assert _config(run)["finished"] and not (run / "backup").exists(), where
        if committed == len(epochs):  # every epoch was done: only the finish was left, so the same model
            np.testing.assert_allclose(
                result.model.predict(images, verbose=0), expected, atol=1e-5, err_msg=where
            )


def test_a_write_interrupted_halfway_leaves_no_damaged_file(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = keras.Model.save_weights
    calls = []

    def halfway(self, filepath, *args, **kwargs):  # Ctrl-C or SIGTERM in the middle of a save
        calls.append(filepath)
        if "epoch-0002" in str(filepath):  # epoch 2's checkpoint
            original(self, filepath, *args, **kwargs)
            with open(filepath, "r+b") as f:
                f.truncate(os.path.getsize(filepath) // 2)
            raise KeyboardInterrupt
        return original(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", halfway)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, out=run, **OPTIONS)
    monkeypatch.undo()
    names = os.listdir(run / "backup")
    assert not [n for n in names if ".tmp." in n]  # the half-written file was never under a final name
    assert run_state.read_state(str(run)).epoch == 1
    result = train(tiny_data, out=run, **OPTIONS)
    assert result.resumed_from == 1 and _rows(run)["epoch"] == [0, 1, 2]


def test_a_damaged_latest_checkpoint_falls_back_to_the_epoch_before(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("cxrmodels.training.trainer.finish", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(tiny_data, out=run, **OPTIONS)
    state = run_state.read_state(str(run))
    assert state.epoch == 3
    latest = run / "backup" / state.checkpoints[-1]["file"]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])  # a disk fault
    history_before = _rows(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(tiny_data, out=run, **OPTIONS)
    assert any("resuming from epoch 2" in str(w.message) for w in caught)
    assert result.resumed_from == 2  # the third epoch is trained again, from the second's state
    rows = _rows(run)
    assert rows["epoch"] == [0, 1, 2]
    for key in rows:
        assert rows[key][:2] == pytest.approx(history_before[key][:2], nan_ok=True), key


def test_an_unreadable_best_epoch_is_named_and_the_results_name_the_epoch_the_model_holds(
    tiny_data, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("cxrmodels.training.trainer.finish", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(tiny_data, out=run, **OPTIONS)
    state = run_state.read_state(str(run))
    for entry in state.best_files:
        (run / "backup" / entry["file"]).write_bytes(b"not hdf5")  # a disk fault
    with pytest.warns(UserWarning, match="best epoch's weights .* cannot be read"):
        result = train(tiny_data, out=run, **(OPTIONS | {"epochs": 4}))
    # Early stopping judged from the resume on: the model holds epoch 4's weights, whatever
    # epochs 1-3 scored, and the results say so (they named the lost epoch before).
    assert result.resumed_from == 3 and result.best_epoch == 4
    assert _config(run)["results"]["best_epoch"] == 4
    assert _config(run)["results"]["best_val_loss"] == pytest.approx(_rows(run)["val_loss"][3])


def test_an_unreadable_backup_is_refused_without_cutting_the_history(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("cxrmodels.training.trainer.finish", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(tiny_data, out=run, **OPTIONS)
    for entry in run_state.read_state(str(run)).checkpoints:
        (run / "backup" / entry["file"]).write_bytes(b"not hdf5")
    before = (run / "history.csv").read_bytes()
    for _ in range(2):  # a failed rerun changes nothing, so the next one fails the same way
        with pytest.raises(ValueError, match="cannot be resumed.*no checkpoint.*--overwrite"):
            train(tiny_data, out=run, **OPTIONS)
        assert (run / "history.csv").read_bytes() == before
    shutil.rmtree(run)
