"""`cxr` subcommands for data: synth, convert, verify, inspect."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    from cxrmodels.cli import add_command, image_size_arg

    p = add_command(
        subparsers,
        "synth",
        func=_synth,
        help="Write a folder tree of synthetic CXR-like phantoms (no download needed).",
        examples="  cxr synth phantoms/ --per-class 200 --image-size 299\n"
        "  cxr synth kermany-like/ --layout splits --classes NORMAL PNEUMONIA\n"
        "  cxr synth shortcut/ --masks --shortcut marker --shortcut-strength 0.9",
    )
    p.add_argument("out", help="folder to write")
    p.add_argument(
        "--classes", nargs="+", default=["COVID", "Normal"], help="class folders (default: COVID Normal)"
    )
    p.add_argument("--per-class", type=int, default=100, help="images per class (default: 100)")
    p.add_argument("--image-size", type=int, default=299, help="pixels (default: 299)")
    p.add_argument("--layout", choices=["classes", "splits"], default="classes")
    p.add_argument("--patients", type=int, default=None, help="images per patient (default: one each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--masks", action="store_true", help="write lung masks, Kaggle layout: CLASS/images/ and CLASS/masks/"
    )
    p.add_argument(
        "--shortcut",
        choices=["marker", "brightness", "border", "laterality", "noise", "blur"],
        default=None,
        help="plant a class-correlated cue (corner label, global brightness, bright frame, side letter "
        "placed by class, detector noise, blur; see cxrdata.synthetic.write_tree)",
    )
    p.add_argument(
        "--no-findings",
        dest="findings",
        action="store_false",
        help="draw every film without findings: the lungs carry no class information, only a --shortcut",
    )
    p.add_argument(
        "--shortcut-strength",
        type=float,
        default=1.0,
        help="0 (cue independent of the class) to 1 (cue on every disease image, no normal one); "
        "default: 1",
    )

    p = add_command(
        subparsers,
        "convert",
        func=_convert,
        help="Convert an image folder or CSV into equalized, sharded TFRecords.",
        examples="  cxr convert COVID-19_Radiography_Dataset/ data/\n"
        "  cxr convert chest_xray/ data/ --image-size 224 --equalize clahe\n"
        "  cxr convert images/ data/ --labels labels.csv --group-by patient\n"
        "  cxr convert images/ data/ --labels labels.csv --group-by source --test-groups A,B\n"
        "  cxr convert external/ external-data/ --splits 0,0,1   # a test-only dataset\n"
        "  cxr convert images/ data/               # again: finishes an interrupted run\n"
        "  cxr convert images/ data/ --runner beam --beam-option=--direct_num_workers=8",
    )
    p.add_argument("src", help="class-folder tree, train/val/test tree, or root of the CSV's paths")
    p.add_argument("out", help="output folder (shards, dataset.json, rejects.csv)")
    p.add_argument("--labels", metavar="CSV", help="CSV with columns path,label[,GROUP][,split]")
    p.add_argument("--group-by", metavar="NAME", help="CSV column of patient ids: no patient in two splits")
    p.add_argument(
        "--group-pattern",
        metavar="REGEX",
        help="for folder trees: regex whose first group in the file name is the patient id",
    )
    p.add_argument(
        "--class-names", nargs="+", metavar="NAME", help="classes in label order (default: sorted)"
    )
    p.add_argument("--image-size", type=image_size_arg, default=299, metavar="N|HxW", help="default: 299")
    p.add_argument("--aspect", choices=["stretch", "crop", "pad"], default="stretch", help="default: stretch")
    p.add_argument(
        "--equalize", choices=["local", "clahe", "global", "none"], default="local", help="default: local"
    )
    p.add_argument("--radius", type=int, default=70, help="disk radius of local equalization (default: 70)")
    p.add_argument(
        "--interpolation", choices=["bilinear", "nearest", "bicubic", "lanczos"], default="bilinear"
    )
    p.add_argument("--splits", default="0.7,0.15,0.15", help="train,val,test ratios (default: 0.7,0.15,0.15)")
    p.add_argument("--seed", type=int, default=0, help="seeds splits and record order (default: 0)")
    p.add_argument("--encoding", choices=["raw", "png"], default="raw", help="default: raw uint8")
    p.add_argument(
        "--shard-size", type=float, default=100, metavar="MB", help="target shard size (default: 100)"
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--runner",
        choices=["local", "beam"],
        default="local",
        help="local process pool, or an Apache Beam pipeline (pip install 'cxr[beam]'); "
        "same bytes either way (default: local)",
    )
    p.add_argument(
        "--beam-option",
        action="append",
        dest="beam_options",
        metavar="FLAG",
        help="a Beam pipeline flag for --runner beam, written with '=': "
        "--beam-option=--runner=DataflowRunner (repeatable; default: DirectRunner, --workers processes)",
    )
    p.add_argument(
        "--dicom-window",
        choices=["auto", "minmax", "none"],
        default="auto",
        help="DICOM to 8 bits: auto = rescale, then the file's VOI LUT or first window, else "
        "the 0.5-99.5th percentile range; minmax = always that range; none = full "
        "BitsStored range, as cxr 0.1 (default: auto)",
    )
    p.add_argument(
        "--allow-outside-src",
        action="store_true",
        help="accept CSV paths that lead outside SRC (../x.png, absolute paths)",
    )
    p.add_argument(
        "--strict-splits",
        action="store_true",
        help="given splits (folders, CSV split column) that share a patient or a byte-identical "
        "file are an error, not a warning",
    )
    p.add_argument(
        "--masks",
        metavar="DIR",
        help="lung masks in a tree mirroring SRC (default: Kaggle masks/ beside images/, or the "
        "CSV's mask column)",
    )
    p.add_argument(
        "--test-groups",
        metavar="A,B",
        help="groups (--group-by/--group-pattern ids, e.g. sources) sent entirely to the test split",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted conversion in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add_command(
        subparsers,
        "verify",
        func=_verify,
        help="Re-read every shard and check it against the manifest (exit 1 if anything differs).",
        examples="  cxr verify data/",
    )
    p.add_argument("dataset", help="converted dataset folder")
    p.add_argument("--quiet", action="store_true")

    p = add_command(
        subparsers,
        "inspect",
        func=_inspect,
        help="Print counts per split and class, and write a PNG grid of samples per class.",
        examples="  cxr inspect data/\n  cxr inspect data/ --split test --per-class 4 --output grid.png",
    )
    p.add_argument("dataset", help="converted dataset folder")
    p.add_argument("--split", default="train")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--output", help="PNG path (default: DATASET/samples.png)")


def _synth(args) -> int:
    from cxrdata.synthetic import write_tree

    rows = write_tree(
        args.out,
        classes=tuple(args.classes),
        per_class=args.per_class,
        image_size=args.image_size,
        seed=args.seed,
        layout=args.layout,
        patients=args.patients,
        masks=args.masks,
        shortcut=args.shortcut,
        shortcut_strength=args.shortcut_strength,
        findings=args.findings,
    )
    print(f"Wrote {len(rows)} phantoms to {args.out}")
    return 0


def _convert(args) -> int:
    from cxrdata.conversion import convert

    result = convert(
        args.src,
        args.out,
        labels=args.labels,
        group_by=args.group_by,
        group_pattern=args.group_pattern,
        class_names=args.class_names,
        image_size=args.image_size,
        aspect=args.aspect,
        equalize=args.equalize,
        radius=args.radius,
        interpolation=args.interpolation,
        splits=args.splits,
        seed=args.seed,
        encoding=args.encoding,
        shard_size=args.shard_size,
        workers=args.workers,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.quiet and sys.stderr.isatty(),
        dicom_window=args.dicom_window,
        allow_outside_src=args.allow_outside_src,
        strict_splits=args.strict_splits,
        runner=args.runner,
        beam_options=args.beam_options,
        masks=args.masks,
        test_groups=args.test_groups,
    )
    print(result.summary(args.out))
    return 0


def _verify(args) -> int:
    from cxrdata.verification import verify

    result = verify(args.dataset, progress=not args.quiet and sys.stderr.isatty())
    print(result.summary(args.dataset))
    return 0 if result.ok else 1


def _inspect(args) -> int:
    from cxrdata.verification import inspect

    table, path = inspect(args.dataset, output=args.output, per_class=args.per_class, split=args.split)
    print(table)
    print(f"\nsample grid: {path}")
    return 0
