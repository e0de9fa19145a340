"""Conversion throughput: `cxrdata.convert` with 1 and all workers (and on Beam) vs the notebook's loop.

The reference notebook equalizes every image with
`skimage.filters.rank.equalize(image, disk(70))` one at a time and saves the
result as PNG. This script times that loop and `cxrdata.convert` (decode,
resize, the same local equalization, TFRecord shards) on the same phantom PNGs,
in one run, and prints a table of images/s and ratios. When Apache Beam is
installed (`pip install cxr[beam]`), it also times `runner="beam"` on the
DirectRunner with the same number of worker processes, and checks that its
shards are the local runner's bytes.

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
    parser.add_argument("--no-beam", action="store_true", help="skip the Beam row even if Beam is installed")
    args = parser.parse_args(argv)

    import importlib.util

    from cxrdata.conversion import convert
    from cxrdata.manifest import read_manifest
    from cxrdata.synthetic import write_tree

    beam = not args.no_beam and importlib.util.find_spec("apache_beam") is not None
    if beam:  # Beam's worker processes import cxrdata by name: make sure they find this checkout's
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        write_tree(src, per_class=args.per_class, image_size=args.image_size, seed=0)
        rows, results = [], {}
        start = time.perf_counter()
        n = reference_loop(src, os.path.join(tmp, "ref"), args.image_size)
        results["reference loop"] = n / (time.perf_counter() - start)
        digests = {}
        for workers in sorted({1, args.workers}):
            out = os.path.join(tmp, f"out{workers}")
            start = time.perf_counter()
            result = convert(src, out, image_size=args.image_size, workers=workers, progress=False)
            results[f"cxrdata.convert, {workers} worker{'s' if workers > 1 else ''}"] = (
                result.num_converted / (time.perf_counter() - start)
            )
            digests[out] = _shard_digests(read_manifest(out))
        if beam:
            out = os.path.join(tmp, "beam")
            start = time.perf_counter()
            result = convert(
                src,
                out,
                image_size=args.image_size,
                workers=args.workers,
                progress=False,
                runner="beam",
                beam_options=[
                    "--direct_running_mode=multi_processing",
                    f"--direct_num_workers={args.workers}",
                ],
            )
            results[f"cxrdata.convert, Beam DirectRunner, {args.workers} workers"] = result.num_converted / (
                time.perf_counter() - start
            )
            digests[out] = _shard_digests(read_manifest(out))
        identical = len({tuple(sorted(d.items())) for d in digests.values()}) == 1
        ref = results["reference loop"]
        one = results["cxrdata.convert, 1 worker"]
        for name, rate in results.items():
            rows.append([name, rate, f"{rate / ref:.2f}x", f"{rate / one:.2f}x"])
    print(
        f"\nConversion of {2 * args.per_class} phantoms at {args.image_size}x{args.image_size}, local "
        f"equalization disk(70), {os.cpu_count()} CPU cores\n"
    )
    print(markdown_table(["method", "images/s", "vs reference loop", "vs 1 worker"], rows))
    best = max(v for k, v in results.items() if k.startswith("cxrdata") and "Beam" not in k)
    print(f"\nall workers / 1 worker: {best / one:.2f}x (target on 2 cores: >= 1.7x)")
    if beam:
        rate = results[f"cxrdata.convert, Beam DirectRunner, {args.workers} workers"]
        print(
            f"Beam DirectRunner / best local: {rate / best:.2f}x (on one machine Beam adds its workers' "
            "start-up and moves every image through two shuffles)"
        )
    print(f"shards byte-identical across {len(digests)} conversions: {identical}")
    write_json(
        args.out,
        {
            "benchmark": "conversion",
            "images": 2 * args.per_class,
            "image_size": args.image_size,
            "images_per_second": results,
            "speedup_all_vs_1_worker": best / one,
            "shards_identical": identical,
            "beam": beam,
        },
    )
    print(f"wrote {args.out}")
    return 0


def _shard_digests(manifest) -> dict[str, str]:
    return {s.name: s.sha256 for info in manifest.splits.values() for s in info.shards}


if __name__ == "__main__":
    sys.exit(main())
