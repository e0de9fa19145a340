"""Tests for `cxrmodels.train` and `cxr train`: the run folder, resuming, options and errors."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import cxrdata
from cxrdata.layers.random_affine import RandomAffine
from cxrmodels.cli import main
from cxrmodels.training.config import TrainConfig
from cxrmodels.training.trainer import train

TINY = {"filters": (4, 8, 8), "dense_units": 8}


def _tiny_train(dataset, out, **kwargs):
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("model_kwargs", TINY)
    return train(dataset, out=out, batch_size=16, verbose=0, **kwargs)


def _history_rows(run):
    with open(os.path.join(run, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _config(run):
    with open(os.path.join(run, "config.json")) as f:
        return json.load(f)


# --- the run folder -----------------------------------------------------------------------------


def test_run_folder_holds_model_history_curves_and_config(trained_run, converted_dataset):
    names = set(os.listdir(trained_run))
    assert {"model.keras", "history.csv", "learning_curves.png", "config.json", "logs"} <= names
    assert "backup" not in names  # BackupAndRestore removes its state once training finished

    rows = _history_rows(trained_run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "accuracy", "auc", "precision", "recall", "specificity", "val_loss", "val_auc"} <= set(
        rows[0]
    )

    from PIL import Image

    with Image.open(os.path.join(trained_run, "learning_curves.png")) as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1] > 0  # two panels side by side


def test_config_has_everything_needed_to_rebuild(trained_run, converted_dataset):
    config = _config(trained_run)
    manifest = cxrdata.read_manifest(converted_dataset)
    assert config["finished"] is True
    assert config["library_version"] == cxrdata.__version__
    assert config["model"] == {
        "name": "seed_cnn",
        "kwargs": {"filters": [4, 8, 8], "dense_units": 8},
        "input_shape": [64, 64, 1],
        "image_size": [64, 64],
        "resize_in_model": False,
        "num_classes": 2,
        "equalize_radius": None,
    }
    assert config["class_names"] == ["COVID", "Normal"] and config["positive_class"] == "COVID"
    assert config["dataset"]["digest"] == manifest.digest()
    assert config["dataset"]["path"] == os.path.abspath(converted_dataset)
    assert config["preprocessing"] == manifest.preprocessing
    training = config["training"]
    assert (training["epochs"], training["batch_size"], training["learning_rate"]) == (2, 16, 1e-3)
    assert (training["augment"], training["balance"], training["mixed_precision"]) == ("gpu", "none", None)
    assert training["augment_layer"]["rotation"] == [-15.0, 15.0]
    assert training["augment_layer"]["zoom"] == [pytest.approx(0.8), pytest.approx(1.2)]
    assert config["results"]["epochs"] == 2

    # The model rebuilt from config.json alone has the saved model's architecture.
    from cxrmodels.models import create_model

    rebuilt = create_model(
        config["model"]["name"],
        input_shape=tuple(config["model"]["input_shape"]),
        num_classes=config["model"]["num_classes"],
        augment=RandomAffine(
            **{k: v for k, v in training["augment_layer"].items() if k not in ("name", "trainable", "dtype")}
        ),
        **config["model"]["kwargs"],
    )
    saved = keras.saving.load_model(os.path.join(trained_run, "model.keras"), compile=False)
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in saved.weights]


def test_saved_model_is_the_best_epoch_with_augmentation_inside(trained_run, converted_dataset):
    saved = keras.saving.load_model(os.path.join(trained_run, "model.keras"), compile=False)
    assert any(isinstance(layer, RandomAffine) for layer in saved.layers)
    val = cxrdata.load(converted_dataset, "val", batch_size=64, shuffle=False)
    saved.compile(loss="categorical_crossentropy")
    best = min(float(r["val_loss"]) for r in _history_rows(trained_run))
    assert saved.evaluate(val, verbose=0) == pytest.approx(best, rel=1e-4)
    assert _config(trained_run)["results"]["best_val_loss"] == pytest.approx(best)


# --- refusing, overwriting and resuming ---------------------------------------------------------


def test_finished_run_is_refused_unless_overwrite(converted_dataset, tmp_path):
    run = tmp_path / "run"
    _tiny_train(converted_dataset, run, epochs=2)
    with pytest.raises(FileExistsError, match="finished training run.*--overwrite"):
        _tiny_train(converted_dataset, run)
    reports = ["metrics.json", "reliability.png", "by_group-val.png", "external/b-0123abcd-all/metrics.json"]
    reports += ["audit/data-0123abcd-test/audit.json"]
    for name in reports:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}")
    for name in ("notes.txt", "metrics-notes.txt", "reliability.csv"):
        (run / name).write_text("mine")
    result = _tiny_train(converted_dataset, run, overwrite=True)
    assert result.epochs == 1 and len(_history_rows(run)) == 1
    # Every report on the replaced model is gone (an old audit verdict is the likeliest to be misread)...
    assert [name for name in reports if (run / name).exists()] == []
    assert not (run / "external").exists() and not (run / "audit").exists()
    # ... and files that are not the run's are kept.
    assert [(run / n).read_text() for n in ("notes.txt", "metrics-notes.txt", "reliability.csv")] == [
        "mine"
    ] * 3


def test_cli_refuses_a_finished_run_with_exit_code_2(trained_run, converted_dataset, capsys):
    code = main(["train", str(converted_dataset), "--out", str(trained_run), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("cxr train: error:") and "finished training run" in err and "--overwrite" in err


def test_folder_with_other_files_is_refused(converted_dataset, tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="holds no training run"):
        _tiny_train(converted_dataset, tmp_path)


def _unfinished_copy(trained_run, tmp_path):
    """A copy of the shared run whose config says it never finished (as after a kill)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = _config(run)
    config["finished"] = False
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_unfinished_run_with_other_options_is_refused(trained_run, converted_dataset, tmp_path):
    run = _unfinished_copy(trained_run, tmp_path)
    with pytest.raises(FileExistsError, match="other options.*learning_rate"):
        train(
            converted_dataset,
            out=run,
            epochs=2,
            batch_size=16,
            learning_rate=0.01,
            verbose=0,
            model_kwargs=TINY,
        )


