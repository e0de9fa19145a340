"""The conversion's worker processes: results in task order, and a worker that dies is survived."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from cxrdata import _native

CHUNK = 8  # images per task sent to a worker process
WORKER_DIED = (
    "the worker process converting it died twice (killed, for example by the out-of-memory "
    "killer, or crashed in a native decoder)"
)


def printable(name: str) -> str:
    """A file name as text, losslessly: bytes that are not UTF-8 become `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: the main process alone decides to stop, then
    # shuts the pool down; a SIGTERM meant for the main process's handler is not inherited.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # This process's death is survived (see OrderedResults): native decoders run in it.
    _native.set_disposable()


class OrderedResults:
    """`process(task)` results in task order, from a process pool with a bounded window in flight.

    `process_chunk(tasks)` (a module-level function, so that it pickles) returns
    `[process(t) for t in tasks]` in a worker; with `workers=1` no pool is
    started and `process` runs here. A result is `(ok, payload or reason, h, w, mask)`.

    A worker that dies (killed by the out-of-memory killer, a crash in a native
    decoder) breaks the pool and loses every chunk in flight. Their files are
    named on stderr, the pool is restarted, and each of them is retried alone,
    so the file that killed its worker is found: if it kills its worker again it
    is rejected (`WORKER_DIED`), and every other file is converted as usual.
    """

    def __init__(self, tasks, workers: int, process, process_chunk):
        self._process, self._process_chunk = process, process_chunk
        self._local = iter(tasks) if workers == 1 else None
        self._buffer: deque = deque()
        self._window: deque = deque()  # (chunk, future)
        self._pool = None
        self._workers = workers
        if workers == 1:
            return
        self._start_pool()
        self._chunks = iter([tasks[i : i + CHUNK] for i in range(0, len(tasks), CHUNK)])
        self._fill()

    def _start_pool(self) -> None:
        # fork is fast and needs no `if __name__ == "__main__"` guard, but is unsafe once
        # TensorFlow's threads exist; spawn is the safe choice then.
        method = "spawn" if "tensorflow" in sys.modules else "fork"
        self._pool = ProcessPoolExecutor(
            max_workers=self._workers,
            initializer=_worker_init,
            mp_context=multiprocessing.get_context(method),
        )

    def _fill(self) -> None:
        while len(self._window) < self._workers * 3:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._window.append((chunk, self._pool.submit(self._process_chunk, chunk)))

    def _restart_pool(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._start_pool()
        try:  # a pool that cannot run even an empty task is not a bad file's doing
            self._pool.submit(self._process_chunk, []).result()
        except BrokenProcessPool:
            raise RuntimeError(
                "Conversion worker processes die as they start. If you call cxrdata.convert from a script, "
                'put the call under `if __name__ == "__main__":` (worker processes re-import the script), '
                "or pass workers=1."
            ) from None

    def _retry_alone(self, lost: list) -> list:
        """Runs each task of the lost chunks alone in the restarted pool; a second death rejects it."""
        results = []
        for task in lost:
            try:
                results.extend(self._pool.submit(self._process_chunk, [task]).result())
            except BrokenProcessPool:
                print(f"warning: rejected {printable(task[1])}: {WORKER_DIED}", file=sys.stderr)
                results.append((False, WORKER_DIED, 0, 0, None))
                self._restart_pool()
        return results

    def __iter__(self):
        return self

    def __next__(self):
        if self._local is not None:
            return self._process(next(self._local))
        if not self._buffer:
            if not self._window:
                raise StopIteration
            chunk, future = self._window.popleft()
            try:
                self._buffer.extend(future.result())
            except BrokenProcessPool:
                lost = list(chunk) + [task for other, _ in self._window for task in other]
                self._window.clear()
                print(
                    f"warning: a conversion worker process died; retrying its {len(lost)} file(s) one "
                    f"by one: {', '.join(printable(t[0]) for t in lost)}",
                    file=sys.stderr,
                )
                self._restart_pool()
                self._buffer.extend(self._retry_alone(lost))
            self._fill()
        return self._buffer.popleft()

    def close(self) -> None:
        if self._pool is not None:
            for _, f in self._window:
                f.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
