"""The search folder of `cxrmodels.search`: `search.json`, and the results the search leaves.

A search folder (`cxr tune DATA --out DIR`) holds:

| file                        | written                                                |
|-----------------------------|--------------------------------------------------------|
| `search.json`               | at the start: the options (`SearchConfig`), dataset digest |
| `cxr_tune/`                 | keras-tuner's project: oracle state, one folder per trial |
| `trials.csv`                | at the end: one row per trial                          |
| `best_hyperparameters.json` | at the end: the best trial's values and `train` kwargs |
| `best_model.keras`          | at the end: the best trial's best epoch                |
| `search_plot.png`           | at the end: the objective against the learning rate and filters (and radius) |
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from typing import Any

from cxrdata.utils.figures import save_figure
from cxrdata.utils.io import atomic_write_text
from cxrdata.utils.output_dir import OVERWRITE, RESUME, check_output_dir, refuse_other_options
from cxrmodels.tuning.config import SearchConfig
from cxrmodels.tuning.tuners import read_sidecar

SEARCH_NAME = "search.json"
TRIALS_NAME = "trials.csv"
BEST_NAME = "best_hyperparameters.json"
MODEL_NAME = "best_model.keras"
PLOT_NAME = "search_plot.png"
OUTPUT_NAMES = (TRIALS_NAME, BEST_NAME, MODEL_NAME, PLOT_NAME)
FORMAT_VERSION = 2  # 2: the options are `SearchConfig.to_dict()`
_TUNER_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")
# What `search.json` holds beside the search's options: facts about the dataset and the space.
# A resumed search must have the same dataset (digest) and the same compared options
# (`SearchConfig.differences`: not max_trials, patience, verbose or the distributed launch).
FACTS = (
    "format_version",
    "library_version",
    "dataset_digest",
    "dataset_equalize",
    "class_names",
    "image_shape",
    "hyperparameter_names",
    "direction",
    "started",
)


def search_record(config: SearchConfig, facts: dict[str, Any]) -> dict[str, Any]:
    """What `search.json` holds: the options (`config.to_dict()`) and the `FACTS`."""
    unknown = sorted(set(facts) - set(FACTS))
    if unknown:
        raise ValueError(f"`facts` must be among {FACTS}. Received: {unknown}")
    return {"format_version": FORMAT_VERSION, **config.to_dict(), **facts}


def config_of(record: dict[str, Any], *, source: str = "") -> SearchConfig:
    """The `SearchConfig` a `search.json` record was written from."""
    return SearchConfig.from_dict({k: v for k, v in record.items() if k not in FACTS}, source=source)


def read_search(out: str) -> dict[str, Any]:
    path = os.path.join(out, SEARCH_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise ValueError(f"{path!r} is not a valid search file: {err}") from err


def differences(previous: dict, record: dict, *, source: str = "") -> list[str]:
    """What differs between the search in a folder (`previous`) and the one asked for, in words."""
    if previous.get("format_version") != FORMAT_VERSION:
        return [
            f"format_version: {previous.get('format_version')!r} then, {FORMAT_VERSION} now "
            "(written by another version of cxr)"
        ]
    out = []
    old, new = previous.get("dataset_digest"), record.get("dataset_digest")
    if old != new:
        out.append(f"another dataset (manifest digest {str(old)[:12]}... then, {str(new)[:12]}... now)")
    return out + config_of(previous, source=source).differences(config_of(record))


def prepare(out: str, record: dict, *, overwrite: bool) -> bool:
    """Readies `out` for a fresh or resumed search and writes `record` to `search.json`; True when resuming.

    Raises:
        NotADirectoryError: `out` is a file.
        FileExistsError: `out` holds other files, or a search with other settings (without `overwrite`).
    """
    # A search has no finished state: a rerun with the same settings continues it.
    state = check_output_dir(
        out,
        what=f"search ({SEARCH_NAME})",
        markers=(SEARCH_NAME,),
        overwrite=overwrite,
        finished=lambda p: False,
    )
    resumed = False
    if state in (OVERWRITE, RESUME):
        try:
            previous = read_search(out)
        except ValueError:
            if not overwrite:
                raise
            previous = {}
        if overwrite:
            clear(out, previous.get("project_name"))
        else:
            source = f"The search file {os.path.join(out, SEARCH_NAME)!r}"
            refuse_other_options(
                out,
                f"search of model {previous.get('model')!r}",
                differences(previous, record, source=source),
            )
            resumed = True
            record = {**record, "started": previous.get("started", record.get("started"))}
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, SEARCH_NAME), json.dumps(record, indent=2) + "\n")
    return resumed


def check_worker(out: str, record: dict) -> None:
    """Raises ValueError unless the chief's `search.json` in the shared `out` matches this worker."""
    if not os.path.isfile(os.path.join(out, SEARCH_NAME)):
        raise ValueError(
            f"{os.path.join(out, SEARCH_NAME)!r} not found, though the chief serves: every "
            "process must see the same `directory` (one machine, or a shared filesystem)."
        )
    changed = differences(read_search(out), record, source=f"The chief's {SEARCH_NAME}")
    if changed:
        raise ValueError(
            f"The chief's search in {out!r} has other settings than this worker "
            f"({'; '.join(changed)}). Launch every process with the same options."
        )