def _backup_epoch(metadata) -> int:
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not there yet, or being written
        return 0


@pytest.mark.slow
def test_run_killed_mid_training_resumes_where_it_stopped(converted_dataset, tmp_path):
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "cxrmodels.cli",
        "train",
        str(converted_dataset),
        "--out",
        str(run),
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "--filters",
        "4",
        "8",
        "8",
        "--dense-units",
        "8",
        "--quiet",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metadata = run / "backup" / "state.json"
    deadline = time.monotonic() + 240
    try:
        while not _backup_epoch(metadata) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _backup_epoch(metadata), "the first epoch's backup never appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not _config(run)["finished"]
    saved = json.loads(metadata.read_text())["epoch"]
    assert 1 <= saved < 6
    before = _history_rows(run)

    result = train(converted_dataset, out=run, epochs=6, batch_size=16, verbose=0, model_kwargs=TINY)

    assert result.resumed_from == saved
    rows = _history_rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert rows[:saved] == before[:saved]  # the epochs done before the kill are kept, not redone
    assert result.epochs == 6 and _config(run)["finished"] is True
    assert _config(run)["results"]["resumed_from"] == saved
    assert not (run / "backup").exists()


class _Killed(BaseException):
    """Stands for a kill: raised at one step, it skips every later write (as a kill would)."""


def test_run_killed_after_its_last_epoch_only_finishes(converted_dataset, tmp_path, monkeypatch):
    from cxrmodels.training import trainer

    run = tmp_path / "run"

    def killed(*args, **kwargs):
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(trainer, "finish", killed)
        with pytest.raises(_Killed):
            train(converted_dataset, out=run, epochs=2, batch_size=16, verbose=0, model_kwargs=TINY)
    assert not _config(run)["finished"]
    saved = keras.saving.load_model(run / "model.keras", compile=False)
    before = _history_rows(run)

    result = train(converted_dataset, out=run, epochs=2, batch_size=16, verbose=0, model_kwargs=TINY)

    assert (result.resumed_from, result.epochs) == (2, 2) and _history_rows(run) == before
    assert (
        _config(run)["finished"] and (run / "learning_curves.png").is_file() and not (run / "backup").exists()
    )
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 1), dtype=np.uint8)
    np.testing.assert_allclose(
        result.model.predict(images, verbose=0), saved.predict(images, verbose=0), atol=1e-6
    )


