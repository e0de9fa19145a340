"""Speed of `cxrdata.RandomAffine` against Keras' rotation/zoom/translation chain.

Times augmenting batches of 299x299x1 images (batch 32) in float32 and float16:
RandomAffine eagerly and compiled with XLA (`tf.function(jit_compile=True)`
under TensorFlow, `jax.jit` under JAX), and Keras' `RandomRotation` +
`RandomZoom` + `RandomTranslation` eagerly and as a `tf.function` (their
ImageProjectiveTransformV3 has no XLA kernel in TF 2.16; the XLA row records
the error). Prints a markdown table and writes JSON.

Usage:
    python benchmarks/augment_speed.py [--out bench-output/augment_speed.json]
    KERAS_BACKEND=jax python benchmarks/augment_speed.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up noise

import argparse
import json
import platform
import time

import keras
import numpy as np

from cxrdata.layers.random_affine import RandomAffine

# The reference ImageDataGenerator(rotation_range=15, zoom_range=0.2,
# width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2).
AFFINE = dict(rotation=15, zoom=0.2, width_shift=0.2, height_shift=0.2, shear=0.2)


def _keras_chain(seed):
    return keras.Sequential(
        [
            keras.layers.RandomRotation(15 / 360, fill_mode="nearest", seed=seed),
            keras.layers.RandomZoom(0.2, 0.2, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed + 2),
        ]
    )


def _block(x):
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    else:
        keras.ops.convert_to_numpy(x)
    return x


def _runners(layer, images):
    """`{mode: step}` where each step augments `images` once."""
    backend = keras.backend.backend()
    runners = {"eager": lambda: layer(images, training=True)}
    if backend == "tensorflow":
        import tensorflow as tf

        graph = tf.function(lambda x: layer(x, training=True))
        xla = tf.function(lambda x: layer(x, training=True), jit_compile=True)
        runners["tf.function"] = lambda: graph(images)
        runners["xla"] = lambda: xla(images)
    elif backend == "jax":
        import jax

        layer(images[:1], training=True)  # builds the layer and its seeds
        step = jax.jit(lambda state, x: layer.stateless_call([], state, x, training=True))
        state = [v.value for v in layer.non_trainable_variables]

        def run():
            nonlocal state
            outputs, state = step(state, images)
            return outputs

        runners["xla"] = run
    return runners


def _time(step, *, warmup, iterations):
    for _ in range(warmup):
        _block(step())
    start = time.perf_counter()
    for _ in range(iterations):
        outputs = step()
    _block(outputs)
    return time.perf_counter() - start


def _device():
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        kind = getattr(device, "device_kind", device.platform)
        return f"jax {device.platform}" + ("" if kind == device.platform else f" {kind}")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"tensorflow GPU {details.get('device_name', gpus[0].name)}"
    return f"tensorflow CPU ({os.cpu_count()} cores)"


def run(*, batch=32, size=299, dtypes=("float32", "float16"), warmup=2, iterations=20):
    """Times every method; returns a list of result dicts."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, size, size, 1)).astype("float32")
    methods = {
        "RandomAffine": lambda: RandomAffine(**AFFINE, seed=1),
        "Rotation+Zoom+Translation": lambda: _keras_chain(seed=1),
    }
    results = []
    for dtype in dtypes:
        images = keras.ops.convert_to_tensor(pixels.astype(dtype))
        for method, make in methods.items():
            for mode, step in _runners(make(), images).items():
                row = {"method": method, "mode": mode, "dtype": dtype}
                try:
                    seconds = _time(step, warmup=warmup, iterations=iterations)
                except Exception as error:  # e.g. no XLA kernel for the op
                    row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
                else:
                    row["images_per_s"] = round(batch * iterations / seconds, 1)
                    row["ms_per_batch"] = round(1000 * seconds / iterations, 2)
                results.append(row)
    return results


def _table(results):
    lines = [
        "| method | mode | dtype | images/s | ms/batch |",
        "|---|---|---|---:|---:|",
    ]
    for r in results:
        speed = r.get("images_per_s", "n/a")
        ms = r.get("ms_per_batch", r.get("error", "")[:60])
        lines.append(f"| {r['method']} | {r['mode']} | {r['dtype']} | {speed} | {ms} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-output/augment_speed.json")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args(argv)
    dtypes = tuple(args.dtypes.split(","))
    results = run(
        batch=args.batch,
        size=args.size,
        dtypes=dtypes,
        warmup=args.warmup,
        iterations=args.iterations,
    )
    report = {
        "benchmark": "augment_speed",
        "backend": keras.backend.backend(),
        "device": _device(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "image_shape": [args.size, args.size, 1],
        "warmup": args.warmup,
        "iterations": args.iterations,
        "results": results,
    }
    print(
        f"{report['device']}, Keras {keras.__version__} ({report['backend']}), "
        f"batch {args.batch} of {args.size}x{args.size}x1\n"
    )
    print(_table(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
