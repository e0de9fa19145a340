"""Search the reference CNN's learning rate and base filters on synthetic phantoms.

The reference study tuned these two by hand. This example writes CXR-like
phantoms, converts them, and runs a random search over the learning rate (log
scale) and the width of the first conv block, with every other hyperparameter
fixed at its reference value. Trial 0 is the reference model (lr 1e-3, base
filters 32). One to three minutes on a laptop CPU with the defaults.

Rerun it with the same --out and a larger --max-trials to resume the search.

Usage:
    python examples/tune_lr_filters.py --out tune-output
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="tune-output", help="working folder (phantoms, data, search)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=5)
    args = parser.parse_args(argv)
    src, data, out = (os.path.join(args.out, d) for d in ("phantoms", "data", "search"))

    if not os.path.isfile(os.path.join(data, "dataset.json")):
        write_tree(src, per_class=args.per_class, image_size=args.image_size, seed=0)
        result = convert(src, data, image_size=args.image_size, radius=16, shard_size=1, progress=False)
        print(result.summary(data))

    hp = keras_tuner.HyperParameters()
    # The two searched hyperparameters; `default=` keeps the reference value as trial 0.
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    hp.Choice("base_filters", [8, 16, 32], default=32)
    # The others stay at the reference values of the study.
    hp.Fixed("dense_units", 128)
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
        batch_size=16,
        directory=out,
        hyperparameters=hp,
        tune_new_entries=False,
        patience=2,
        verbose=0,
    )
    print(result.summary())
    print("\nBest hyperparameters:")
    print(json.dumps(result.best_hyperparameters, indent=2))
    print(f"\nOutputs in {out}:")
    for name, path in sorted(result.files.items()):
        print(f"  {name:28s} {path}")
    print(
        "\nTrain the best configuration for longer with:\n"
        f"  cxrmodels.train({data!r}, out='runs/best', epochs=30, "
        f"**json.load(open({result.files['best_hyperparameters.json']!r}))['train_kwargs'])"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
