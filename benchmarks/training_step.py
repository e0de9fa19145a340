"""Training throughput of seed_cnn: data already on the device against the cxrdata pipeline.

Times `Model.train_on_batch` steps of `seed_cnn` (reference filters 32, 64,
128, compiled as `cxr train` compiles it, with `cxrdata.RandomAffine` inside
the model) in images per second, with:

  (a) one fixed batch already in device memory, fed again every step: the
      model's own speed, no input pipeline;
  (b) batches from `cxrdata.load` on a converted phantom dataset, with the
      augmentation on the device (in the model);

each in float32 and in mixed precision: `mixed_float16` on a GPU; on a CPU
`mixed_bfloat16`, since CPUs have no fast float16 (only CPUs with bfloat16
instructions, such as AVX-512 BF16 or AMX, gain from it). A ratio b/a near 1
means the pipeline keeps up with the model.

Runs under any Keras backend. Under `KERAS_BACKEND=jax`, (a) needs only keras
and jax; (b) needs TensorFlow for tf.data and is skipped without it.

Usage:
    python benchmarks/training_step.py [--image-size 128] [--out bench-output/training_step.json]
    python benchmarks/training_step.py --image-size 299 --steps 20     # the reference size, on a GPU
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
from _common import markdown_table, write_json  # noqa: E402

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


def _build(image_size: int, filters: tuple[int, ...]) -> keras.Model:
    from cxrdata.layers.random_affine import RandomAffine
    from cxrmodels.evaluation.keras_metrics import default_metrics
    from cxrmodels.models import create_model

    model = create_model(
        "seed_cnn",
        input_shape=(image_size, image_size, 1),
        num_classes=2,
        augment=RandomAffine(seed=0, **AFFINE),
        filters=filters,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="categorical_crossentropy",
        metrics=default_metrics(2, positive_index=0),
    )
    return model


def _time_steps(model, next_batch, *, warmup: int, steps: int) -> float:
    """Seconds for `steps` train steps after `warmup` (each step ends with its logs on the host)."""
    for _ in range(warmup):
        model.train_on_batch(*next_batch())
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*next_batch())
    return time.perf_counter() - start


def _phantom_dataset(image_size: int, workdir: str) -> str:
    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree

    write_tree(os.path.join(workdir, "src"), per_class=48, image_size=image_size, seed=0)
    data = os.path.join(workdir, "data")
    convert(
        os.path.join(workdir, "src"),
        data,
        image_size=image_size,
        radius=max(4, image_size // 8),
        shard_size=1,
        workers=1,
        progress=False,
    )
    return data


def _pipeline(dataset: str, batch_size: int):
    import cxrdata

    ds = cxrdata.load(
        dataset, "train", batch_size=batch_size, shuffle=True, seed=0, repeat=True, drop_remainder=True
    )
    it = iter(ds.as_numpy_iterator()) if keras.backend.backend() != "tensorflow" else iter(ds)
    return lambda: next(it)


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
        "--mixed-policy",
        choices=["auto", "mixed_float16", "mixed_bfloat16"],
        default="auto",
        help="auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU",
    )
    parser.add_argument("--dataset", help="a converted dataset at --image-size for (b) (default: phantoms)")
    parser.add_argument("--out", default="bench-output/training_step.json")
    args = parser.parse_args(argv)

    backend, device = keras.backend.backend(), _device()
    mixed = (
        args.mixed_policy
        if args.mixed_policy != "auto"
        else ("mixed_float16" if device == "gpu" else "mixed_bfloat16")
    )
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
    images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 1), dtype=np.uint8)
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, args.batch_size)]
    with tempfile.TemporaryDirectory() as workdir:
        dataset = args.dataset
        if has_tf and dataset is None:
            dataset = _phantom_dataset(args.image_size, workdir)
        results, previous = [], keras.config.dtype_policy()
        for policy in ("float32", mixed):
            keras.config.set_dtype_policy(policy)
            try:
                model = _build(args.image_size, tuple(args.filters))
                x, y = keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)
                sources = [("a", "in memory", lambda: (x, y))]
                if has_tf:
                    sources.append(("b", "cxrdata pipeline", _pipeline(dataset, args.batch_size)))
                for key, name, next_batch in sources:
                    seconds = _time_steps(model, next_batch, warmup=args.warmup, steps=args.steps)
                    rate = args.steps * args.batch_size / seconds
                    results.append(
                        {
                            "source": key,
                            "name": name,
                            "policy": policy,
                            "images_per_s": rate,
                            "ms_per_step": 1000 * seconds / args.steps,
                            "jit_compile": bool(getattr(model, "jit_compile", False)),
                        }
                    )
                    print(f"  ({key}) {name}, {policy}: {rate:.1f} images/s", flush=True)
            finally:
                keras.config.set_dtype_policy(previous)

    rate = {(r["source"], r["policy"]): r["images_per_s"] for r in results}
    rows = []
    for r in results:
        b_over_a = rate[("b", r["policy"])] / rate[("a", r["policy"])] if r["source"] == "b" else None
        vs_float32 = r["images_per_s"] / rate[(r["source"], "float32")] if r["policy"] != "float32" else None
        r.update(ratio_b_over_a=b_over_a, ratio_mixed_over_float32=vs_float32)
        rows.append(
            [
                f"({r['source']}) {r['name']}, {r['policy']}",
                r["images_per_s"],
                r["ms_per_step"],
                "" if b_over_a is None else f"{b_over_a:.2f}",
                "" if vs_float32 is None else f"{vs_float32:.2f}",
            ]
        )
    if not has_tf:
        rows.append(["(b) cxrdata pipeline", "skipped: TensorFlow is not installed", "", "", ""])
    print()
    print(markdown_table(["config", "images/s", "ms/step", "ratio b/a", "ratio mixed/float32"], rows))
    print(
        f"\nXLA (jit_compile): {results[0]['jit_compile']}"
        + (
            " (Keras' 'auto' leaves XLA off on CPU-only TensorFlow)"
            if backend == "tensorflow" and device == "cpu"
            else ""
        )
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
            "mixed_policy": mixed,
            "pipeline_skipped": not has_tf,
            "results": results,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
