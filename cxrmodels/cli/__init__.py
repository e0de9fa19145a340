"""`cxr`: one command line for converting, checking, training, evaluating and tuning.

The CLI is a thin layer over the public functions of `cxrdata` and `cxrmodels`.
Each module of `COMMAND_MODULES` registers a group of subcommands (`data`:
synth, convert, verify, inspect; `bench`; `models`: train, evaluate, predict,
export; `tuning`: tune; `auditing`: audit). The options of `convert`, `train`
and `tune` are generated from their configs (`ConvertConfig`, `TrainConfig`,
`SearchConfig`), which also read `--config FILE`. Heavy imports (TensorFlow)
happen only inside the command that needs them, so `cxr --help` is instant.

Exit codes: 0 success, 1 failure, 2 usage error (bad arguments or input), 130
interrupted (Ctrl-C), 143 terminated (SIGTERM: `kill`, `timeout`, a scheduler's
preemption). SIGTERM is handled like Ctrl-C, so worker processes are stopped and
files are left as a rerun expects.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from cxrdata import __version__
from cxrdata.utils.config import read_config_file

RESUMABLE = frozenset({"convert", "train", "tune"})  # rerunning the same command resumes these
COMMAND_MODULES = (
    "cxrmodels.cli.data",
    "cxrmodels.cli.bench",
    "cxrmodels.cli.models",
    "cxrmodels.cli.tuning",
    "cxrmodels.cli.auditing",
)

EPILOG = """\
typical session:
  cxr synth phantoms/ --per-class 200            # CXR-like phantoms, no download needed
  cxr convert phantoms/ data/ --image-size 299   # equalized, sharded TFRecords
  cxr verify data/                               # re-read every shard against the manifest
  cxr inspect data/                              # counts per split and class, sample grid
  cxr train data/ --model seed_cnn --out runs/a  # mixed precision, callbacks, curves
  cxr evaluate runs/a data/ --split test         # sensitivity, specificity, AUC with CI

Run `cxr COMMAND --help` for each command's options and examples.
"""


class UsageError(Exception):
    """Raised by a command for bad arguments found after parsing: exit code 2."""


def add_command(subparsers, name: str, *, help: str, examples: str, func) -> argparse.ArgumentParser:
    """Adds one subcommand whose `--help` ends with `examples`."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func, command=name)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="Fast, trustworthy chest X-ray classification with TensorFlow and Keras.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def _resume_hint(args) -> str:
    """How to resume an interrupted command: never by rerunning an `--overwrite` that would start over."""
    overwrite = getattr(args, "overwrite", None)
    if overwrite is None and getattr(args, "config", None):
        try:
            overwrite = bool(read_config_file(args.config).get("overwrite"))
        except (OSError, ValueError):
            overwrite = False
    if overwrite:
        return (
            "; rerun it without --overwrite (or with --no-overwrite) to resume, since --overwrite starts over"
        )
    return "; rerun the same command to resume"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide CUDA-plugin noise on CPU hosts
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    terminated = []

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        result = args.func(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        print(f"cxr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = _resume_hint(args) if args.command in RESUMABLE else ""
        print(f"cxr {args.command}: interrupted{' (SIGTERM)' if terminated else ''}{hint}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as e:  # a failure, not a usage error: say what broke
        print(f"cxr {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
