"""Conversion on Apache Beam: the plan that `convert` fixed, run as a Beam pipeline.

`convert(..., runner="beam")` plans exactly as a local conversion does (sorted
listing, file digests, seed) and then hands the pending shards to this module.
The pipeline reads each shard's planned items from a file in the conversion's
partial folder (so the job graph stays small whatever the dataset size),
spreads the images over the workers, decodes and preprocesses them in parallel
`DoFn`s, groups them back by shard, and writes each shard in plan order from one
worker, under a temporary name, through the same `_write_shard` the local runner
calls. Rejects travel in the per-shard records; the driver writes `rejects.csv`
and the manifest after the pipeline has finished. The bytes are therefore the
same as a local conversion's, and an interrupted Beam run can be resumed by
either runner.

Every worker must see SRC and OUT under the same paths (one machine, or a
shared file system), and have `cxr` installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from cxrdata._shards import _Item, _pending_shards, _process, _task, _write_shard
from cxrdata.manifest import shard_name
from cxrdata.sources import Source

PLAN_NAME = "beam-plan.json"


def pipeline_options(beam_options: Sequence[str] | None, workers: int) -> PipelineOptions:
    """Beam options: the DirectRunner with `workers` processes, unless `beam_options` say otherwise.

    Later flags win, so any flag in `beam_options` (`--runner=PrismRunner`,
    `--direct_num_workers=4`...) replaces the default of the same name; other
    runners ignore the DirectRunner's flags. A released apache-beam fetches the
    Prism binary from GitHub at first use; offline, pass `--prism_location=PATH`.
    """
    defaults = [
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={workers}",
        "--default_sdk_harness_log_level=WARNING",
    ]
    return PipelineOptions([*defaults, *(beam_options or ())])


def write_shards_beam(
    out: str,
    partial: str,
    plan: dict[str, list[list[_Item]]],
    class_names: Sequence[str],
    preprocessing: dict,
    encoding: str,
    workers: int,
    beam_options: Sequence[str] | None,
) -> None:
    """Writes the shards of `plan` not yet in `out` with a Beam pipeline (see the module docstring)."""
    pending = _pending_shards(out, plan)
    if not pending:
        return
    names = [shard_name(split, i, len(plan[split])) for split, i, _ in pending]
    plan_path = os.path.join(partial, PLAN_NAME)
    with open(plan_path, "w") as f:
        json.dump(
            {name: [_item_to_dict(it) for it in shard] for name, (_, _, shard) in zip(names, pending)}, f
        )

    with beam.Pipeline(options=pipeline_options(beam_options, workers)) as pipeline:
        _ = (
            pipeline
            | "Pending shards" >> beam.Create(names)
            | "Planned images" >> beam.ParDo(_PlannedImages(plan_path))
            | "Spread over workers" >> beam.Reshuffle()
            | "Decode and preprocess" >> beam.ParDo(_ProcessImage(preprocessing, encoding))
            | "Group by shard" >> beam.GroupByKey()
            | "Write shard in plan order" >> beam.ParDo(_WriteShard(out, partial, tuple(class_names)))
        )

    missing = [name for name in names if not os.path.exists(os.path.join(out, name))]
    if missing:
        raise RuntimeError(
            f"The Beam pipeline finished without writing {len(missing)} shard(s): "
            f"{', '.join(missing[:5])}. Rerun with --resume to write them."
        )
    os.unlink(plan_path)


def _item_to_dict(item: _Item) -> dict:
    return {"source": dataclasses.asdict(item.source), "label": item.label, "sha256": item.sha256}


def _item_from_dict(d: dict) -> _Item:
    return _Item(Source(**d["source"]), d["label"], d["sha256"])


class _PlannedImages(beam.DoFn):
    """A shard name -> `(shard name, (position, item))` for each image planned in it."""

    def __init__(self, plan_path: str):
        self._plan_path = plan_path
        self._plan = None

    def setup(self):
        with open(self._plan_path) as f:
            self._plan = json.load(f)

    def process(self, name):
        for position, d in enumerate(self._plan[name]):
            yield name, (position, _item_from_dict(d))


class _ProcessImage(beam.DoFn):
    """Decodes, preprocesses and encodes one image (or records why not), keyed by its shard."""

    def __init__(self, cfg: dict, encoding: str):
        self._cfg = cfg
        self._encoding = encoding

    def process(self, element):
        name, (position, item) = element
        yield name, (position, item, _process(_task(item, self._cfg, self._encoding)))


class _WriteShard(beam.DoFn):
    """Writes one shard from its grouped images, sorted back into plan order."""

    def __init__(self, out: str, partial: str, class_names: tuple[str, ...]):
        self._out = out
        self._partial = partial
        self._class_names = class_names

    def process(self, element):
        name, values = element
        ordered = sorted(values, key=lambda v: v[0])
        if [v[0] for v in ordered] != list(range(len(ordered))):
            raise RuntimeError(
                f"Shard {name}: the pipeline delivered positions "
                f"{[v[0] for v in ordered][:10]}..., not each planned image once."
            )
        # A unique temporary name: a retried or speculative attempt never writes into another's file.
        tmp = os.path.join(self._out, f".{name}.{uuid.uuid4().hex}.tmp")
        _write_shard(
            self._out,
            self._partial,
            name,
            ((item, result) for _, item, result in ordered),
            self._class_names,
            tmp_path=tmp,
        )
        yield name
