"""`SearchConfig`: `cxr tune`'s options, config files, `search.json` and the trials' `TrainConfig`s."""

from __future__ import annotations

import argparse
import dataclasses
import json

import keras_tuner as kt
import pytest

from cxrdata.utils.config import cli_flags, from_cli, option_of
from cxrmodels.cli import build_parser, main
from cxrmodels.training.config import TrainConfig
from cxrmodels.tuning import search_folder
from cxrmodels.tuning.config import SearchConfig
from cxrmodels.tuning.hypermodel import RUN_FIELDS, CXRHyperModel
from cxrmodels.tuning.searcher import search

TINY = {"base_filters": 4, "dense_units": 8}


def _tune_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["tune"]


def _parse(argv: list[str]) -> SearchConfig:
    return from_cli(SearchConfig, _tune_parser().parse_args(argv))


def _cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(SearchConfig) if option_of(f).cli != "none"]


# --- cxr tune is generated from SearchConfig --------------------------------------------------


def test_every_cxr_tune_option_is_a_search_config_field_with_its_flags_and_choices():
    parser = _tune_parser()
    actions = [a for a in parser._actions if a.dest not in ("help", "config")]
    assert {a.dest for a in actions} == {f.name for f in _cli_fields()}  # nothing written by hand
    for field in _cli_fields():
        opt = option_of(field)
        mine = [a for a in actions if a.dest == field.name]
        flags = [s for a in mine for s in a.option_strings] or [a.dest for a in mine]
        assert set(cli_flags(field)) <= set(flags), field.name
        if opt.choices is not None and opt.parse is None:
            assert mine[0].choices == [c for c in opt.choices if c is not None], field.name
    assert parser.get_default("config") is None
    # Nothing given: exactly SearchConfig's defaults.
    assert _parse([]) == SearchConfig()
    assert SearchConfig().to_dict() == {
        "dataset": None,
        "directory": None,
        "model": "seed_cnn",
        "tuner": "hyperband",
        "objective": "val_auc",
        "max_trials": 10,
        "max_epochs": 10,
        "batch_size": 32,
        "project_name": "cxr_tune",
        "overwrite": False,
        "seed": 0,
        "hyperparameters": None,
        "tune_new_entries": True,
        "mixed_precision": None,
        "augment": "gpu",
        "patience": 3,
        "distributed": False,
        "worker_timeout": 120.0,
        "model_kwargs": {},
        "verbose": "auto",
    }


def test_every_existing_spelling_of_cxr_tune_still_parses():
    argv = [
        "data/",
        "--out",
        "tune/a",
        "--model",
        "vgg19_transfer",
        "--tuner",
        "random",
        "--objective",
        "val_loss",
        "--max-trials",
        "12",
        "--max-epochs",
        "5",
        "--batch-size",
        "8",
        "--patience",
        "2",
        "--hp",
        "learning_rate=1e-4:1e-2",
        "--hp",
        "dropout=0,0.2",
        "--no-tune-new-entries",
        "--augment",
        "none",
        "--seed",
        "7",
        "--project-name",
        "proj",
        "--overwrite",
        "--distributed",
        "--worker-timeout",
        "30",
        "--verbose",
        "0",
        "--mixed-precision",
        "bfloat16",
    ]
    assert _parse(argv) == SearchConfig(
        dataset="data/",
        directory="tune/a",
        model="vgg19_transfer",
        tuner="random",
        objective="val_loss",
        max_trials=12,
        max_epochs=5,
        batch_size=8,
        patience=2,
        hyperparameters={"learning_rate": (1e-4, 1e-2), "dropout": [0, 0.2]},
        tune_new_entries=False,
        augment="none",
        seed=7,
        project_name="proj",
        overwrite=True,
        distributed=True,
        worker_timeout=30.0,
        verbose=0,
        mixed_precision="bfloat16",
    )
    assert _parse(["d", "--out", "o", "--mixed-precision"]).mixed_precision == "mixed_float16"
    assert _parse(["d", "--out", "o", "--tune-new-entries", "--quiet"]).verbose == 0
    with pytest.raises(SystemExit):
        _tune_parser().parse_args(["d", "--tuner", "grid"])


