"""Small file helpers: nothing half-written is ever visible under a final name."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a hidden temporary file beside `path`, syncs, then renames."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class NotARegularFileError(OSError):
    """A path that names a FIFO, a device, a socket or a folder where a file was expected."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
_KINDS.update({stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"})


def open_regular(path: str | os.PathLike):
    """Opens `path` for reading in binary mode if it is a regular file (links followed).

    Anything else raises NotARegularFileError at once: the file is opened
    without blocking (a FIFO with no writer does not hang) and checked on the
    open descriptor, so it cannot be swapped between the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
            raise NotARegularFileError(errno.EINVAL, f"not a regular file ({kind})", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, stop=None) -> str:
    """SHA-256 of a regular file (see `open_regular`); `stop` (a threading.Event) cancels it.

    Raises:
        OSError: the file cannot be read or is not a regular file.
        InterruptedError: `stop` was set; checked between blocks of `chunk` bytes.
    """
    h = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            if stop is not None and stop.is_set():
                raise InterruptedError(f"hashing {os.fspath(path)!r} was cancelled")
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
