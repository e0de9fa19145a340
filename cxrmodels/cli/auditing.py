"""`cxr audit`: is the model looking at the lungs? (see `cxrmodels.audit`)."""

from __future__ import annotations

import cxrmodels
from cxrmodels.cli import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "audit",
        func=_audit,
        help="Shortcut audit: AUC with the lungs blanked and alone (and placebo regions), class-discriminative "
        "Grad-CAM inside the lungs, internal vs external; each check flagged, ok or inconclusive by its CI "
        "(exit 4 if any is flagged, else 3 if any is inconclusive, else 0; 1 is a failure).",
        examples="  cxr audit runs/a data/\n"
        "  cxr audit runs/a data/ --external hospital-b/ --class-map pneumonia=COVID\n"
        "  cxr audit runs/a data/ --max-blanked-signal 0.15 --min-lung-share 1.2",
    )
    p.add_argument("run", help="run folder written by cxr train")
    p.add_argument(
        "dataset",
        help="converted dataset with lung masks (the run's, or preprocessed the same way) whose source files "
        "are still in place (or converted with --equalize none)",
    )
    p.add_argument("--split", default="test", help="default: test")
    p.add_argument("--external", metavar="OTHER_DATASET", help="a dataset from another source, for the drop")
    p.add_argument("--external-split", default="all", help="its split, or all (default: all)")
    p.add_argument("--class-map", metavar="THEIRS=OURS,...", help="map the external dataset's class names")
    p.add_argument("--allow-preprocessing-mismatch", action="store_true")
    for flag, key, meta, text in (
        (
            "--max-blanked-signal",
            "lungs_blanked_signal",
            "S",
            "flag when the lungs-blanked AUC's CI lies at least S from 0.5, either way (default: 0.2)",
        ),
        (
            "--min-lung-share",
            "lung_share",
            "RATIO",
            "flag when the CI of the Grad-CAM evidence inside the lungs over a blind map's lies below this "
            "(default: 1.0)",
        ),
        (
            "--max-external-drop",
            "external_drop",
            "AUC",
            "flag when the CI of internal AUC - external AUC lies above this (default: 0.05)",
        ),
        (
            "--min-skill-auc",
            "min_skill_auc",
            "AUC",
            "every check is inconclusive when the original AUC's CI reaches down to this (default: 0.6)",
        ),
    ):
        p.add_argument(flag, dest=key, type=float, default=None, metavar=meta, help=text)
    p.add_argument("--out", metavar="DIR", help="report folder (default: RUN/audit/DATASET-DIGEST-SPLIT)")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="default: 1000")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the fill, the placebo regions and the resamples"
    )
    p.add_argument(
        "--gradcam-layer", metavar="LAYER", help="Grad-CAM's feature layer (default: the last conv)"
    )


def _audit(args) -> int:
    from cxrmodels.evaluation._audit_checks import DEFAULT_THRESHOLDS  # deferred: `cxr --help` stays light
    from cxrmodels.evaluation.shortcut_audit import EXIT_CODES  # deferred: `cxr --help` stays light

    thresholds = {k: getattr(args, k) for k in DEFAULT_THRESHOLDS if getattr(args, k) is not None}
    report = cxrmodels.audit(
        args.run,
        args.dataset,
        split=args.split,
        external=args.external,
        external_split=args.external_split,
        class_map=args.class_map,
        allow_preprocessing_mismatch=args.allow_preprocessing_mismatch,
        thresholds=thresholds or None,
        out=args.out,
        batch_size=args.batch_size,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        gradcam_layer=args.gradcam_layer,
    )
    for check in report["checks"].values():
        print(f"[{check['status']:>12}] {check['verdict']}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    print(f"audit: {report['status']}")
    print("wrote: " + ", ".join(report["files"].values()))
    return EXIT_CODES[report["status"]]