# The child trains like `trained_run` and dies (os._exit: no cleanup, as a kill) at one point of `finish`.
_KILLED_CHILD = """
import os, sys
from cxrmodels.runs import run_folder as run_dir
from cxrmodels.training import trainer

step = sys.argv[3]

def die_after(function, when=lambda *a, **k: True):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if when(*args, **kwargs):
            os._exit(9)
        return result
    return wrapped

if step == "history_written":
    run_dir.write_history = die_after(run_dir.write_history, lambda path, history: len(history.get("epoch", [])) == 2)
elif step == "config_finished":
    run_dir.write_config = die_after(run_dir.write_config, lambda out, config: config["finished"])
trainer.train(sys.argv[1], out=sys.argv[2], epochs=2, batch_size=16, verbose=0,
              model_kwargs={"filters": (4, 8, 8), "dense_units": 8})
"""
# Two real kills: right after the last epoch's history row (the retrained epoch) and after the
# finished config.json (the backup not yet removed). Every other step, and every write of the epochs,
# is covered by test_train_faults.py, whose harness is exact for a kill before any write.
_FINISH_STEPS = ["history_written", "config_finished"]


@pytest.mark.slow
@pytest.mark.parametrize("step", _FINISH_STEPS)
def test_run_killed_while_finishing_is_finished_by_a_rerun_not_retrained(
    trained_run, converted_dataset, tmp_path, step
):
    root = pathlib.Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(converted_dataset), str(run), step],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 9, child.stderr[-3000:]
    before = _history_rows(run)
    assert [int(r["epoch"]) for r in before] == [0, 1]  # both epochs were done before the kill
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 1), dtype=np.uint8)
    reference = keras.saving.load_model(trained_run / "model.keras", compile=False).predict(images, verbose=0)

    if step == "config_finished":  # finished: only the backup is left over, and a rerun is refused
        assert _config(run)["finished"] is True
        with pytest.raises(FileExistsError, match="finished"):
            train(converted_dataset, out=run, epochs=2, batch_size=16, verbose=0, model_kwargs=TINY)
        model = keras.saving.load_model(run / "model.keras", compile=False)
    else:
        assert _config(run)["finished"] is False and (run / "backup").is_dir()
        result = train(converted_dataset, out=run, epochs=2, batch_size=16, verbose=0, model_kwargs=TINY)
        assert (result.resumed_from, result.epochs) == (2, 2)  # nothing retrained
        assert _config(run)["finished"] is True and _config(run)["results"]["resumed_from"] == 2
        assert not (run / "backup").exists()
        model = result.model
    assert _history_rows(run) == before  # each epoch once, as trained before the kill
    # The same model as the uninterrupted `trained_run` (same data, options and seed).
    np.testing.assert_allclose(model.predict(images, verbose=0), reference, atol=1e-5)


def test_resumed_early_stopping_state_stops_only_after_an_epoch_that_did_not_improve():
    from cxrmodels.training.run_state import RunState

    def resume_state(history, patience):
        state = RunState()
        for loss in history["val_loss"]:
            state.record({"val_loss": loss}, patience)
        return state

    # Keras' EarlyStopping stops only after an epoch that did not improve: with patience 0,
    # right after the first such epoch, never after an improving one.
    assert not resume_state({"val_loss": [1.0, 0.5]}, patience=0).stopped
    assert not resume_state({"val_loss": [1.0, 0.5]}, patience=1).stopped
    assert resume_state({"val_loss": [1.0, 1.2]}, patience=0).stopped
    assert resume_state({"val_loss": [1.0, 1.0]}, patience=0).stopped  # equal is no improvement
    assert not resume_state({"val_loss": [1.0, 1.2]}, patience=2).stopped
    assert resume_state({"val_loss": [1.0, 1.2, 1.1]}, patience=2).stopped
    assert not resume_state({"val_loss": [1.0]}, patience=0).stopped  # epoch 0 never stops


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", ["cpu", "none"])
def test_augment_cpu_and_none_leave_the_model_without_augmentation(converted_dataset, tmp_path, augment):
    result = _tiny_train(converted_dataset, tmp_path / "run", augment=augment)
    assert not any(isinstance(layer, RandomAffine) for layer in result.model.layers)
    assert result.config["training"]["augment"] == augment
    assert (result.config["training"]["augment_layer"] is None) == (augment == "none")
    assert np.isfinite(result.history["loss"]).all()


