"""A run's training state in `RUN/backup/`: saved after every epoch, restored by a rerun.

The backup is what makes `cxr train` resumable, and every write to it is
ordered so that a kill at any instant leaves a state a rerun can continue:

1. the weights of an epoch that improved `val_loss` (`best-NNNN.weights.h5`),
2. the weights and optimizer state after the epoch (`epoch-NNNN.weights.h5`),
3. `state.json`: the epoch count, the history rows, early stopping's best,
   wait and stop flag, and which weight files hold what. Writing it (atomically)
   is the commit: an epoch is done once its state.json is on disk.

Files are written under temporary names and renamed, so none is ever seen half
written; the two latest epochs' files are kept, so a damaged latest file (a
disk fault) falls back to the epoch before. `history.csv` and `model.keras`
are derived from the state (rewritten from it on resume), so a kill between
the commit and their writes loses nothing and retrains nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings

import keras

from cxrdata.utils.io import atomic_write_text
from cxrmodels.models.saving import save_model
from cxrmodels.runs import run_folder

STATE_NAME = "state.json"
STATE_FORMAT = 2
_KEEP = 2  # epochs whose weights stay on disk: the latest and the one before


@dataclasses.dataclass
class RunState:
    """Epoch bookkeeping of a run: what `state.json` holds.

    Attributes:
        epoch: Epochs done.
        history: `{column: [value per epoch]}`, as in `history.csv`.
        best: The lowest `val_loss` so far (inf before the first epoch).
        best_epoch: Its epoch, 0-based (-1: none yet).
        wait: Epochs since the best one (EarlyStopping's count).
        stopped: Early stopping ended the run.
        checkpoints: `[{"epoch": n, "file": name}]`, newest last.
        best_files: `[{"epoch": n, "file": name}]` of best weights, newest last.
    """

    epoch: int = 0
    history: dict = dataclasses.field(default_factory=dict)
    best: float = math.inf
    best_epoch: int = -1
    wait: int = 0
    stopped: bool = False
    checkpoints: list = dataclasses.field(default_factory=list)
    best_files: list = dataclasses.field(default_factory=list)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["best"] = None if math.isinf(self.best) else self.best
        return json.dumps({"format": STATE_FORMAT} | d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunState:
        d = json.loads(text)
        if d.pop("format", None) != STATE_FORMAT:
            raise ValueError("not a state.json this version writes")
        d["best"] = math.inf if d["best"] is None else float(d["best"])
        return cls(**d)

    def after_epochs(self, epochs: int, patience: int) -> RunState:
        """The state as it was after `epochs` epochs (a fallback), judged again from the history."""
        history = {k: v[:epochs] for k, v in self.history.items()}
        state = RunState(epoch=0, history={k: [] for k in history})
        for i in range(epochs):
            state.record({k: v[i] for k, v in history.items()}, patience)
        state.checkpoints = [c for c in self.checkpoints if c["epoch"] <= epochs]
        state.best_files = [b for b in self.best_files if b["epoch"] == state.best_epoch + 1]
        return state

    def record(self, logs: dict, patience: int) -> bool:
        """Adds one epoch's row; updates early stopping as Keras' EarlyStopping does. True: improved."""
        for key, value in logs.items():
            value = int(value) if key == "epoch" else float(value)
            self.history.setdefault(key, [math.nan] * self.epoch).append(value)
        loss = float(logs.get("val_loss", math.nan))
        improved = loss < self.best  # NaN never improves
        if improved:
            self.best, self.best_epoch, self.wait = loss, self.epoch, 0
        else:
            self.wait += 1
            self.stopped = self.wait >= patience and self.epoch > 0
        self.epoch += 1
        return improved


def backup_dir(out: str) -> str:
    return os.path.join(out, run_folder.BACKUP_DIR)


def read_state(out: str) -> RunState | None:
    """The committed state of a run's backup (None: no epoch committed yet).

    Raises:
        ValueError: a backup written by an older cxr (Keras' BackupAndRestore files).
    """
    path = os.path.join(backup_dir(out), STATE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            return RunState.from_json(f.read())
    except FileNotFoundError:
        if os.path.exists(os.path.join(backup_dir(out), "training_metadata.json")):
            raise ValueError(
                f"The unfinished run in {out!r} was started by an older version of cxr, whose backup "
                f"this version does not resume. Pass --overwrite (overwrite=True) to start it over."
            ) from None
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"The backup of the unfinished run in {out!r} cannot be read ({path}: {e}). "
            f"Pass --overwrite (overwrite=True) to start it over."
        ) from None


def _save_weights(net: keras.Model, path: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.getpid()}.tmp.{os.path.basename(path)}")
    try:
        net.save_weights(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def commit_epoch(out: str, net: keras.Model, state: RunState, improved: bool) -> None:
    """Saves the epoch `state` has just recorded, in the order the module docstring gives."""
    folder = backup_dir(out)
    os.makedirs(folder, exist_ok=True)
    if improved:
        name = f"best-{state.epoch:04d}.weights.h5"
        _save_weights(net, os.path.join(folder, name))
        state.best_files = (state.best_files + [{"epoch": state.epoch, "file": name}])[-_KEEP:]
    name = f"epoch-{state.epoch:04d}.weights.h5"
    _save_weights(net, os.path.join(folder, name))
    state.checkpoints = (state.checkpoints + [{"epoch": state.epoch, "file": name}])[-_KEEP:]
    atomic_write_text(os.path.join(folder, STATE_NAME), state.to_json())  # the commit
    kept = {STATE_NAME} | {c["file"] for c in state.checkpoints} | {b["file"] for b in state.best_files}
    for name in os.listdir(folder):
        if name not in kept:
            _remove(os.path.join(folder, name))


def _remove(path: str) -> None:
    try:
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    except FileNotFoundError:
        pass


def restore(out: str, net: keras.Model, state: RunState, patience: int) -> tuple[RunState, list | None]:
    """Loads the newest readable checkpoint into `net`; returns the state it holds and the best weights.

    A damaged latest file falls back to the epoch before (with a warning); the
    state returned is then that epoch's, and the history is cut only now, after
    a restore succeeded.

    Raises:
        ValueError: no checkpoint of the backup can be loaded.
    """
    folder = backup_dir(out)
    errors = []
    for checkpoint in reversed(state.checkpoints):
        path = os.path.join(folder, checkpoint["file"])
        try:
            net.load_weights(path)
        except Exception as e:  # noqa: BLE001  truncated or corrupt: try the one before
            errors.append(f"{checkpoint['file']}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        if checkpoint["epoch"] != state.epoch:
            warnings.warn(
                f"The backup of epoch {state.epoch} in {folder} cannot be read ({errors[-1]}); resuming "
                f"from epoch {checkpoint['epoch']} instead.",
                stacklevel=3,
            )
            state = state.after_epochs(checkpoint["epoch"], patience)
        best = _best_weights(folder, net, state)
        net.load_weights(path)  # the best file held its own optimizer state: back to the checkpoint's
        return state, best
    raise ValueError(
        f"The unfinished run in {out!r} cannot be resumed: no checkpoint in its backup can be read "
        f"({'; '.join(errors) or 'none saved'}). Pass --overwrite (overwrite=True) to start it over."
    )


def _best_weights(folder: str, net: keras.Model, state: RunState) -> list | None:
    """The best epoch's weights (None when unreadable: early stopping then judges from here on)."""
    for entry in reversed(state.best_files):
        if entry["epoch"] == state.best_epoch + 1:
            try:
                net.load_weights(os.path.join(folder, entry["file"]))
            except Exception as e:  # noqa: BLE001  a damaged file, whatever h5py or Keras raise
                warnings.warn(
                    f"The best epoch's weights ({entry['file']}, epoch {entry['epoch']}) cannot be read "
                    f"({type(e).__name__}): early stopping judges from the resumed epoch on, and the "
                    "model keeps the best weights of the epochs trained from here (config.json's "
                    "results.best_epoch names that epoch).",
                    stacklevel=3,
                )
                return None
            return net.get_weights()
    return None


def write_derived_files(out: str, net: keras.Model, state: RunState, best_weights: list | None) -> None:
    """`history.csv` and `model.keras` as the state says (after a resume: repairs a kill after the commit)."""
    run_folder.write_history(os.path.join(out, run_folder.HISTORY_NAME), state.history)
    if best_weights is not None:
        current = net.get_weights()
        net.set_weights(best_weights)
        save_model(net, os.path.join(out, run_folder.MODEL_NAME))
        net.set_weights(current)
