"""A training run killed at any step of its epochs or its finish is finished by a rerun, never retrained.

The kill is injected in-process: every write a run makes (weights, the state commit, history, the
model, curves, config, the backup's removal) is wrapped, and the k-th one raises a BaseException that
nothing in the library catches, so every later write is skipped, as a kill would skip it (a real
`kill -9` at chosen points is tested in test_train.py). Writes are atomic, so a kill inside a write
leaves what a kill just before it leaves; that is tested too, by interrupting `save_weights` halfway.
"""

from __future__ import annotations

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

OPTIONS = dict(epochs=3, batch_size=16, verbose=0, model_kwargs={"filters": (4, 8, 8), "dense_units": 8})
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
    """A kill: raised at one write, it skips every later one."""


class _Writes:
    """Wraps every write; records their names, and raises `Killed` at call number `kill_at` (1-based)."""

    def __init__(self, monkeypatch, kill_at: int | None = None):
        self.calls: list[str] = []
        self.kill_at = kill_at
        for module, name in WRITES:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), f"{module.__name__}.{name}"))

    def _wrap(self, function, label):
        def wrapped(*args, **kwargs):
            self.calls.append(label)
            if self.kill_at is not None and len(self.calls) == self.kill_at:
                raise Killed(label)
            return function(*args, **kwargs)

        return wrapped


def _rows(run):
    return run_folder.read_history(os.path.join(run, run_folder.HISTORY_NAME))


def _config(run):
    return json.loads((run / "config.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(converted_dataset, tmp_path_factory):
    """A run never stopped, and the list of its writes."""
    run = tmp_path_factory.mktemp("whole") / "run"
    with pytest.MonkeyPatch.context() as m:
        writes = _Writes(m)
        result = train(converted_dataset, out=run, **OPTIONS)
    return run, result, writes.calls


def test_every_write_is_wrapped(uninterrupted):
    _, _, calls = uninterrupted
    # The epochs' and the finish's writes are all seen (so the test below kills at each of them).
    for label in (
        "cxrmodels.training.run_state._save_weights",
        "cxrmodels.training.run_state.atomic_write_text",
        "cxrmodels.runs.run_folder.write_history",
        "cxrmodels.training.bookkeeping.save_model",
        "cxrmodels.training.lifecycle.save_model",
        "cxrmodels.runs.run_folder.plot_learning_curves",
        "cxrmodels.training.lifecycle._set_backup_aside",
        "cxrmodels.training.lifecycle._delete_set_aside",
    ):
        assert label in calls
    assert calls.count("cxrmodels.training.run_state.atomic_write_text") == 3  # one commit per epoch


@pytest.mark.slow
def test_a_kill_at_any_write_is_finished_by_a_rerun_never_retrained(
    uninterrupted, converted_dataset, tmp_path, monkeypatch
):
    whole, reference, calls = uninterrupted
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 1), dtype=np.uint8)
    expected = reference.model.predict(images, verbose=0)
    for k in range(1, len(calls) + 1):
        run = tmp_path / f"kill{k}"
        with monkeypatch.context() as m:
            _Writes(m, kill_at=k)
            with pytest.raises(Killed):
                train(converted_dataset, out=run, **OPTIONS)
        state = run_state.read_state(str(run)) if (run / "backup").is_dir() else None
        committed = state.epoch if state is not None else 0
        finished = (run / "config.json").exists() and _config(run)["finished"]
        if finished:  # killed after the commit of the finish: the rerun removes the leftovers, refuses
            with pytest.raises(FileExistsError, match="finished"):
                train(converted_dataset, out=run, **OPTIONS)
            assert not (run / "backup").exists() and not (run / ".backup-deleting").exists()
            model = keras.saving.load_model(run / "model.keras", compile=False)
            np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
            continue
        result = train(converted_dataset, out=run, **OPTIONS)
        assert result.resumed_from == committed, (k, calls[k - 1])
        rows = _rows(run)
        assert rows["epoch"] == [0, 1, 2], (k, calls[k - 1])  # each epoch once
        if committed:  # the epochs committed before the kill were kept as they were, not redone
            for key, values in state.history.items():
                assert rows[key][:committed] == pytest.approx(values, nan_ok=True), (k, key)
        assert _config(run)["finished"] and not (run / "backup").exists()
        if committed == 3:  # every epoch was done: only the finish was left, so the same model
            np.testing.assert_allclose(result.model.predict(images, verbose=0), expected, atol=1e-5)


def test_a_write_interrupted_halfway_leaves_no_damaged_file(converted_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = keras.Model.save_weights
    calls = []

    def halfway(self, filepath, *args, **kwargs):  # Ctrl-C or SIGTERM in the middle of a save
        calls.append(filepath)
        if len(calls) == 4:  # epoch 2's checkpoint
            original(self, filepath, *args, **kwargs)
            with open(filepath, "r+b") as f:
                f.truncate(os.path.getsize(filepath) // 2)
            raise KeyboardInterrupt
        return original(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", halfway)
    with pytest.raises(KeyboardInterrupt):
        train(converted_dataset, out=run, **OPTIONS)
    monkeypatch.undo()
    names = os.listdir(run / "backup")
    assert not [n for n in names if ".tmp." in n]  # the half-written file was never under a final name
    assert run_state.read_state(str(run)).epoch == 1
    result = train(converted_dataset, out=run, **OPTIONS)
    assert result.resumed_from == 1 and _rows(run)["epoch"] == [0, 1, 2]


def test_a_damaged_latest_checkpoint_falls_back_to_the_epoch_before(converted_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("cxrmodels.training.trainer.finish", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(converted_dataset, out=run, **OPTIONS)
    state = run_state.read_state(str(run))
    assert state.epoch == 3
    latest = run / "backup" / state.checkpoints[-1]["file"]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])  # a disk fault
    history_before = _rows(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(converted_dataset, out=run, **OPTIONS)
    assert any("resuming from epoch 2" in str(w.message) for w in caught)
    assert result.resumed_from == 2  # the third epoch is trained again, from the second's state
    rows = _rows(run)
    assert rows["epoch"] == [0, 1, 2]
    for key in rows:
        assert rows[key][:2] == pytest.approx(history_before[key][:2], nan_ok=True), key


def test_an_unreadable_backup_is_refused_without_cutting_the_history(
    converted_dataset, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr("cxrmodels.training.trainer.finish", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(converted_dataset, out=run, **OPTIONS)
    for entry in run_state.read_state(str(run)).checkpoints:
        (run / "backup" / entry["file"]).write_bytes(b"not hdf5")
    before = (run / "history.csv").read_bytes()
    for _ in range(2):  # a failed rerun changes nothing, so the next one fails the same way
        with pytest.raises(ValueError, match="cannot be resumed.*no checkpoint.*--overwrite"):
            train(converted_dataset, out=run, **OPTIONS)
        assert (run / "history.csv").read_bytes() == before
    shutil.rmtree(run)
