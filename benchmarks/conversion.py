"""Conversion throughput: `cxrdata.convert` with 1 and all workers vs the notebook's per-image loop.

The reference notebook equalizes every image with
`skimage.filters.rank.equalize(image, disk(70))` one at a time and saves the
result as PNG. This script times that loop and `cxrdata.convert` (decode,
resize, the same local equalization, TFRecord shards) on the same phantom PNGs,
in one run, and prints a table of images/s and ratios.

Usage:
    python benchmarks/conversion.py                # 400 phantoms at 299x299
    python benchmarks/conversion.py --per-class 500 --out bench-output/conversion.json
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up noise

import argparse
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import markdown_table, write_json  # noqa: E402


def reference_loop(src: str, dst: str, image_size: int) -> int:
    """The notebook's way: read, equalize, save, one image at a time."""
    import numpy as np
    from PIL import Image
    from skimage.filters.rank import equalize
    from skimage.morphology import disk

    footprint = disk(70)
    n = 0
    for dirpath, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".png"):
                continue
            image = np.array(
                Image.open(os.path.join(dirpath, name)).convert("L").resize((image_size, image_size))
            )
            out_dir = os.path.join(dst, os.path.relpath(dirpath, src))
            os.makedirs(out_dir, exist_ok=True)
            Image.fromarray(equalize(image, footprint)).save(os.path.join(out_dir, name))
            n += 1
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=200, help="phantoms per class (default: 200)")
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="the 'all workers' count")
    parser.add_argument("--out", default="bench-output/conversion.json")
    args = parser.parse_args(argv)

    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        write_tree(src, per_class=args.per_class, image_size=args.image_size, seed=0)
        rows, results = [], {}
        start = time.perf_counter()
        n = reference_loop(src, os.path.join(tmp, "ref"), args.image_size)
        results["reference loop"] = n / (time.perf_counter() - start)
        for workers in sorted({1, args.workers}):
            out = os.path.join(tmp, f"out{workers}")
            start = time.perf_counter()
            result = convert(src, out, image_size=args.image_size, workers=workers, progress=False)
            results[f"cxrdata.convert, {workers} worker{'s' if workers > 1 else ''}"] = (
                result.num_converted / (time.perf_counter() - start)
            )
        ref = results["reference loop"]
        one = results["cxrdata.convert, 1 worker"]
        for name, rate in results.items():
            rows.append([name, rate, f"{rate / ref:.2f}x", f"{rate / one:.2f}x"])
    print(
        f"\nConversion of {2 * args.per_class} phantoms at {args.image_size}x{args.image_size}, local "
        f"equalization disk(70), {os.cpu_count()} CPU cores\n"
    )
    print(markdown_table(["method", "images/s", "vs reference loop", "vs 1 worker"], rows))
    best = max(v for k, v in results.items() if k.startswith("cxrdata"))
    print(f"\nall workers / 1 worker: {best / one:.2f}x (target on 2 cores: >= 1.7x)")
    write_json(
        args.out,
        {
            "benchmark": "conversion",
            "images": 2 * args.per_class,
            "image_size": args.image_size,
            "images_per_second": results,
            "speedup_all_vs_1_worker": best / one,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
