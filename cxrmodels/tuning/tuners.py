"""The oracles and tuners behind `cxrmodels.search`, and the chief of a distributed search.

keras-tuner's own classes, with four additions:

- The first trial of every search is the reference model: the oracles draw
  every hyperparameter's default (the reference value) before drawing at random.
- Each trial's runner (`tuner_id`) is recorded by the oracle, in its saved state.
- Each trial's epochs run and seconds go to `cxr_trial.json` in its trial folder.
- The chief of a distributed search watches its workers: each worker rewrites a
  heartbeat file in the shared project folder every few seconds, and a worker
  whose heartbeat stops for `worker_timeout` seconds is declared lost; its
  trial ends as FAILED and the search goes on. keras-tuner 1.4.8 alone never
  notices a dead worker: its chief waits forever for the lost trial to end.

keras-tuner keeps an oracle and its tuner together in one file; so does this module.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
import warnings

import keras_tuner as kt

from cxrdata.utils import compat
from cxrdata.utils.io import atomic_write_text
from cxrmodels.tuning.config import SearchConfig
from cxrmodels.tuning.distribute import HEARTBEAT_DIR, Heartbeat, serve

_KT = compat.keras_tuner_private()

TRIAL_SIDECAR = "cxr_trial.json"
_RUNNING = _KT.trial_module.TrialStatus.RUNNING
_FAILED = _KT.trial_module.TrialStatus.FAILED


class _OracleMixin(compat.reference_first_oracle_mixin()):
    """Reference values first (trial 0 is the reference model), and which tuner ran each trial."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trial_tuners: dict[str, str] = {}

    @kt.synchronized
    def create_trial(self, tuner_id):
        trial = super().create_trial(tuner_id)
        if trial.status == _RUNNING:
            self.trial_tuners[trial.trial_id] = tuner_id
            self.save()
        return trial

    @kt.synchronized
    def end_lost_trials(self, lost: dict[str, str]) -> list[tuple[str, str]]:
        """Ends the trials of lost workers (`{tuner_id: reason}`) as FAILED; returns `(trial_id, reason)`."""
        ended = []
        for tuner_id, reason in lost.items():
            self.tuner_ids.discard(tuner_id)
            trial = self.ongoing_trials.get(tuner_id)
            if trial is None:
                continue
            trial.status, trial.message = _FAILED, reason
            try:
                self.end_trial(trial)
            except RuntimeError as err:  # too many consecutive failures: keras-tuner's own limit
                print(f"cxr tune: {err}")
                self.ongoing_trials.pop(tuner_id, None)
                compat.oracle_save_trial(self, trial)
                self.save()
            ended.append((trial.trial_id, reason))
        return ended

    def get_state(self):
        return {**super().get_state(), "cxr_trial_tuners": dict(self.trial_tuners)}

    def set_state(self, state):
        super().set_state(state)
        self.trial_tuners = dict(state.get("cxr_trial_tuners", {}))


class _RandomOracle(_OracleMixin, kt.oracles.RandomSearchOracle):
    pass


class _HyperbandOracle(_OracleMixin, kt.oracles.HyperbandOracle):
    pass


class _BayesianOracle(_OracleMixin, kt.oracles.BayesianOptimizationOracle):
    pass


