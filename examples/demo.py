"""End-to-end demo on synthetic phantoms: `make demo` runs this.

Steps: write CXR-like phantoms, convert them into equalized TFRecord shards,
verify the shards against the manifest, inspect the dataset, train the
reference CNN briefly with augmentation inside the model, evaluate it on the
test split and print the clinical metrics table.

Usage:
    python examples/demo.py --out demo-output
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up noise

import argparse
import shutil
import sys
import time

from cxrmodels.cli import main as cxr


def step(title: str, argv: list[str]) -> None:
    print(f"\n=== {title}\n$ cxr {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = cxr(argv)
    if code != 0:
        sys.exit(f"demo step failed with exit code {code}: cxr {' '.join(argv)}")
    print(f"({time.perf_counter() - start:.1f}s)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo-output", help="working folder (replaced)")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    src, data, run = (os.path.join(args.out, d) for d in ("phantoms", "data", "run"))
    size = str(args.image_size)
    step(
        "1. synthetic chest X-ray phantoms (COVID-like and normal)",
        ["synth", src, "--per-class", str(args.per_class), "--image-size", "256"],
    )
    step(
        "2. convert: decode, resize, local equalization disk(30), sharded TFRecords",
        ["convert", src, data, "--image-size", size, "--radius", "30", "--shard-size", "2", "--quiet"],
    )
    step("3. verify every shard against the manifest", ["verify", data, "--quiet"])
    step("4. inspect: counts per split and class, sample grid", ["inspect", data, "--per-class", "6"])
    step(
        "5. train the reference CNN (seed_cnn) with augmentation in the model",
        [
            "train",
            data,
            "--model",
            "seed_cnn",
            "--out",
            run,
            "--epochs",
            str(args.epochs),
            "--image-size",
            size,
            "--filters",
            "16",
            "32",
            "64",
            "--dense-units",
            "64",
            "--lr",
            "1e-3",
        ],
    )
    step(
        "6. evaluate on the test split: sensitivity, specificity, AUC with 95% CI",
        ["evaluate", run, data, "--split", "test"],
    )
    print(
        f"\nDone. Look at {args.out}/: data/samples.png, run/learning_curves.png, run/roc.png, "
        "run/confusion_matrix.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
