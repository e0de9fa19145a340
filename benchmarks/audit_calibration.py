"""Error rates of `cxr audit`: planted shortcuts it should flag, clean models it should not.

For each run: 64-pixel phantoms (`cxrdata.synthetic.write_tree`) that leave the model one
signal, a seed_cnn trained on them, and the audit's verdicts.

- Shortcut runs: every film drawn without findings (`findings=False`), the cue on every film
  of one class and none of the other (strength 1), so the lungs carry no class information
  and a model that learned anything learned the cue. Cues: corner marker, brightness,
  border, laterality letter placed by class, detector noise, blur.
- Clean runs: findings inside the lung mask only (the mask is the truth), no cue.

A run "learned its signal" when the original AUC's 95% CI on its test split lies above 0.5.
Among those, a shortcut is "detected" when the audit is flagged, "inconclusive" when it
says so, "missed" when it says ok; a clean run is "ok", "inconclusive" or a "false alarm"
(flagged). The same is counted for the lungs-blanked check alone, and for the Grad-CAM check
at the default (last) feature map and at a finer one (`--finer-layer`). Prints the tables and
the targets (>= 95% of learned shortcuts flagged, <= 5% of clean runs flagged) and writes JSON.
Each finished run is kept in `--work`/runs.jsonl, so an interrupted battery resumes; a run
whose model is already trained there (same films per class and epochs) is only audited again.

Usage:
    python benchmarks/audit_calibration.py [--seeds 5] [--clean-seeds 10]
        [--shortcuts marker,brightness,border,laterality,noise,blur] [--per-class 100] [--epochs 12]
        [--n-bootstrap 500] [--work bench-output/audit_calibration] [--out bench-output/audit_calibration.json]
    python benchmarks/audit_calibration.py --smoke    # one marker and one clean run, tiny: a few minutes
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up noise

import argparse
import json
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import markdown_table, write_json  # noqa: E402

SHORTCUTS = ("marker", "brightness", "border", "laterality", "noise", "blur")
IMAGE_SIZE, RADIUS = 64, 20
MODEL = {"filters": (8, 16, 16), "dense_units": 16}
TARGETS = {"detected": 0.95, "false_alarm": 0.05}
AUDIT_VERSION = "tiled-fill"  # runs.jsonl rows of another audit are measured again


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds per shortcut (default: 5)")
    p.add_argument("--clean-seeds", type=int, default=10, help="clean runs (default: 10)")
    p.add_argument("--shortcuts", default=",".join(SHORTCUTS), help="comma-separated cues (default: all)")
    p.add_argument(
        "--per-class", type=int, default=100, help="films per class, split 50/20/30 (default: 100)"
    )
    p.add_argument("--epochs", type=int, default=12, help="default: 12")
    p.add_argument("--n-bootstrap", type=int, default=500, help="default: 500")
    p.add_argument(
        "--finer-layer", default="block2_conv2", help="a finer Grad-CAM layer to measure too ('' skips)"
    )
    p.add_argument("--work", default="bench-output/audit_calibration", help="run folders and runs.jsonl")
    p.add_argument("--out", default="bench-output/audit_calibration.json")
    p.add_argument("--smoke", action="store_true", help="one marker and one clean run, tiny (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.clean_seeds, args.shortcuts = 1, 1, "marker"
        args.per_class, args.epochs, args.n_bootstrap = 40, 4, 100
    args.shortcuts = [s for s in args.shortcuts.split(",") if s]
    unknown = sorted(set(args.shortcuts) - set(SHORTCUTS))
    if unknown:
        p.error(f"--shortcuts takes {', '.join(SHORTCUTS)}; received {', '.join(unknown)}")
    return args


def one_run(kind: str, seed: int, args) -> dict:
    """Phantoms, conversion, training and audit(s) of one run; its figures as a flat dict."""
    import keras

    import cxrdata
    import cxrmodels
    from cxrdata.synthetic import write_tree

    base = os.path.join(args.work, f"{kind}-{seed}")
    start = time.perf_counter()
    trained = f"pc{args.per_class}-e{args.epochs}"  # what the films and the model depend on
    stamp = os.path.join(base, "trained.txt")
    if not (os.path.isfile(stamp) and open(stamp).read() == trained):  # else the audit alone is rerun
        shutil.rmtree(base, ignore_errors=True)
        tree = {"findings": True} if kind == "clean" else {"findings": False, "shortcut": kind}
        write_tree(
            f"{base}/src", per_class=args.per_class, image_size=IMAGE_SIZE, masks=True, seed=seed, **tree
        )
        cxrdata.convert(
            f"{base}/src",
            f"{base}/data",
            image_size=IMAGE_SIZE,
            radius=RADIUS,
            workers=1,
            progress=False,
            splits=(0.5, 0.2, 0.3),
            seed=seed,
        )
        cxrmodels.train(
            f"{base}/data",
            out=f"{base}/run",
            epochs=args.epochs,
            batch_size=16,
            learning_rate=3e-3,
            augment="none",
            patience=args.epochs,
            verbose=0,
            seed=seed,
            model_kwargs=MODEL,
        )
        with open(stamp, "w") as f:
            f.write(trained)
    report = cxrmodels.audit(f"{base}/run", f"{base}/data", n_bootstrap=args.n_bootstrap, seed=seed)
    row = {"kind": kind, "seed": seed, **_figures(report)}
    if args.finer_layer:
        finer = cxrmodels.audit(
            f"{base}/run",
            f"{base}/data",
            n_bootstrap=args.n_bootstrap,
            seed=seed,
            gradcam_layer=args.finer_layer,
            out=f"{base}/run/audit/finer",
        )
        g = finer["checks"]["gradcam_lung_share"]
        row.update(
            finer_gradcam=g["status"], finer_map=g["resolution"]["feature_map"], finer_ratio=g.get("ratio")
        )
    row["seconds"] = round(time.perf_counter() - start, 1)
    keras.backend.clear_session()
    return row


def _figures(report: dict) -> dict:
    c = report["checks"]
    blanked, gradcam = c["lungs_blanked"], c["gradcam_lung_share"]
    return {
        "status": report["status"],
        "original_auc": c["original"]["auc"],
        "original_auc_ci": c["original"]["auc_ci"],
        "learned": bool(c["original"]["auc_ci"] and c["original"]["auc_ci"][0] > 0.5),
        "blanked": blanked["status"],
        "blanked_auc": blanked.get("auc"),
        "blanked_auc_ci": blanked.get("auc_ci"),
        "placebo_blanked_auc": blanked.get("placebo", {}).get("auc"),
        "lungs_only_auc": c["lungs_only"].get("auc"),
        "gradcam": gradcam["status"],
        "gradcam_map": gradcam.get("resolution", {}).get("feature_map"),
        "gradcam_ratio": gradcam.get("ratio"),
    }


def tally(rows: list[dict], key: str) -> dict:
    """Per kind: runs, learned, and the learned runs' verdicts under `key`."""
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        learned = [r for r in mine if r["learned"]]
        counts = {s: sum(r[key] == s for r in learned) for s in ("flagged", "inconclusive", "ok")}
        out[kind] = {"runs": len(mine), "learned": len(learned), **counts}
    return out


