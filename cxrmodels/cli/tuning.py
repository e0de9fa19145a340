"""`cxr tune`: the command line of `cxrmodels.search` (see cxrmodels.cli)."""

from __future__ import annotations

import argparse
import re

from cxrmodels.cli import add_command

EXAMPLES = """\
  cxr tune data/ --out tune/a                       # Hyperband on val_auc, 10 trials of <= 10 epochs
  cxr tune data/ --out tune/b --tuner random --max-trials 12 --max-epochs 5 \\
      --hp learning_rate=1e-4:1e-2 --hp base_filters=16,32,64 --no-tune-new-entries
  cxr tune data/ --out tune/b --tuner random --max-trials 20 --max-epochs 5 \\
      --hp learning_rate=1e-4:1e-2 --hp base_filters=16,32,64 --no-tune-new-entries
                                                    # same folder: resumes, runs 8 more trials
  cxr tune data/ --out tune/c --model densenet121 --hp dropout=0.2 --mixed-precision

  # distributed (keras-tuner's chief and workers; one line per process, DIR shared):
  KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
      cxr tune data/ --out tune/d --tuner random --distributed
  KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 \\
      cxr tune data/ --out tune/d --tuner random --distributed

--hp NAME=SPEC fixes or narrows one hyperparameter: NAME=VALUE fixes it,
NAME=LOW:HIGH searches a range (log scale for learning_rate), NAME=A,B,C
searches those choices. Names: learning_rate, base_filters, blocks (seed_cnn),
dense_units, dropout, pooling, augment_strength, trainable_blocks (transfer
models), equalize_radius (a dataset converted with --equalize none: 0, 35, 70
or 100, 0 = no equalization in the model). Unnamed ones are searched too,
unless --no-tune-new-entries keeps them at the reference values (lr 1e-3,
base filters 32, dense 128, dropout 0, max pooling, augment strength 1,
radius 70). DIR gets trials.csv, best_hyperparameters.json,
best_model.keras and search_plot.png.
"""


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "tune",
        help="Search a model's hyperparameters (learning rate, filters, ...) " "with keras-tuner.",
        examples=EXAMPLES,
        func=_tune_run,
    )
    p.add_argument("dataset", metavar="DATASET", help="a folder written by `cxr convert`, with train and val")
    p.add_argument("--out", required=True, metavar="DIR", help="the search folder; a rerun resumes it")
    p.add_argument("--model", default="seed_cnn", help="a registered model (default: seed_cnn)")
    p.add_argument(
        "--tuner",
        choices=("hyperband", "random", "bayesian"),
        default="hyperband",
        help="the search algorithm (default: hyperband; bayesian needs scikit-learn)",
    )
    p.add_argument(
        "--objective",
        default="val_auc",
        help="a logged metric: [val_]loss, accuracy, auc, precision, recall, specificity; "
        "minimized for a loss, else maximized (default: val_auc)",
    )
    p.add_argument(
        "--max-trials", type=int, default=10, help="trials in all, resumed ones included (default: 10)"
    )
    p.add_argument("--max-epochs", type=int, default=10, help="epochs per trial (default: 10)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per batch (default: 32)")
    p.add_argument(
        "--patience",
        type=int,
        default=3,
        help="early stopping patience on the objective, in epochs (default: 3)",
    )
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="fix (NAME=VALUE) or narrow (NAME=LOW:HIGH or NAME=A,B,C) a hyperparameter; repeatable",
    )
    p.add_argument(
        "--tune-new-entries",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also search the hyperparameters --hp does not name (default: yes)",
    )
    p.add_argument(
        "--mixed-precision",
        nargs="?",
        const="float16",
        default=False,
        choices=("float16", "bfloat16"),
        help="mixed_float16 (or bfloat16) trials",
    )
    p.add_argument(
        "--augment",
        choices=("gpu", "cpu", "none"),
        default="gpu",
        help="RandomAffine in the model (gpu), in the pipeline (cpu) or none (default: gpu)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the search and the trials (default: 0)")
    p.add_argument("--project-name", default="cxr_tune", help="keras-tuner's folder inside DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a search already in DIR")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="run as keras-tuner's chief or worker, per KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP "
        "and KERASTUNER_ORACLE_PORT",
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=120.0,
        help="(chief) seconds without a worker's heartbeat before its trial fails (default: 120)",
    )
    p.add_argument(
        "--verbose",
        choices=("auto", "0", "1", "2"),
        default="auto",
        help="keras-tuner and Keras progress output (default: auto)",
    )


def parse_hp(specs: list[str]) -> dict:
    """`["lr=1e-4:1e-2", "pooling=max", "base_filters=16,32"]` -> `{"lr": (1e-4, 1e-2), ...}`."""
    out = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise ValueError(f"--hp must be NAME=VALUE, NAME=LOW:HIGH or NAME=A,B,C. Received: {spec!r}")
        if name in out:
            raise ValueError(f"--hp names {name!r} twice. Received: {spec!r}")
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 2:
                raise ValueError(f"--hp {name} range must be LOW:HIGH. Received: {spec!r}")
            out[name] = tuple(_value(p, spec) for p in parts)
        elif "," in text:
            out[name] = [_value(p, spec) for p in text.split(",")]
        else:
            out[name] = _value(text, spec)
    return out


def _value(text: str, spec: str):
    text = text.strip()
    if not text:
        raise ValueError(f"--hp has an empty value. Received: {spec!r}")
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _tune_run(args) -> int:
    import cxrmodels

    result = cxrmodels.search(
        args.dataset,
        model=args.model,
        tuner=args.tuner,
        objective=args.objective,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        directory=args.out,
        project_name=args.project_name,
        overwrite=args.overwrite,
        seed=args.seed,
        hyperparameters=parse_hp(args.hp) or None,
        tune_new_entries=args.tune_new_entries,
        mixed_precision=args.mixed_precision,
        augment=args.augment,
        patience=args.patience,
        distributed=args.distributed,
        worker_timeout=args.worker_timeout,
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
    )
    print(result.summary())
    return 0
