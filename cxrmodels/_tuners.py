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
import threading
import time
import uuid
import warnings

import keras_tuner as kt
from keras_tuner.src.distribute import utils as dist_utils  # no public name in keras-tuner 1.4
from keras_tuner.src.engine import trial as trial_module

from cxrdata.utils.io import atomic_write_text

TRIAL_SIDECAR = "cxr_trial.json"
HEARTBEAT_DIR = "cxr_heartbeats"
HEARTBEAT_SECONDS = 2.0
_RUNNING = trial_module.TrialStatus.RUNNING
_FAILED = trial_module.TrialStatus.FAILED


class _OracleMixin:
    """Reference values first, and which tuner ran each trial."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trial_tuners: dict[str, str] = {}

    def _random_values(self):
        if not self._tried_so_far:
            # Every hyperparameter's default is its reference value: trial 0 is the reference model.
            hps = kt.HyperParameters()
            hps.merge(self.hyperparameters.space)
            return hps.values
        return super()._random_values()

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
                self._save_trial(trial)
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


class _TunerMixin:
    """Records epochs and seconds per trial; a worker's heartbeat; the chief's watch."""

    worker_timeout: float = 120.0
    _epochs: dict[str, int]  # trial id -> epochs run (set by make_tuner)
    _started: dict[str, tuple[float, str]]  # trial id -> (perf_counter, ISO time) at its start

    def run_trial(self, trial, *args, **kwargs):
        self._epochs[trial.trial_id] = 0
        self._started[trial.trial_id] = (time.perf_counter(), _now())
        self._write_sidecar(trial, status=_RUNNING)
        return super().run_trial(trial, *args, **kwargs)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        self._epochs[trial.trial_id] += 1

    def on_trial_end(self, trial):
        self._write_sidecar(trial, status=trial.status, message=trial.message)
        super().on_trial_end(trial)

    def _write_sidecar(self, trial, *, status, message=None):
        start, started = self._started.get(trial.trial_id, (None, _now()))
        record = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id, "host": socket.gethostname(),
                  "pid": os.getpid(), "started": started, "status": status,
                  "epochs": self._epochs.get(trial.trial_id, 0),
                  "seconds": None if status == _RUNNING or start is None
                  else round(time.perf_counter() - start, 3),
                  "message": _last_line(message)}
        atomic_write_text(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_SIDECAR),
                          json.dumps(record, indent=2) + "\n")

    def _build_hypermodel(self, hp):
        with _quiet_optimizer_reload():
            return super()._build_hypermodel(hp)  # Hyperband loads the weights of an earlier trial

    def load_model(self, trial):
        with _quiet_optimizer_reload():
            return super().load_model(trial)

    def search(self, *fit_args, **fit_kwargs):
        if dist_utils.is_chief_oracle():
            if "verbose" in fit_kwargs:
                self.oracle.verbose = fit_kwargs["verbose"]
            self.save()
            _serve(self.oracle, heartbeat_dir=os.path.join(self.project_dir, HEARTBEAT_DIR),
                   worker_timeout=self.worker_timeout)
            return
        heartbeat = None
        if self._is_worker():
            heartbeat = _Heartbeat(os.path.join(self.project_dir, HEARTBEAT_DIR, self.tuner_id))
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


def make_tuner(kind: str, *, hypermodel, objective, max_trials: int, max_epochs: int, seed: int,
               hyperparameters, tune_new_entries: bool, directory: str, project_name: str,
               overwrite: bool, worker_timeout: float):
    """Builds the tuner of `kind` ("hyperband", "random" or "bayesian") with our oracle."""
    # keras-tuner reads seed 0 as "no seed" (a random one); shift it so every seed counts.
    common = dict(objective=objective, seed=seed + 1, hyperparameters=hyperparameters,
                  tune_new_entries=tune_new_entries)
    if kind == "hyperband":
        oracle = _HyperbandOracle(max_epochs=max_epochs, factor=3, **common)
        oracle.max_trials = max_trials  # Hyperband has no cap of its own; the base Oracle honors it
        tuner_class = _HyperbandTuner
    elif kind == "random":
        oracle, tuner_class = _RandomOracle(max_trials=max_trials, **common), _Tuner
    else:
        oracle, tuner_class = _BayesianOracle(max_trials=max_trials, **common), _Tuner
    tuner = tuner_class(oracle=oracle, hypermodel=hypermodel, directory=directory,
                        project_name=project_name, overwrite=overwrite)
    tuner.worker_timeout, tuner._epochs, tuner._started = worker_timeout, {}, {}
    return tuner


def wait_for_chief() -> None:
    """Blocks until the chief serves (keras-tuner's client waits up to an hour), as a worker does.

    A worker waits before it writes anything: the chief checks and writes the
    search folder before it serves.
    """
    from keras_tuner.src.distribute import oracle_client

    oracle_client.OracleClient(oracle=None).get_space()


def read_sidecar(trial_dir: str) -> dict:
    """A trial's `cxr_trial.json` (`{}` when missing or unreadable)."""
    try:
        with open(os.path.join(trial_dir, TRIAL_SIDECAR), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class _Heartbeat:
    """A daemon thread that rewrites `path` every few seconds while a worker runs."""

    def __init__(self, path: str):
        self._path, self._stop = path, threading.Event()
        self._nonce = uuid.uuid4().hex[:12]  # a restarted worker never repeats a beat
        self._thread = threading.Thread(target=self._run, name="cxr-heartbeat", daemon=True)

    def start(self) -> None:
        self._beat(0)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self, count: int) -> None:
        try:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            atomic_write_text(self._path, f"{self._nonce} {count} {socket.gethostname()} {os.getpid()}\n")
        except OSError:
            pass  # a missed beat is harmless; a run of them is what the chief acts on

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(HEARTBEAT_SECONDS):
            count += 1
            self._beat(count)


class _Liveness:
    """The chief's view of its workers: when each heartbeat file last changed, on its own clock."""

    def __init__(self, heartbeat_dir: str, timeout: float):
        self._dir, self._timeout = heartbeat_dir, timeout
        self._last: dict[str, tuple[str | None, float]] = {}

    def lost(self, tuner_ids) -> dict[str, str]:
        now, lost = time.monotonic(), {}
        for tuner_id in tuner_ids:
            try:
                with open(os.path.join(self._dir, tuner_id), encoding="utf-8") as f:
                    beat = f.read()
            except OSError:
                beat = None
            seen = self._last.get(tuner_id)
            if seen is None or seen[0] != beat:
                self._last[tuner_id] = (beat, now)
            elif now - seen[1] > self._timeout:
                lost[tuner_id] = (f"worker {tuner_id} lost: no heartbeat for {now - seen[1]:.0f}s "
                                  f"(worker_timeout={self._timeout:g}s); trial ended by the chief")
                del self._last[tuner_id]
        return lost


def _serve(oracle, *, heartbeat_dir: str, worker_timeout: float, poll: float = 0.5) -> None:
    """Runs the oracle's gRPC server until the search ends, ending the trials of lost workers.

    keras-tuner's `oracle_chief.start_server` with a watch on the workers: its
    exit test (no ongoing trial, no connected worker) never passes once a
    worker has died, since the dead worker's trial and id stay on record.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:
        bound, reason = 0, err
    else:
        reason = "port taken or address not on this host"
    if not bound:
        raise OSError(f"The chief cannot listen on {address} ({reason}). Set KERASTUNER_ORACLE_IP to "
                      "an address of this host (0.0.0.0 for all) and KERASTUNER_ORACLE_PORT to a free port.")
    server.start()
    liveness = _Liveness(heartbeat_dir, worker_timeout)
    try:
        while True:
            time.sleep(poll)
            lost = liveness.lost(sorted(oracle.tuner_ids))
            if lost:
                for trial_id, reason in oracle.end_lost_trials(lost):
                    print(f"cxr tune: trial {trial_id} FAILED: {reason}", flush=True)
            if servicer.stop_triggered and oracle_chief.exit_chief(oracle):
                break
    finally:
        server.stop(grace=2)


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
