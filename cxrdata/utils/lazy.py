"""Lazy re-exports for package `__init__` modules (PEP 562).

A package lists its public names and the modules defining them; each is
imported on first use, so `import cxrdata` and `import cxrmodels` stay free of
TensorFlow. Each package also imports the same names under `TYPE_CHECKING` so
IDEs and type checkers see them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str,
    exports: Mapping[str, str],
    submodules: tuple[str, ...] = (),
    *,
    eager: tuple[str, ...] = (),
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """Returns `(__getattr__, __dir__, __all__)` for `package`.

    Args:
        package: The package's `__name__`.
        exports: Public name -> the module that defines it.
        submodules: Names of subpackages/modules reachable as attributes.
        eager: Public names the package defines itself (such as `__version__`).
    """
    public = sorted([*exports, *submodules, *eager])

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__, public
