"""GPU evidence in one command: the accelerator-side claims, measured side by side.

The library's promise is on the accelerator: augmentation inside the model,
the cast to mixed precision there, and uint8 crossing the bus. This script
measures it in one run (about five minutes on one modern GPU, most of it XLA
compiling DenseNet121) and prints markdown tables and target lines:

  1. `cxrdata.RandomAffine` alone, jit-compiled (`jax.jit` under JAX,
     `tf.function(jit_compile=True)` under TensorFlow), on uint8, bfloat16,
     float16 and float32 batches of 128 at 299x299x1, against the memory
     bandwidth bound: (bytes read + bytes written per image) / peak bandwidth.
  2. `cxrdata.LocalEqualization(radius=70)` alone at 299, when the layer exists.
  3. Training steps (`Model.train_on_batch`, compiled as `cxr train` compiles:
     Adam, categorical cross-entropy, the same metrics, `jit_compile="auto"`):
     seed_cnn at 299 (batch 32 and 128) and densenet121 at 224 (batch 64,
     random weights), in float32, mixed_bfloat16 and mixed_float16; with the
     batch already on the device and with numpy uint8 batches copied from host
     memory every step (as `cxrdata.load` feeds them); with and without
     RandomAffine in the model.
  4. The device, driver, backend and versions that ran it.

Targets (reported, not asserted): mixed precision >= 2x float32; RandomAffine
in the model <= 5% of a training step; host-fed uint8 >= 0.95x data already on
the device. Each `train_on_batch` returns its logs to the host, so a step ends
synchronized and the host-to-device copy is not overlapped with compute: the
host-fed ratio is a lower bound for a prefetching pipeline.

Needs only Keras 3, JAX (or TensorFlow) and the backend-agnostic parts of this
library: under `KERAS_BACKEND=jax` TensorFlow is never imported (the JSON's
`tensorflow_imported` says so).

Usage:
    KERAS_BACKEND=jax python benchmarks/gpu_suite.py [--out bench-output/gpu_suite.json]
    KERAS_BACKEND=tensorflow python benchmarks/gpu_suite.py --bandwidth-gbs 900
    python benchmarks/gpu_suite.py --smoke        # tiny sizes, one step each, seconds on a CPU
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _common import cxr_train_metrics, markdown_table, write_json  # noqa: E402

import cxrdata  # noqa: E402
import cxrmodels  # noqa: E402

# ImageDataGenerator(rotation_range=15, zoom_range=0.2, width_shift_range=0.2,
# height_shift_range=0.2, shear_range=0.2): the reference augmentation.
IDG_ARGS = dict(
    rotation_range=15, zoom_range=0.2, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2
)
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
AUGMENT_DTYPES = ("uint8", "bfloat16", "float16", "float32")
# Nominal peak memory bandwidth in GB/s (vendor data sheets), matched as a
# case-insensitive substring of the device name: more specific names first.
PEAK_BANDWIDTH_GBS = (
    ("GH200", 4000),
    ("H200", 4800),
    ("H100 NVL", 3900),
    ("H100 PCIe", 2000),
    ("H100", 3350),
    ("H800", 3350),
    ("A100-SXM4-80GB", 2039),
    ("A100 80GB PCIe", 1935),
    ("A100", 1555),
    ("A800", 2039),
    ("L40S", 864),
    ("L40", 864),
    ("L4", 300),
    ("A10G", 600),
    ("A10", 600),
    ("V100", 900),
    ("T4", 320),
    ("RTX 6000 Ada", 960),
    ("RTX A6000", 768),
    ("RTX 4090", 1008),
    ("RTX 4080", 717),
    ("RTX 3090", 936),
    ("RTX 3080", 760),
    ("MI300X", 5300),
    ("MI250", 3277),
)
FULL = dict(
    augment_size=299,
    augment_batch=128,
    radius=70,
    iterations=50,
    warmup=3,
    steps=20,
    training=(("seed_cnn", 299, (32, 128)), ("densenet121", 224, (64,))),
)
# seed_cnn takes at least 36x36; compiling DenseNet121's training step takes about ten
# seconds per policy even at 32x32 on a CPU, so --smoke trains it in float32 only.
SMOKE = dict(
    augment_size=48,
    augment_batch=2,
    radius=8,
    iterations=1,
    warmup=1,
    steps=1,
    training=(("seed_cnn", 40, (2,)), ("densenet121", 32, (2,))),
)
SMOKE_FLOAT32_ONLY = ("densenet121",)
TARGETS = {
    "mixed": ("mixed precision >= 2x float32", 2.0),
    "augment": ("RandomAffine in the model <= 5% of a step", 0.05),
    "host": ("host-fed uint8 >= 0.95x on-device data", 0.95),
}


# --- where it runs --------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:  # the installed version, without importing the package
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_device() -> dict:
    """The backend's first device, its kind ("gpu" or "cpu"), nvidia-smi and versions."""
    backend = keras.backend.backend()
    info = {"backend": backend, "kind": "cpu", "name": platform.processor() or platform.machine()}
    if backend == "jax":
        import jax

        devices = jax.devices()
        info["devices"] = [str(d) for d in devices]
        if devices[0].platform != "cpu":
            info.update(
                kind="gpu" if devices[0].platform in ("gpu", "cuda", "rocm") else devices[0].platform,
                name=getattr(devices[0], "device_kind", devices[0].platform),
            )
    elif backend == "tensorflow":
        import tensorflow as tf

        info["devices"] = [d.name for d in tf.config.list_logical_devices()]
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            info.update(kind="gpu", name=details.get("device_name", gpus[0].name))
    if shutil.which("nvidia-smi"):
        query = [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,pcie.link.gen.current," "pcie.link.width.current",
            "--format=csv,noheader",
        ]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            out = f"nvidia-smi failed: {error}"
        info["nvidia_smi"] = out.splitlines()
        first = out.splitlines()[0].split(", ") if out else []
        if len(first) > 1:
            info["driver"] = first[1]
    info["versions"] = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "cxr": cxrdata.__version__,
        **{d: _version(d) for d in ("jax", "jaxlib", "jax-cuda12-plugin", "tensorflow")},
    }
    return info


