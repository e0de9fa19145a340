"""Input pipeline throughput: ImageDataGenerator against Keras 3 layers and `cxrdata.load`.

Writes one phantom PNG tree (or takes `--src`), converts it once with
`cxrdata.convert` (local equalization, every image in the train split; the
conversion is not timed), then times, on that same data and in one run, how
many images per second each way of feeding Keras delivers:

  (1) the reference notebook's `tf_keras` `ImageDataGenerator(rotation_range=15,
      zoom_range=0.2, width_shift_range=0.2, height_shift_range=0.2,
      shear_range=0.2).flow_from_directory(...)`, in one process and in one
      process per core (each runs its own generator; timed on the wall clock
      of all of them together);
  (2) Keras 3's replacement: `keras.utils.image_dataset_from_directory` with
      `RandomRotation`, `RandomZoom` and `RandomTranslation` in a parallel `map`;
  (3) `cxrdata.load` as fed to a GPU: uint8 batches, augmentation left to the
      model on the device;
  (4) `cxrdata.load(..., augment=RandomAffine.from_image_data_generator(...))`
      augmenting on the CPU (the layer runs XLA-compiled inside the map);
  (5) the ceiling: `TFRecordDataset` over the shards, batch, `parse_example`
      and `decode_raw` alone;
  (6) with a GPU visible to TensorFlow: `RandomAffine` on float16 batches
      already on the device.

Every method runs the same number of batches after its warm-up batches, in
`--rounds` round-robin rounds (the best round counts: the machine may be
shared); each batch is materialized as a NumPy array, no model runs. Prints a
markdown table with ratios and the target checks, writes JSON and a bar chart.

Usage:
    python benchmarks/input_pipeline.py                      # 2 x 400 phantoms at 299x299
    python benchmarks/input_pipeline.py --per-class 8 --image-size 64 --batches 3   # smoke run
    cxr bench --batches 200 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

# The reference notebook's augmentation, argument for argument.
IDG_ARGS = dict(
    rotation_range=15, zoom_range=0.2, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2
)

IDG_1, IDG_N = "1a", "1b"
KERAS3, LOAD, LOAD_AUG, RAW, GPU = "2", "3", "4", "5", "6"
TITLES = {
    IDG_1: "(1) ImageDataGenerator.flow_from_directory, 1 process",
    IDG_N: "(1) ImageDataGenerator.flow_from_directory, {n} processes",
    KERAS3: "(2) image_dataset_from_directory + RandomRotation/Zoom/Translation",
    LOAD: "(3) cxrdata.load, uint8, augmentation on the device",
    LOAD_AUG: "(4) cxrdata.load + RandomAffine on the CPU",
    RAW: "(5) TFRecordDataset + parse_example + decode_raw (ceiling)",
    GPU: "(6) RandomAffine on GPU, float16",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared with `cxr bench`)."""
    parser.add_argument(
        "--src", metavar="DIR", help="an existing class-folder tree of images to use instead of phantoms"
    )
    parser.add_argument(
        "--per-class", type=int, default=400, metavar="N", help="phantoms per class (default: 400)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=299,
        metavar="N",
        help="image side in pixels, and every method's target size (default: 299)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=100,
        metavar="N",
        help="timed batches per method and round (default: 100)",
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="default: 32")
    parser.add_argument(
        "--warmup", type=int, default=5, metavar="N", help="untimed batches before each timing (default: 5)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        metavar="N",
        help="round-robin rounds; the best one counts (default: 2)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="generator processes of the multi-process row of (1) (default: all cores)",
    )
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--out",
        default="bench-output/input_pipeline.json",
        metavar="JSON",
        help="results (default: bench-output/input_pipeline.json)",
    )
    parser.add_argument(
        "--plot",
        default="bench-output/input_pipeline.png",
        metavar="PNG",
        help="bar chart, '' for none (default: bench-output/input_pipeline.png)",
    )


