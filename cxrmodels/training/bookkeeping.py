"""The epoch bookkeeping both training loops share, as one Keras callback.

After every epoch `EpochBookkeeping` records the history row, decides early
stopping (as Keras' `EarlyStopping(monitor="val_loss", restore_best_weights=True)`
does), keeps the best weights and, on the process that writes the run (the
chief), commits the epoch to the backup and rewrites `history.csv` and, when
the epoch improved, `model.keras` (see `run_state` for the order).

`Model.fit` calls it like any callback; the multi-worker loop drives the same
`keras.callbacks.CallbackList` around its own steps. The decision is a function
of the logs alone, so every worker that sees the same (all-reduced) logs
decides alike; the multi-worker loop also takes the chief's decision.
"""

from __future__ import annotations

import os

import keras

from cxrmodels.models.saving import save_model
from cxrmodels.runs import run_folder
from cxrmodels.training import run_state
from cxrmodels.training.run_state import RunState


class EpochBookkeeping(keras.callbacks.Callback):
    """History, early stopping, best weights and backup of a run.

    Args:
        out: The run folder.
        state: The committed state to continue from (a fresh `RunState()` for a new run).
        best_weights: The best epoch's weights of a resumed run (None: none yet, or unreadable).
        patience: Early stopping's patience in epochs.
        writer: Whether this process writes the run folder (False on the
            workers of a multi-worker run other than the chief).
        verbose: Print the early-stopping messages Keras prints.
    """

    def __init__(
        self, out: str, state: RunState, best_weights, *, patience: int, writer: bool, verbose: bool
    ):
        super().__init__()
        self.out, self.state, self.best_weights = out, state, best_weights
        self.patience, self.writer, self.verbose = patience, writer, verbose
        if best_weights is None and state.best_epoch >= 0:
            # The best epoch's weights could not be read: judge from here on, as Keras would.
            state.best, state.best_epoch, state.wait = float("inf"), -1, 0
        self._stopped_at = None

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch} | dict(sorted((logs or {}).items()))
        improved = self.state.record(row, self.patience)
        if improved:
            self.best_weights = self.model.get_weights()
        if self.writer:
            run_state.commit_epoch(self.out, self.model, self.state, improved)
            run_folder.write_history(os.path.join(self.out, run_folder.HISTORY_NAME), self.state.history)
            if improved:
                save_model(self.model, os.path.join(self.out, run_folder.MODEL_NAME))
        if self.state.stopped:
            self._stopped_at = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._stopped_at is not None and self.verbose:
            print(f"Epoch {self._stopped_at + 1}: early stopping", flush=True)
        self.restore_best()

    def restore_best(self) -> None:
        """Gives the model the best epoch's weights (when there is a best epoch)."""
        if self.best_weights is not None:
            if self.verbose:
                print(
                    f"Restoring model weights from the end of the best epoch: {self.state.best_epoch + 1}.",
                    flush=True,
                )
            self.model.set_weights(self.best_weights)
