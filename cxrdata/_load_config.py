"""`LoadConfig`: the options of `cxrdata.load`, declared and checked in one place.

`load`'s keywords are a convenience over this object: `load` builds one from
them (or takes one as `config=`), and every check runs when it is made, before
any file is read. A wrong type raises TypeError, a value out of range or a
combination of options that cannot work ValueError, in Keras' message form.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from cxrdata import _service
from cxrdata.utils.argument_validation import check_bool, check_choice, check_int, check_seed, is_number

LABEL_MODES = ("categorical", "int")
BALANCE_MODES = (None, "none", "oversample")


@dataclass(frozen=True)
class LoadConfig:
    """The options of `load` (see its arguments), checked when the object is made.

    Every check runs here, before any file is read: a wrong type raises
    TypeError, a value out of range or a combination that cannot work
    ValueError. `load(dir, split, config=LoadConfig(...))` equals `load` with
    the same keywords; `dataclasses.replace(config, input_context=ctx)` makes
    the config of one input pipeline.
    """

    batch_size: int = 32
    shuffle: bool = True
    seed: int | None = None
    repeat: bool = False
    augment: keras.layers.Layer | None = None
    label_mode: str = "categorical"
    balance: str | None = None
    cache: str | os.PathLike | None = None
    deterministic: bool | None = None
    drop_remainder: bool = False
    service: str | None = None
    service_mode: str = "distributed_epoch"
    service_timeout: float = _service.DEFAULT_TIMEOUT
    input_context: tf.distribute.InputContext | None = None
    with_masks: bool = False

    def __post_init__(self):
        _check_values(self)
        _check_combinations(self)

    @property
    def ordered(self) -> bool:
        """Whether parallel stages keep their order: unless `deterministic=False` was asked for."""
        return self.deterministic is not False

    @property
    def oversample(self) -> bool:
        return self.balance == "oversample"

    @property
    def rebatch(self) -> bool:
        """Service workers each batch their own share of the files: this process rebatches."""
        return self.service is not None and self.service_mode == "distributed_epoch"


def resolve_config(config: LoadConfig | None, keywords: dict) -> LoadConfig:
    """The checked options: `config`, or a new one from the keywords (never both)."""
    if config is None:
        return LoadConfig(**keywords)
    if not isinstance(config, LoadConfig):
        raise TypeError(f"`config` must be a LoadConfig or None. Received: config={config!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(LoadConfig)}
    given = [
        k
        for k, v in keywords.items()
        if v is not defaults[k] and (type(v) is not type(defaults[k]) or v != defaults[k])
    ]
    if given:
        raise ValueError(
            f"Pass the options of `load` either as `config` or as keywords, not both. Received: "
            f"config={config!r} and {', '.join(f'{k}={keywords[k]!r}' for k in given)}"
        )
    return config


def _check_values(c: LoadConfig) -> None:
    """Types and ranges of each option on its own."""
    check_int("batch_size", c.batch_size, minimum=1)
    for name in ("shuffle", "repeat", "drop_remainder", "with_masks"):
        check_bool(name, getattr(c, name))
    check_seed(c.seed)
    if c.augment is not None and not isinstance(c.augment, keras.layers.Layer):
        raise TypeError(
            f"`augment` must be a Keras layer (for example `cxrdata.RandomAffine(...)`) or None. "
            f"Received: augment={c.augment!r} of type {type(c.augment).__name__}"
        )
    check_choice("label_mode", c.label_mode, LABEL_MODES)
    check_choice("balance", c.balance, BALANCE_MODES)
    if c.deterministic is not None and not isinstance(c.deterministic, bool):
        raise TypeError(
            f"`deterministic` must be True, False or None. Received: deterministic={c.deterministic!r}"
        )
    if c.cache is not None:
        if not isinstance(c.cache, (str, os.PathLike)):
            raise TypeError(
                f"`cache` must be 'memory', a file path prefix, or None. Received: cache={c.cache!r}"
            )
        if not os.fspath(c.cache):
            raise ValueError(
                f"`cache` must be 'memory', a file path prefix, or None. Received: cache={c.cache!r}"
            )
        parent = os.path.dirname(os.path.abspath(os.fspath(c.cache)))
        if c.cache != "memory" and not os.path.isdir(parent):
            raise FileNotFoundError(
                f"`cache` must be a path in an existing folder; {parent!r} does not exist. Received: cache={c.cache!r}"
            )
    _service.check_service(c.service, c.service_mode)
    timeout = c.service_timeout
    if not is_number(timeout) or timeout <= 0:
        error = ValueError if is_number(timeout) else TypeError
        raise error(f"`service_timeout` must be a number > 0. Received: service_timeout={timeout!r}")
    if c.input_context is not None and not isinstance(c.input_context, tf.distribute.InputContext):
        raise TypeError(
            f"`input_context` must be a tf.distribute.InputContext or None. "
            f"Received: input_context={c.input_context!r}"
        )


def _check_combinations(c: LoadConfig) -> None:
    """Options that cannot work together."""
    if c.with_masks and (
        c.augment is not None or c.balance not in (None, "none") or c.cache is not None or c.service
    ):
        raise ValueError(
            "`with_masks=True` reads images with their masks as stored: it takes no `augment`, "
            f"`balance`, `cache` or `service`. Received: augment={c.augment!r}, balance={c.balance!r}, "
            f"cache={c.cache!r}, service={c.service!r}"
        )
    if c.rebatch and c.cache is not None:
        raise ValueError(
            f"`cache` cannot be used with `service_mode='distributed_epoch'`: each service worker "
            f"would cache only the files it was handed in the first epoch. Use "
            f"service_mode='parallel_epochs' with one worker, or no cache. Received: cache={c.cache!r}"
        )