def test_keyword_names_and_their_aliases():
    config = SearchConfig.from_kwargs(dataset_dir="data/", out="tune/a", mixed_precision=True)
    assert (config.dataset, config.directory, config.mixed_precision) == ("data/", "tune/a", "mixed_float16")
    with pytest.raises(TypeError, match="unexpected option 'epochs'"):
        SearchConfig.from_kwargs(epochs=3)
    with pytest.raises(ValueError, match="`max_trials` must be"):
        SearchConfig(max_trials=0)
    with pytest.raises(TypeError, match="`batch_size`"):
        SearchConfig(batch_size="8")
    with pytest.raises(ValueError, match="`worker_timeout` must be a number of seconds >= 5"):
        SearchConfig(worker_timeout=1)
    with pytest.raises(ValueError, match="`project_name` must be a folder name"):
        SearchConfig(project_name="../x")
    with pytest.raises(ValueError, match="`mixed_precision` must be"):
        SearchConfig(mixed_precision="float8")
    with pytest.raises(ValueError, match=r"\(low, high\)"):
        SearchConfig(hyperparameters={"learning_rate": (1e-4, 1e-3, 1e-2)})
    with pytest.raises(TypeError, match="`hyperparameters` must be None, a keras_tuner.HyperParameters"):
        SearchConfig(hyperparameters=42)


# --- config files -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_search_config_file_round_trips_and_the_command_line_overrides_it(tmp_path, suffix):
    config = SearchConfig(
        dataset=str(tmp_path / "data"),
        directory=str(tmp_path / "tune"),
        tuner="random",
        max_trials=4,
        hyperparameters={"learning_rate": (1e-4, 1e-2), "base_filters": [8, 16], "pooling": "avg"},
        tune_new_entries=False,
        mixed_precision="bfloat16",
        model_kwargs={"weights": None},
        patience=None,
    )
    path = tmp_path / f"tune.{suffix}"
    config.to_file(path)
    assert SearchConfig.from_file(path) == config
    assert _parse(["--config", str(path)]) == config
    assert _parse(["--config", str(path), "--max-trials", "9", "--hp", "pooling=max"]) == config.replace(
        max_trials=9, hyperparameters={"pooling": "max"}
    )