def peak_bandwidth(device: dict, override: float | None) -> tuple[float | None, str]:
    """(GB/s, where it came from): the flag, the table by device name, or None on a CPU."""
    if override:
        return override, "--bandwidth-gbs"
    if device["kind"] != "gpu":
        return None, "n/a on a CPU (pass --bandwidth-gbs to set one)"
    name = device["name"].lower()
    for key, gbs in PEAK_BANDWIDTH_GBS:
        if key.lower() in name:
            return float(gbs), f"table: {key}"
    return None, f"unknown GPU {device['name']!r}: pass --bandwidth-gbs"


# --- one layer alone ------------------------------------------------------------------------


def _sync(x) -> None:
    """Waits until `x` is computed (device work is asynchronous)."""
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    else:
        keras.ops.convert_to_numpy(keras.ops.reshape(x, (-1,))[:1])


def compiled_call(layer, sample):
    """`step(x) -> layer(x, training=True)`, XLA-compiled the backend's way."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        layer(sample[:1], training=True)  # builds the layer and its seed state
        fn = jax.jit(lambda trainable, state, x: layer.stateless_call(trainable, state, x, training=True))
        trainable = [v.value for v in layer.trainable_variables]
        state = [v.value for v in layer.non_trainable_variables]

        def step(x):
            nonlocal state  # carries the seed forward, as the layer would
            outputs, state = fn(trainable, state, x)
            return outputs

        return step
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x: layer(x, training=True), jit_compile=True)
    return lambda x: layer(x, training=True)


def time_layer(layer, images, *, warmup: int, iterations: int) -> dict:
    """Images/s of the compiled layer on `images` (a batch on the device)."""
    step = compiled_call(layer, images)
    for _ in range(warmup):
        outputs = step(images)
    _sync(outputs)
    start = time.perf_counter()
    for _ in range(iterations):
        outputs = step(images)
    _sync(outputs)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": images.shape[0] * iterations / seconds,
        "ms_per_batch": 1000 * seconds / iterations,
        "output_dtype": keras.backend.standardize_dtype(outputs.dtype),
    }


def augment_rows(cfg: dict, bandwidth: float | None) -> list[dict]:
    size, batch = cfg["augment_size"], cfg["augment_batch"]
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
    rows = []
    for dtype in AUGMENT_DTYPES:
        row = {"dtype": dtype, "image_shape": [size, size, 1], "batch_size": batch}
        try:
            layer = cxrdata.RandomAffine.from_image_data_generator(seed=0, **IDG_ARGS)
            row.update(
                time_layer(
                    layer,
                    keras.ops.convert_to_tensor(pixels, dtype=dtype),
                    warmup=cfg["warmup"],
                    iterations=cfg["iterations"],
                )
            )
        except Exception as error:  # e.g. a dtype the backend's XLA cannot take
            row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
            rows.append(row)
            continue
        itemsize = np.dtype(keras.backend.standardize_dtype(dtype).replace("bfloat16", "float16")).itemsize
        out_itemsize = np.dtype(row["output_dtype"].replace("bfloat16", "float16")).itemsize
        row["bytes_per_image"] = size * size * (itemsize + out_itemsize)  # read once, write once
        if bandwidth:
            row["bound_images_per_s"] = bandwidth * 1e9 / row["bytes_per_image"]
            row["fraction_of_bound"] = row["images_per_s"] / row["bound_images_per_s"]
        rows.append(row)
    return rows


def local_equalization() -> type | None:
    try:  # written in parallel: absent from older checkouts
        return cxrdata.LocalEqualization
    except (AttributeError, ImportError):
        return None


def equalization_row(cfg: dict) -> dict:
    size, batch, radius = cfg["augment_size"], cfg["augment_batch"], cfg["radius"]
    row = {"image_shape": [size, size, 1], "batch_size": batch, "radius": radius}
    layer_class = local_equalization()
    if layer_class is None:
        return {**row, "status": "not available"}
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
    try:
        row.update(
            time_layer(
                layer_class(radius=radius),
                keras.ops.convert_to_tensor(pixels),
                warmup=cfg["warmup"],
                iterations=cfg["iterations"],
            ),
            status="ok",
        )
    except Exception as error:
        row.update(status="error", error=f"{type(error).__name__}: {str(error)[:200]}")
    return row


# --- training steps -------------------------------------------------------------------------


def build(name: str, size: int, *, augment: bool) -> keras.Model:
    layer = cxrdata.RandomAffine.from_image_data_generator(seed=0, **IDG_ARGS) if augment else None
    model = cxrmodels.create_model(
        name, input_shape=(size, size, 1), num_classes=2, weights=None, augment=layer
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=cxr_train_metrics()
    )
    return model


def time_steps(model, batches, *, warmup: int, steps: int) -> float:
    """Seconds for `steps` calls of `train_on_batch` after `warmup` (the first compiles)."""
    for i in range(warmup):
        model.train_on_batch(*batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        model.train_on_batch(*batches[i % len(batches)])  # returns its logs: the step has ended
    return time.perf_counter() - start


def training_rows(cfg: dict, *, smoke: bool, policies: tuple[str, ...]) -> list[dict]:
    rows, previous = [], keras.config.dtype_policy()
    rng = np.random.default_rng(0)
    for name, size, batch_sizes in cfg["training"]:
        host = {
            b: [
                (
                    rng.integers(0, 256, (b, size, size, 1), dtype=np.uint8),
                    np.eye(2, dtype=np.float32)[rng.integers(0, 2, b)],
                )
                for _ in range(2)
            ]
            for b in batch_sizes
        }
        for policy in policies:
            for augment in (False, True):
                base = {"model": name, "image_size": size, "policy": policy, "augment": augment}
                if smoke and name in SMOKE_FLOAT32_ONLY and policy != "float32":
                    rows += [
                        {**base, "batch_size": b, "feed": feed, "skipped": "float32 only in --smoke"}
                        for b in batch_sizes
                        for feed in ("device", "host")
                    ]
                    continue
                keras.config.set_dtype_policy(policy)
                try:
                    model = build(name, size, augment=augment)
                    for b in batch_sizes:
                        device = [tuple(keras.ops.convert_to_tensor(a) for a in pair) for pair in host[b]]
                        for feed, batches in (("device", device), ("host", host[b])):
                            seconds = time_steps(model, batches, warmup=cfg["warmup"], steps=cfg["steps"])
                            rows.append(
                                {
                                    **base,
                                    "batch_size": b,
                                    "feed": feed,
                                    "images_per_s": cfg["steps"] * b / seconds,
                                    "ms_per_step": 1000 * seconds / cfg["steps"],
                                    "jit_compile": bool(getattr(model, "jit_compile", False)),
                                }
                            )
                            print(
                                f"  {name} {size} batch {b}, {policy}, augment {augment}, {feed}: "
                                f"{rows[-1]['images_per_s']:.1f} images/s",
                                flush=True,
                            )
                except Exception as error:  # one failing configuration (e.g. out of memory) is a row
                    rows += [
                        {
                            **base,
                            "batch_size": b,
                            "feed": feed,
                            "error": f"{type(error).__name__}: {str(error)[:200]}",
                        }
                        for b in batch_sizes
                        for feed in ("device", "host")
                    ]
                finally:
                    keras.config.set_dtype_policy(previous)
                    model = None
                    keras.backend.clear_session()
    return rows


# --- ratios and targets ---------------------------------------------------------------------


def _rate(rows, **key) -> float | None:
    for r in rows:
        if all(r[k] == v for k, v in key.items()):
            return r.get("images_per_s")
    return None


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def summarize(rows: list[dict], policies: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """One summary per (model, size, batch, policy) with the ratios, and the target checks."""
    summaries, targets = [], []
    configs = list(dict.fromkeys((r["model"], r["image_size"], r["batch_size"]) for r in rows))
    for model, size, batch in configs:
        sel = [r for r in rows if (r["model"], r["image_size"], r["batch_size"]) == (model, size, batch)]
        per_policy = {}
        for policy in policies:
            rate = {
                (aug, feed): _rate(sel, policy=policy, augment=aug, feed=feed)
                for aug in (False, True)
                for feed in ("device", "host")
            }
            cost = (
                1 - rate[(True, "device")] / rate[(False, "device")]
                if rate[(True, "device")] and rate[(False, "device")]
                else None
            )
            host = [
                x
                for x in (_ratio(rate[(a, "host")], rate[(a, "device")]) for a in (False, True))
                if x is not None
            ]
            per_policy[policy] = {
                "model": model,
                "image_size": size,
                "batch_size": batch,
                "policy": policy,
                "rates": {f"{feed}{' + RandomAffine' * aug}": v for (aug, feed), v in rate.items()},
                "augment_cost": cost,
                "host_over_device": min(host) if host else None,
            }
        base = per_policy.get("float32", {}).get("rates", {}).get("device + RandomAffine")
        for s in per_policy.values():
            s["over_float32"] = _ratio(s["rates"]["device + RandomAffine"], base)
            summaries.append(s)
        where = f"{model} {size}x{size}, batch {batch}"
        mixed = [
            (s["over_float32"], p) for p, s in per_policy.items() if p != "float32" and s["over_float32"]
        ]
        best = max(mixed) if mixed else (None, None)
        costs = [(s["augment_cost"], p) for p, s in per_policy.items() if s["augment_cost"] is not None]
        worst_cost = max(costs) if costs else (None, None)
        hosts = [
            (s["host_over_device"], p) for p, s in per_policy.items() if s["host_over_device"] is not None
        ]
        worst_host = min(hosts) if hosts else (None, None)
        for key, (value, policy), met, note in (
            ("mixed", best, lambda v: v >= 2.0, "best mixed policy, device data, with RandomAffine"),
            ("augment", worst_cost, lambda v: v <= 0.05, "worst policy, device data"),
            ("host", worst_host, lambda v: v >= 0.95, "worst policy and augmentation"),
        ):
            targets.append(
                {
                    "target": TARGETS[key][0],
                    "threshold": TARGETS[key][1],
                    "config": where,
                    "value": value,
                    "policy": policy,
                    "measured_as": note,
                    "status": "n/a" if value is None else ("met" if met(value) else "not met"),
                }
            )
    return summaries, targets


# --- output ---------------------------------------------------------------------------------


def _fmt(value, spec="{:,.1f}") -> str:
    return "n/a" if value is None else spec.format(value)


def print_report(report: dict) -> None:
    device = report["device"]
    print(
        f"\n{device['name']} ({device['kind']}), Keras {device['versions']['keras']} on "
        f"{device['backend']}; driver {device.get('driver', 'n/a')}; peak bandwidth "
        f"{_fmt(report['bandwidth_gbs'], '{:,.0f} GB/s')} ({report['bandwidth_source']})"
    )
    for line in device.get("nvidia_smi", []):
        print(f"nvidia-smi: {line}")

    print("\n1. RandomAffine alone, jit-compiled (bound: (read + write bytes per image) / peak bandwidth)\n")
    rows = [
        [
            r["dtype"],
            r.get("error", "")[:60] or r["images_per_s"],
            _fmt(r.get("ms_per_batch"), "{:.2f}"),
            r.get("bytes_per_image", "n/a"),
            _fmt(r.get("bound_images_per_s"), "{:,.0f}"),
            _fmt(r.get("fraction_of_bound"), "{:.3f}"),
        ]
        for r in report["augment"]
    ]
    print(
        markdown_table(
            [
                "input dtype",
                "images/s",
                "ms/batch",
                "bytes/image (r+w)",
                "bound images/s",
                "fraction of bound",
            ],
            rows,
        )
    )

    eq = report["equalization"]
    print(f"\n2. LocalEqualization(radius={eq['radius']}) alone, jit-compiled\n")
    value = eq.get("images_per_s") if eq["status"] == "ok" else eq.get("error", eq["status"])
    print(
        markdown_table(
            ["layer", "images/s", "ms/batch"],
            [[f"LocalEqualization(radius={eq['radius']})", value, _fmt(eq.get("ms_per_batch"), "{:.2f}")]],
        )
    )

    print(
        "\n3. Training steps (images/s; aug cost = 1 - with/without RandomAffine, device data; "
        "host/device = worst of with and without)\n"
    )
    rows = []
    for s in report["summaries"]:
        rates = [
            _fmt(s["rates"][k]) for k in ("device", "device + RandomAffine", "host", "host + RandomAffine")
        ]
        rows.append(
            [
                f"{s['model']} {s['image_size']}",
                s["batch_size"],
                s["policy"],
                *rates,
                _fmt(s["augment_cost"], "{:.1%}"),
                _fmt(s["host_over_device"], "{:.2f}"),
                _fmt(s["over_float32"], "{:.2f}x"),
            ]
        )
    print(
        markdown_table(
            [
                "model",
                "batch",
                "policy",
                "device",
                "device + aug",
                "host uint8",
                "host uint8 + aug",
                "aug cost",
                "host/device",
                "vs float32",
            ],
            rows,
        )
    )
    skipped = sorted(
        {
            (r["model"], r["policy"], r.get("skipped") or r.get("error"))
            for r in report["training"]
            if "images_per_s" not in r
        }
    )
    for model, policy, why in skipped:
        print(f"  {model}, {policy}: {why}")

    print("\nTargets (reported, not asserted)\n")
    rows = [
        [
            t["target"],
            t["config"],
            _fmt(t["value"], "{:.1%}" if "5%" in t["target"] else "{:.2f}")
            + (f" ({t['policy']})" if t["policy"] else ""),
            t["status"],
        ]
        for t in report["targets"]
    ]
    print(markdown_table(["target", "configuration", "measured", "status"], rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and one step each (a CPU test of the whole script)"
    )
    parser.add_argument(
        "--bandwidth-gbs", type=float, help="peak memory bandwidth (default: from the GPU's name)"
    )
    parser.add_argument("--policies", default=",".join(POLICIES), help="default: " + ",".join(POLICIES))
    parser.add_argument("--steps", type=int, help="timed training steps per configuration (default: 20)")
    parser.add_argument("--augment-size", type=int, help="image size of sections 1 and 2 (default: 299)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies the training image sizes and batch sizes (e.g. 0.25 on a CPU)",
    )
    parser.add_argument("--out", default="bench-output/gpu_suite.json")
    args = parser.parse_args(argv)
    policies = tuple(args.policies.split(","))
    if not set(policies) <= set(POLICIES) or "float32" not in policies:
        parser.error(f"--policies must include float32 and be among {POLICIES}. Received: {args.policies}")
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.steps:
        cfg["steps"] = args.steps
    if args.augment_size:
        cfg["augment_size"] = args.augment_size
    if args.scale != 1.0:
        cfg["training"] = tuple(
            (n, max(48, round(s * args.scale)), tuple(max(2, round(b * args.scale)) for b in bs))
            for n, s, bs in cfg["training"]
        )

    start = time.perf_counter()
    device = describe_device()
    bandwidth, source = peak_bandwidth(device, args.bandwidth_gbs)
    print(
        f"gpu_suite{' --smoke' if args.smoke else ''}: backend {device['backend']} on {device['name']}",
        flush=True,
    )
    report = {
        "benchmark": "gpu_suite",
        "smoke": args.smoke,
        "backend": device["backend"],
        "device": device,
        "bandwidth_gbs": bandwidth,
        "bandwidth_source": source,
        "config": {k: v for k, v in cfg.items()} | {"policies": list(policies)},
    }
    sections = (
        ("augment", "1. RandomAffine alone", lambda: augment_rows(cfg, bandwidth)),
        ("equalization", "2. LocalEqualization alone", lambda: equalization_row(cfg)),
        ("training", "3. Training steps", lambda: training_rows(cfg, smoke=args.smoke, policies=policies)),
    )
    report["section_seconds"] = {}
    for key, title, run in sections:
        print(title, flush=True)
        t = time.perf_counter()
        report[key] = run()
        report["section_seconds"][key] = round(time.perf_counter() - t, 1)
    report["summaries"], report["targets"] = summarize(report["training"], policies)
    report["seconds"] = time.perf_counter() - start
    # Last: anything above that pulled TensorFlow in under JAX shows here.
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    print_report(report)
    print(
        f"\nTensorFlow imported: {report['tensorflow_imported']}; {report['seconds']:.0f} s in all "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in report['section_seconds'].items())})"
    )
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
