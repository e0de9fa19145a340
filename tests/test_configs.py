"""One declaration per option: each command's parser, config files and saved configs are views of it."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from cxrdata.conversion_config import ConvertConfig
from cxrdata.utils.config import cli_flags, option_of
from cxrmodels.cli import build_parser
from cxrmodels.training.config import TrainConfig

COMMANDS = {"train": TrainConfig, "convert": ConvertConfig}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _actions(parser) -> dict[str, argparse.Action]:
    """The main action of each destination (a switch such as --quiet comes after its option)."""
    actions: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.dest not in ("help", "config"):
            actions.setdefault(a.dest, a)
    return actions


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_the_command_comes_from_its_config(command):
    cls = COMMANDS[command]
    actions = _actions(_subparser(command))
    declared = {}
    for field in dataclasses.fields(cls):
        opt = option_of(field)
        if opt.members:
            for key, member in opt.members:
                declared[f"{field.name}.{key}"] = (member, None)
        elif opt.cli != "none":
            declared[field.name] = (opt, field)
    # Nothing on the command line that the config does not declare, and nothing declared left out.
    assert set(actions) == set(declared)
    for dest, (opt, field) in declared.items():
        action = actions[dest]
        if field is not None and opt.cli not in ("switch",):
            assert list(action.option_strings or [action.dest]) == list(cli_flags(field)), dest
            # Options absent from the command line are absent from the namespace: the config's
            # default (or the config file's value) applies, so there is one default, the declared one.
            assert action.default is argparse.SUPPRESS, dest
        if opt.choices is not None and action.choices is not None:
            assert [c for c in opt.choices if c is not None] == list(action.choices), dest
        if field is not None and field.default not in (None, dataclasses.MISSING) and opt.cli == "option":
            shown = opt.cli_help_default or field.default
            if isinstance(shown, tuple):
                shown = " ".join(map(str, shown))
            assert f"(default: {shown})" in action.help, dest
    # The switches (--quiet) set their field.
    for field in dataclasses.fields(cls):
        for flag, value, *_ in option_of(field).switches:
            switch = next(a for a in _subparser(command)._actions if flag in a.option_strings)
            assert (switch.dest, switch.const) == (field.name, value)


def test_the_command_line_and_the_keywords_make_the_same_config(tmp_path):
    from cxrdata.utils.config import from_cli

    parser = _subparser("train")
    args = parser.parse_args(
        ["data", "--out", "runs/a", "--lr", "0.01", "--mixed-precision", "--filters", "8", "16", "--quiet"]
    )
    assert from_cli(TrainConfig, args) == TrainConfig(
        dataset="data",
        out="runs/a",
        learning_rate=0.01,
        mixed_precision="float16",
        model_kwargs={"filters": [8, 16]},
        verbose=0,
    )
    args = _subparser("convert").parse_args(["src", "out", "--radius", "35", "--splits", "0.8,0.1,0.1"])
    assert from_cli(ConvertConfig, args) == ConvertConfig(
        src="src", out="out", equalize_radius=35, splits=(0.8, 0.1, 0.1)
    )


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_round_trips_and_the_command_line_overrides_it(tmp_path, suffix):
    from cxrdata.utils.config import from_cli

    config = TrainConfig(
        dataset=str(tmp_path / "data"),
        out=str(tmp_path / "run"),
        epochs=7,
        image_size=(96, 80),
        resize_in_model=True,
        equalize_radius=35,
        model_kwargs={"filters": [8, 16], "dropout": 0.25},
        mixed_precision="bfloat16",
    )
    path = tmp_path / f"train{suffix}"
    config.to_file(path)
    assert TrainConfig.from_file(path) == config
    args = _subparser("train").parse_args(["--config", str(path), "--epochs", "3", "--dense-units", "4"])
    merged = from_cli(TrainConfig, args)
    assert merged == config.replace(
        epochs=3, model_kwargs={"filters": [8, 16], "dropout": 0.25, "dense_units": 4}
    )
    convert = ConvertConfig(
        src=str(tmp_path),
        out=str(tmp_path / "o"),
        image_size=(64, 48),
        group_pattern="^(h[0-9])_",
        test_groups="B,A",
    )
    convert.to_file(tmp_path / f"convert{suffix}")
    assert ConvertConfig.from_file(tmp_path / f"convert{suffix}") == convert


def test_configs_refuse_unknown_options_and_check_every_value(tmp_path):
    with pytest.raises(TypeError, match="unexpected option 'epoch'.*Known options"):
        TrainConfig.from_kwargs(epoch=3)
    (tmp_path / "bad.json").write_text(json.dumps({"batchsize": 8}))
    with pytest.raises(ValueError, match="bad.json.*unknown option 'batchsize'"):
        TrainConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="`learning_rate` must be a number"):
        TrainConfig(learning_rate="0.1")
    with pytest.raises(TypeError, match="`workers` must be an integer"):
        ConvertConfig(workers=True)  # a bool is not a count
    with pytest.raises(TypeError, match="`equalize_radius` must be an integer"):
        ConvertConfig.from_kwargs(radius=True)
    with pytest.raises(TypeError, match="`seed` must be an integer"):
        ConvertConfig(seed=1.5)
    with pytest.raises(TypeError, match="`batch_size` must be an integer"):
        TrainConfig(batch_size="8")
    # One name per concept, the older names accepted as aliases.
    assert TrainConfig.from_kwargs(equalize_in_model=70).equalize_radius == 70
    assert ConvertConfig.from_kwargs(radius=35).equalize_radius == 35
    with pytest.raises(TypeError, match="twice"):
        TrainConfig.from_kwargs(equalize_in_model=70, equalize_radius=35)


def test_a_resumed_run_compares_configs_not_dicts():
    before = TrainConfig(dataset="a", out="r", learning_rate=1e-3, epochs=5)
    after = TrainConfig(dataset="b", out="r", learning_rate=1e-2, epochs=9)
    # Epochs, paths, patience and verbosity may change on resume; the rest is named.
    assert before.differences(after) == ["learning_rate: 0.001 then, 0.01 now"]


def test_config_json_and_dataset_json_load_back_into_their_configs(trained_run, converted_dataset):
    # The run was trained with these keywords (tests/conftest.py `trained_run`).
    assert TrainConfig.from_run(trained_run) == TrainConfig(
        dataset=str(converted_dataset),
        out=str(trained_run),
        epochs=2,
        batch_size=16,
        verbose=0,
        model_kwargs={"filters": (4, 8, 8), "dense_units": 8},
    )
    # The dataset keeps the options that shape the data (where and how it ran is not data).
    saved = ConvertConfig.from_dataset(converted_dataset)
    used = ConvertConfig(
        src=str(converted_dataset.parent / "src"), image_size=64, equalize_radius=20, shard_size=0.02
    )
    assert saved.differences(used) == [] and saved.out is None and saved.workers is None


def test_a_flag_set_in_a_config_file_can_be_turned_off_and_an_interrupt_never_suggests_starting_over(
    tmp_path,
):
    from cxrdata.utils.config import from_cli
    from cxrmodels.cli import _resume_hint

    path = tmp_path / "train.yaml"
    TrainConfig(dataset=str(tmp_path / "d"), out=str(tmp_path / "r"), overwrite=True).to_file(path)
    args = _subparser("train").parse_args(["--config", str(path)])
    assert from_cli(TrainConfig, args).overwrite is True
    assert "without --overwrite" in _resume_hint(args)  # rerunning it would wipe the committed epochs
    args = _subparser("train").parse_args(["--config", str(path), "--no-overwrite"])
    assert from_cli(TrainConfig, args).overwrite is False
    assert _resume_hint(args) == "; rerun the same command to resume"
    args = _subparser("convert").parse_args(["src", "out", "--overwrite"])
    assert "without --overwrite" in _resume_hint(args)


def test_yaml_reads_exponent_floats_as_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads `1e-3` as a string; config files are written by people who write 1e-3.
    path = tmp_path / "train.yaml"
    path.write_text("dataset: d\nout: r\nlearning_rate: 1e-3\nepochs: 2\n")
    config = TrainConfig.from_file(path)
    assert config.learning_rate == 0.001 and config.epochs == 2
    path.write_text("src: s\nout: o\nclip_limit: 5E-2\n")
    assert ConvertConfig.from_file(path).clip_limit == 0.05