def test_a_hand_written_yaml_file_reads_numbers_written_as_text(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(
        "dataset: data/\nout: tune/a\ntuner: bayesian\n"
        "hyperparameters:\n  learning_rate: {min: 1e-4, max: 1e-2}\n  dropout: [0, 0.2]\n"
    )
    config = SearchConfig.from_file(path)
    assert config.directory == "tune/a" and config.tuner == "bayesian"
    assert config.hyperparameters == {"learning_rate": {"min": 1e-4, "max": 1e-2}, "dropout": [0, 0.2]}
    path.write_text("dataset: data/\nmax_epoch: 3\n")
    with pytest.raises(ValueError, match="has an unknown option 'max_epoch'. Known options: .*max_epochs"):
        SearchConfig.from_file(path)


def test_cxr_tune_config_reaches_the_search_and_its_checks(tiny_data, tmp_path, capsys):
    path = tmp_path / "tune.json"
    path.write_text(
        json.dumps({"dataset": str(tiny_data), "directory": str(tmp_path / "t"), "objective": "f1"})
    )
    assert main(["tune", "--config", str(path)]) == 2
    assert "`objective` must be a metric the model logs" in capsys.readouterr().err
    assert main(["tune", str(tiny_data)]) == 2
    assert "`directory` must be the path of the search folder" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


# --- hyperparameters: one plain form ----------------------------------------------------------


def test_hyperparameters_in_every_form_become_the_same_overrides():
    hp = kt.HyperParameters()
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    hp.Choice("base_filters", [4, 8], default=4)
    hp.Fixed("dense_units", 8)
    from_object = SearchConfig(hyperparameters=hp)
    # The saved form survives JSON and gives back the very same keras-tuner entries.
    assert SearchConfig.from_dict(json.loads(json.dumps(from_object.to_dict()))) == from_object

    def overrides(hyperparameters):
        return CXRHyperModel(
            input_shape=(48, 48, 1), num_classes=2, hyperparameters=hyperparameters
        ).hyperparameters.get_config()

    assert overrides(from_object.hyperparameters) == overrides(hp)
    as_text = SearchConfig(hyperparameters=["learning_rate=1e-4:1e-2", "base_filters=4,8", "dense_units=8"])
    as_dict = SearchConfig(
        hyperparameters={"learning_rate": (1e-4, 1e-2), "base_filters": [4, 8], "dense_units": 8}
    )
    assert as_text == as_dict
    assert overrides(as_text.hyperparameters) == overrides({k: v for k, v in as_dict.hyperparameters.items()})
    entries = {
        e.name: e
        for e in CXRHyperModel(
            input_shape=(48, 48, 1), num_classes=2, hyperparameters=as_text.hyperparameters
        ).hyperparameters.space
    }
    assert (entries["learning_rate"].sampling, entries["learning_rate"].default) == ("log", 1e-3)
    with pytest.raises(ValueError, match="learning_rate.*positive"):
        CXRHyperModel(
            input_shape=(48, 48, 1), num_classes=2, hyperparameters={"learning_rate": {"min": 0, "max": 1}}
        )


def test_conditional_keras_tuner_entries_are_refused():
    hp = kt.HyperParameters()
    hp.Choice("pooling", ["max", "avg"])
    with hp.conditional_scope("pooling", ["avg"]):
        hp.Fixed("dropout", 0.2)
    with pytest.raises(ValueError, match="'dropout' must not be conditional"):
        SearchConfig(hyperparameters=hp)


# --- search.json ------------------------------------------------------------------------------


def _record(**options) -> dict:
    config = SearchConfig(dataset="data/", directory="unused", hyperparameters=TINY, **options)
    return search_folder.search_record(config, {"dataset_digest": "abc", "started": "then"})


def test_search_json_holds_the_config_and_a_resume_compares_configs(tmp_path):
    out = str(tmp_path / "tune")
    record = _record(tuner="random", max_trials=2)
    assert search_folder.prepare(out, record, overwrite=False) is False
    saved = search_folder.read_search(out)
    assert search_folder.config_of(saved) == SearchConfig(
        dataset="data/", directory="unused", hyperparameters=TINY, tuner="random", max_trials=2
    )
    assert saved["format_version"] == search_folder.FORMAT_VERSION and saved["model"] == "seed_cnn"
    # max_trials, patience, verbose and the launch may change; the search resumes.
    again = {**_record(tuner="random", max_trials=5, patience=1, verbose=0), "started": "now"}
    assert search_folder.prepare(out, again, overwrite=False) is True
    assert search_folder.read_search(out)["max_trials"] == 5
    assert search_folder.read_search(out)["started"] == "then"
    with pytest.raises(FileExistsError, match="tuner: 'random' then, 'hyperband' now"):
        search_folder.prepare(out, _record(), overwrite=False)
    with pytest.raises(
        FileExistsError, match="hyperparameters: .*'base_filters': 4.*then.*'base_filters': 8"
    ):
        search_folder.prepare(
            out, {**_record(tuner="random"), "hyperparameters": {"base_filters": 8}}, overwrite=False
        )
    with pytest.raises(FileExistsError, match="another dataset"):
        search_folder.prepare(out, {**_record(tuner="random"), "dataset_digest": "xyz"}, overwrite=False)
    # A folder written by the format before SearchConfig: refused by name, replaced with overwrite.
    (tmp_path / "tune" / "search.json").write_text(json.dumps({"format_version": 1, "model": "seed_cnn"}))
    with pytest.raises(FileExistsError, match="format_version: 1 then, 2 now"):
        search_folder.prepare(out, record, overwrite=False)
    assert search_folder.prepare(out, record, overwrite=True) is False


# --- the trials' TrainConfigs -----------------------------------------------------------------


def test_a_trial_is_a_train_config():
    hypermodel = CXRHyperModel(
        input_shape=(48, 48, 1), num_classes=2, hyperparameters=TINY, augment="cpu", mixed_precision=True
    )
    values = {
        **hypermodel.resolve(kt.HyperParameters()),
        "learning_rate": 3e-4,
        "dropout": 0.30000000000000004,
    }
    config = hypermodel.train_config(values, dataset="data/", out="runs/best")
    assert isinstance(config, TrainConfig)
    assert (config.dataset, config.out, config.learning_rate, config.augment) == (
        "data/",
        "runs/best",
        3e-4,
        "cpu",
    )
    assert config.mixed_precision == "mixed_float16" and config.equalize_radius is None
    assert config.model_kwargs == {"filters": [4, 8, 16], "dense_units": 8, "dropout": 0.3, "pooling": "max"}
    assert TrainConfig.from_dict(config.to_dict()) == config
    kwargs = hypermodel.train_kwargs(values)
    assert set(kwargs) == {f.name for f in dataclasses.fields(TrainConfig)} - set(RUN_FIELDS)
    assert TrainConfig(**kwargs) == config.replace(dataset=None, out=None)


def test_fixed_options_that_a_trial_decides_are_refused():
    with pytest.raises(ValueError, match="`learning_rate` must keep its default.*hyperparameter"):
        CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, learning_rate=1e-2)
    with pytest.raises(ValueError, match="`balance` must keep its default.*does not offer it"):
        CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, config=TrainConfig(balance="oversample"))
    with pytest.raises(ValueError, match="`model_kwargs` must not set \\['equalize'\\]"):
        CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, model_kwargs={"equalize": None})


