"""keras-tuner's distributed mode, watched: worker heartbeats and the chief's server.

keras-tuner runs a chief (the oracle, over gRPC) and workers configured by
`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`. Its
chief never notices a dead worker; here each worker rewrites a heartbeat file
in the search folder and the chief ends the trials of workers whose heartbeat
stopped, so a search survives a lost machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
import uuid

from cxrdata.utils import compat
from cxrdata.utils.io import atomic_write_text

ENV_VARS = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
HEARTBEAT_DIR = "cxr_heartbeats"
HEARTBEAT_SECONDS = 2.0
# Addresses that listen on every interface, public ones included.
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "[::]", "*", "")
UNAUTHENTICATED = (
    "keras-tuner's oracle server has no authentication: any process that reaches it can "
    "report trials (a fake best one too)"
)


def launch_role(distributed: bool) -> str:
    """ "local", or for a distributed launch "chief" or "worker", after checking its environment."""
    if not distributed:
        return "local"
    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"A distributed search needs the environment variables {', '.join(ENV_VARS)}; missing: "
            f"{', '.join(missing)}. Set KERASTUNER_TUNER_ID=chief for the process that serves the oracle "
            "and tuner0, tuner1, ... for the workers, and KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT "
            "to the chief's address and port (see examples/distributed_tuning.md)."
        )
    port, tuner_id = os.environ["KERASTUNER_ORACLE_PORT"], os.environ["KERASTUNER_TUNER_ID"]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"KERASTUNER_ORACLE_PORT must be a port number (1 to 65535). Received: {port!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tuner_id):
        raise ValueError(
            "KERASTUNER_TUNER_ID must be a name of letters, digits, '_', '-' or '.' "
            f"('chief', 'tuner0', ...). Received: {tuner_id!r}"
        )
    return "chief" if "chief" in tuner_id else "worker"  # keras-tuner's own rule


@contextlib.contextmanager
def kerastuner_env(distributed: bool):
    """Hides the KERASTUNER_* variables from a local search: keras-tuner would go distributed."""
    saved = {} if distributed else {v: os.environ.pop(v) for v in ENV_VARS if v in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def wait_for_chief() -> None:
    """Blocks until the chief serves (keras-tuner's client waits up to an hour), as a worker does.

    A worker waits before it writes anything: the chief checks and writes the
    search folder before it serves.
    """
    compat.keras_tuner_private().oracle_client.OracleClient(oracle=None).get_space()


class Heartbeat:
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


class Liveness:
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
                lost[tuner_id] = (
                    f"worker {tuner_id} lost: no heartbeat for {now - seen[1]:.0f}s "
                    f"(worker_timeout={self._timeout:g}s); trial ended by the chief"
                )
                del self._last[tuner_id]
        return lost


def serve(oracle, *, heartbeat_dir: str, worker_timeout: float, poll: float = 0.5) -> None:
    """Runs the oracle's gRPC server until the search ends, ending the trials of lost workers.

    keras-tuner's `oracle_chief.start_server` with a watch on the workers: its
    exit test (no ongoing trial, no connected worker) never passes once a
    worker has died, since the dead worker's trial and id stay on record.
    """
    from concurrent import futures

    import grpc

    kt_private = compat.keras_tuner_private()
    protos, oracle_chief = kt_private.protos, kt_private.oracle_chief

    ip = os.environ["KERASTUNER_ORACLE_IP"]
    address = f"{ip}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    if ip.strip() in WILDCARD_ADDRESSES:
        import warnings

        warnings.warn(
            f"The chief listens on {address}, every interface of this host: {UNAUTHENTICATED}. "
            "Set KERASTUNER_ORACLE_IP to this host's address on a private network, or 127.0.0.1 "
            "when all workers run here.",
            stacklevel=2,
        )
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
        raise OSError(
            f"The chief cannot listen on {address} ({reason}). Set KERASTUNER_ORACLE_IP to an "
            "address of this host on a private network (127.0.0.1 when all workers run here; "
            f"{UNAUTHENTICATED}) and KERASTUNER_ORACLE_PORT to a free port."
        )
    server.start()
    liveness = Liveness(heartbeat_dir, worker_timeout)
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