def _check(args) -> None:
    for name in ("per_class", "image_size", "batches", "batch_size", "rounds", "processes"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"`--{name.replace('_', '-')}` must be at least 1. Received: {value}")
    if args.warmup < 0:
        raise ValueError(f"`--warmup` must be 0 or more. Received: {args.warmup}")
    if args.src is not None and not os.path.isdir(args.src):
        raise FileNotFoundError(f"`--src` must be a folder of class folders. Received: {args.src!r}")


# --- (1) ImageDataGenerator, in worker processes ------------------------------------------


def _idg_worker(src, size, batch_size, warmup, batches, seed, barrier, results):
    """One process: its own generator over the tree; reports (images, seconds) or an error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import numpy as np
        from tf_keras.preprocessing.image import ImageDataGenerator

        with contextlib.redirect_stdout(io.StringIO()):  # "Found N images belonging to..."
            flow = ImageDataGenerator(**IDG_ARGS).flow_from_directory(
                src,
                target_size=(size, size),
                color_mode="grayscale",
                batch_size=batch_size,
                class_mode="categorical",
                seed=seed,
            )
        for _ in range(warmup):
            np.asarray(next(flow)[0])
    except BaseException as error:
        results.put(("error", f"{type(error).__name__}: {error}"))
        barrier.abort()
        return
    barrier.wait()
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += len(np.asarray(next(flow)[0]))  # the generator wraps around epochs itself
    results.put((images, time.perf_counter() - start))


def time_generator(src, *, processes, size, batch_size, warmup, batches, seed):
    """Images/s of `processes` generator processes together, `batches` batches in all.

    The clock starts when every process has warmed up, and stops when the last
    one is done; process start-up (TensorFlow's import) is not counted.
    """
    import multiprocessing

    # spawn: the parent has TensorFlow loaded, and forking it is unsafe.
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    shares = [batches // processes + (i < batches % processes) for i in range(processes)]
    workers = [
        ctx.Process(
            target=_idg_worker,
            daemon=True,
            args=(src, size, batch_size, warmup, share, seed + i, barrier, results),
        )
        for i, share in enumerate(shares)
    ]
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=600)
    except Exception:  # BrokenBarrierError: a worker failed (it said why) or hung
        errors = [results.get(timeout=5)[1] for _ in range(results.qsize() or 1)]
        raise RuntimeError(f"ImageDataGenerator worker failed: {errors[0]}") from None
    start = time.perf_counter()
    done = [results.get(timeout=600) for _ in workers]
    wall = time.perf_counter() - start
    for w in workers:
        w.join()
    images = sum(n for n, _ in done)
    return {"images_per_second": images / wall, "sum_of_process_rates": sum(n / s for n, s in done)}


# --- (2)-(5) tf.data pipelines ---------------------------------------------------------------


def _rate(ds, *, warmup, batches):
    """Images/s over `batches` batches of `ds` after `warmup` untimed ones."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)[0].numpy()
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += len(next(it)[0].numpy())
    return images / (time.perf_counter() - start)


def keras3_dataset(src, *, size, batch_size, seed):
    """Keras 3's documented replacement for the notebook's generator."""
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(
        src,
        label_mode="categorical",
        color_mode="grayscale",
        image_size=(size, size),
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        verbose=False,
    )
    # fill_mode "nearest" as ImageDataGenerator's default (the layers' own default is "reflect").
    layers = [
        keras.layers.RandomRotation(15 / 360, fill_mode="nearest", seed=seed),
        keras.layers.RandomZoom(0.2, fill_mode="nearest", seed=seed + 1),
        keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed + 2),
    ]

    def augment(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        return images, labels

    return ds.repeat().map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def reference_layer(seed):
    import cxrdata

    return cxrdata.RandomAffine.from_image_data_generator(seed=seed, **IDG_ARGS)


def raw_dataset(data, *, batch_size):
    """The ceiling: read, batch and parse, nothing else."""
    import tensorflow as tf

    from cxrdata.manifest import read_manifest
    from cxrdata.records import feature_spec

    manifest = read_manifest(data)
    files = [os.path.join(data, s.name) for s in manifest.split("train").shards]
    shape = tuple(manifest.image_shape)
    spec = {k: v for k, v in feature_spec().items() if k in ("image", "label")}

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        images = tf.reshape(tf.io.decode_raw(features["image"], tf.uint8), [-1, *shape])
        return images, features["label"]

    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).repeat()
    return ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def time_gpu(*, size, batch_size, warmup, batches, seed):
    """RandomAffine, XLA-compiled, on float16 batches already on the GPU."""
    import numpy as np
    import tensorflow as tf

    layer = reference_layer(seed)
    with tf.device("/GPU:0"):
        pixels = np.random.default_rng(seed).integers(0, 256, (batch_size, size, size, 1), dtype=np.uint8)
        images = tf.cast(tf.constant(pixels), tf.float16)
        step = tf.function(lambda x: layer(x, training=True), jit_compile=True)
        for _ in range(max(warmup, 1)):
            out = step(images)
        out.numpy()
        start = time.perf_counter()
        for _ in range(batches):
            out = step(images)
        out.numpy()  # waits for the device
        return batches * batch_size / (time.perf_counter() - start)


