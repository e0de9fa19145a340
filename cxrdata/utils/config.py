"""Typed, frozen configs: each option of a workflow declared once, and every view derived from it.

A workflow (convert, train, search) has one `Config`: a frozen dataclass whose
fields are declared with `option(...)`: type (the annotation), default, help,
choices, the check that standardizes a value, and how the option is spelled
on the command line. From that one declaration come:

- the Python API: `TrainConfig(epochs=5)` checks every value in `__post_init__`
  (wrong type: TypeError, out of range: ValueError, Keras' message form), and
  `TrainConfig.from_kwargs(...)` accepts the older keyword names as aliases;
- the CLI: `add_arguments(parser, TrainConfig)` adds one argparse option per
  field, with the help, choices and default written from the declaration;
- config files: `cxr train --config train.yaml` (or JSON), whose values sit
  between the declared defaults and the options given on the command line;
- the saved form: `to_dict()` is what `config.json` and `dataset.json` hold,
  and `from_dict()` reads it back into the same object, so a resumed run
  compares configs (`differences`), not dicts.

Like Lightning's CLI (built from typed signatures), but kept to argparse: the
existing spellings (`--lr`, `--quiet`, `--mixed-precision` with an optional
value) stay as they are, and `cxr --help` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from cxrdata.utils.argument_validation import check_choice
from cxrdata.utils.io import atomic_write_text

_KEY = "cxr"
_NOT_GIVEN = object()


@dataclasses.dataclass(frozen=True)
class Option:
    """How one config field is checked and spelled on the command line.

    Attributes:
        help: One line for `--help` and the docs.
        check: `check(name, value) -> value`: raises TypeError/ValueError or
            returns the standardized value (an alias made canonical, a list made a tuple).
        choices: The allowed values, checked after `check` and listed in `--help`.
        flags: Command-line spellings, canonical first (`("--lr", "--learning-rate")`);
            empty: `--` + the field name with dashes. `()` with `cli="positional"`: the field name.
        cli: "option", "flag" (a `store_true` switch for a bool), "positional",
            "switch" (only the `switches` below), or "none" (not on the command line).
        parse: argparse `type` for the text given on the command line.
        nargs, const, metavar: as in argparse.
        action: an argparse action for an option ("append" for a repeatable one,
            `argparse.BooleanOptionalAction` for `--x`/`--no-x`); None: store the value.
        switches: extra `store_const` flags for the same field, `(flag, value)` or
            `(flag, value, help)`, e.g. `(("--quiet", 0),)`.
        aliases: older keyword names `from_kwargs` accepts for this field.
        compare: False for options a resumed run may change (epochs, verbose):
            `differences` skips them.
        group: The argparse group title (None: the command's own options).
        cli_help_default: what `--help` says the default is, when it is not the
            field's default (e.g. "all cores" for None).
        members: for a dict field, `(key, Option)` pairs: each is a command-line
            option of its own whose value, when given, goes into the dict under
            `key` (the model's options inside `model_kwargs`).
    """

    help: str
    check: Callable[[str, Any], Any] | None = None
    choices: tuple | None = None
    flags: tuple[str, ...] = ()
    cli: str = "option"
    parse: Callable[[str], Any] | None = None
    nargs: str | int | None = None
    const: Any = None
    metavar: str | None = None
    action: Any = None
    switches: tuple[tuple, ...] = ()
    aliases: tuple[str, ...] = ()
    compare: bool = True
    group: str | None = None
    cli_help_default: str | None = None
    members: tuple[tuple[str, Option], ...] = ()


def option(default: Any = dataclasses.MISSING, *, help: str, **kwargs) -> Any:
    """Declares a config field: its default and its `Option` (see there for the keywords)."""
    return dataclasses.field(default=default, metadata={_KEY: Option(help=help, **kwargs)})


def option_of(field: dataclasses.Field) -> Option:
    return field.metadata.get(_KEY) or Option(help="", cli="none")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__  # a live object (a tf.distribute.Strategy): its kind


class Config:
    """Base of the workflow configs (subclasses are `@dataclasses.dataclass(frozen=True)`).

    Subclasses may define `_check_together(self)` for rules that involve
    several fields; it runs after every field is standardized.
    """

    #: What the config describes, for messages ("training run", "conversion").
    WHAT: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            opt = option_of(field)
            value = getattr(self, field.name)
            if opt.check is not None:
                value = opt.check(field.name, value)
            if opt.choices is not None:
                check_choice(field.name, value, opt.choices)
            object.__setattr__(self, field.name, value)
        self._check_together()

    def _check_together(self) -> None:
        """Rules that involve several fields (none by default)."""

    # --- building -----------------------------------------------------------------------------------

    @classmethod
    def from_kwargs(cls, config: Config | None = None, **kwargs) -> Config:
        """`config` (or the defaults) with `kwargs` on top; older keyword names are accepted.

        Raises:
            TypeError: `config` is not a `cls`, or a keyword is not an option of `cls`.
        """
        if config is not None and not isinstance(config, cls):
            raise TypeError(
                f"`config` must be a {cls.__name__}. Received: config={config!r} of type {type(config).__name__}"
            )
        changes = _canonical_names(cls, kwargs)
        base = config if config is not None else None
        if base is None:
            return cls(**changes)
        return dataclasses.replace(base, **changes)

    def replace(self, **changes) -> Config:
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **_canonical_names(type(self), changes))

    # --- saved form ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, one key per field (what `config.json` / `dataset.json` hold)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "") -> Config:
        """Reads back `to_dict()` (or a config file's mapping), checking every value.

        Raises:
            ValueError: a key that is not an option (the message lists the options).
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source or 'A config'} must hold a mapping of option names to values.")
        return cls(**_canonical_names(cls, values, source=source))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Config:
        """Reads a JSON or YAML config file (`.json`, `.yaml`, `.yml`)."""
        return cls.from_dict(read_config_file(path), source=f"The config file {os.fspath(path)!r}")

    def to_file(self, path: str | os.PathLike) -> None:
        """Writes the config as JSON or YAML, by the file's extension (atomically)."""
        path = os.fspath(path)
        if path.endswith((".yaml", ".yml")):
            import yaml  # deferred: only config files in YAML need it

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write_text(path, text)

    def differences(self, other: Config, *, compare_all: bool = False) -> list[str]:
        """`"name: A then, B now"` for each compared field that differs (`self` is then)."""
        out = []
        for field in dataclasses.fields(self):
            if not (compare_all or option_of(field).compare):
                continue
            old, new = _jsonable(getattr(self, field.name)), _jsonable(getattr(other, field.name))
            if old != new:
                out.append(f"{field.name}: {old!r} then, {new!r} now")
        return out


def _canonical_names(cls, values: dict[str, Any], *, source: str = "") -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    alias = {a: f.name for f in dataclasses.fields(cls) for a in option_of(f).aliases}
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = alias.get(key, key)
        if name not in names:
            known = ", ".join(sorted(names))
            if source:
                raise ValueError(f"{source} has an unknown option {key!r}. Known options: {known}.")
            raise TypeError(f"{cls.__name__} got an unexpected option {key!r}. Known options: {known}.")
        if name in out:
            raise TypeError(f"{cls.__name__} got {name!r} twice (as {name!r} and as an older name).")
        out[name] = value
    return out


def _load_yaml(text: str) -> Any:
    """`yaml.safe_load`, except that `1e-3` is a float (YAML 1.2's rule; PyYAML's 1.1 reads a string)."""
    import yaml  # deferred: only config files in YAML need it

    class Loader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506  a SafeLoader subclass


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a JSON or YAML file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON/YAML, or not a mapping.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            values = _load_yaml(text)
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001  JSONDecodeError, yaml.YAMLError: one message either way
        raise ValueError(f"The config file {path!r} cannot be parsed: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"The config file {path!r} must hold a mapping of option names to values.")
    return values


# --- the command line ---------------------------------------------------------------------------------


def parse_image_size(text: str) -> int | tuple[int, int]:
    """argparse `type` for an image size: `N` or `HxW` (also `H,W`)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) in (1, 2) and all(v > 0 for v in values):
        return values[0] if len(values) == 1 else tuple(values)
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def cli_flags(field: dataclasses.Field) -> tuple[str, ...]:
    """The command-line spellings of a field (canonical first)."""
    opt = option_of(field)
    if opt.cli == "positional":
        return (field.name,)
    return opt.flags or ("--" + field.name.replace("_", "-"),)


def _help(field: dataclasses.Field, opt: Option) -> str:
    if opt.cli_help_default is not None:
        default = opt.cli_help_default
    elif field.default is dataclasses.MISSING or field.default is None or opt.cli in ("flag", "positional"):
        default = None
    else:
        value = _jsonable(field.default)
        default = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return opt.help + (f" (default: {default})" if default is not None else "")


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type[Config],
    *,
    exclude: Sequence[str] = (),
    config_file: bool = True,
) -> None:
    """Adds one argparse option per field of `cls` (and `--config FILE`).

    Options not given on the command line are absent from the parsed namespace
    (`argparse.SUPPRESS`), so `from_cli` can tell them from defaults.
    """
    groups: dict[str | None, Any] = {None: parser}
    for field in dataclasses.fields(cls):
        opt = option_of(field)
        if opt.cli == "none" or field.name in exclude:
            continue
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        target = groups[opt.group]
        if opt.cli == "switch":
            _add_switches(target, field, opt)
            continue
        kwargs: dict[str, Any] = {"help": _help(field, opt), "default": argparse.SUPPRESS}
        if opt.cli == "positional":
            kwargs["nargs"] = "?"
        elif opt.cli == "flag":
            kwargs["action"] = "store_true"
        else:
            kwargs["dest"] = field.name
            for key in ("nargs", "const", "metavar", "action"):
                if getattr(opt, key) is not None:
                    kwargs[key] = getattr(opt, key)
            parse = opt.parse or _parse_of(field)
            if parse is not None:
                kwargs["type"] = parse
            if opt.choices is not None and parse is None:
                kwargs["choices"] = [c for c in opt.choices if c is not None]
        if opt.cli == "flag":
            kwargs["dest"] = field.name
        if opt.members:
            _add_members(parser, field, opt)
            continue
        target.add_argument(*cli_flags(field), **kwargs)
        if opt.cli == "flag":  # a flag set in a --config file can be turned off here
            off = "--no-" + cli_flags(field)[0][2:]
            target.add_argument(
                off, dest=field.name, action="store_false", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
        _add_switches(target, field, opt)
    if config_file:
        parser.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help=f"a YAML or JSON file of these options (keys as in Python: {_example_keys(cls)}, ...); "
            "options given here override it, and --no-FLAG turns off a flag the file sets",
        )


def _example_keys(cls: type[Config]) -> str:
    names = [f.name for f in dataclasses.fields(cls) if "_" in f.name and option_of(f).cli == "option"]
    return ", ".join(names[:2])


def _add_switches(target, field: dataclasses.Field, opt: Option) -> None:
    for flag, value, *said in opt.switches:
        said = said[0] if said else f"same as {cli_flags(field)[0]} {value}"
        target.add_argument(
            flag, dest=field.name, action="store_const", const=value, default=argparse.SUPPRESS, help=said
        )


def _parse_of(field: dataclasses.Field):
    """The argparse `type` of a plain int or float field (its annotation, `int | None` too)."""
    kind = str(field.type).split("|")[0].strip()
    return {"int": int, "float": float}.get(kind)


def _add_members(parser, field: dataclasses.Field, opt: Option) -> None:
    group = parser.add_argument_group(opt.group or opt.help)
    for key, member in opt.members:
        kwargs: dict[str, Any] = {"help": member.help, "default": argparse.SUPPRESS}
        for name in ("nargs", "metavar"):
            if getattr(member, name) is not None:
                kwargs[name] = getattr(member, name)
        if member.parse is not None:
            kwargs["type"] = member.parse
        if member.choices is not None:
            kwargs["choices"] = list(member.choices)
        flags = member.flags or ("--" + key.replace("_", "-"),)
        group.add_argument(*flags, dest=f"{field.name}.{key}", **kwargs)


def _given_members(args: argparse.Namespace, field: dataclasses.Field) -> dict[str, Any]:
    prefix = field.name + "."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def from_cli(cls: type[Config], args: argparse.Namespace, **overrides) -> Config:
    """The config of a command: declared defaults < `--config FILE` < the command line < `overrides`."""
    values: dict[str, Any] = {}
    path = getattr(args, "config", None)
    if path:
        values.update(_canonical_names(cls, read_config_file(path), source=f"The config file {path!r}"))
    for field in dataclasses.fields(cls):
        given = getattr(args, field.name, _NOT_GIVEN)
        if given is not _NOT_GIVEN:
            values[field.name] = given
        members = _given_members(args, field) if option_of(field).members else {}
        if members:
            values[field.name] = {**(values.get(field.name) or {}), **members}
    values.update(overrides)
    return cls(**values)
