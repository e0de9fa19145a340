"""The native DICOM decoder (tensorflow-io, DCMTK) run where a crash costs one file, not the process.

tensorflow-io decodes JPEG, JPEG-LS and JPEG 2000 frames in C++; a hostile
codestream that slips past the header checks can crash it (SIGSEGV, "double
free or corruption"), sometimes only at a later call, or make it loop. In a
conversion worker process (`cxr convert --workers 2` and up) that is survived
by `cxrdata._pool`, which restarts the pool and rejects the file that kills
its worker twice. Everywhere else (`--workers 1`, `cxr predict`,
`cxrmodels.predict` in a notebook, a Beam worker) the decode runs in a helper
process: started on first use, reused for every later file, restarted when
it dies. A helper that dies on a file is replaced and the file tried once
more in the fresh one (the first death may come from damage an earlier file
left), and a second death rejects it: "the native decoder crashed on it
(SIGSEGV)". A decode that takes longer than `NATIVE_TIMEOUT` seconds is
killed and rejected: "the native decoder timed out after 120 s".
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from cxrdata._decode_common import DecodeError

NATIVE_TIMEOUT = 120.0  # seconds one decode may take in the helper
START_TIMEOUT = 600.0  # seconds the helper may take to import TensorFlow (a busy machine is slow)
CRASHED = "the native decoder crashed on it"
_SERVE = "from cxrdata._native import serve; serve()"
_disposable = False  # True in a process whose death is survived (a conversion pool worker)


def set_disposable(value: bool = True) -> None:
    """Marks this process as one whose death is survived: native decodes then run in it."""
    global _disposable
    _disposable = value


def decode(dicom_file: bytes) -> np.ndarray:
    """tensorflow-io's uint16 `[frames, rows, columns, channels]` for a (single-frame) DICOM file.

    Raises:
        DecodeError: tensorflow-io refused the file, crashed on it twice or timed out.
    """
    if _disposable:
        return decode_here(dicom_file)
    return _HELPER.decode(dicom_file)


def decode_here(dicom_file: bytes) -> np.ndarray:
    """The decode itself, in this process."""
    import tensorflow as tf
    import tensorflow_io as tfio

    try:
        return tfio.image.decode_dicom_image(
            dicom_file, dtype=tf.uint16, scale="preserve", on_error="strict"
        ).numpy()
    except tf.errors.OpError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DecodeError(f"unreadable DICOM: {message}") from None


class _Died(Exception):
    pass


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(fd: int, deadline: float | None) -> object:
    """One framed message from `fd`; raises _Died at end of file, TimeoutError past `deadline`."""

    def exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            if deadline is not None:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise TimeoutError
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise _Died
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    return pickle.loads(exactly(int.from_bytes(exactly(8), "little")))


def _load() -> None:
    import tensorflow_io  # noqa: F401  (imported once per helper; the parent never needs it)


def serve() -> None:
    """The helper's loop: a DICOM file in on stdin, ("ok", array) or ("error", reason) out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    set_disposable()
    _load()  # before the parent is told it is ready: START_TIMEOUT covers it, not NATIVE_TIMEOUT
    _send(out, ("ready", None))
    while True:
        try:
            request = _receive(0, None)
        except _Died:  # the parent closed the pipe or died
            return
        try:
            _send(out, ("ok", decode_here(request)))
        except DecodeError as e:
            _send(out, ("error", str(e)))


class _Helper:
    """The helper process, started on first use; one request at a time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._stderr = None

    def decode(self, dicom_file: bytes) -> np.ndarray:
        with self._lock:
            for _ in range(2):  # a death may come from damage an earlier file left: one more try
                self._start()
                try:
                    kind, value = self._request(dicom_file, NATIVE_TIMEOUT)
                except TimeoutError:
                    self.close(kill=True)
                    raise DecodeError(f"the native decoder timed out after {NATIVE_TIMEOUT:g} s") from None
                except _Died:
                    why = self.close(kill=True)
                    continue
                if kind == "error":
                    raise DecodeError(value)
                return value
            raise DecodeError(f"{CRASHED} ({why})")

    def _request(self, payload: bytes, timeout: float) -> tuple[str, object]:
        self._stderr.seek(0)
        self._stderr.truncate()
        try:
            _send(self._proc.stdin, payload)
        except (BrokenPipeError, OSError):
            raise _Died from None
        return _receive(self._proc.stdout.fileno(), time.monotonic() + timeout)

    def _start(self) -> None:
        if self._proc is not None:
            return
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        try:
            kind, _ = _receive(self._proc.stdout.fileno(), time.monotonic() + START_TIMEOUT)
        except (TimeoutError, _Died):
            kind = None
        if kind != "ready":
            why = self.close(kill=True)
            raise RuntimeError(f"The native DICOM decoder process could not start ({why}).")

    def close(self, kill: bool = False) -> str:
        """Ends the helper; returns how it ended (a signal name, an exit code, its last stderr line)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return "not running"
        if kill:
            proc.kill()
        proc.stdin.close()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        proc.stdout.close()
        why = signal.Signals(-code).name if code < 0 else f"exit code {code}"
        self._stderr.seek(0)
        last = [line for line in self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        self._stderr.close()
        return why + (f": {last[-1].strip()[:200]}" if last else "")

    def forget(self) -> None:
        """In a forked child: close its copies of the parent's pipes (the helper must see the
        parent's end of file), and start a helper of its own if it needs one."""
        self._lock = threading.Lock()
        proc, self._proc = self._proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, self._stderr):
                stream.close()


_HELPER = _Helper()
atexit.register(_HELPER.close)
os.register_at_fork(after_in_child=_HELPER.forget)
