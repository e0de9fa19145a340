"""Argument checks shared by `cxrdata` and `cxrmodels`: one rule per kind of mistake.

A value of the wrong type raises `TypeError`; a value of the right type outside
its allowed range or set raises `ValueError`. Messages follow Keras: what was
expected, then what was received ("`seed` must be an integer >= 0. Received:
seed='1'"). The CLI turns both into one line on stderr and exit code 2.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for finite ints and floats (Python or NumPy), False for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """Returns `value` as an int, or raises TypeError/ValueError naming `name`."""
    if value is None and allow_none:
        return None
    expected = f"an integer{_bounds(minimum, maximum)}" + (" or None" if allow_none else "")
    if not is_int(value):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
) -> float | None:
    """Returns `value` as a float, or raises TypeError/ValueError naming `name`."""
    if value is None and allow_none:
        return None
    expected = f"a number{_bounds(minimum, maximum)}" + (" or None" if allow_none else "")
    if not is_number(value):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return float(value)


def check_seed(value: Any, *, allow_none: bool = True, name: str = "seed") -> int | None:
    """The one rule for seeds: an integer >= 0 (or None where a random seed is allowed)."""
    return check_int(name, value, minimum=0, allow_none=allow_none)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """Raises ValueError unless `value` is one of `choices` (listed in the message)."""
    if value not in choices:
        options = ", ".join(str(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {options}. Received: {name}={value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Raises TypeError unless `value` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


def standardize_image_size(
    value: Any,
    *,
    name: str = "image_size",
    minimum: int = 1,
    maximum: int | None = None,
    allow_none: bool = False,
) -> tuple[int, int] | None:
    """The one rule for image sizes: an int N (N x N) or a (height, width) pair, as a tuple.

    Like Keras' `standardize_tuple`: a list, a tuple or NumPy ints are accepted;
    a bool, a float or a string is a TypeError; a size outside [minimum, maximum]
    a ValueError.
    """
    if value is None and allow_none:
        return None
    expected = f"an int or a (height, width) pair of ints{_bounds(minimum, maximum)}" + (
        " or None" if allow_none else ""
    )
    size = (value, value) if is_int(value) else value
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(is_int(s) for s in size):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    if any(s < minimum or (maximum is not None and s > maximum) for s in size):
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return int(size[0]), int(size[1])


def check_path(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    """Returns a path (str or os.PathLike, not empty) as a str, or raises TypeError/ValueError."""
    import os

    if value is None and allow_none:
        return None
    if not isinstance(value, (str, os.PathLike)):
        expected = "a path (str or os.PathLike)" + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise ValueError(f"`{name}` must be a non-empty path. Received: {name}={value!r}")
    return text
