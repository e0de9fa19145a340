"""`cxr` subcommands for data: synth, convert, verify, inspect."""

from __future__ import annotations

import sys

from cxrdata.conversion_config import ConvertConfig
from cxrdata.synthetic import write_tree
from cxrdata.utils.config import add_arguments, from_cli
from cxrmodels.cli import add_command


def register(subparsers) -> None:
    _register_synth(subparsers)
    _register_convert_verify_inspect(subparsers)


def _register_synth(subparsers) -> None:
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


def _register_convert_verify_inspect(subparsers) -> None:
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
        "  cxr convert images/ data/ --runner beam --beam-option=--direct_num_workers=8\n"
        "  cxr convert --config convert.yaml --workers 4   # options from a file, then these",
    )
    add_arguments(p, ConvertConfig)

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
    from cxrdata.conversion import convert  # deferred: `cxr --help` stays light

    config = from_cli(ConvertConfig, args)
    if not sys.stderr.isatty():
        config = config.replace(progress=False)  # no bar in a log file
    result = convert(config=config)
    print(result.summary(config.out))
    return 0


def _verify(args) -> int:
    from cxrdata.verification import verify  # deferred: `cxr --help` stays light

    result = verify(args.dataset, progress=not args.quiet and sys.stderr.isatty())
    print(result.summary(args.dataset))
    return 0 if result.ok else 1


def _inspect(args) -> int:
    from cxrdata.verification import inspect  # deferred: `cxr --help` stays light

    table, path = inspect(args.dataset, output=args.output, per_class=args.per_class, split=args.split)
    print(table)
    print(f"\nsample grid: {path}")
    return 0