@pytest.mark.parametrize("balance", ["oversample", "class-weight"])
def test_balance_modes_train(converted_dataset, tmp_path, balance):
    result = _tiny_train(converted_dataset, tmp_path / "run", balance=balance, augment="none")
    assert result.config["training"]["balance"] == balance
    assert result.epochs == 1 and np.isfinite(result.history["loss"]).all()


def test_mixed_precision_trains_with_float32_outputs_and_restores_the_policy(converted_dataset, tmp_path):
    assert keras.config.dtype_policy().name == "float32"
    result = _tiny_train(converted_dataset, tmp_path / "run", mixed_precision="bfloat16")
    assert keras.config.dtype_policy().name == "float32"
    assert result.config["training"]["mixed_precision"] == "mixed_bfloat16"
    assert result.model.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    saved = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    probs = saved.predict(np.zeros((2, 64, 64, 1), np.uint8), verbose=0)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_image_size_mismatch_is_an_error_unless_resize_in_model(converted_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"64x64 but `image_size` asks for a 72x72.*--resize-in-model"):
        _tiny_train(converted_dataset, tmp_path / "run", image_size=72)
    assert not (tmp_path / "run").exists()  # refused before anything was written

    result = _tiny_train(converted_dataset, tmp_path / "run", image_size=72, resize_in_model=True)
    model = result.model
    assert all(layer.supports_jit for layer in _all_layers(model))  # Keras' "auto" may still use XLA
    assert tuple(model.input_shape) == (None, 64, 64, 1)  # takes the dataset's images
    assert tuple(model.get_layer("block1_conv1").output.shape) == (None, 70, 70, 4)  # computes at 72
    assert result.config["model"]["image_size"] == [72, 72] and result.config["model"]["resize_in_model"]


@pytest.mark.slow
def test_mirrored_strategy_trains_on_the_cpu(converted_dataset, tmp_path):
    result = _tiny_train(converted_dataset, tmp_path / "run", strategy="mirrored", augment="none")
    assert result.config["training"]["strategy"] == "mirrored"
    assert result.epochs == 1 and np.isfinite(result.history["val_loss"]).all()


def _phantom_run_test_auc(base, seed: int):
    """Trains on clean phantoms (the findings are the one class signal); the test split's AUC and 95% CI.

    200 films at 64 px, 120 to train (fewer left some seeds' models stuck at chance),
    50 to test, so that the interval is narrow enough to judge.
    """
    from cxrdata.conversion import convert
    from cxrdata.synthetic import write_tree
    from cxrmodels.metrics.clinical import bootstrap_auc_ci, roc_auc
    from cxrmodels.models.predicting import predict_split

    write_tree(base / "src", per_class=100, image_size=64, seed=seed)
    convert(
        base / "src",
        base / "data",
        image_size=64,
        radius=16,
        splits=(0.6, 0.15, 0.25),
        workers=1,
        progress=False,
    )
    result = train(
        base / "data",
        out=base / "run",
        epochs=15,
        batch_size=16,
        learning_rate=3e-3,
        seed=seed,
        verbose=0,
        model_kwargs={"filters": (8, 16, 16), "dense_units": 16},
    )
    y, probs = predict_split(result.model, str(base / "data"), "test", batch_size=64)
    covid = y == 0  # COVID, the positive class
    return len(y), roc_auc(covid, probs[:, 0]), bootstrap_auc_ci(covid, probs[:, 0], n_bootstrap=1000, seed=0)


@pytest.mark.slow
def test_training_on_phantoms_learns(tmp_path):
    # Looped once over seeds 0-9 and 11 (data and training) on a 2-core box: test AUC 0.96-1.00, the CI's
    # lower bound 0.87-1.00. The assertion asks for an interval clear of chance, with a wide margin.
    n, auc, (low, high) = _phantom_run_test_auc(tmp_path, seed=11)
    assert n == 50
    assert low > 0.75, f"test AUC {auc:.3f} [{low:.3f}, {high:.3f}] on {n} images"


