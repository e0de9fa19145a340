"""`cxr tune`: the command line of `cxrmodels.search` (see cxrmodels.cli)."""

from __future__ import annotations

import cxrmodels
from cxrdata.utils.config import add_arguments, from_cli
from cxrmodels.cli import add_command
from cxrmodels.tuning.config import SearchConfig, parse_hp

__all__ = ["parse_hp", "register"]

EXAMPLES = """\
  cxr tune data/ --out tune/a                       # Hyperband on val_auc, 10 trials of <= 10 epochs
  cxr tune data/ --out tune/b --tuner random --max-trials 12 --max-epochs 5 \\
      --hp learning_rate=1e-4:1e-2 --hp base_filters=16,32,64 --no-tune-new-entries
  cxr tune data/ --out tune/b --tuner random --max-trials 20 --max-epochs 5 \\
      --hp learning_rate=1e-4:1e-2 --hp base_filters=16,32,64 --no-tune-new-entries
                                                    # same folder: resumes, runs 8 more trials
  cxr tune data/ --out tune/c --model densenet121 --hp dropout=0.2 --mixed-precision
  cxr tune --config tune.yaml --max-trials 20       # options from a file (YAML or JSON), then these

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
radius 70). DIR gets trials.csv, best_hyperparameters.json (the best
trial's TrainConfig), best_model.keras and search_plot.png.
"""


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "tune",
        help="Search a model's hyperparameters (learning rate, filters, ...) with keras-tuner.",
        examples=EXAMPLES,
        func=_tune_run,
    )
    add_arguments(p, SearchConfig)


def _tune_run(args) -> int:
    result = cxrmodels.search(config=from_cli(SearchConfig, args))
    print(result.summary())
    return 0
