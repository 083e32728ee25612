"""Lazy package fronts: a package names its public API in ``__all__`` and loads the module
behind a name on first use, so ``import package`` stays light (no pandas, torch or Ray).

A name must not be the name of one of the package's own submodules: once the submodule is
imported, Python binds the package attribute of that name to the module, shadowing the
lazy name (this once made ``experiments.search`` a module where a function was meant).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_front"]


def lazy_front(package: str, home: Mapping[str, str], namespace: dict[str, Any]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``home`` maps name -> module."""
    clashes = sorted(n for n in home if f"{package}.{n}" in home.values())
    if clashes:
        raise ImportError(f"{package}: lazy names shadowed by submodules: {clashes}")

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *home})

    return __getattr__, __dir__
