"""Training throughput of `cxr train --strategy multi-worker`: 1 against 2 workers on loopback.

Converts a phantom dataset (small shards, so 2 workers get files each), then
runs `cxr train --strategy multi-worker` with the same global batch as one
worker and as two worker processes on 127.0.0.1 (TF_CONFIG per process), one
after the other in the same run. The rate is train images times epochs over
the chief's `config.json` "seconds" (model building and validation included).

On one machine the workers share its cores: 2 workers on 2 cores cannot be
faster than 1; the table shows the loop works and what its collectives and
duplicated validation cost. The gain needs one machine (or accelerator) per worker.

Usage:
    python benchmarks/multi_worker.py [--per-class 64] [--epochs 3] [--out bench-output/multi_worker.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import markdown_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run(dataset: str, out: str, workers: int, args) -> dict:
    hosts = [f"127.0.0.1:{p}" for p in _ports(workers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    procs = []
    try:
        for i in range(workers):
            env_i = {
                **env,
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
                ),
            }
            argv = [
                sys.executable,
                "-m",
                "cxrmodels.cli",
                "train",
                dataset,
                "--out",
                out if i == 0 else f"{out}-worker{i}",
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--strategy",
                "multi-worker",
                "--quiet",
                "--patience",
                "100",
            ]
            procs.append(subprocess.Popen(argv, cwd=ROOT, env=env_i, stdout=subprocess.DEVNULL))
        for p in procs:
            if p.wait(timeout=args.timeout) != 0:
                raise SystemExit(f"a worker exited {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=64, help="phantoms per class (default: 64)")
    parser.add_argument("--image-size", type=int, default=64, help="default: 64")
    parser.add_argument("--epochs", type=int, default=3, help="default: 3")
    parser.add_argument("--batch-size", type=int, default=16, help="global (default: 16)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per run (default: 600)")
    parser.add_argument("--out", default="bench-output/multi_worker.json")
    args = parser.parse_args()

    sys.path.insert(0, ROOT)
    import cxrdata
    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree

    with tempfile.TemporaryDirectory() as tmp:
        write_tree(os.path.join(tmp, "src"), per_class=args.per_class, image_size=args.image_size, seed=0)
        dataset = os.path.join(tmp, "data")
        convert(
            os.path.join(tmp, "src"),
            dataset,
            image_size=args.image_size,
            shard_size=0.05,
            workers=1,
            progress=False,
        )
        manifest = cxrdata.read_manifest(dataset)
        images = manifest.splits["train"].num_examples
        results = {}
        for workers in (1, 2):
            config = _run(dataset, os.path.join(tmp, f"run{workers}"), workers, args)
            seconds = config["results"]["seconds"]
            results[workers] = {
                "seconds": seconds,
                "images_per_second": images * args.epochs / seconds,
                "final_val_loss": config["results"]["best_val_loss"],
            }
            print(f"  {workers} worker(s): {results[workers]['images_per_second']:.1f} images/s", flush=True)
    rows = [
        [
            f"{w} worker{'s' * (w > 1)}",
            r["images_per_second"],
            r["seconds"],
            r["images_per_second"] / results[1]["images_per_second"],
        ]
        for w, r in results.items()
    ]
    print(
        f"\nseed_cnn {args.image_size}x{args.image_size}, {images} train images, {args.epochs} epochs, "
        f"global batch {args.batch_size}, {os.cpu_count()} CPUs shared by all workers\n"
    )
    print(markdown_table(["workers", "images/s", "seconds", "vs 1 worker"], rows))
    write_json(
        args.out,
        {
            "benchmark": "multi_worker",
            "image_size": args.image_size,
            "images": images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "results": {str(k): v for k, v in results.items()},
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
