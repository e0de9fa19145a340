"""Tests for the hyperparameter search: `CXRHyperModel`, `search` and `cxr tune`."""

from __future__ import annotations

import csv
import json
import os
import shutil

import keras
import keras_tuner as kt
import numpy as np
import pytest

from cxrmodels.cli import main
from cxrmodels.models import create_model
from cxrmodels.training.config import TrainConfig
from cxrmodels.tuning.searcher import CXRHyperModel, SearchResult, objective_names, search

# Tiny trials: 48x48 images, filters (4, 8, 16), 8 dense units, batches of 8.
TINY = {"base_filters": 4, "dense_units": 8}
FAST = dict(batch_size=8, verbose=0)
OUTPUTS = ("trials.csv", "best_hyperparameters.json", "best_model.keras", "search_plot.png")


@pytest.fixture(scope="module")
def random_search(tiny_data, tmp_path_factory):
    """A finished 2-trial random search (1 epoch each), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("tune_random") / "search"
    result = search(
        tiny_data, tuner="random", max_trials=2, max_epochs=1, directory=out, hyperparameters=TINY, **FAST
    )
    return out, result


def _rows(out) -> list[dict[str, str]]:
    with open(os.path.join(out, "trials.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _best(out) -> dict:
    with open(os.path.join(out, "best_hyperparameters.json")) as f:
        return json.load(f)


def _check_outputs(
    out, result: SearchResult, *, trials: int, max_epochs: int, objective: str = "val_auc"
) -> list[dict[str, str]]:
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "search_plot.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = _rows(out)
    assert [r["trial_id"] for r in rows] == [t["trial_id"] for t in result.trials]
    assert len(rows) == trials
    for column in (
        "trial_id",
        "learning_rate",
        "base_filters",
        "dense_units",
        "dropout",
        "pooling",
        "augment_strength",
        objective,
        "status",
        "epochs",
        "seconds",
        "tuner_id",
    ):
        assert column in rows[0], column
    for row in rows:
        assert row["status"] == "COMPLETED"
        assert 1 <= int(row["epochs"]) <= max_epochs and float(row["seconds"]) > 0
        assert (int(row["base_filters"]), int(row["dense_units"])) == (4, 8)
        assert 1e-5 <= float(row["learning_rate"]) <= 1e-2
    best = _best(out)
    scores = {r["trial_id"]: float(r[objective]) for r in rows}
    pick = min if objective.endswith("loss") else max
    assert best["best_value"] == pytest.approx(pick(scores.values()))
    assert scores[best["trial_id"]] == pytest.approx(best["best_value"])
    assert best["train_kwargs"]["model_kwargs"]["filters"] == [4, 8, 16]
    assert result.best_trial_id == best["trial_id"]
    # The best trial's TrainConfig, and `cxrmodels.train` keywords that are a part of it.
    trial = TrainConfig.from_dict(best["train_config"])
    assert trial.learning_rate == pytest.approx(float(best["hyperparameters"]["learning_rate"]))
    assert trial.to_dict() | best["train_kwargs"] == trial.to_dict()
    return rows


# --- the hypermodel ---------------------------------------------------------------------------


def test_default_hyperparameters_build_the_reference_model():
    hypermodel = CXRHyperModel(input_shape=(299, 299, 1), num_classes=2)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert model.count_params() == create_model("seed_cnn").count_params() == 18_129_890
    assert hp.values == {
        "learning_rate": 1e-3,
        "base_filters": 32,
        "dense_units": 128,
        "dropout": 0.0,
        "pooling": "max",
        "augment_strength": 1.0,
    }
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert model.get_layer("block3_conv2").filters == 128


def test_search_space_of_seed_cnn_and_of_a_transfer_model():
    hp = kt.HyperParameters()
    CXRHyperModel(input_shape=(48, 48, 1), num_classes=2).build(hp)
    space = {e.name: e for e in hp.space}
    lr = space["learning_rate"]
    assert (lr.min_value, lr.max_value, lr.sampling, lr.default) == (1e-5, 1e-2, "log", 1e-3)
    assert space["base_filters"].values == [8, 16, 32, 64] and space["base_filters"].default == 32
    assert space["pooling"].values == ["max", "avg"]
    assert (space["augment_strength"].min_value, space["augment_strength"].default) == (0.0, 1.0)

    hypermodel = CXRHyperModel("vgg19_transfer", input_shape=(32, 32, 1), num_classes=2)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert set(hp.values) == {"learning_rate", "dense_units", "dropout", "trainable_blocks"}
    assert (hp.values["dense_units"], hp.values["trainable_blocks"]) == (128, 0)
    assert {e.name: e for e in hp.space}["trainable_blocks"].max_value == 5
    assert model.count_params() == create_model("vgg19_transfer", input_shape=(32, 32, 1)).count_params()


def test_augmentation_placement_and_mixed_precision():
    def layers(**kwargs):
        model = CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, hyperparameters=TINY, **kwargs).build(
            kt.HyperParameters()
        )
        return model, [type(layer).__name__ for layer in model.layers]

    assert "RandomAffine" in layers(augment="gpu")[1]
    assert "RandomAffine" not in layers(augment="cpu")[1]
    assert "RandomAffine" not in layers(augment="none")[1]
    assert "RandomAffine" not in [
        type(layer).__name__
        for layer in CXRHyperModel(
            input_shape=(48, 48, 1), num_classes=2, hyperparameters={**TINY, "augment_strength": 0.0}
        )
        .build(kt.HyperParameters())
        .layers
    ]
    model, _ = layers(mixed_precision=True)
    assert model.dtype_policy.name == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_overrides_fix_and_narrow_the_space():
    hp = kt.HyperParameters()
    hp.Float("learning_rate", 1e-4, 1e-3, sampling="log", default=5e-4)
    hp.Fixed("pooling", "avg")
    hp.Int("blocks", 2, 2)
    hypermodel = CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, hyperparameters=hp)
    overrides = {e.name: e for e in hypermodel.hyperparameters.space}
    assert set(overrides) == {"learning_rate", "pooling", "blocks"}
    trial_hp = hypermodel.hyperparameters
    model = hypermodel.build(trial_hp)
    assert trial_hp.values["learning_rate"] == 5e-4 and trial_hp.values["pooling"] == "avg"
    assert model.get_layer("block2_pool").__class__.__name__ == "AveragePooling2D"
    assert "block3_conv1" not in [layer.name for layer in model.layers]

    from_dict = CXRHyperModel(
        input_shape=(48, 48, 1),
        num_classes=2,
        hyperparameters={
            "learning_rate": (1e-4, 1e-2),
            "pooling": "avg",
            "base_filters": [8, 16],
            "dropout": (0, 0.3),
        },
    )
    entries = {e.name: e for e in from_dict.hyperparameters.space}
    assert (entries["learning_rate"].sampling, entries["learning_rate"].default) == ("log", 1e-3)
    assert isinstance(entries["pooling"], kt.engine.hyperparameters.Fixed)
    assert entries["base_filters"].values == [8, 16]
    assert (entries["dropout"].min_value, entries["dropout"].max_value) == (0.0, 0.3)


@pytest.mark.parametrize(
    "hyperparameters, match",
    [
        ({"learning_rate": (0, 1e-2)}, "learning_rate.*positive"),
        ({"learning_rate": (-1e-3, 1e-2)}, "learning_rate.*positive"),
        ({"learning_rate": (1e-2, 1e-4)}, "low <= high"),
        ({"learning_rate": 0.0}, "learning_rate.*positive"),
        ({"dropout": 1.0}, r"dropout.*\[0, 1\)"),
        ({"pooling": "sum"}, "pooling.*'max' or 'avg'"),
        ({"base_filters": [0, 8]}, "base_filters.*>= 1"),
        ({"filters": (8, 16)}, "names must be among.*learning_rate, base_filters"),
        ({"trainable_blocks": 1}, "names must be among"),
        ({"blocks": 4}, "blocks.*from 1 to 3"),
    ],
)
def test_bad_hyperparameter_overrides_are_refused(hyperparameters, match):
    with pytest.raises(ValueError, match=match):
        CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, hyperparameters=hyperparameters)


def test_bad_keras_tuner_entries_are_refused():
    for declare, match in [
        (lambda hp: hp.Float("learning_rate", -1e-3, 1e-2), r"learning_rate.*positive.*-0.001"),
        (lambda hp: hp.Fixed("learning_rate", 0), "learning_rate.*positive"),
        (lambda hp: hp.Float("base_filters", 8, 32), "base_filters.*hp.Int"),
        (lambda hp: hp.Boolean("pooling"), "pooling.*Boolean"),
    ]:
        hp = kt.HyperParameters()
        declare(hp)
        with pytest.raises(ValueError, match=match):
            CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, hyperparameters=hp)
    with pytest.raises(ValueError, match="min_value .* greater than"):  # keras-tuner's own check
        kt.HyperParameters().Float("learning_rate", 1e-2, 1e-4)


def test_other_bad_hypermodel_arguments():
    with pytest.raises(ValueError, match="at least 36x36.*'blocks': 2"):
        CXRHyperModel(input_shape=(32, 32, 1), num_classes=2)
    assert CXRHyperModel(input_shape=(32, 32, 1), num_classes=2, hyperparameters={"blocks": 2})
    with pytest.raises(ValueError, match="`model_kwargs` must not set 'dropout'"):
        CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, model_kwargs={"dropout": 0.2})
    with pytest.raises(ValueError, match="registered models"):
        CXRHyperModel("resnet18", input_shape=(48, 48, 1), num_classes=2)
    with pytest.raises(ValueError, match="mixed_precision"):
        CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, mixed_precision="float8")


# --- search -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_search_writes_the_four_outputs(random_search):
    out, result = random_search
    rows = _check_outputs(out, result, trials=2, max_epochs=1)
    # Trial 0 is the reference model (with the tiny filters and dense units given).
    assert (
        float(rows[0]["learning_rate"]),
        float(rows[0]["dropout"]),
        rows[0]["pooling"],
        float(rows[0]["augment_strength"]),
    ) == (1e-3, 0.0, "max", 1.0)
    assert rows[0]["learning_rate"] != rows[1]["learning_rate"]
    assert {r["tuner_id"] for r in rows} == {"tuner0"}
    with open(os.path.join(out, "search.json")) as f:
        assert json.load(f)["model"] == "seed_cnn"
    model = keras.saving.load_model(os.path.join(out, "best_model.keras"), compile=False)
    probabilities = model.predict(np.zeros((1, 48, 48, 1), "uint8"), verbose=0)
    assert probabilities.shape == (1, 2) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_hyperband_search_continues_the_best_trials(tiny_data, tmp_path):
    out = tmp_path / "hb"
    # max_epochs 3: a bracket of 3 one-epoch trials, then the best goes on to epoch 3.
    result = search(
        tiny_data,
        tuner="hyperband",
        max_trials=4,
        max_epochs=3,
        directory=out,
        objective="val_loss",
        hyperparameters=TINY,
        **FAST,
    )
    rows = _check_outputs(out, result, trials=4, max_epochs=3, objective="val_loss")
    assert [r["tuner/epochs"] for r in rows] == ["1", "1", "1", "3"]
    assert rows[3]["tuner/initial_epoch"] == "1"
    best_first = min(rows[:3], key=lambda r: float(r["val_loss"]))["trial_id"]
    assert rows[3]["tuner/trial_id"] == best_first
    assert int(rows[3]["epochs"]) == 2  # epochs run in this trial: 2 and 3
    assert _best(out)["direction"] == "min"


@pytest.mark.slow
def test_bayesian_search_writes_the_four_outputs(tiny_data, tmp_path):
    out = tmp_path / "bo"
    result = search(
        tiny_data, tuner="bayesian", max_trials=2, max_epochs=1, directory=out, hyperparameters=TINY, **FAST
    )
    _check_outputs(out, result, trials=2, max_epochs=1)


@pytest.mark.slow
def test_an_interrupted_search_resumes_without_rerunning_trials(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    kwargs = dict(tuner="random", max_epochs=1, directory=out, hyperparameters=TINY, **FAST)
    search(tiny_data, max_trials=2, **kwargs)
    first = _rows(out)

    calls = []
    fit = CXRHyperModel.fit

    def interrupted_fit(self, *args, **kw):  # Ctrl-C in the second trial of the next run
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(self, *args, **kw)

    monkeypatch.setattr(CXRHyperModel, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        search(tiny_data, max_trials=4, **kwargs)
    monkeypatch.setattr(CXRHyperModel, "fit", fit)

    result = search(tiny_data, max_trials=4, **kwargs)
    rows = _rows(out)
    assert [r["trial_id"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    assert rows[:2] == first  # the finished trials were not rerun
    assert len(result.trials) == 4


@pytest.mark.slow
def test_a_failed_trial_is_recorded_with_its_reason_and_the_search_goes_on(tiny_data, tmp_path, monkeypatch):
    calls = []
    fit = CXRHyperModel.fit

    def failing_fit(self, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("boom in trial 1")
        return fit(self, *args, **kw)

    monkeypatch.setattr(CXRHyperModel, "fit", failing_fit)
    out = tmp_path / "fail"
    result = search(
        tiny_data, tuner="random", max_trials=3, max_epochs=1, directory=out, hyperparameters=TINY, **FAST
    )
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert rows[1]["note"] == "ValueError: boom in trial 1" and rows[1]["val_auc"] == ""
    assert result.best_trial_id in {"0", "2"}

    def always_failing_fit(self, *args, **kw):
        raise ValueError("boom")

    monkeypatch.setattr(CXRHyperModel, "fit", always_failing_fit)
    with pytest.raises(RuntimeError, match="No trial of the search .* completed .*ValueError: boom"):
        search(
            tiny_data,
            tuner="random",
            max_trials=2,
            max_epochs=1,
            directory=tmp_path / "none",
            hyperparameters=TINY,
            **FAST,
        )
    assert [r["status"] for r in _rows(tmp_path / "none")] == ["FAILED", "FAILED"]


def test_objective_must_be_a_logged_metric(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="val_auc.*val_specificity.*Received: objective='val_f1'") as info:
        search(tiny_data, objective="val_f1", directory=tmp_path / "t")
    for name in objective_names(2):
        assert name in str(info.value)
    assert not (tmp_path / "t").exists()  # refused before any work
    assert "specificity" not in objective_names(3)


def test_bad_search_arguments(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="`tuner` must be one of hyperband, random, bayesian"):
        search(tiny_data, tuner="grid", directory=tmp_path / "t")
    with pytest.raises(ValueError, match="max_trials"):
        search(tiny_data, max_trials=0, directory=tmp_path / "t")
    with pytest.raises(ValueError, match="tune_new_entries=False"):
        search(tiny_data, tune_new_entries=False, directory=tmp_path / "t")
    with pytest.raises(ValueError, match="learning_rate"):
        search(tiny_data, hyperparameters={"learning_rate": (-1.0, 1e-2)}, directory=tmp_path / "t")
    with pytest.raises(FileNotFoundError):
        search(tmp_path / "missing", directory=tmp_path / "t")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no search"):
        search(tiny_data, directory=tmp_path / "busy", overwrite=True)
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_a_folder_with_another_search_is_refused_unless_overwrite(
    random_search, tiny_data, converted_dataset, tmp_path
):
    out, _ = random_search
    with pytest.raises(FileExistsError, match="model: 'seed_cnn' then, 'vgg19_transfer' now.*--overwrite"):
        search(tiny_data, model="vgg19_transfer", tuner="random", directory=out, **FAST)
    with pytest.raises(FileExistsError, match="another dataset"):
        search(converted_dataset, tuner="random", directory=out, hyperparameters=TINY, **FAST)
    with pytest.raises(FileExistsError, match="tuner: 'random' then, 'hyperband' now"):
        search(tiny_data, tuner="hyperband", directory=out, hyperparameters=TINY, **FAST)

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = search(
        tiny_data,
        tuner="random",
        max_trials=1,
        max_epochs=1,
        directory=copy,
        overwrite=True,
        hyperparameters={**TINY, "pooling": "avg"},
        **FAST,
    )
    rows = _rows(copy)
    assert len(rows) == 1 and rows[0]["pooling"] == "avg" and len(result.trials) == 1


@pytest.mark.slow
def test_fixed_and_narrowed_hyperparameters_with_tune_new_entries_false(tiny_data, tmp_path):
    hp = kt.HyperParameters()
    hp.Float("learning_rate", 1e-4, 1e-3, sampling="log", default=5e-4)
    hp.Fixed("base_filters", 4)
    hp.Fixed("dense_units", 8)
    out = tmp_path / "narrow"
    search(
        tiny_data,
        tuner="random",
        max_trials=2,
        max_epochs=1,
        directory=out,
        hyperparameters=hp,
        tune_new_entries=False,
        augment="cpu",
        **FAST,
    )
    rows = _rows(out)
    assert float(rows[0]["learning_rate"]) == 5e-4
    assert all(1e-4 <= float(r["learning_rate"]) <= 1e-3 for r in rows)
    for row in rows:  # the others keep their reference values
        assert (float(row["dropout"]), row["pooling"], float(row["augment_strength"])) == (0.0, "max", 1.0)
    assert _best(out)["train_kwargs"]["augment"] == "cpu"


# --- cxr tune ---------------------------------------------------------------------------------


def test_parse_hp():
    from cxrmodels.cli.tuning import parse_hp

    assert parse_hp(["learning_rate=1e-4:1e-2", "pooling=max", "base_filters=16,32", "dropout=0"]) == {
        "learning_rate": (1e-4, 1e-2),
        "pooling": "max",
        "base_filters": [16, 32],
        "dropout": 0,
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_hp(["learning_rate"])


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["tune", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--distributed" in text and "KERASTUNER_TUNER_ID=chief" in text


def test_cli_bad_input_exits_2(tiny_data, tmp_path, capsys):
    assert main(["tune", str(tiny_data), "--out", str(tmp_path / "t"), "--objective", "f1"]) == 2
    assert "`objective` must be a metric the model logs" in capsys.readouterr().err
    assert main(["tune", str(tiny_data), "--out", str(tmp_path / "t"), "--hp", "learning_rate=0:1e-2"]) == 2
    assert "positive" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_a_search(tiny_data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "tune",
            str(tiny_data),
            "--out",
            str(out),
            "--tuner",
            "random",
            "--max-trials",
            "1",
            "--max-epochs",
            "1",
            "--batch-size",
            "8",
            "--hp",
            "base_filters=4",
            "--hp",
            "dense_units=8",
            "--verbose",
            "0",
        ]
    )
    assert code == 0
    assert "1 trials (1 completed)" in capsys.readouterr().out
    assert [r["status"] for r in _rows(out)] == ["COMPLETED"]


def test_a_search_folder_being_written_by_another_process_is_refused(tiny_data, tmp_path):
    from cxrdata.utils.output_dir import OutputFolderBusyError, lock_output_dir

    out = tmp_path / "tune"
    with lock_output_dir(out, what="search folder"):  # the lock a running `cxr tune` holds
        with pytest.raises(OutputFolderBusyError, match=f"being written by process {os.getpid()}"):
            search(
                tiny_data,
                tuner="random",
                max_trials=1,
                max_epochs=1,
                directory=out,
                hyperparameters=TINY,
                **FAST,
            )
    assert os.listdir(out) == []  # nothing was written, and the lock file went with the lock
