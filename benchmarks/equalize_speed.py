"""Speed of `cxrdata.LocalEqualization` against scikit-image's rank `equalize`.

Equalizes synthetic chest X-rays (`cxrdata.synthetic.make_phantom`) with
`skimage.filters.rank.equalize(image, disk(radius))` in one process and in a
process pool over all cores, and with the layer as a `tf.function` (TF graph,
no XLA) and compiled with XLA, on the CPU and, when TensorFlow sees one, on
the GPU, at each size. Reports images/s, the ratio to scikit-image in one
process, the peak memory of the layer (RSS growth from its first call on the
CPU, which for XLA includes the compiler and, as sizes grow, misses memory
kept from the smaller ones; TensorFlow's peak on a GPU) and whether its bytes equal scikit-image's. Prints a markdown
table and writes JSON.

Usage:
    python benchmarks/equalize_speed.py [--sizes 128,224,299,512] [--radius 70]
        [--batch 2] [--rounds 2] [--out bench-output/equalize_speed.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up noise

import argparse
import concurrent.futures
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from _common import markdown_table, write_json  # noqa: E402
from skimage.filters.rank import equalize  # noqa: E402
from skimage.morphology import disk  # noqa: E402

HEADERS = ["size", "method", "images/s", "vs skimage 1 proc", "peak MB", "identical"]


def _skimage_one(args):
    image, radius = args
    return equalize(image, disk(radius))


def _images(size, count):
    from cxrdata.synthetic import make_phantom

    labels = ("normal", "covid", "pneumonia")
    return np.stack([make_phantom(size, label=labels[i % 3], seed=i) for i in range(count)])


class _PeakRss:
    """Samples this process' resident memory in a thread; `peak_mb` is the growth."""

    def __init__(self, interval=0.002):
        self.interval = interval

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        try:  # hand freed heap back first, so that reused memory counts as growth
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.peak_mb = (self.peak - self.base) / 2**20


def _time_skimage(images, radius, rounds, pool=None):
    jobs = [(image, radius) for image in images]
    start = time.perf_counter()
    for _ in range(rounds):
        if pool is None:
            outputs = [_skimage_one(job) for job in jobs]
        else:
            outputs = list(pool.map(_skimage_one, jobs))
    return len(jobs) * rounds / (time.perf_counter() - start), np.stack(outputs)


def _layer_devices():
    import tensorflow as tf

    devices = [("CPU", "/CPU:0")]
    if tf.config.list_physical_devices("GPU"):
        devices.append(("GPU", "/GPU:0"))
    return devices


def _time_layer(layer, batch, *, device, jit, warmup, rounds):
    """Returns (images/s, outputs, peak MB) of `layer` on `batch` [B, H, W, 1]."""
    import tensorflow as tf

    with tf.device(device):
        step = tf.function(lambda x: layer(x), jit_compile=jit)
        inputs = tf.constant(batch)
        gpu = device.startswith("/GPU")
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        # From the first call on: XLA's CPU runtime keeps its buffers after it,
        # so only the first call shows them (with some compiler memory).
        with _PeakRss() as rss:
            for _ in range(warmup):
                step(inputs).numpy()
            start = time.perf_counter()
            for _ in range(rounds):
                outputs = step(inputs).numpy()
            seconds = time.perf_counter() - start
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpu else rss.peak_mb
    return len(batch) * rounds / seconds, outputs, peak


def run(*, sizes=(128, 224, 299, 512), radius=70, batch=2, rounds=2, warmup=1, workers=None):
    """Times every method at every size; returns a list of result dicts."""
    import keras

    from cxrdata.layers.local_equalization import LocalEqualization

    workers = workers or os.cpu_count()
    results = []
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_skimage_one, [(np.zeros((8, 8), np.uint8), 1)] * workers))  # start workers
        for size in sizes:
            images = _images(size, batch)
            single, expected = _time_skimage(images, radius, rounds)
            rows = [("scikit-image, 1 process", single, None, True)]
            pooled, outputs = _time_skimage(images, radius, rounds, pool)
            rows.append(
                (f"scikit-image, {workers} processes", pooled, None, bool(np.array_equal(outputs, expected)))
            )
            layer = LocalEqualization(radius)
            for name, device in _layer_devices():
                for mode, jit in (("tf.function", False), ("XLA", True)):
                    speed, outputs, peak = _time_layer(
                        layer,
                        images[..., None],
                        device=device,
                        jit=jit,
                        warmup=warmup,
                        rounds=rounds,
                    )
                    identical = bool(np.array_equal(outputs[..., 0], expected))
                    rows.append((f"layer {mode} {name}", speed, peak, identical))
            for method, speed, peak, identical in rows:
                results.append(
                    {
                        "size": size,
                        "method": method,
                        "images_per_s": round(speed, 2),
                        "vs_skimage_1_process": round(speed / single, 3),
                        "peak_mb": None if peak is None else round(peak, 1),
                        "identical": identical,
                    }
                )
            keras.backend.clear_session()
    return results


def _rows(results):
    return [
        [
            f"{r['size']}x{r['size']}",
            r["method"],
            f"{r['images_per_s']:.2f}",
            f"{r['vs_skimage_1_process']:.3f}",
            "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
            "yes" if r["identical"] else "NO",
        ]
        for r in results
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="128,224,299,512", help="comma-separated square image sizes (default: %(default)s)"
    )
    parser.add_argument("--radius", type=int, default=70, help="disk radius (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="images per batch (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes of the scikit-image pool (default: all cores)"
    )
    parser.add_argument("--out", default="bench-output/equalize_speed.json")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    for name in ("radius", "batch", "rounds", "warmup"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be >= 1")
    results = run(
        sizes=sizes,
        radius=args.radius,
        batch=args.batch,
        rounds=args.rounds,
        warmup=args.warmup,
        workers=args.workers,
    )
    devices = ", ".join(name for name, _ in _layer_devices())
    print(
        f"LocalEqualization vs skimage.filters.rank.equalize, disk({args.radius}), "
        f"batch {args.batch}, {args.rounds} rounds, {os.cpu_count()} cores, layer on {devices}\n"
    )
    print(markdown_table(HEADERS, _rows(results)))
    write_json(
        args.out,
        {
            "benchmark": "equalize_speed",
            "radius": args.radius,
            "sizes": list(sizes),
            "batch": args.batch,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "devices": devices,
            "results": results,
        },
    )
    print(f"\nwrote {args.out}")
    if not all(r["identical"] for r in results):
        sys.exit("some outputs differ from scikit-image")


if __name__ == "__main__":
    main()
