"""Helpers shared by the benchmark scripts: tables, JSON and machine description."""

from __future__ import annotations

import json
import os
import platform
import time


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cxr_train_metrics(positive_index: int = 0) -> list:
    """The metrics `cxr train` compiles a two-class model with, from public names only."""
    import keras

    import cxrmodels

    return [
        "accuracy",
        keras.metrics.AUC(name="auc", multi_label=True, num_labels=2),
        keras.metrics.Precision(name="precision", class_id=positive_index),
        keras.metrics.Recall(name="recall", class_id=positive_index),
        cxrmodels.Specificity(name="specificity", class_id=positive_index),
    ]


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    payload = {"machine": machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
