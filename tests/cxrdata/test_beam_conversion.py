"""`convert(..., runner="beam")`: the same bytes as a local conversion, on Beam's DirectRunner and Prism."""

import csv
import hashlib
import io
import os
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from cxrdata.conversion import convert
from cxrdata.manifest import read_manifest

REPO = pathlib.Path(__file__).resolve().parents[2]
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
OPTIONS = {"image_size": 32, "radius": 8, "shard_size": 0.005, "seed": 1}  # about 5 images per shard


@pytest.fixture
def beam(monkeypatch):
    """Skips without Apache Beam; lets Beam's worker processes import this checkout's packages."""
    pytest.importorskip("apache_beam")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def local_conversion(tmp_path_factory):
    """Phantoms plus a truncated PNG and a text file named .png, converted by the local runner."""
    from cxrdata.synthetic import write_tree

    base = tmp_path_factory.mktemp("beam")
    src = base / "src"
    write_tree(src, per_class={"COVID": 9, "Normal": 12}, image_size=48, seed=5)
    png = io.BytesIO()
    Image.new("L", (40, 40), 128).save(png, format="PNG")
    (src / "COVID" / "truncated.png").write_bytes(png.getvalue()[:60])
    (src / "Normal" / "notes.png").write_text("this is a text file, not an image\n")
    convert(src, base / "local", workers=1, progress=False, **OPTIONS)
    return src, base / "local"


def _file_digests(out: pathlib.Path) -> dict[str, str]:
    """SHA-256 of every file the conversion left in `out` (shards, manifest, rejects.csv)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def _rejects(out: pathlib.Path) -> list[dict]:
    with open(out / "rejects.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_beam_with_two_worker_processes_writes_the_bytes_of_a_local_conversion(
    beam, local_conversion, tmp_path
):
    src, local = local_conversion
    result = convert(src, tmp_path / "beam", workers=1, runner="beam", beam_options=TWO_WORKERS, **OPTIONS)

    expected = _file_digests(local)
    assert _file_digests(tmp_path / "beam") == expected  # every shard, dataset.json and rejects.csv
    shards = [n for n in expected if n.endswith(".tfrecord")]
    assert len(shards) >= 6 and {"dataset.json", "rejects.csv"} | set(shards) == set(expected)
    manifest = read_manifest(tmp_path / "beam")
    assert {s.name: s.sha256 for i in manifest.splits.values() for s in i.shards} == {
        n: expected[n] for n in shards
    }
    assert manifest.to_dict() == read_manifest(local).to_dict()
    assert result.num_converted == 21
    assert _rejects(tmp_path / "beam") == _rejects(local)
    assert [r.path for r in result.rejects] == ["COVID/truncated.png", "Normal/notes.png"]
    assert "truncated" in result.rejects[0].reason and "not an image" in result.rejects[1].reason


def _prism_binary() -> str:
    """A local Prism binary: `CXR_PRISM_LOCATION` (a path or URL, as `--prism_location` takes), else
    the one Beam downloads from the GitHub release of its version; skips when neither can be had."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.prism_runner import PrismJobServer

    location = os.environ.get("CXR_PRISM_LOCATION")
    options = PipelineOptions(
        ["--runner=PrismRunner"] + ([f"--prism_location={location}"] if location else [])
    )
    try:
        return PrismJobServer.local_bin(PrismJobServer(options).path_to_binary())
    except (RuntimeError, ValueError, OSError) as error:
        # Offline, Beam 2.77 says: "Unable to fetch remote prism binary at https://github.com/apache/
        # beam/releases/download/v2.77.0/apache_beam-v2.77.0-prism-linux-amd64.zip: <urlopen error
        # [Errno -2] Name or service not known>" (a release of Beam never builds Prism with Go).
        pytest.skip(f"Beam's Prism runner is not available here (set CXR_PRISM_LOCATION): {error}")


@pytest.mark.slow
def test_beam_on_the_prism_runner_writes_the_bytes_of_a_local_conversion(beam, local_conversion, tmp_path):
    """Prism is Beam's local portable runner: the job API Flink, Spark and Dataflow runners speak."""
    prism = _prism_binary()
    src, local = local_conversion
    options = ["--runner=PrismRunner", f"--prism_location={prism}"]
    result = convert(src, tmp_path / "beam", workers=1, runner="beam", beam_options=options, **OPTIONS)
    assert _file_digests(tmp_path / "beam") == _file_digests(local)
    assert result.num_converted == 21 and [r.path for r in result.rejects] == [
        "COVID/truncated.png",
        "Normal/notes.png",
    ]


@pytest.mark.slow
def test_cli_runner_beam_finishes_a_conversion_the_local_runner_left_unfinished(
    beam, local_conversion, tmp_path, monkeypatch
):
    """`cxr convert --resume --runner beam`: the plan does not depend on the runner, so Beam writes
    only the missing shards, and every file has the bytes of an uninterrupted local conversion."""
    import cxrdata.conversion

    src, local = local_conversion
    out = tmp_path / "out"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # a local run stopped after its shards, before its manifest
        m.setattr(cxrdata.conversion, "_finish", killed)
        with pytest.raises(KeyboardInterrupt):
            convert(src, out, workers=1, progress=False, **OPTIONS)
    shards = sorted(p for p in out.iterdir() if p.suffix == ".tfrecord")
    for shard in shards[-3:]:  # ... and, as if killed earlier, before its last three shards
        shard.unlink()
        (out / ".cxr-partial" / (shard.name + ".json")).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in shards[:-3]}

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrmodels.cli",
            "convert",
            str(src),
            str(out),
            "--image-size",
            "32",
            "--radius",
            "8",
            "--shard-size",
            "0.005",
            "--seed",
            "1",
            "--quiet",
            "--resume",
            "--runner",
            "beam",
            "--beam-option=--direct_num_workers=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Converted 21 images" in proc.stdout and "2 rejected" in proc.stdout
    assert _file_digests(out) == _file_digests(local)
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # the finished shards were not rewritten
    assert not (out / ".cxr-partial").exists()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"runner": "spark"}, ValueError, r"`runner` must be one of local, beam\. Received: runner='spark'"),
        ({"beam_options": ["--direct_num_workers=2"]}, ValueError, r"apply to runner='beam' only"),
        (
            {"runner": "beam", "beam_options": "--direct_num_workers=2"},
            TypeError,
            r"must be a list of strings",
        ),
    ],
)
def test_bad_runner_arguments_fail_before_any_work(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        convert(tmp_path / "missing", tmp_path / "out", **kwargs)  # the missing SRC is never looked at
    assert not (tmp_path / "out").exists()


def test_runner_beam_without_apache_beam_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "apache_beam" else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'cxr\[beam\]'"):
        convert(tmp_path / "missing", tmp_path / "out", runner="beam")