def clear(out: str, project_name: str | None) -> None:
    """Removes what a search wrote in `out` (nothing else)."""
    names = [SEARCH_NAME, *OUTPUT_NAMES] + ([project_name] if project_name else [])
    for name in names:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)


def trial_rows(tuner, hypermodel, objective: str) -> list[dict[str, Any]]:
    """One dict per trial, in trial order: id, hyperparameters, objective, status, epochs, seconds."""

    oracle = tuner.oracle
    trials = sorted(oracle.trials.values(), key=lambda t: (len(t.trial_id), t.trial_id))
    # Hyperband's bookkeeping (tuner/epochs, tuner/trial_id, ...): the same columns in every row.
    extra = sorted(
        {k for t in trials for k in t.hyperparameters.values if k.startswith("tuner/")},
        key=lambda k: (_TUNER_KEYS.index(k) if k in _TUNER_KEYS else len(_TUNER_KEYS), k),
    )
    rows = []
    for trial in trials:
        side = read_sidecar(os.path.join(tuner.project_dir, f"trial_{trial.trial_id}"))
        status, note = trial.status, _last_line(trial.message) or side.get("message")
        if status not in ("COMPLETED", "FAILED", "INVALID"):
            status = "INCOMPLETE"
            note = note or "still running when the search ended (its worker was lost)"
        completed = status == "COMPLETED" and trial.score is not None
        row = {"trial_id": trial.trial_id, **hypermodel.resolve(trial.hyperparameters)}
        row.update({k: trial.hyperparameters.values.get(k) for k in extra})
        row.update(
            {
                objective: trial.score if completed else None,
                "status": status,
                "epochs": side.get("epochs"),
                "seconds": side.get("seconds"),
                "tuner_id": oracle.trial_tuners.get(trial.trial_id) or side.get("tuner_id"),
                "note": note,
            }
        )
        rows.append(row)
    return rows


def write_trials_csv(path: str, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["trial_id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in columns} for row in rows)
    atomic_write_text(path, buf.getvalue())


def best_row(rows: list[dict], objective: str, direction: str) -> dict | None:
    done = [r for r in rows if r["status"] == "COMPLETED" and r.get(objective) is not None]
    if not done:
        return None
    sign = -1 if direction == "max" else 1
    return min(done, key=lambda r: sign * r[objective])


def plot(
    rows: list[dict],
    path: str,
    *,
    objective: str,
    direction: str,
    second: str,
    title: str,
    defaults: dict[str, Any] | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    """Writes the objective against the learning rate (log) and against `second`, as two panels.

    Each name in `extra` (such as "equalize_radius") adds a panel. A trial
    with every hyperparameter in `defaults` (the reference model, unless
    overridden) is circled.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [
        r
        for r in rows
        if r["status"] == "COMPLETED" and r.get(objective) is not None and not math.isnan(r[objective])
    ]
    best = best_row(done, objective, direction)
    reference = [r for r in done if defaults and all(r.get(k) == v for k, v in defaults.items())]
    names = ("learning_rate", second, *extra)
    fig = Figure(figsize=(5.5 * len(names), 4.4))
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        xs = [r[name] for r in done]
        ys = [r[objective] for r in done]
        ax.scatter(xs, ys, s=36, alpha=0.8, label="completed trial")
        if reference:
            ax.scatter(
                [r[name] for r in reference],
                [r[objective] for r in reference],
                s=150,
                facecolors="none",
                edgecolors="black",
                linewidths=1.2,
                zorder=4,
                label="default values (reference)",
            )
        if best is not None:
            ax.scatter(
                [best[name]],
                [best[objective]],
                marker="*",
                s=260,
                c="tab:red",
                zorder=3,
                label=f"best (trial {best['trial_id']})",
            )
        if name == "learning_rate" or (name == "base_filters" and xs):
            ax.set_xscale("log", base=10 if name == "learning_rate" else 2)
        if name != "learning_rate" and xs:
            ticks = sorted(set(xs))
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(t) for t in ticks])
            ax.minorticks_off()
        ax.set(
            xlabel=name + (" (log scale)" if name == "learning_rate" else ""),
            ylabel=f"{objective} ({'higher' if direction == 'max' else 'lower'} is better)",
            title=f"{objective} against {name}",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    failed = len(rows) - len(done)
    fig.suptitle(f"{title}: {len(done)} completed trials" + (f", {failed} not completed" if failed else ""))
    fig.tight_layout()
    return save_figure(fig, path)


def write_json(path: str, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _last_line(message) -> str | None:
    lines = [line for line in str(message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else None