class _TunerMixin(compat.quiet_build_tuner_mixin(lambda: _quiet_optimizer_reload())):
    """Records epochs and seconds per trial; a worker's heartbeat; the chief's watch."""

    worker_timeout: float = 120.0
    trial_epochs: dict[str, int]  # trial id -> epochs run (set by make_tuner)
    trial_started: dict[str, tuple[float, str]]  # trial id -> (perf_counter, ISO time) at its start

    def run_trial(self, trial, *args, **kwargs):
        self.trial_epochs[trial.trial_id] = 0
        self.trial_started[trial.trial_id] = (time.perf_counter(), _now())
        self._write_sidecar(trial, status=_RUNNING)
        return super().run_trial(trial, *args, **kwargs)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        self.trial_epochs[trial.trial_id] += 1

    def on_trial_end(self, trial):
        self._write_sidecar(trial, status=trial.status, message=trial.message)
        super().on_trial_end(trial)

    def _write_sidecar(self, trial, *, status, message=None):
        start, started = self.trial_started.get(trial.trial_id, (None, _now()))
        record = {
            "trial_id": trial.trial_id,
            "tuner_id": self.tuner_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": started,
            "status": status,
            "epochs": self.trial_epochs.get(trial.trial_id, 0),
            "seconds": None if status == _RUNNING or start is None else round(time.perf_counter() - start, 3),
            "message": _last_line(message),
        }
        atomic_write_text(
            os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_SIDECAR),
            json.dumps(record, indent=2) + "\n",
        )

    def load_model(self, trial):
        with _quiet_optimizer_reload():
            return super().load_model(trial)

    def search(self, *fit_args, **fit_kwargs):
        if _KT.dist_utils.is_chief_oracle():
            if "verbose" in fit_kwargs:
                self.oracle.verbose = fit_kwargs["verbose"]
            self.save()
            serve(
                self.oracle,
                heartbeat_dir=os.path.join(self.project_dir, HEARTBEAT_DIR),
                worker_timeout=self.worker_timeout,
            )
            return
        heartbeat = None
        if compat.tuner_is_worker(self):
            heartbeat = Heartbeat(os.path.join(self.project_dir, HEARTBEAT_DIR, self.tuner_id))
            heartbeat.start()
        try:
            super().search(*fit_args, **fit_kwargs)
        finally:
            if heartbeat is not None:
                heartbeat.stop()


class _Tuner(_TunerMixin, kt.Tuner):
    pass


class _HyperbandTuner(_TunerMixin, kt.Hyperband):
    def __init__(self, *, oracle, hypermodel, **kwargs):
        # `kt.Hyperband.__init__` only makes its own oracle; ours is passed in.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


def make_tuner(config: SearchConfig, *, hypermodel, objective):
    """The tuner of `config.tuner` ("hyperband", "random" or "bayesian") with our oracle.

    It searches `hypermodel` with its checked overrides (`hypermodel.hyperparameters`) in
    `config.directory`, which `search` has prepared (keras-tuner never overwrites it).
    """
    overrides = hypermodel.hyperparameters
    # keras-tuner reads seed 0 as "no seed" (a random one); shift it so every seed counts.
    common = dict(
        objective=objective,
        seed=config.seed + 1,
        hyperparameters=overrides if overrides.space else None,
        tune_new_entries=config.tune_new_entries,
    )
    if config.tuner == "hyperband":
        oracle = _HyperbandOracle(max_epochs=config.max_epochs, factor=3, **common)
        oracle.max_trials = config.max_trials  # Hyperband has no cap of its own; the base Oracle honors it
        tuner_class = _HyperbandTuner
    elif config.tuner == "random":
        oracle, tuner_class = _RandomOracle(max_trials=config.max_trials, **common), _Tuner
    else:
        oracle, tuner_class = _BayesianOracle(max_trials=config.max_trials, **common), _Tuner
    tuner = tuner_class(
        oracle=oracle,
        hypermodel=hypermodel,
        directory=config.directory,
        project_name=config.project_name,
        overwrite=False,
    )
    tuner.worker_timeout, tuner.trial_epochs, tuner.trial_started = config.worker_timeout, {}, {}
    return tuner


def read_sidecar(trial_dir: str) -> dict:
    """A trial's `cxr_trial.json` (`{}` when missing or unreadable)."""
    try:
        with open(os.path.join(trial_dir, TRIAL_SIDECAR), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _quiet_optimizer_reload():
    # A checkpoint holds the optimizer's variables; a fresh model's optimizer is not built yet, and
    # keras-tuner restores weights only, so Keras' warning about skipping them says nothing useful.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _last_line(message) -> str | None:
    lines = [line for line in str(message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else None
