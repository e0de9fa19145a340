"""Training throughput of seed_cnn: plain `Model.fit` against the library's training path.

Times `Model.fit` over a fixed number of steps of `seed_cnn` (reference
filters 32, 64, 128, compiled as `cxr train` compiles it: Adam, categorical
cross-entropy, its metrics) in images per second, after warm-up steps that
compile, with:

  (a) in-memory uint8 arrays, no augmentation: plain `fit`, the reference;
  (b) the same with `cxrdata.RandomAffine` inside the model;
  (c) batches from `cxrdata.load` on a converted phantom dataset, RandomAffine
      inside the model;

each with Keras' `jit_compile="auto"` (XLA off on CPU-only TensorFlow) and
with `jit_compile=True`; and

  (d) `cxrmodels.train`, the whole `cxr train` path (`cxrdata.load`,
      RandomAffine in the model, callbacks, checkpoints, a run folder) on the
      same dataset converted with a 5% validation split: the time of a run of
      1 + N epochs minus that of a run of 1 epoch, so start-up, compiling and
      the final writes cancel out; what remains is N epochs with their
      (small) validation passes and per-epoch checkpoints.

Ratios are against (a) with the same `jit_compile`: a regression in the
library's training path shows as (c) or (d) well below 1. `--policies` adds
mixed precision (`mixed_bfloat16` gains only on CPUs with bfloat16
instructions; `mixed_float16` only on GPUs).

Runs under any Keras backend. (c) and (d) need TensorFlow for tf.data and are
skipped without it.

Usage:
    python benchmarks/training_step.py [--image-size 128] [--out bench-output/training_step.json]
    python benchmarks/training_step.py --image-size 299 --steps 20 --policies float32,mixed_float16  # a GPU
    KERAS_BACKEND=jax python benchmarks/training_step.py
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _common import cxr_train_metrics, markdown_table, write_json  # noqa: E402

# The reference ImageDataGenerator(rotation_range=15, zoom_range=0.2, width_shift_range=0.2,
# height_shift_range=0.2, shear_range=0.2), as cxr train --augment gpu builds it.
AFFINE = dict(rotation=15, zoom=0.2, width_shift=0.2, height_shift=0.2, shear=0.2)


def _device() -> str:
    """ "gpu" or "cpu": where the backend runs the model."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "jax":
        import jax

        return "gpu" if jax.devices()[0].platform == "gpu" else jax.devices()[0].platform
    return "cpu"


def _build(image_size: int, filters: tuple[int, ...], *, augment: bool, jit_compile) -> keras.Model:
    import cxrdata
    import cxrmodels

    layer = cxrdata.RandomAffine(seed=0, **AFFINE) if augment else None
    model = cxrmodels.create_model(
        "seed_cnn", input_shape=(image_size, image_size, 1), num_classes=2, augment=layer, filters=filters
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="categorical_crossentropy",
        metrics=cxr_train_metrics(),
        jit_compile=jit_compile,
    )
    return model


def _time_fit(model, data, *, batch_size: int, warmup: int, steps: int) -> float:
    """Seconds of one `fit` of `steps` steps, after one of `warmup` steps that compiles."""
    kwargs = dict(epochs=1, verbose=0, shuffle=False)
    if isinstance(data, tuple):  # in-memory arrays of exactly `steps` batches
        x, y = data
        model.fit(x[: warmup * batch_size], y[: warmup * batch_size], batch_size=batch_size, **kwargs)
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, **kwargs)
    else:  # an endless tf.data pipeline
        model.fit(data, steps_per_epoch=warmup, **kwargs)
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, **kwargs)
    return time.perf_counter() - start