# --- the run ---------------------------------------------------------------------------------


def prepare(args, tmp):
    """The PNG tree and its converted dataset; returns (src, data, number of images)."""
    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree

    src = args.src
    if src is None:
        src = os.path.join(tmp, "src")
        write_tree(src, per_class=args.per_class, image_size=args.image_size, seed=args.seed)
    data = os.path.join(tmp, "data")
    # Every image in the train split, in about 4 shards per core, so reads can go in parallel.
    total_mb = sum(len(files) for _, _, files in os.walk(src)) * (args.image_size**2 + 400) / 1e6
    result = convert(
        src,
        data,
        image_size=args.image_size,
        splits=(1.0, 0.0, 0.0),
        shard_size=max(total_mb / (4 * (os.cpu_count() or 1)), 0.01),
        progress=False,
    )
    return src, data, result.num_converted


def run(args) -> dict:
    """Runs the benchmark as `args` (from `add_arguments`) says; prints and writes the results."""
    _check(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import importlib.util

    has_tf_keras = importlib.util.find_spec("tf_keras") is not None
    processes = args.processes
    titles = {**TITLES, IDG_N: TITLES[IDG_N].format(n=processes)}
    timing = dict(warmup=args.warmup, batches=args.batches)
    print(
        f"Input pipeline benchmark: {args.batches} batches of {args.batch_size} per method and "
        f"round, {args.rounds} round(s), {os.cpu_count()} CPU cores, load average "
        f"{_load()}",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        src, data, n_images = prepare(args, tmp)
        print(
            f"data: {n_images} images at {args.image_size}x{args.image_size}, converted in "
            f"{time.perf_counter() - start:.0f}s",
            flush=True,
        )

        import tensorflow as tf

        import cxrdata

        seed, bs, size = args.seed, args.batch_size, args.image_size
        gpus = tf.config.list_physical_devices("GPU")
        methods = {}
        if has_tf_keras:
            idg = dict(src=src, size=size, batch_size=bs, seed=seed, **timing)
            methods[IDG_1] = lambda: time_generator(processes=1, **idg)
            if processes > 1:
                methods[IDG_N] = lambda: time_generator(processes=processes, **idg)
        else:
            print("(1) skipped: tf_keras is not installed (pip install tf_keras==2.16.0)")
        # Each tf.data method is built once, then iterated in every round.
        datasets = {
            KERAS3: keras3_dataset(src, size=size, batch_size=bs, seed=seed),
            LOAD: cxrdata.load(data, "train", batch_size=bs, repeat=True, seed=seed),
            LOAD_AUG: cxrdata.load(
                data, "train", batch_size=bs, repeat=True, seed=seed, augment=reference_layer(seed)
            ),
            RAW: raw_dataset(data, batch_size=bs),
        }
        for key, ds in datasets.items():
            methods[key] = lambda ds=ds: {"images_per_second": _rate(ds, **timing)}
        if gpus:
            methods[GPU] = lambda: {
                "images_per_second": time_gpu(size=size, batch_size=bs, seed=seed, **timing)
            }
        else:
            print("(6) skipped: no GPU visible to TensorFlow")

        rounds = {key: [] for key in methods}
        details = {}
        for r in range(args.rounds):
            for key, measure in methods.items():
                result = measure()
                rounds[key].append(result["images_per_second"])
                details.setdefault(key, []).append(result)
                print(
                    f"  round {r + 1}: {titles[key]}: {result['images_per_second']:,.0f} images/s", flush=True
                )
    rates = {key: max(values) for key, values in rounds.items()}
    return report(args, rates, rounds, details, titles, n_images=n_images, gpus=gpus)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _ratio(a, b):
    return a / b if a is not None and b else None


def report(args, rates, rounds, details, titles, *, n_images, gpus) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # `_common` sits beside this file
        sys.path.insert(0, here)
    from _common import markdown_table, write_json

    best_idg = max((rates[k] for k in (IDG_1, IDG_N) if k in rates), default=None)
    rows = []
    for key, rate in rates.items():
        ratio = _ratio(rate, best_idg)
        rows.append([titles[key], rate, "n/a" if ratio is None else f"{ratio:.2f}x"])
    print(
        f"\n{n_images} images at {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{args.batches} batches per method (best of {args.rounds} round(s)), "
        f"{os.cpu_count()} CPU cores, load average {_load()}\n"
    )
    print(markdown_table(["method", "images/s", "vs best of (1)"], rows))

    # name: (measured ratio, target)
    checks = {
        "(3) >= 20x best of (1)": (_ratio(rates[LOAD], best_idg), 20.0),
        "(3) >= 0.85 x (5)": (_ratio(rates[LOAD], rates[RAW]), 0.85),
        "(4) >= 2.5x best of (1)": (_ratio(rates[LOAD_AUG], best_idg), 2.5),
        "(4) >= 2.5x (2)": (_ratio(rates[LOAD_AUG], rates[KERAS3]), 2.5),
    }
    targets = {}
    print()
    for name, (value, target) in checks.items():
        status = "SKIP" if value is None else ("PASS" if value >= target else "FAIL")
        shown = "n/a" if value is None else f"{value:.2f}"
        print(f"{status} {name}: {shown}")
        targets[name] = {"ratio": value, "target": target, "status": status}

    payload = {
        "benchmark": "input_pipeline",
        "images": n_images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "processes": args.processes,
        "load_average": _load(),
        "gpu": [g.name for g in gpus],
        "methods": {key: titles[key] for key in rates},
        "images_per_second": rates,
        "images_per_second_by_round": rounds,
        "ratio_vs_best_of_1": {key: _ratio(rate, best_idg) for key, rate in rates.items()},
        "generator_sum_of_process_rates": {
            k: [d["sum_of_process_rates"] for d in details[k]] for k in (IDG_1, IDG_N) if k in details
        },
        "targets": targets,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    if args.plot:
        plot(
            rates,
            titles,
            args.plot,
            best_idg=best_idg,
            subtitle=f"{n_images} images {args.image_size}x{args.image_size}, batch {args.batch_size}, "
            f"{os.cpu_count()} CPU cores",
        )
        print(f"wrote {args.plot}")
    return payload


def plot(rates, titles, path, *, best_idg, subtitle) -> None:
    """A horizontal bar chart of images/s on a log axis, slowest at the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(rates, key=rates.get)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(keys) + 1.6))
    colors = ["#999999" if k in (IDG_1, IDG_N, KERAS3) else "#2a6fbb" for k in keys]
    ax.barh(range(len(keys)), [rates[k] for k in keys], color=colors)
    ax.set_yticks(range(len(keys)), [titles[k] for k in keys], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(rates.values()) / 2, max(rates.values()) * 5)
    for i, k in enumerate(keys):
        ratio = f" ({rates[k] / best_idg:.1f}x)" if best_idg else ""
        ax.text(rates[k] * 1.08, i, f"{rates[k]:,.0f}{ratio}", va="center", fontsize=8)
    ax.set_xlabel("images/s (log scale); in brackets: vs the best ImageDataGenerator row")
    ax.set_title(f"Input pipeline throughput\n{subtitle}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
