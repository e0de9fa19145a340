"""`cxr` subcommands for models: train, evaluate, predict, export (see cxrmodels.cli)."""

from __future__ import annotations

import sys

import cxrmodels
from cxrdata.utils.config import add_arguments, from_cli
from cxrmodels.cli import add_command
from cxrmodels.metrics.clinical import _auc_text
from cxrmodels.metrics.tables import format_metrics_table
from cxrmodels.runs import run_folder
from cxrmodels.training.config import TrainConfig


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "train",
        func=_train,
        help="Train a model on a converted dataset into a resumable run folder.",
        examples="  cxr train data/ --model seed_cnn --out runs/a\n"
        "  cxr train data/ --model seed_cnn --out runs/b --mixed-precision --epochs 50\n"
        "  cxr train data/ --model densenet121 --weights imagenet --trainable-blocks 2 "
        "--out runs/c\n"
        "  cxr train data/ --out runs/d --image-size 224 --resize-in-model --balance oversample\n"
        "  cxr train data/ --out runs/a              # again: resumes an interrupted run\n"
        "  cxr train --config train.yaml --epochs 5  # options from a file (YAML or JSON), then these",
    )
    add_arguments(p, TrainConfig)

    _register_evaluate(subparsers)

    p = add_command(
        subparsers,
        "predict",
        func=_predict,
        help="Predict class probabilities for PNG, JPEG or DICOM files "
        "(exit 1 if some file could not be read).",
        examples="  cxr predict runs/a case1.dcm case2.png\n"
        "  cxr predict runs/a scans/*.dcm --gradcam heatmaps/",
    )
    p.add_argument("run", help="run folder written by cxr train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or DICOM files")
    p.add_argument("--gradcam", metavar="DIR", help="write a Grad-CAM overlay PNG per image into DIR")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")

    p = add_command(
        subparsers,
        "export",
        func=_export,
        help="Export a run's model as a TF SavedModel (serving image bytes) or a .keras file.",
        examples="  cxr export runs/a --format savedmodel --out serving/cxr/1\n"
        "  cxr export runs/a --format keras --out deploy/",
    )
    p.add_argument("run", help="run folder written by cxr train")
    p.add_argument(
        "--format", choices=["savedmodel", "keras"], default="savedmodel", help="default: savedmodel"
    )
    p.add_argument("--out", required=True, metavar="PATH", help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace what PATH holds")


def _register_evaluate(subparsers) -> None:
    p = add_command(
        subparsers,
        "evaluate",
        func=_evaluate,
        help="Evaluate a run on a dataset split: AUC, sensitivity, specificity and calibration with CIs, "
        "at the run's stored threshold.",
        examples="  cxr evaluate runs/a data/ --split test\n"
        "  cxr evaluate runs/a external-data/ --split test --n-bootstrap 2000\n"
        "  cxr evaluate runs/a external-data/ --split all --class-map pneumonia=COVID\n"
        "  cxr evaluate runs/a multi-site/ --split all --by group",
    )
    p.add_argument("run", help="run folder written by cxr train")
    p.add_argument("dataset", help="converted dataset (the run's, or one preprocessed the same way)")
    p.add_argument("--split", default="test", help="a split, or all (an external set); default: test")
    p.add_argument("--batch-size", type=int, default=64, help="default: 64")
    p.add_argument(
        "--n-bootstrap", type=int, default=1000, help="bootstrap resamples for each CI (default: 1000)"
    )
    p.add_argument(
        "--class-map",
        metavar="THEIRS=OURS,...",
        help="map the dataset's class names to the run's, e.g. pneumonia=COVID,healthy=Normal",
    )
    p.add_argument(
        "--allow-preprocessing-mismatch",
        action="store_true",
        help="evaluate a dataset preprocessed differently (radius, equalization) anyway, with a warning",
    )
    p.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="decision threshold of the positive class (two classes), replacing the one stored in the run "
        "(for runs that store none); choose it on other data than DATASET",
    )
    p.add_argument(
        "--by",
        choices=["group"],
        help="also report each group (the dataset's --group-by/--group-pattern ids: hospital, source) "
        "on its own: AUC, sensitivity, specificity with CIs, and by_group.png",
    )


def _train(args) -> int:
    config = from_cli(TrainConfig, args)
    result = cxrmodels.train(config=config)
    # A multi-worker run's other workers return None: the chief wrote the run folder.
    print(result.summary() if result is not None else f"Worker done; the chief wrote {config.out}.")
    return 0


def _evaluate(args) -> int:
    from cxrmodels.evaluation.evaluator import _headline  # deferred: `cxr --help` stays light

    metrics = cxrmodels.evaluate(
        args.run,
        args.dataset,
        split=args.split,
        batch_size=args.batch_size,
        n_bootstrap=args.n_bootstrap,
        class_map=args.class_map,
        allow_preprocessing_mismatch=args.allow_preprocessing_mismatch,
        threshold=args.threshold,
        by=args.by,
    )
    print(format_metrics_table(metrics))
    if metrics.get("internal"):
        print(
            f"\nAUC internal test: {_auc_text(*_headline(metrics['internal']))}; "
            f"external: {_auc_text(*_headline(metrics))}"
        )
    print(f"\ndecision threshold: {metrics['threshold_data']}")
    print("wrote: " + ", ".join(metrics["files"].values()))
    return 0


def _predict(args) -> int:
    # deferred: `cxr --help` stays light
    from cxrmodels.serving.prediction import format_predictions

    results = cxrmodels.predict(args.run, args.images, gradcam_dir=args.gradcam, batch_size=args.batch_size)
    print(format_predictions(results, run_folder.read_config(args.run)["class_names"]))
    failed = [r for r in results if not r["ok"]]
    if args.gradcam:
        print(
            f"\nGrad-CAM overlays: {sum(r['gradcam'] is not None for r in results)} written to {args.gradcam}"
        )
    if failed:
        print(f"cxr predict: {len(failed)} of {len(results)} files could not be read", file=sys.stderr)
        return 1
    return 0


def _export(args) -> int:
    out = cxrmodels.export(args.run, args.out, format=args.format, overwrite=args.overwrite)
    print(f"Exported {args.run} as {args.format} to {out}")
    return 0