@pytest.mark.slow
def test_the_best_train_kwargs_train_a_run(tiny_data, tmp_path):
    import cxrmodels

    hypermodel = CXRHyperModel(input_shape=(48, 48, 1), num_classes=2, hyperparameters=TINY, batch_size=8)
    kwargs = hypermodel.train_kwargs(hypermodel.resolve(kt.HyperParameters()))
    result = cxrmodels.train(tiny_data, out=tmp_path / "run", epochs=1, verbose=0, **kwargs)
    saved = TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["config"])
    assert saved == hypermodel.train_config(hypermodel.resolve(kt.HyperParameters())).replace(
        dataset=str(tiny_data), out=str(tmp_path / "run"), epochs=1, verbose=0
    )
    assert result.model.count_params() == hypermodel.build(kt.HyperParameters()).count_params()


def test_search_checks_its_options_before_any_io(tmp_path):
    with pytest.raises(ValueError, match="`objective` must be a metric"):
        search(tmp_path / "missing", directory=tmp_path / "t", objective="f1")
    with pytest.raises(TypeError, match="unexpected option 'epochs'"):
        search(tmp_path / "missing", directory=tmp_path / "t", epochs=3)
    config = SearchConfig(directory=str(tmp_path / "t"), tuner="random")
    with pytest.raises(FileNotFoundError):
        search(tmp_path / "missing", config=config)
    assert not (tmp_path / "t").exists()


def test_the_readme_config_file_is_a_valid_search_config(tmp_path):
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Hyperparameter search", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "tune.yaml").write_text(block)
    config = _parse(["--config", str(tmp_path / "tune.yaml"), "--max-trials", "30"])
    assert (config.directory, config.tuner, config.max_trials, config.tune_new_entries) == (
        "tune/a",
        "random",
        30,
        False,
    )
    assert config.hyperparameters["learning_rate"] == {"min": 1e-4, "max": 1e-2}
