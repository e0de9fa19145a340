"""`cxr train --strategy multi-worker`: speed of 1 against 2 workers on loopback, and agreement with one device.

Converts a phantom dataset (small shards, so 2 workers get files each), then
runs `cxr train --strategy multi-worker` with the same global batch as one
worker and as two worker processes on 127.0.0.1 (TF_CONFIG per process), one
after the other in the same run. The rate is train images times epochs over
the chief's `config.json` "seconds" (model building and validation included).

Beside the speed, each run is compared with ONE device trained by `Model.fit`
on the same global batches (at each step, the concatenation of the batches the
workers read, rebuilt with the same `cxrdata.load(input_context=...)`
sharding): the table gives the largest absolute difference over all weights
(BatchNorm's moving statistics included) between the chief's `model.keras`
and the one-device model after the same N steps (N: the steps up to the best
epoch, whose weights `model.keras` holds), and the floor: one device against
itself with the examples of each global batch reversed (the same mathematics,
float32 sums in another order). Augmentation is off (`--augment none`), as its
random draws would differ between the two. The model is seed_cnn with filters
4 8 8 and a dense layer of 8 by default, as in the tests: at its own size
(`--filters 32 64 128 --dense-units 128`) Adam turns float32 noise into steps
of the learning rate's size on weights whose true gradient is about 0 (a
convolution's bias before BatchNorm), so one device already differs from
itself reordered by about 1e-2 after 6 steps and the comparison says nothing.

On one machine the workers share its cores: 2 workers on 2 cores cannot be
faster than 1; the table shows the loop works and what its collectives cost.
The gain needs one machine (or accelerator) per worker.

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

import numpy as np

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
                "--augment",
                "none",
                "--filters",
                *map(str, args.filters),
                "--dense-units",
                str(args.dense_units),
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


def _one_device_weights(dataset: str, workers: int, args, *, reverse: bool = False) -> tuple[list[list], int]:
    """`Model.fit` on one device over the global batches of `workers` workers: weights after each epoch, steps.

    The same reference as `one_device_run` in tests/cxrmodels/test_multi_worker.py: each worker's
    batches rebuilt with the loop's per-epoch seed and `input_context` sharding, concatenated step
    by step, trained by one `fit` call (`steps_per_epoch` given). `reverse` reverses the order of
    the examples within each global batch: the same mathematics, float32 sums in another order.
    """
    import keras
    import tensorflow as tf

    import cxrdata
    import cxrmodels

    # First, as `train` does: `cxrdata.load(seed=...)` orders differently once TensorFlow's global seed is set.
    keras.utils.set_random_seed(0)  # the runs' --seed
    manifest = cxrdata.read_manifest(dataset)
    shape, k = tuple(manifest.image_shape), manifest.num_classes
    batches = []
    for epoch in range(args.epochs):
        parts = [
            list(
                cxrdata.load(
                    dataset,
                    "train",
                    batch_size=args.batch_size // workers,
                    shuffle=True,
                    seed=epoch,  # the loop's epoch seed: seed * 100_003 + epoch, with seed 0
                    input_context=tf.distribute.InputContext(workers, i, workers),
                ).as_numpy_iterator()
            )
            for i in range(workers)
        ]
        for j in range(max(len(p) for p in parts)):
            x, y = (np.concatenate([p[j][n] for p in parts if j < len(p)]) for n in range(2))
            batches.append((x[::-1], y[::-1]) if reverse else (x, y))
    keras.utils.set_random_seed(0)  # the same initial weights as the runs'
    model_kwargs = {"filters": tuple(args.filters), "dense_units": args.dense_units}
    net = cxrmodels.create_model("seed_cnn", input_shape=shape, num_classes=k, **model_kwargs)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy())
    spec = (tf.TensorSpec([None, *shape], tf.uint8), tf.TensorSpec([None, k], tf.float32))
    weights = []
    net.fit(
        tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec),
        steps_per_epoch=len(batches) // args.epochs,
        epochs=args.epochs,
        shuffle=False,
        callbacks=[
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(net.get_weights()))
        ],
        verbose=0,
    )
    return weights, len(batches) // args.epochs


def _max_difference(got: list, want: list) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(got, want, strict=True))


def _run_weights(run: str) -> list:
    from cxrmodels.models import load_model

    return load_model(os.path.join(run, "model.keras"), compile=False).get_weights()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=64, help="phantoms per class (default: 64)")
    parser.add_argument("--image-size", type=int, default=64, help="default: 64")
    parser.add_argument("--epochs", type=int, default=3, help="default: 3")
    parser.add_argument("--batch-size", type=int, default=16, help="global (default: 16)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per run (default: 600)")
    parser.add_argument(
        "--filters",
        type=int,
        nargs="+",
        default=[4, 8, 8],
        help="seed_cnn's (default: 4 8 8; the model's own: 32 64 128)",
    )
    parser.add_argument(
        "--dense-units", type=int, default=8, help="seed_cnn's (default: 8; the model's own: 128)"
    )
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
            reference, steps = _one_device_weights(dataset, workers, args)
            best = config["results"]["best_epoch"]  # model.keras holds the best epoch's weights
            results[workers] = {
                "seconds": seconds,
                "images_per_second": images * args.epochs / seconds,
                "final_val_loss": config["results"]["best_val_loss"],
                "steps_compared": best * steps,
                "max_weight_difference_vs_one_device": _max_difference(
                    _run_weights(os.path.join(tmp, f"run{workers}")), reference[best - 1]
                ),
            }
            print(
                f"  {workers} worker(s): {results[workers]['images_per_second']:.1f} images/s, max |w - one "
                f"device| {results[workers]['max_weight_difference_vs_one_device']:.1e} after {best * steps} steps",
                flush=True,
            )
        # The floor, on the 2-worker run's global batches and best epoch: one device against itself
        # with the examples of each global batch reversed.
        reversed_weights, _ = _one_device_weights(dataset, 2, args, reverse=True)
        floor = _max_difference(reversed_weights[best - 1], reference[best - 1])
    rows = [
        [
            f"{w} worker{'s' * (w > 1)}",
            r["images_per_second"],
            r["seconds"],
            r["images_per_second"] / results[1]["images_per_second"],
            r["steps_compared"],
            f"{r['max_weight_difference_vs_one_device']:.1e}",
        ]
        for w, r in results.items()
    ]
    rows.append(["one device, batches reversed", "", "", "", best * steps, f"{floor:.1e}"])
    print(
        f"\nseed_cnn (filters {' '.join(map(str, args.filters))}, dense {args.dense_units}) "
        f"{args.image_size}x{args.image_size}, {images} train images, {args.epochs} epochs, "
        f"global batch {args.batch_size}, {os.cpu_count()} CPUs shared by all workers\n"
    )
    headers = ["workers", "images/s", "seconds", "vs 1 worker", "N steps", "max abs(w - one device) after N"]
    print(markdown_table(headers, rows))
    write_json(
        args.out,
        {
            "benchmark": "multi_worker",
            "image_size": args.image_size,
            "images": images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "filters": args.filters,
            "dense_units": args.dense_units,
            "results": {str(k): v for k, v in results.items()},
            "max_weight_difference_one_device_reversed": floor,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
