"""Hostile and faulty input: a dying worker, SIGTERM, two writers, odd names, overlapping given splits."""

import csv
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cxrdata._pool import WORKER_DIED
from cxrdata.conversion import convert
from cxrdata.manifest import read_manifest
from cxrdata.records import iter_records, parse_record

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "cxrmodels.cli"]

# Loaded by every Python process started with this folder on PYTHONPATH: a worker process (any
# process but the first) that opens (open or os.open) the file named in CXR_TEST_KILLER dies on
# the spot, as under the OOM killer. The conversion's real process pool is exercised, nothing in
# it is replaced.
_SITECUSTOMIZE = """
import builtins, os
_main = os.environ.setdefault("CXR_TEST_MAIN_PID", str(os.getpid()))
_killer = os.environ.get("CXR_TEST_KILLER")
_open = builtins.open
def _open_or_die(file, *args, **kwargs):
    if (isinstance(file, (str, bytes, os.PathLike)) and str(os.getpid()) != _main
            and os.path.basename(os.fsdecode(file)) == _killer):
        os._exit(137)
    return _open(file, *args, **kwargs)
_os_open = os.open
def _os_open_or_die(file, *args, **kwargs):  # cxrdata opens inputs with os.open (regular files only)
    if str(os.getpid()) != _main and os.path.basename(os.fsdecode(file)) == _killer:
        os._exit(137)
    return _os_open(file, *args, **kwargs)
if _killer:
    builtins.open = _open_or_die
    os.open = _os_open_or_die
"""