def table(counts: dict, title: str) -> str:
    rows = []
    for kind, c in counts.items():
        names = (
            ("false alarm", "inconclusive", "ok")
            if kind == "clean"
            else ("detected", "inconclusive", "missed")
        )
        cells = [f"{names[i]} {c[s]}" for i, s in enumerate(("flagged", "inconclusive", "ok"))]
        rows.append([kind, c["runs"], c["learned"], *cells])
    return f"{title}\n\n" + markdown_table(["cue", "runs", "learned", "flagged", "inconclusive", "ok"], rows)


def rates(counts: dict) -> dict:
    shortcut = [c for k, c in counts.items() if k != "clean"]
    learned = sum(c["learned"] for c in shortcut)
    clean = counts.get("clean", {"learned": 0, "flagged": 0})
    return {
        "detected": sum(c["flagged"] for c in shortcut) / learned if learned else None,
        "false_alarm": clean["flagged"] / clean["learned"] if clean["learned"] else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    log = os.path.join(args.work, "runs.jsonl")
    done = {}
    if os.path.exists(log) and not args.smoke:
        for line in open(log):
            r = json.loads(line)
            done[(r["kind"], r["seed"], r["config"])] = r
    config = f"pc{args.per_class}-e{args.epochs}-b{args.n_bootstrap}-{args.finer_layer}-{AUDIT_VERSION}"
    # Seed by seed across the cues, so a battery stopped early is still balanced.
    plan = [
        (kind, seed)
        for seed in range(max(args.seeds, args.clean_seeds))
        for kind in [*args.shortcuts, "clean"]
        if seed < (args.clean_seeds if kind == "clean" else args.seeds)
    ]
    rows = []
    for i, (kind, seed) in enumerate(plan, 1):
        row = done.get((kind, seed, config))
        if row is None:
            row = {**one_run(kind, seed, args), "config": config}
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
        print(
            f"[{i}/{len(plan)}] {kind} seed {seed}: {row['status']} (AUC {row['original_auc']:.2f}, "
            f"lungs blanked {row['blanked']}, Grad-CAM {row['gradcam']}) {row['seconds']:.0f}s",
            flush=True,
        )
    summaries = {
        "audit": tally(rows, "status"),
        "lungs_blanked": tally(rows, "blanked"),
        "gradcam": tally(rows, "gradcam"),
    }
    titles = {
        "audit": "The audit's verdict (exit code 4 / 3 / 0), runs whose model learned its signal",
        "lungs_blanked": "The lungs-blanked check alone",
        "gradcam": f"The Grad-CAM check at the last feature map ({rows[0]['gradcam_map']})",
    }
    if args.finer_layer:
        summaries["finer_gradcam"] = tally(rows, "finer_gradcam")
        titles["finer_gradcam"] = f"The Grad-CAM check at {args.finer_layer} ({rows[0]['finer_map']})"
    for key, counts in summaries.items():
        print("\n" + table(counts, titles[key]))
    measured = {key: rates(counts) for key, counts in summaries.items()}
    print()
    for name, target in TARGETS.items():
        value = measured["audit"][name]
        ok = value is not None and (value >= target if name == "detected" else value <= target)
        shown = "n/a" if value is None else f"{value:.2f}"
        print(
            f"{'PASS' if ok else 'FAIL'} {name} {'>=' if name == 'detected' else '<='} {target:.2f}: {shown}"
        )
    write_json(
        args.out,
        {
            "benchmark": "audit_calibration",
            "config": {k: v for k, v in vars(args).items() if k != "work"}
            | {"image_size": IMAGE_SIZE, "radius": RADIUS},
            "summaries": summaries,
            "rates": measured,
            "runs": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
