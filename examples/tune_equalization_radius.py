"""Search the learning rate, filters and equalization radius on synthetic phantoms.

The reference study equalizes every image with
`skimage.filters.rank.equalize(image, disk(70))` before training. Was 70 the
right radius? This example writes CXR-like phantoms, converts them with
`--equalize none` (unequalized shards), and runs a random search in which each
trial's model starts with `cxrdata.LocalEqualization(radius)` (0: none), next
to the learning rate and the base filters; the others stay at their
reference values. Trial 0 uses the reference learning rate (1e-3) and radius
(70), and filters 32 when they are among --filters. About a minute on 2 CPU
cores with the defaults; enlarge with the flags (on a CPU the equalization
layer is slow: it is meant for a GPU).

Rerun it with the same --out and a larger --max-trials to resume the search.

Usage:
    python examples/tune_equalization_radius.py --out tune-radius
    python examples/tune_equalization_radius.py --out tune-radius --per-class 100 --image-size 128 \\
        --max-trials 12 --max-epochs 5 --radii 0,16,35,70
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up noise

import argparse
import json
import sys

import keras_tuner

from cxrdata.conversion import convert
from cxrdata.synthetic import write_tree
from cxrmodels import search


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="tune-radius", help="working folder (phantoms, data, search)")
    parser.add_argument("--per-class", type=int, default=12, help="phantoms per class (default: 12)")
    parser.add_argument("--image-size", type=int, default=48, help="image side in pixels (default: 48)")
    parser.add_argument("--max-trials", type=int, default=3, help="trials in all (default: 3)")
    parser.add_argument("--max-epochs", type=int, default=1, help="epochs per trial (default: 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per batch (default: 8)")
    parser.add_argument(
        "--filters", type=_ints, default=[4, 8], help="base filters to search, comma-separated (default: 4,8)"
    )
    parser.add_argument(
        "--radii",
        type=_ints,
        default=[0, 12, 70],
        help="equalization radii to search, comma-separated; 0 = none (default: 0,12,70)",
    )
    args = parser.parse_args(argv)
    src, data, out = (os.path.join(args.out, d) for d in ("phantoms", "data", "search"))

    if not os.path.isfile(os.path.join(data, "dataset.json")):
        write_tree(src, per_class=args.per_class, image_size=args.image_size, seed=0)
        # Unequalized shards: the equalization happens in each trial's model.
        result = convert(
            src, data, image_size=args.image_size, equalize="none", shard_size=1, workers=1, progress=False
        )
        print(result.summary(data))

    hp = keras_tuner.HyperParameters()
    # The searched hyperparameters; `default=` keeps the reference values as trial 0 where they are choices.
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    hp.Choice("base_filters", args.filters, default=32 if 32 in args.filters else args.filters[0])
    hp.Choice("equalize_radius", args.radii, default=70 if 70 in args.radii else args.radii[0])
    # The others stay at their reference values, with a small head for the tiny phantoms.
    hp.Fixed("dense_units", 16)
    hp.Fixed("dropout", 0.0)
    hp.Fixed("pooling", "max")
    hp.Fixed("augment_strength", 1.0)

    result = search(
        data,
        model="seed_cnn",
        tuner="random",
        objective="val_auc",
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        directory=out,
        hyperparameters=hp,
        tune_new_entries=False,
        patience=2,
        verbose=0,
    )
    print(result.summary())
    columns = ("trial_id", "learning_rate", "base_filters", "equalize_radius", result.objective, "status")
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in result.trials:
        print("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    print("\nBest hyperparameters:")
    print(json.dumps(result.best_hyperparameters, indent=2))
    with open(result.files["best_hyperparameters.json"], encoding="utf-8") as f:
        best = json.load(f)
    print(f"equalize_radius for cxrmodels.train: {best['train_kwargs']['equalize_radius']}")
    print(f"\nOutputs in {out}:")
    for name, path in sorted(result.files.items()):
        print(f"  {name:28s} {path}")
    print(
        "\nTrain the best configuration for longer with:\n"
        f"  cxrmodels.train({data!r}, out='runs/best', epochs=30, "
        f"**json.load(open({result.files['best_hyperparameters.json']!r}))['train_kwargs'])"
    )
    return 0


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
