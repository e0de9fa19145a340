"""The one output-folder rule and its lock (cxrdata.utils.output_dir)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cxrdata.utils.output_dir import (
    FINISHED,
    FRESH,
    OVERWRITE,
    RESUME,
    OutputFolderBusyError,
    check_output_dir,
    lock_output_dir,
    refuse_other_options,
)


def _check(path, *, overwrite=False, keep_finished=False):
    return check_output_dir(
        path,
        what="dataset",
        markers=("dataset.json", ".partial"),
        finished=lambda p: os.path.exists(os.path.join(p, "dataset.json")),
        overwrite=overwrite,
        keep_finished=keep_finished,
    )


def test_the_rule(tmp_path):
    assert _check(tmp_path / "missing") == FRESH
    (tmp_path / "empty").mkdir()
    assert _check(tmp_path / "empty") == FRESH
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not empty and holds no dataset"):
        _check(busy)
    with pytest.raises(FileExistsError, match="not empty and holds no dataset"):
        _check(busy, overwrite=True)  # never clears a folder that is not ours
    unfinished = tmp_path / "unfinished"
    (unfinished / ".partial").mkdir(parents=True)
    assert _check(unfinished) == RESUME
    assert _check(unfinished, overwrite=True) == OVERWRITE
    done = tmp_path / "done"
    done.mkdir()
    (done / "dataset.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a finished dataset.*--overwrite"):
        _check(done)
    assert _check(done, keep_finished=True) == FINISHED
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        _check(tmp_path / "file")


def test_other_options_are_named(tmp_path):
    refuse_other_options(tmp_path, "training run", [])
    with pytest.raises(FileExistsError, match=r"other options \(seed: 1 then, 2 now\).*--overwrite"):
        refuse_other_options(tmp_path, "training run", ["seed: 1 then, 2 now"])


def test_a_lock_file_alone_is_an_empty_folder(tmp_path):
    with lock_output_dir(tmp_path / "out"):
        assert _check(tmp_path / "out") == FRESH
    assert os.listdir(tmp_path / "out") == []  # the writer that ends removes its lock file


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys, time\n"
        "from cxrdata.utils.output_dir import lock_output_dir\n"
        f"with lock_output_dir({str(out)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputFolderBusyError, match=f"being written by process {holder.pid}"):
            with lock_output_dir(out, what="dataset folder"):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel released the dead process's lock: no stale lock
        try:
            with lock_output_dir(out):
                break
        except OutputFolderBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