def _phantom_dataset(image_size: int, per_class: int, workdir: str) -> str:
    import cxrdata

    cxrdata.synthetic.write_tree(
        os.path.join(workdir, "src"), per_class=per_class, image_size=image_size, seed=0
    )
    data = os.path.join(workdir, "data")
    cxrdata.convert(
        os.path.join(workdir, "src"),
        data,
        image_size=image_size,
        radius=max(4, image_size // 8),
        splits=(0.95, 0.05, 0.0),
        shard_size=8,
        progress=False,
    )
    return data


def _train_rate(dataset: str, *, batch_size: int, policy: str, epochs: int, filters, workdir: str) -> dict:
    """`cxrmodels.train`'s images/s over `epochs` epochs: (1 + epochs) epochs minus 1 epoch."""
    import cxrdata
    import cxrmodels

    mixed = {"float32": False, "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[policy]
    seconds = {}
    for n in (1, 1 + epochs):
        start = time.perf_counter()
        cxrmodels.train(
            dataset,
            model="seed_cnn",
            out=os.path.join(workdir, f"run-{policy}-{n}"),
            epochs=n,
            batch_size=batch_size,
            mixed_precision=mixed,
            augment="gpu",
            seed=0,
            overwrite=True,
            model_kwargs={"filters": list(filters)},
            patience=1 + epochs,
            verbose=0,
        )
        seconds[n] = time.perf_counter() - start
    images = cxrdata.read_manifest(dataset).splits["train"].num_examples
    elapsed = seconds[1 + epochs] - seconds[1]
    row = {
        "images_per_s": None,
        "ms_per_step": None,
        "train_images": images,
        "epochs_timed": epochs,
        "seconds_1_epoch": seconds[1],
        f"seconds_{1 + epochs}_epochs": seconds[1 + epochs],
    }
    if elapsed <= 0:  # the runs' noise exceeded the timed epochs (a busy machine, tiny sizes)
        return row | {"note": "too noisy: the longer run was not slower; raise --train-epochs or --per-class"}
    return row | {
        "images_per_s": epochs * images / elapsed,
        "ms_per_step": 1000 * elapsed / (epochs * -(-images // batch_size)),
    }


def _pipeline(dataset: str, batch_size: int):
    import cxrdata

    return cxrdata.load(
        dataset, "train", batch_size=batch_size, shuffle=True, seed=0, repeat=True, drop_remainder=True
    )


SOURCES = {
    "a": "Model.fit, in-memory arrays",
    "b": "Model.fit, in-memory arrays, RandomAffine in the model",
    "c": "Model.fit, cxrdata.load, RandomAffine in the model",
    "d": "cxrmodels.train (the cxr train path)",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=128, help="default: 128 (the reference: 299)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compiling (default: 3)")
    parser.add_argument("--filters", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument(
        "--policies",
        default="float32",
        help="comma-separated dtype policies, float32 first (default: float32; e.g. "
        "float32,mixed_bfloat16 on a CPU, float32,mixed_float16 on a GPU)",
    )
    parser.add_argument(
        "--jit-compile",
        default="auto,true",
        help="comma-separated: auto (Keras' default) and/or true (default: auto,true)",
    )
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=2,
        help="epochs timed for (d), after one untimed (default: 2; 0 skips (d))",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        help="phantoms per class for (c) and (d) (default: enough for one epoch of --steps)",
    )
    parser.add_argument(
        "--dataset",
        help="a converted dataset at --image-size for (c) and (d), with train and "
        "val splits (default: phantoms)",
    )
    parser.add_argument("--out", default="bench-output/training_step.json")
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    valid = ("float32", "mixed_bfloat16", "mixed_float16")
    if policies[0] != "float32" or not set(policies) <= set(valid):
        parser.error(f"--policies must start with float32 and be among {valid}. Received: {args.policies}")
    jits = [{"auto": "auto", "true": True}[j] for j in args.jit_compile.lower().split(",")]

    backend, device = keras.backend.backend(), _device()
    try:
        has_tf = importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # blocked or half-installed
        has_tf = False
    print(
        f"seed_cnn {args.image_size}x{args.image_size}, batch {args.batch_size}, filters {args.filters}; "
        f"backend {backend} on {device}; {args.warmup} warm-up + {args.steps} timed steps each",
        flush=True,
    )

    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.integers(0, 256, (n, args.image_size, args.image_size, 1), dtype=np.uint8)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, n)]
    results, previous = [], keras.config.dtype_policy()
    with tempfile.TemporaryDirectory() as workdir:
        dataset = args.dataset
        if has_tf and dataset is None:
            per_class = args.per_class or max(20, -(-n * 10 // 19))  # one epoch ~ --steps batches
            dataset = _phantom_dataset(args.image_size, per_class, workdir)
        for policy in policies:
            for jit in jits:
                for key in ("a", "b", "c"):
                    if key == "c" and not has_tf:
                        continue
                    keras.config.set_dtype_policy(policy)
                    try:
                        model = _build(
                            args.image_size, tuple(args.filters), augment=key != "a", jit_compile=jit
                        )
                        data = (x, y) if key != "c" else _pipeline(dataset, args.batch_size)
                        seconds = _time_fit(
                            model, data, batch_size=args.batch_size, warmup=args.warmup, steps=args.steps
                        )
                    finally:
                        keras.config.set_dtype_policy(previous)
                    results.append(
                        {
                            "source": key,
                            "name": SOURCES[key],
                            "policy": policy,
                            "jit_compile": str(jit),
                            "images_per_s": n / seconds,
                            "ms_per_step": 1000 * seconds / args.steps,
                        }
                    )
                    print(
                        f"  ({key}) {SOURCES[key]}, {policy}, jit_compile={jit}: "
                        f"{results[-1]['images_per_s']:.1f} images/s",
                        flush=True,
                    )
            if has_tf and args.train_epochs > 0:
                row = _train_rate(
                    dataset,
                    batch_size=args.batch_size,
                    policy=policy,
                    epochs=args.train_epochs,
                    filters=args.filters,
                    workdir=workdir,
                )
                results.append(
                    {"source": "d", "name": SOURCES["d"], "policy": policy, "jit_compile": "auto", **row}
                )
                print(
                    f"  (d) {SOURCES['d']}, {policy}: "
                    + (f"{row['images_per_s']:.1f} images/s" if row["images_per_s"] else row["note"]),
                    flush=True,
                )

    rate = {(r["source"], r["policy"], r["jit_compile"]): r["images_per_s"] for r in results}
    rows = []
    for r in results:
        a, f32 = (
            rate.get(("a", r["policy"], r["jit_compile"])),
            rate.get((r["source"], "float32", r["jit_compile"])),
        )
        over_a = r["images_per_s"] / a if r["images_per_s"] and a else None
        over_f32 = r["images_per_s"] / f32 if r["images_per_s"] and f32 and r["policy"] != "float32" else None
        r.update(ratio_over_plain_fit=over_a, ratio_over_float32=over_f32)
        rows.append(
            [
                f"({r['source']}) {r['name']}",
                r["policy"],
                r["jit_compile"],
                r["images_per_s"] or r["note"],
                r["ms_per_step"] or "",
                "" if over_a is None else f"{over_a:.2f}",
                "" if over_f32 is None else f"{over_f32:.2f}",
            ]
        )
    if not has_tf:
        rows += [
            [f"({k}) {SOURCES[k]}", "", "", "skipped: TensorFlow is not installed", "", "", ""]
            for k in ("c", "d")
        ]
    print()
    print(
        markdown_table(
            ["config", "policy", "jit_compile", "images/s", "ms/step", "vs (a) plain fit", "vs float32"], rows
        )
    )
    if backend == "tensorflow" and device == "cpu":
        print("\njit_compile=auto: Keras leaves XLA off on CPU-only TensorFlow.")
    d = [r for r in results if r["source"] == "d"]
    if d:
        print(
            f"(d): {d[0]['epochs_timed']} epochs of {d[0]['train_images']} images timed, "
            f"(1 + {d[0]['epochs_timed']})-epoch run minus a 1-epoch run."
        )
    write_json(
        args.out,
        {
            "benchmark": "training_step",
            "backend": backend,
            "device": device,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "filters": args.filters,
            "steps": args.steps,
            "warmup": args.warmup,
            "policies": policies,
            "jit_compile": [str(j) for j in jits],
            "train_epochs": args.train_epochs,
            "pipeline_skipped": not has_tf,
            "results": results,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