def _env(tmp_path, **extra):
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join([str(ROOT), str(hook), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_TEST_")}
    return dict(env, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def _records(out):
    manifest = read_manifest(out)
    return [
        (split, shard.name, parse_record(raw))
        for split, info in manifest.splits.items()
        for shard in info.shards
        for raw in iter_records(out / shard.name)
    ]


def _rejects(out):
    with open(out / "rejects.csv", newline="") as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


@pytest.mark.slow
def test_a_file_that_kills_its_worker_is_rejected_and_the_others_are_converted(phantom_tree, tmp_path):
    src = phantom_tree(per_class=12, image_size=48)
    killer = sorted(os.listdir(src / "COVID"))[3]
    args = [
        str(src),
        "--image-size",
        "32",
        "--radius",
        "8",
        "--shard-size",
        "0.004",
        "--workers",
        "2",
        "--quiet",
    ]
    run = subprocess.run(
        CLI + ["convert", args[0], str(tmp_path / "killed"), *args[1:]],
        cwd=ROOT,
        env=_env(tmp_path, CXR_TEST_KILLER=killer),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "worker process died" in run.stderr and killer in run.stderr  # the lost chunk is named
    rejects = _rejects(tmp_path / "killed")
    assert rejects == {f"COVID/{killer}": WORKER_DIED}
    subprocess.run(
        CLI + ["convert", args[0], str(tmp_path / "whole"), *args[1:]],
        cwd=ROOT,
        env=_env(tmp_path),
        check=True,
        capture_output=True,
    )
    # The output equals an undisturbed run's with the killer's record left out: the plan is
    # fixed before any pixel is touched, so every other record keeps its shard and position.
    whole = [
        (split, shard, r)
        for split, shard, r in _records(tmp_path / "whole")
        if r["path"] != f"COVID/{killer}"
    ]
    assert _records(tmp_path / "killed") == whole and len(whole) == 23
    verify = subprocess.run(
        CLI + ["verify", str(tmp_path / "killed")],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _children(pid):
    """Live (not zombie) child processes of `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_says_how_to_resume(phantom_tree, tmp_path):
    src = phantom_tree(per_class=60, image_size=96)
    out = tmp_path / "out"
    cmd = CLI + [
        "convert",
        str(src),
        str(out),
        "--image-size",
        "96",
        "--radius",
        "30",
        "--shard-size",
        "0.03",
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workers = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # until both workers run
        workers = _children(proc.pid)
        if len(workers) >= 2 and os.path.isdir(out / ".cxr-partial"):
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) >= 2, "the conversion ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "interrupted" in stderr and "rerun the same command to resume" in stderr
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the conversion"
    assert not any(n.endswith(".tmp") for n in os.listdir(out))
    rerun = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sum(i.num_examples for i in read_manifest(out).splits.values()) == 120


@pytest.mark.slow
def test_a_second_convert_into_the_same_out_is_refused(phantom_tree, tmp_path):
    src = phantom_tree(per_class=20, image_size=48)
    out = tmp_path / "out"
    cmd = CLI + [
        "convert",
        str(src),
        str(out),
        "--image-size",
        "32",
        "--radius",
        "8",
        "--shard-size",
        "0.004",
        "--workers",
        "1",
        "--quiet",
    ]
    first = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline:  # until it holds the lock and writes
        if os.path.isdir(out / ".cxr-partial"):
            break
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # frozen mid-write: the second writer meets it for sure
    try:
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"being written by process {first.pid}" in second.stderr
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    verify = subprocess.run(
        CLI + ["verify", str(out)], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_non_utf8_file_name_is_rejected_and_the_rest_converted(phantom_tree, tmp_path):
    src = phantom_tree(per_class=4, image_size=32)
    first = sorted(os.listdir(src / "COVID"))[0]
    shutil.copy(src / "COVID" / first, os.path.join(os.fsencode(src / "COVID"), b"caf\xe9.png"))
    result = convert(src, tmp_path / "out", image_size=32, equalize="none", workers=1, progress=False)
    assert result.num_converted == 8
    assert _rejects(tmp_path / "out") == {
        "COVID/caf\\xe9.png": "file name is not valid UTF-8; rename the file"
    }


def _split_tree(tmp_path):
    from PIL import Image

    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(
                    root / split / cls / f"person{i}_{split}.png"
                )
    shutil.copy(root / "train" / "NORMAL" / "person0_train.png", root / "test" / "NORMAL" / "copy.png")
    return root


def test_given_splits_that_share_patients_or_files_are_reported(tmp_path):
    src = _split_tree(tmp_path)
    result = convert(
        src,
        tmp_path / "out",
        image_size=16,
        equalize="none",
        group_pattern=r"^(person\d+)_",
        workers=1,
        progress=False,
    )
    overlaps = read_manifest(tmp_path / "out").source["split_overlaps"]
    assert [(r["group"], r["splits"]) for r in overlaps["groups"]] == [
        (f"person{i}", ["train", "val", "test"]) for i in range(3)
    ]
    assert [(r["paths"], r["splits"]) for r in overlaps["duplicates"]] == [
        (["test/NORMAL/copy.png", "train/NORMAL/person0_train.png"], ["train", "test"])
    ]
    summary = result.summary(str(tmp_path / "out"))
    assert "3 group(s) in more than one of the given splits: person0 (train, val, test)" in summary
    assert "1 byte-identical file(s)" in summary and "copy.png" in summary
    with pytest.raises(ValueError, match="given splits overlap.*person0.*copy.png"):
        convert(
            src,
            tmp_path / "strict",
            image_size=16,
            equalize="none",
            group_pattern=r"^(person\d+)_",
            strict_splits=True,
            workers=1,
            progress=False,
        )
    assert not os.path.exists(tmp_path / "strict" / "dataset.json")


# --- issue 18: inputs that hang, crash the native decoder, or break the labels CSV --------------


def _convert_cli(src, out, tmp_path, *extra, timeout=300, **popen):
    args = ["--image-size", "32", "--equalize", "none", "--shard-size", "0.004", "--quiet", *extra]
    return subprocess.run(
        CLI + ["convert", str(src), str(out), *args],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


@pytest.mark.slow
def test_a_fifo_and_a_link_to_dev_zero_are_rejects_and_nothing_hangs(phantom_tree, tmp_path):
    src = phantom_tree(per_class=3, image_size=32)
    os.mkfifo(src / "Normal" / "x.png")  # opening it for reading used to wait for a writer forever
    (src / "COVID" / "zero.png").symlink_to("/dev/zero")  # reading it used to never end
    run = _convert_cli(src, tmp_path / "out", tmp_path, "--workers", "1", timeout=600)
    assert run.returncode == 0, run.stderr
    assert _rejects(tmp_path / "out") == {
        "COVID/zero.png": "unreadable: not a regular file (a character device)",
        "Normal/x.png": "unreadable: not a regular file (a FIFO)",
    }
    assert sum(i.num_examples for i in read_manifest(tmp_path / "out").splits.values()) == 6


@pytest.mark.slow
def test_sigterm_while_hashing_stops_the_conversion_at_once(phantom_tree, tmp_path):
    src = phantom_tree(per_class=2, image_size=32)
    for i in range(2):  # 1 TiB each, sparse: hashing one would take many minutes
        with open(src / "Normal" / f"huge{i}.png", "wb") as f:
            f.truncate(1 << 40)
    cmd = CLI + [
        "convert",
        str(src),
        str(tmp_path / "out"),
        "--image-size",
        "32",
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:  # until a huge file is being read
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            if any(
                "huge" in os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in fds if _is_link(proc.pid, fd)
            ):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the conversion ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)  # before the fix: the hashing threads held it for minutes
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert "interrupted" in stderr


def _is_link(pid, fd):
    try:
        os.readlink(f"/proc/{pid}/fd/{fd}")
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_convert_with_one_worker_survives_the_dicom_that_crashed_tensorflow_io(phantom_tree, tmp_path):
    from tests.cxrdata import hostile_files as hostile

    pytest.importorskip("pydicom")
    src = phantom_tree(per_class=3, image_size=32)
    (src / "COVID" / "crash.dcm").write_bytes(hostile.crashing_dicom())
    (src / "COVID" / "scrambled.dcm").write_bytes(hostile.scrambled_dicom())
    run = _convert_cli(src, tmp_path / "out", tmp_path, "--workers", "1", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]  # was 134: "double free or corruption"
    rejects = _rejects(tmp_path / "out")
    assert sorted(rejects) == ["COVID/crash.dcm", "COVID/scrambled.dcm"]
    assert rejects["COVID/crash.dcm"].startswith(
        "inconsistent DICOM: the JPEG 2000 codestream is 32x32 with 1 component(s) of 16 bits"
    )
    assert sum(i.num_examples for i in read_manifest(tmp_path / "out").splits.values()) == 6


def test_a_labels_csv_field_over_the_limit_exits_2_naming_the_line(phantom_tree, tmp_path):
    src = phantom_tree(per_class=2, image_size=32)
    first = sorted(os.listdir(src / "COVID"))[0]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\nCOVID/{first},COVID\nCOVID/{first},{'x' * 200_000}\n")
    run = _convert_cli(src, tmp_path / "out", tmp_path, "--labels", str(labels))
    assert run.returncode == 2, run.stderr  # was 1, with a traceback-less "field larger than field limit"
    assert "labels.csv': line 3: field larger than field limit (131072)" in run.stderr


# --- every step of the finish sequence can be killed, and a rerun finishes the same dataset --------


def _convert_killed_in_finish(src, out, kill_at: int) -> int | None:
    """Converts `src` into `out` in a forked child that dies (os._exit(9), as kill -9) right after
    call number `kill_at` that changes the output folder once `_finish` has started: os.fsync (a
    file about to be renamed), os.replace, os.rename, os.unlink, os.rmdir (shutil.rmtree goes
    through the last two). `kill_at=0` dies as `_finish` starts. Returns None when the child was
    killed, else the number of such calls in the whole finish."""
    from cxrdata import conversion

    calls_file = out.parent / f"{out.name}.calls"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            calls, armed = [0], [False]

            def counted(function):
                def wrapped(*args, **kwargs):
                    result = function(*args, **kwargs)
                    if armed[0]:
                        calls[0] += 1
                        if calls[0] == kill_at:
                            os._exit(9)
                    return result

                return wrapped

            for name in ("fsync", "replace", "rename", "unlink", "rmdir"):
                setattr(os, name, counted(getattr(os, name)))
            finish = conversion._finish

            def killed_finish(*args, **kwargs):
                armed[0] = True
                if kill_at == 0:
                    os._exit(9)
                return finish(*args, **kwargs)

            conversion._finish = killed_finish
            convert(src, out, image_size=32, equalize="none", shard_size=0.003, workers=1, progress=False)
            armed[0] = False
            calls_file.write_text(str(calls[0]))
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the child failed (exit code {code})"
    return int(calls_file.read_text()) if code == 0 else None


def _folder_bytes(out):
    """Every entry of `out` with its bytes (a folder left behind shows as "folder")."""
    return {n: "folder" if (out / n).is_dir() else (out / n).read_bytes() for n in sorted(os.listdir(out))}


@pytest.mark.slow
def test_a_conversion_killed_at_every_step_of_its_finish_is_finished_by_a_rerun(phantom_tree, tmp_path):
    src = phantom_tree(per_class=5, image_size=32)
    (src / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # a line in rejects.csv
    reference = tmp_path / "reference"
    convert(src, reference, image_size=32, equalize="none", shard_size=0.003, workers=1, progress=False)
    expected = _folder_bytes(reference)
    assert len([n for n in expected if n.endswith(".tfrecord")]) >= 4 and "rejects.csv" in expected
    steps = None
    for kill_at in range(100):
        out = tmp_path / f"killed-{kill_at}"
        steps = _convert_killed_in_finish(src, out, kill_at)
        if steps is not None:  # fewer calls than kill_at: every step has been killed once
            assert _folder_bytes(out) == expected
            break
        # Reruns alternate with and without --resume (it may be given, it is not needed); a kill
        # after the very last step leaves a finished dataset, which a rerun keeps with --resume.
        finished = not any((out / d).exists() for d in (".cxr-partial", ".cxr-partial.removing"))
        convert(
            src,
            out,
            image_size=32,
            equalize="none",
            shard_size=0.003,
            workers=1,
            progress=False,
            resume=finished or bool(kill_at % 2),
        )
        assert _folder_bytes(out) == expected, f"killed after step {kill_at}"
    assert steps is not None and steps >= 10  # two atomic writes, the rename, the removals
