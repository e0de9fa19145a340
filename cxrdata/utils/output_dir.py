"""The one rule for output folders (`cxr convert`, `cxr train`, `cxr tune`), and their lock.

The rule, the same for a dataset, a training run and a search:

1. A missing or empty folder starts fresh.
2. A folder whose files are not ours (no marker file) is refused: FileExistsError.
3. `overwrite=True` replaces what the library wrote there (other files stay).
4. A finished result is refused (FileExistsError) unless the caller keeps it:
   `convert(..., resume=True)` returns the finished dataset; a search has no
   finished state (a rerun continues it up to `max_trials`).
5. An unfinished result made with the same options resumes by itself.
6. An unfinished result made with other options is refused (FileExistsError,
   naming each difference) unless `overwrite=True`.

While a process writes a folder it holds an exclusive lock on `LOCK_NAME` in it
(`flock`, released by the kernel when the process dies, so a killed run never
leaves a stale lock); a second writer is refused with `OutputFolderBusyError`.
The file is removed when the writer ends, so a finished folder does not hold it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator

LOCK_NAME = ".cxr.lock"
FRESH, OVERWRITE, RESUME, FINISHED = "fresh", "overwrite", "resume", "finished"


class OutputFolderBusyError(FileExistsError):
    """Another process is writing the output folder."""


def _entries(path: str) -> list[str]:
    return [name for name in os.listdir(path) if name != LOCK_NAME]


def check_output_dir(
    path: str | os.PathLike,
    *,
    what: str,
    markers: Iterable[str],
    finished: Callable[[str], bool],
    overwrite: bool,
    keep_finished: bool = False,
    finished_hint: str = "",
) -> str:
    """Applies the rule to `path` without changing anything; returns what to do.

    Args:
        path: The output folder.
        what: What the folder holds, for messages ("dataset", "training run", "search").
        markers: File or folder names whose presence makes the folder ours.
        finished: Called with `path` when a marker is present: whether the result is complete.
        overwrite: Whether the caller was asked to replace what is there.
        keep_finished: Return "finished" for a finished result instead of refusing it.
        finished_hint: Extra advice for the message refusing a finished result.

    Returns:
        "fresh", "overwrite" (the caller clears its own files), "resume" or "finished".

    Raises:
        NotADirectoryError: `path` is a file.
        FileExistsError: The folder holds other files, or a finished result.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"The output {path!r} exists and is not a folder.")
    if not os.path.isdir(path) or not _entries(path):
        return FRESH
    if not any(os.path.exists(os.path.join(path, m)) for m in markers):
        raise FileExistsError(
            f"The folder {path!r} is not empty and holds no {what}. Choose a new or empty folder."
        )
    if overwrite:
        return OVERWRITE
    if finished(path):
        if keep_finished:
            return FINISHED
        raise FileExistsError(
            f"{path!r} already holds a finished {what}.{finished_hint} Choose another folder, "
            "or pass --overwrite (overwrite=True) to replace it."
        )
    return RESUME


def refuse_other_options(path: str | os.PathLike, what: str, differences: list[str]) -> None:
    """Raises FileExistsError when an unfinished result was made with other options."""
    if differences:
        raise FileExistsError(
            f"{os.fspath(path)!r} holds an unfinished {what} made with other options "
            f"({'; '.join(differences)}), so it cannot be resumed. Rerun with the same options, "
            "or pass --overwrite (overwrite=True) to start over."
        )


@contextlib.contextmanager
def lock_output_dir(path: str | os.PathLike, *, what: str = "output folder") -> Iterator[None]:
    """Holds an exclusive lock on `path` (created if missing) while the block runs.

    Raises:
        NotADirectoryError: `path` is a file.
        OutputFolderBusyError: Another process holds the lock.
    """
    import fcntl

    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"The output {path!r} exists and is not a folder.")
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_NAME)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputFolderBusyError(
                f"The {what} {path!r} is being written by process {holder}. Wait for it to end, "
                "or choose another folder."
            ) from None
        # The last holder removes the file before it lets go: if ours is no longer the file under
        # that name, we locked a removed file; lock the current one instead.
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        try:
            os.unlink(lock_path)  # a finished folder holds no lock file; a killed writer's stays, unlocked
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock
