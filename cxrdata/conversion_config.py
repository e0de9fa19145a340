"""`ConvertConfig`: every option of `cxr convert` / `cxrdata.convert`, declared once.

The CLI's `cxr convert` options, `cxr convert --config FILE`, the keywords of
`cxrdata.convert` and the `"config"` section of `dataset.json` are views of
this one dataclass (see `cxrdata.utils.config`). The manifest keeps the options
that shape the dataset (`compare=True`); where and how a conversion runs (the
output folder, workers, runner, progress bar) is not part of the data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

from cxrdata.dicom import DICOM_WINDOWS
from cxrdata.manifest import read_manifest
from cxrdata.preprocess import ASPECT_MODES, EQUALIZE_MODES, INTERPOLATIONS, PreprocessConfig
from cxrdata.splits import parse_ratios
from cxrdata.utils.argument_validation import (
    check_bool,
    check_int,
    check_number,
    check_path,
    check_seed,
    standardize_image_size,
)
from cxrdata.utils.config import Config, option, option_of, parse_image_size

ENCODINGS = ("raw", "png")
RUNNERS = ("local", "beam")


def _abspath(name: str, value: Any) -> str | None:
    path = check_path(name, value, allow_none=True)
    return None if path is None else os.path.abspath(path)


def _class_names(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(c, str) and c for c in value):
        raise TypeError(f"`{name}` must be a list of class names (strings). Received: {name}={value!r}")
    return tuple(value)


def _test_groups(name: str, value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [g.strip() for g in value.split(",") if g.strip()]
    if not value:
        return None
    if not all(isinstance(g, str) for g in value):
        raise TypeError(f"`{name}` must be group names, a list or 'A,B'. Received: {name}={value!r}")
    return tuple(sorted(set(value)))


def _beam_options(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(o, str) for o in value):
        raise TypeError(
            f"`{name}` must be a list of strings such as ['--runner=DirectRunner']. Received: {name}={value!r}"
        )
    return tuple(value)


def _shard_size(name: str, value: Any) -> float:
    value = check_number(name, value)
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive number of megabytes. Received: {name}={value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ConvertConfig(Config):
    """The options of one conversion (`cxrdata.convert`, `cxr convert`).

    Every value is checked when the object is made (TypeError for a wrong
    type, ValueError out of range). `preprocess_config()` gives the
    `PreprocessConfig` that shapes the pixels.
    """

    WHAT: ClassVar[str] = "conversion"

    src: str | None = option(
        None,
        help="class-folder tree, train/val/test tree, or root of the CSV's paths",
        check=_abspath,
        cli="positional",
    )
    out: str | None = option(
        None,
        help="output folder (shards, dataset.json, rejects.csv)",
        check=lambda n, v: check_path(n, v, allow_none=True),
        cli="positional",
        compare=False,
    )
    labels: str | None = option(
        None, help="CSV with columns path,label[,GROUP][,split]", check=_abspath, metavar="CSV"
    )
    group_by: str | None = option(
        None, help="CSV column of patient ids: no patient in two splits", metavar="NAME"
    )
    group_pattern: str | None = option(
        None,
        help="for folder trees: regex whose first group in the file name is the patient id",
        metavar="REGEX",
    )
    class_names: tuple[str, ...] | None = option(
        None,
        help="classes in label order",
        check=_class_names,
        nargs="+",
        metavar="NAME",
        cli_help_default="sorted names found",
    )
    image_size: tuple[int, int] = option(
        (299, 299),
        help="output size",
        check=lambda n, v: standardize_image_size(v, name=n, minimum=8),
        parse=parse_image_size,
        metavar="N|HxW",
        cli_help_default="299",
    )
    aspect: str = option("stretch", help="fit to the output size", choices=ASPECT_MODES)
    equalize: str = option("local", help="contrast equalization", choices=EQUALIZE_MODES)
    equalize_radius: int = option(
        70,
        help="disk radius of local equalization",
        check=lambda n, v: check_int(n, v, minimum=1),
        flags=("--equalize-radius", "--radius"),
        aliases=("radius",),
        metavar="RADIUS",
    )
    clip_limit: float = option(
        0.01, help="CLAHE clip limit, in (0, 1]", check=lambda n, v: check_number(n, v, minimum=0, maximum=1)
    )
    interpolation: str = option("bilinear", help="resize filter", choices=tuple(INTERPOLATIONS))
    splits: tuple[float, ...] = option(
        (0.7, 0.15, 0.15),
        help="train,val,test ratios adding up to 1 (0,0,1: a test-only dataset)",
        check=lambda n, v: parse_ratios(v),
        parse=str,
        metavar="TRAIN,VAL,TEST",
        cli_help_default="0.7,0.15,0.15",
    )
    seed: int = option(
        0, help="seeds splits and record order", check=lambda n, v: check_seed(v, allow_none=False, name=n)
    )
    encoding: str = option("raw", help="raw uint8 pixels or PNG in the records", choices=ENCODINGS)
    shard_size: float = option(100.0, help="target shard size in MB", check=_shard_size, metavar="MB")
    workers: int | None = option(
        None,
        help="processes",
        check=lambda n, v: check_int(n, v, minimum=1, allow_none=True),
        compare=False,
        cli_help_default="all cores",
    )
    runner: str = option(
        "local",
        help="local process pool, or an Apache Beam pipeline (pip install 'cxr[beam]'); same bytes either way",
        choices=RUNNERS,
        compare=False,
    )
    beam_options: tuple[str, ...] | None = option(
        None,
        help="a Beam pipeline flag for --runner beam, written with '=': --beam-option=--runner=DataflowRunner "
        "(repeatable; default: DirectRunner, --workers processes)",
        check=_beam_options,
        flags=("--beam-option",),
        metavar="FLAG",
        compare=False,
        action="append",
    )
    dicom_window: str = option(
        "auto",
        help="DICOM to 8 bits: auto = rescale, then the file's VOI LUT or first window, else the "
        "0.5-99.5th percentile range; minmax = always that range; none = full BitsStored range, as cxr 0.1",
        choices=DICOM_WINDOWS,
    )
    allow_outside_src: bool = option(
        False,
        help="accept CSV paths that lead outside SRC (../x.png, absolute paths)",
        check=check_bool,
        cli="flag",
    )
    strict_splits: bool = option(
        False,
        help="given splits (folders, CSV split column) that share a patient or a byte-identical file are an "
        "error, not a warning",
        check=check_bool,
        cli="flag",
    )
    masks: str | None = option(
        None,
        help="lung masks in a tree mirroring SRC (default: Kaggle masks/ beside images/, or the CSV's mask "
        "column)",
        check=_abspath,
        metavar="DIR",
    )
    test_groups: tuple[str, ...] | None = option(
        None,
        help="groups (--group-by/--group-pattern ids, e.g. sources) sent entirely to the test split",
        check=_test_groups,
        metavar="A,B",
    )
    overwrite: bool = option(
        False, help="replace a dataset already in OUT", check=check_bool, cli="flag", compare=False
    )
    resume: bool = option(
        False,
        help="finish an interrupted conversion in OUT (or keep a finished one)",
        check=check_bool,
        cli="flag",
        compare=False,
    )
    progress: bool = option(
        True,
        help="show a progress bar",
        check=check_bool,
        cli="switch",
        switches=(("--quiet", False, "no progress bar"),),
        compare=False,
    )

    def _check_together(self) -> None:
        if self.overwrite and self.resume:
            raise ValueError("Pass at most one of `overwrite` and `resume`.")
        if self.test_groups and not (self.group_by or self.group_pattern):
            raise ValueError(
                "`test_groups` names groups, which need `group_by` (a CSV column) or `group_pattern`. "
                f"Received: test_groups={list(self.test_groups)}"
            )
        if self.beam_options is not None and self.runner != "beam":
            raise ValueError(
                f"`beam_options` apply to runner='beam' only. Received: runner={self.runner!r}, "
                f"beam_options={list(self.beam_options)!r}"
            )
        self.preprocess_config()  # its own rules (clip limit, interpolation with the resampler...)

    @classmethod
    def from_dataset(cls, dataset_dir) -> ConvertConfig:
        """The options a dataset was converted with (`dataset.json`'s `source.config`).

        Raises:
            FileNotFoundError: not a converted dataset.
            ValueError: a dataset converted by a cxr older than `ConvertConfig`.
        """
        saved = read_manifest(dataset_dir).source.get("config")
        if saved is None:
            raise ValueError(
                f"The dataset {os.fspath(dataset_dir)!r} was converted by an older cxr: no options kept."
            )
        return cls.from_dict(saved, source=f"The dataset.json of {os.fspath(dataset_dir)!r}")

    def require_paths(self) -> None:
        """Raises ValueError unless `src` and `out` are given (a config file may leave them to the CLI)."""
        if self.src is None:
            raise ValueError("`src` must be the folder of the images. Received: src=None")
        if self.out is None:
            raise ValueError("`out` must be the output folder. Received: out=None")

    def preprocess_config(self) -> PreprocessConfig:
        """The `PreprocessConfig` of these options (what shapes each image's pixels)."""
        return PreprocessConfig(
            image_size=self.image_size,
            aspect=self.aspect,
            equalize=self.equalize,
            equalize_radius=self.equalize_radius,
            clip_limit=self.clip_limit,
            interpolation=self.interpolation,
        )

    def dataset_options(self) -> dict[str, Any]:
        """What `dataset.json` records: the options that shape the data (`compare=True`)."""
        values = self.to_dict()
        return {f.name: values[f.name] for f in dataclasses.fields(self) if option_of(f).compare}


def effective_workers(workers: int | None) -> int:
    """`workers`, or every core for None."""
    return (os.cpu_count() or 1) if workers is None else workers
