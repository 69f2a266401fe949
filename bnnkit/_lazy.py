"""Lazy attributes of a package (PEP 562): ``import bnnkit`` costs nothing until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def lazy_attributes(package: str, names: dict[str, str], submodules: Iterable[str]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps each re-exported name to the
    module defining it (imported on first access, then cached in the package's namespace);
    ``submodules`` are imported on first access as attributes."""
    submodules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        module = importlib.import_module(package)
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(names) | submodules)

    return __getattr__, __dir__
