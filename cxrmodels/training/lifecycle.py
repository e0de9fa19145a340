"""A run folder's lifecycle: prepared (fresh, resumed or refused), then finished.

Both training loops call the same two functions: `prepare_run_dir` before the
first epoch and `finish` after the last. The finish sequence is idempotent: a
run killed at any instant of it is finished by a rerun, never retrained:

1. the best model `model.keras`, the history and the curves are written
   (derived from the backup's committed state, so rewriting them is harmless);
2. `config.json` gets `"finished": true`, the decision threshold and the
   results: the commit;
3. `backup/` is renamed aside, then removed. A rerun that finds a finished run
   with a backup left removes it before saying the run is finished.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import keras

from cxrdata.utils.output_dir import FRESH, OVERWRITE, check_output_dir, refuse_other_options
from cxrmodels.metrics.clinical import decision_thresholds
from cxrmodels.models.saving import save_model
from cxrmodels.runs import run_folder
from cxrmodels.training import run_state
from cxrmodels.training.config import TrainConfig

_DELETING = ".backup-deleting"


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What `train` did.

    Attributes:
        run_dir: The run folder.
        model: The trained model, with the weights of the best epoch.
        history: `{metric: values}` per epoch over the whole run (resumed
            epochs included), as in `history.csv`.
        epochs: Epochs finished in all.
        best_epoch: The epoch (1-based) whose weights the model holds: the one with the lowest
            validation loss (if none was finite, the last; if a resume could not read the best
            epoch's file, the best of the epochs trained since).
        best_val_loss: That loss.
        resumed_from: Epochs already done when this call started (0: fresh).
        seconds: Wall time of this call.
        config: The run's `config.json`.
    """

    run_dir: str
    model: keras.Model
    history: dict[str, list[float]]
    epochs: int
    best_epoch: int
    best_val_loss: float
    resumed_from: int
    seconds: float
    config: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        resumed = f", resumed after epoch {self.resumed_from}" if self.resumed_from else ""
        epochs = f"{self.epochs} epoch{'s' * (self.epochs != 1)}"
        return (
            f"Trained {self.config['model']['name']} for {epochs}{resumed} in "
            f"{self.seconds:.1f}s; best epoch {self.best_epoch} (val_loss {self.best_val_loss:.4f}). "
            f"Run folder: {self.run_dir} ({run_folder.MODEL_NAME}, {run_folder.HISTORY_NAME}, "
            f"{run_folder.CURVES_NAME}, {run_folder.CONFIG_NAME})"
        )


def _finished(out: str) -> bool:
    finished = bool(run_folder.read_config(out).get("finished"))
    if finished:  # a kill during the last cleanup: complete it
        for name in (run_folder.BACKUP_DIR, _DELETING):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    return finished


def prepare_run_dir(config: TrainConfig, run_config: dict) -> run_state.RunState | None:
    """Readies `config.out` for a fresh or resumed run; returns the committed state to resume (None: fresh).

    Follows the output folder rule of `cxrdata.utils.output_dir`: a finished run
    is refused unless `overwrite`, an unfinished one made with other options is
    refused naming each difference.

    Raises:
        FileExistsError: a finished run, other options, or a folder that holds no run.
        ValueError: a backup that cannot be read.
    """
    out = config.out
    state = check_output_dir(
        out,
        what="training run",
        markers=(run_folder.CONFIG_NAME,),
        overwrite=config.overwrite,
        finished=_finished,
    )
    if state == FRESH:
        os.makedirs(out, exist_ok=True)
        return None
    if state == OVERWRITE:
        _clear_run(out)
        return None
    refuse_other_options(out, "training run", _differences(run_folder.read_config(out), config, run_config))
    return run_state.read_state(out)


def _differences(previous: dict, config: TrainConfig, run_config: dict) -> list[str]:
    if "config" not in previous:
        return ["the run was started by an older version of cxr (its config.json has no 'config')"]
    out = TrainConfig.from_dict(previous["config"]).differences(config)
    if previous.get("dataset", {}).get("digest") != run_config["dataset"]["digest"]:
        out.append("the dataset differs (manifest digest)")
    return out


def _set_backup_aside(out: str) -> None:
    """Renames `backup/` aside: one atomic step, after which what is left is garbage a rerun removes."""
    backup, deleting = os.path.join(out, run_folder.BACKUP_DIR), os.path.join(out, _DELETING)
    shutil.rmtree(deleting, ignore_errors=True)
    if os.path.isdir(backup):
        os.replace(backup, deleting)


def _delete_set_aside(out: str) -> None:
    shutil.rmtree(os.path.join(out, _DELETING), ignore_errors=True)


def _clear_run(out: str) -> None:
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if not (run_folder.is_run_file(name) or name == _DELETING):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def finish(
    out: str,
    net: keras.Model,
    run_config: dict,
    state: run_state.RunState,
    *,
    val_predictions: tuple,
    resumed_from: int,
    start: float,
) -> TrainResult:
    """The finish sequence (see the module docstring); `net` holds the best weights.

    Args:
        val_predictions: `(labels, probabilities)` of `net` on the "val" split,
            for the decision threshold.
    """
    history = state.history
    run_folder.write_history(os.path.join(out, run_folder.HISTORY_NAME), history)
    losses = history.get("val_loss", [])
    # The epoch whose weights the model holds: the best one, or the last when no best could be kept
    # (every val_loss NaN, or the best epoch's file unreadable on a resume).
    best = state.best_epoch if state.best_epoch >= 0 else len(losses) - 1
    save_model(net, os.path.join(out, run_folder.MODEL_NAME))
    run_folder.plot_learning_curves(history, os.path.join(out, run_folder.CURVES_NAME))
    chosen = decision_thresholds(*val_predictions, run_config["class_names"])
    run_config["decision_threshold"] = chosen | {
        "split": "val",
        "dataset_digest": run_config["dataset"]["digest"],
    }
    seconds = time.perf_counter() - start
    run_config["results"] = {
        "epochs": len(losses),
        "best_epoch": best + 1,
        "best_val_loss": losses[best] if losses else None,
        "best_val_metrics": {k[4:]: v[best] for k, v in history.items() if k.startswith("val_")}
        if losses
        else {},
        "resumed_from": resumed_from,
        "seconds": round(seconds, 2),
    }
    run_config["finished_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    run_config["finished"] = True
    run_folder.write_config(out, run_config)  # the commit: a run is finished only once this is written
    _set_backup_aside(out)
    _delete_set_aside(out)
    return TrainResult(
        run_dir=out,
        model=net,
        history=history,
        epochs=len(losses),
        best_epoch=best + 1,
        best_val_loss=losses[best] if losses else math.nan,
        resumed_from=resumed_from,
        seconds=seconds,
        config=run_config,
    )
