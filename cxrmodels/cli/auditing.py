"""`cxr audit`: is the model looking at the lungs? (see `cxrmodels.audit`)."""

from __future__ import annotations

import cxrmodels
from cxrmodels.cli import add_command


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "audit",
        func=_audit,
        help="Shortcut audit: AUC with the lungs blanked and alone, Grad-CAM share inside the lungs, "
        "internal vs external (exit 1 if a check is flagged).",
        examples="  cxr audit runs/a data/\n"
        "  cxr audit runs/a data/ --external hospital-b/ --class-map pneumonia=COVID\n"
        "  cxr audit runs/a data/ --max-blanked-auc 0.65 --min-lung-share 0.6",
    )
    p.add_argument("run", help="run folder written by cxr train")
    p.add_argument(
        "dataset", help="converted dataset with lung masks (the run's, or preprocessed the same way)"
    )
    p.add_argument("--split", default="test", help="default: test")
    p.add_argument("--external", metavar="OTHER_DATASET", help="a dataset from another source, for the drop")
    p.add_argument("--external-split", default="all", help="its split, or all (default: all)")
    p.add_argument("--class-map", metavar="THEIRS=OURS,...", help="map the external dataset's class names")
    p.add_argument("--allow-preprocessing-mismatch", action="store_true")
    p.add_argument(
        "--max-blanked-auc",
        type=float,
        default=None,
        metavar="AUC",
        help="flag when the lungs-blanked AUC reaches this (default: 0.7)",
    )
    p.add_argument(
        "--min-lung-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="flag when the median Grad-CAM share inside the lungs is below this multiple of the "
        "lungs' share of the image (default: 1.0)",
    )
    p.add_argument(
        "--max-external-drop",
        type=float,
        default=None,
        metavar="AUC",
        help="flag when internal AUC - external AUC exceeds this (default: 0.05)",
    )
    p.add_argument("--out", metavar="DIR", help="report folder (default: RUN/audit/DATASET-SPLIT)")
    p.add_argument("--batch-size", type=int, default=32, help="default: 32")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="default: 1000")


def _audit(args) -> int:
    thresholds = {
        k: v
        for k, v in (
            ("lungs_blanked_auc", args.max_blanked_auc),
            ("lung_share", args.min_lung_share),
            ("external_drop", args.max_external_drop),
        )
        if v is not None
    }
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
    )
    for check in report["checks"].values():
        print(f"[{check['status']:>7}] {check['verdict']}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    print("wrote: " + ", ".join(report["files"].values()))
    return 1 if report["flagged"] else 0