# --- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model": "resnet9000"}, ValueError, r"registered models \[.*seed_cnn"),
        ({"augment": "tpu"}, ValueError, "`augment` must be one of gpu, cpu, none"),
        ({"balance": "smote"}, ValueError, "`balance` must be one of"),
        ({"mixed_precision": "int8"}, ValueError, "`mixed_precision` must be"),
        ({"epochs": 0}, ValueError, "`epochs` must be an integer >= 1"),
        ({"learning_rate": -1.0}, ValueError, "`learning_rate` must be a positive number"),
        ({"augment_strength": 9}, ValueError, "`augment_strength` must be a number from 0 to 4"),
        (
            {"strategy": "multi_worker_mirrored"},
            ValueError,
            "`strategy` must be None, 'mirrored', 'multi-worker'",
        ),
        ({"model_kwargs": {"input_shape": (8, 8, 1)}}, ValueError, "must not set"),
        ({"model_kwargs": {"depth": 3}}, TypeError, "unexpected options"),
    ],
)
def test_bad_arguments_are_refused(converted_dataset, tmp_path, kwargs, error, match):
    kwargs = {"model_kwargs": TINY, **kwargs}
    with pytest.raises(error, match=match):
        train(converted_dataset, out=tmp_path / "run", verbose=0, **kwargs)


def test_dataset_without_val_split_is_refused(converted_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(converted_dataset, data)
    manifest = json.loads((data / "dataset.json").read_text())
    del manifest["splits"]["val"]
    (data / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no 'val' split for validation"):
        _tiny_train(data, tmp_path / "run")


def test_cli_passes_model_options_only_when_given(monkeypatch, converted_dataset):
    import cxrmodels

    calls = []

    class _Result:
        def summary(self):
            return "ok"

    monkeypatch.setattr(cxrmodels, "train", lambda *a, **k: calls.append((a, k)) or _Result())
    assert (
        main(
            [
                "train",
                str(converted_dataset),
                "--out",
                "r",
                "--filters",
                "16",
                "32",
                "--dense-units",
                "8",
                "--mixed-precision",
                "--lr",
                "0.01",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                str(converted_dataset),
                "--out",
                "r",
                "--mixed-precision",
                "bfloat16",
                "--balance",
                "class-weight",
                "--image-size",
                "72",
                "--resize-in-model",
                "--quiet",
            ]
        )
        == 0
    )
    # The CLI passes one TrainConfig: the one these keywords make.
    first, second = calls[0][1]["config"], calls[1][1]["config"]
    common = {"dataset": str(converted_dataset), "out": "r"}
    assert first == TrainConfig(
        **common,
        model_kwargs={"filters": [16, 32], "dense_units": 8},
        mixed_precision="float16",
        learning_rate=0.01,
        verbose=0,
    )
    assert second == TrainConfig(
        **common,
        model_kwargs={},
        mixed_precision="bfloat16",
        balance="class-weight",
        image_size=72,
        resize_in_model=True,
        verbose=0,
    )


def test_training_on_a_damaged_shard_names_it(converted_dataset, tmp_path):
    import shutil

    import cxrdata
    from cxrmodels.training.trainer import train

    data = shutil.copytree(converted_dataset, tmp_path / "data")
    shard = cxrdata.read_manifest(data).splits["train"].shards[0].name
    raw = bytearray((data / shard).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (data / shard).write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match=shard):
        train(
            data,
            out=tmp_path / "run",
            epochs=1,
            batch_size=8,
            augment="none",
            model_kwargs={"filters": (4, 8), "dense_units": 8},
            verbose=0,
        )


def test_a_run_folder_being_written_by_another_process_is_refused(converted_dataset, tmp_path):
    from cxrdata.utils.output_dir import OutputFolderBusyError, lock_output_dir

    run = tmp_path / "run"
    with lock_output_dir(run, what="training run"):  # the lock a running `cxr train` holds
        with pytest.raises(OutputFolderBusyError, match=f"being written by process {os.getpid()}"):
            _tiny_train(converted_dataset, run)
    assert os.listdir(run) == []  # nothing was written, and the lock file went with the lock
