"""`cxr bench`: runs `benchmarks/input_pipeline.py` from the source repository.

Nothing of the benchmark is imported while the parser is built: every argument
after `bench` (`--help` included) goes to the script when the command runs, so
`cxr --help` stays instant and free of TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys

from cxrmodels.cli import add_command

# The benchmark scripts live in the source repository beside the packages, not in the wheel.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BENCHMARKS = os.path.join(_ROOT, "benchmarks")
_BENCH_SCRIPT = "input_pipeline"
EXAMPLES = (
    "  cxr bench                                  # 2 x 400 phantoms at 299x299, ~3 min\n"
    "  cxr bench --per-class 8 --image-size 64 --batches 3   # a quick check\n"
    "  cxr bench --src COVID-19_Radiography_Dataset/ --rounds 3 --out bench.json --plot bench.png"
)


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "bench",
        func=_bench,
        help="Time input pipelines on the same phantoms: ImageDataGenerator, Keras 3 "
        "layers, cxrdata.load (runs benchmarks/input_pipeline.py; `cxr bench --help` "
        "lists its options).",
        examples=EXAMPLES,
    )
    p.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.prefix_chars = "\0"  # every argument, "--help" included, goes to the script


def _bench(args) -> int:
    import importlib

    path = os.path.join(_BENCHMARKS, _BENCH_SCRIPT + ".py")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The benchmark scripts are not installed: {path} does not exist. They ship with the "
            f"source repository, not the package: clone it and run `cxr bench` from an editable "
            f"install (pip install -e .), or `python benchmarks/{_BENCH_SCRIPT}.py`."
        )
    # Imported by name from the folder, so that its worker processes (spawned) can import it too.
    if _BENCHMARKS not in sys.path:
        sys.path.insert(0, _BENCHMARKS)
    script = importlib.import_module(_BENCH_SCRIPT)
    parser = argparse.ArgumentParser(
        prog="cxr bench",
        description=script.__doc__,
        epilog="examples:\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    script.add_arguments(parser)
    script.run(parser.parse_args(args.options))
    return 0
