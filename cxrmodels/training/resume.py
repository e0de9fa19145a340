"""Fresh, refused or resumed: the state of a run folder when `train` starts.

`train` resumes a run killed mid-training (`config.json` says it did not
finish) from its `BackupAndRestore` state. Keras restores the weights, the
optimizer and the epoch; the callbacks that judge epochs against each other
are restored here from the epochs already done: `history.csv` is cut back to
the epochs the backup holds (later ones are redone), and early stopping gets
back its best loss, its wait count and, from `model.keras`, its best weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass

import keras

from cxrdata.utils.output_dir import FRESH, OVERWRITE, check_output_dir, refuse_other_options
from cxrmodels.runs import run_folder

# The options a resumed run may change; any other difference is refused.
RESUMABLE_CHANGES = ("epochs", "patience", "verbose")


def prepare_run_dir(out: str, config: dict, *, overwrite: bool) -> int:
    """Readies `out` for a fresh or resumed run; returns the epochs already done (0: fresh).

    Follows the output folder rule of `cxrdata.utils.output_dir`.
    """
    state = check_output_dir(
        out,
        what="training run",
        markers=(run_folder.CONFIG_NAME,),
        overwrite=overwrite,
        finished=lambda p: bool(run_folder.read_config(p).get("finished")),
    )
    if state == FRESH:
        os.makedirs(out, exist_ok=True)
        return 0
    if state == OVERWRITE:
        _clear_run(out)
        return 0
    refuse_other_options(out, "training run", _differences(run_folder.read_config(out), config))
    done = _backup_epochs(out)
    history_path = os.path.join(out, run_folder.HISTORY_NAME)
    if done:
        run_folder.truncate_history(history_path, done)  # epochs after the backup will be redone
    else:  # killed before its first backup (or while writing it): start afresh
        for name in (run_folder.HISTORY_NAME, run_folder.MODEL_NAME):
            if os.path.exists(os.path.join(out, name)):
                os.unlink(os.path.join(out, name))
        shutil.rmtree(os.path.join(out, run_folder.BACKUP_DIR), ignore_errors=True)
    return done


def _differences(previous: dict, config: dict) -> list[str]:
    out = []
    for section in ("model", "class_names", "preprocessing", "training"):
        old, new = previous.get(section), config.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if key in RESUMABLE_CHANGES or key == "augment_layer":
                    continue
                if old.get(key) != new.get(key):
                    out.append(f"{section}.{key}: {old.get(key)!r} then, {new.get(key)!r} now")
        elif old != new:
            out.append(f"{section}: {old!r} then, {new!r} now")
    if previous.get("dataset", {}).get("digest") != config["dataset"]["digest"]:
        out.append("the dataset differs (manifest digest)")
    return out


def _clear_run(out: str) -> None:
    for name in os.listdir(out):
        path = os.path.join(out, name)
        ours = name in run_folder.RUN_FILES or (
            name.startswith(("metrics-", "roc-", "confusion_matrix-")) and name.endswith((".json", ".png"))
        )
        if not ours:
            continue
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _backup_epochs(out: str) -> int:
    """Epochs saved in `out/backup` by BackupAndRestore (0 when there is no usable backup)."""
    backup = os.path.join(out, run_folder.BACKUP_DIR)
    try:
        with open(os.path.join(backup, "training_metadata.json")) as f:
            epoch = int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    # latest.weights.h5: BackupAndRestore's; checkpoint: the multi-worker loop's tf.train.Checkpoint.
    saved = any(os.path.isfile(os.path.join(backup, name)) for name in ("latest.weights.h5", "checkpoint"))
    return epoch if saved else 0


@dataclass(frozen=True)
class ResumeState:
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False


def resume_state(history: dict, patience: int) -> ResumeState:
    """Early stopping's state after the epochs in `history` (none when fresh)."""
    losses = [v for v in history.get("val_loss", []) if not math.isnan(v)]
    if not losses:
        return ResumeState()
    n = len(history["val_loss"])
    best_epoch = min(range(n), key=lambda i: (math.isnan(history["val_loss"][i]), history["val_loss"][i]))
    wait = n - 1 - best_epoch
    # Keras stops only after an epoch that did not improve (wait >= 1), so with patience=0 a run
    # whose last epoch improved was not stopped.
    return ResumeState(
        best=min(losses), best_epoch=best_epoch, wait=wait, stopped=n > 1 and wait >= max(patience, 1)
    )


def best_weights(path: str):
    from cxrmodels.models.saving import load_model

    return load_model(path, compile=False).get_weights()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that starts from the state of the epochs before a resume."""

    def __init__(self, *, resume: ResumeState, weights_path: str, **kwargs):
        super().__init__(**kwargs)
        self._resume, self._weights_path = resume, weights_path

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume.best is None:
            return
        try:
            self.best_weights = best_weights(self._weights_path)
        except Exception:  # noqa: BLE001  a checkpoint cut short by the kill: judge from here on
            return
        self.best, self.best_epoch, self.wait = self._resume.best, self._resume.best_epoch, self._resume.wait


def restore_finished(net: keras.Model, out: str) -> None:
    """Gives `net` the best weights of a run whose epochs are all done (killed before its last writes).

    Raises:
        ValueError: Neither the best model nor the backup can be read.
    """
    try:
        net.set_weights(best_weights(os.path.join(out, run_folder.MODEL_NAME)))
        return
    except Exception:  # noqa: BLE001  cut short by the kill: the backup's last epoch will do
        pass
    try:
        net.load_weights(os.path.join(out, run_folder.BACKUP_DIR, "latest.weights.h5"))
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"The unfinished run in {out!r} cannot be resumed: neither its {run_folder.MODEL_NAME} "
            f"nor its backup can be read ({e}). Pass --overwrite to start over."
        ) from e
