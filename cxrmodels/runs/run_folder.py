"""The training run folder: its file names, `config.json`, the history and its curves.

A run folder (`cxr train ... --out RUN`) holds:

| file                  | written                                                  |
|-----------------------|----------------------------------------------------------|
| `config.json`         | at the start (`"finished": false`) and last of all (`true`) |
| `model.keras`         | best validation loss so far, and atomically at the end   |
| `history.csv`         | one row per committed epoch (derived from `backup/state.json`) |
| `learning_curves.png` | accuracy and loss, train and validation, at the end      |
| `backup/`             | the committed training state (`state.json`, weights), until `config.json` is final |
| `logs/`               | TensorBoard logs                                         |

`evaluate`, `predict` and `export` read a run through `read_config` and
`cxrmodels.models.saving.load_run_model`, which raise FileNotFoundError for a
folder that is not a run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

from cxrdata.utils.figures import save_figure
from cxrdata.utils.io import atomic_write_text

CONFIG_NAME = "config.json"
MODEL_NAME = "model.keras"
HISTORY_NAME = "history.csv"
CURVES_NAME = "learning_curves.png"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
FORMAT_VERSION = 2  # 2: the TrainConfig under "config", the decision threshold, backup/state.json
EXTERNAL_DIR = "external"  # `cxr evaluate` on another dataset: external/<name>-<digest[:8]>-<split>/
AUDIT_DIR = "audit"  # `cxr audit`: audit/<name>-<digest[:8]>-<split>/
# The reports of the test split are metrics.json and <figure>.png, of another split <name>-<split>.
REPORT_NAMES = ("metrics", "roc", "confusion_matrix", "reliability", "by_group")
# Everything `train` and the reports on its model write into a run folder; `overwrite` removes only these.
RUN_FILES = (
    CONFIG_NAME,
    MODEL_NAME,
    HISTORY_NAME,
    CURVES_NAME,
    BACKUP_DIR,
    LOGS_DIR,
    EXTERNAL_DIR,
    AUDIT_DIR,
)


def is_run_file(name: str) -> bool:
    """Whether `name`, in a run folder, is the run's (a file `overwrite` may remove) rather than the user's."""
    if name in RUN_FILES:
        return True
    stem, ext = os.path.splitext(name)
    report = stem.split("-", 1)[0]
    return report in REPORT_NAMES and ext == (".json" if report == "metrics" else ".png")


def config_path(run_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(run_dir), CONFIG_NAME)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads a run's `config.json`.

    Raises:
        FileNotFoundError: `run_dir` is missing or holds no `config.json`.
        ValueError: `config.json` cannot be parsed.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"No such run folder: {run_dir!r}")
    path = config_path(run_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{run_dir!r} is not a training run: it holds no {CONFIG_NAME}. "
            f"Train one with `cxr train DATASET --out {run_dir}`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config["model"]["name"], config["class_names"], config["preprocessing"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path!r} is not a valid run configuration: {e}") from e
    return config


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    atomic_write_text(config_path(run_dir), json.dumps(config, indent=2) + "\n")


def write_history(path: str | os.PathLike, history: dict[str, list]) -> None:
    """Writes `{column: values}` as `history.csv` (a header, then one row per epoch), atomically."""
    columns = list(history)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    n = len(history[columns[0]]) if columns else 0
    writer.writerows([history[c][i] for c in columns] for i in range(n))
    atomic_write_text(path, buf.getvalue())


def plot_learning_curves(history: dict[str, list[float]], path: str | os.PathLike) -> str:
    """Writes accuracy and loss per epoch, train and validation, as two panels (PNG).

    Args:
        history: `{metric: values}` with `accuracy`, `loss` and their `val_`
            counterparts (any of them may be missing).
        path: The PNG to write (atomically).

    Returns:
        `path` as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = max((len(v) for v in history.values()), default=0)
    epochs = list(range(1, n + 1))
    losses = [v for v in history.get("val_loss", []) if not math.isnan(v)]
    best = history["val_loss"].index(min(losses)) + 1 if losses else None
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for i, (metric, title) in enumerate((("accuracy", "Model accuracy"), ("loss", "Model loss"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            if history.get(key):
                ax.plot(epochs, history[key], style, ms=3, label=label)
        if best is not None:
            ax.axvline(best, ls=":", c="0.5", lw=1, label=f"best val_loss (epoch {best})")
        ax.set(title=title, xlabel="epoch", ylabel=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if n:
            ax.set_xlim(0.5, n + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def sidecar(config: dict[str, Any]) -> dict[str, Any]:
    """What a deployed model needs to know beside its weights (for `export`)."""
    return {
        "model": config["model"]["name"],
        "input_shape": config["model"]["input_shape"],
        "class_names": config["class_names"],
        "positive_class": config.get("positive_class"),
        "preprocessing": config["preprocessing"],
        "equalize_radius": config["model"].get("equalize_radius", config["model"].get("equalize_in_model")),
        "dataset_digest": config.get("dataset", {}).get("digest"),
        "library_version": config.get("library_version"),
    }
