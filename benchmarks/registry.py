"""One registry of benchmark cases.

A case is a function ``fn(ctx: BenchContext) -> list[dict]`` registered with
:func:`case`; each returned dict is one result row (at least ``case``, ``shape``, ``dtype``,
``median_ms``, ``p20_ms``, ``p80_ms`` and ``impl``, the implementation measured; plus
derived figures such as ``gb_per_s``, ``tops``, ``speedup_vs_<baseline>``). The runner adds
the common fields (suite, device name, versions, commit, date).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass(frozen=True)
class BenchContext:
    device: torch.device
    quick: bool


@dataclasses.dataclass(frozen=True)
class Case:
    suite: str
    name: str
    fn: Callable[[BenchContext], list[dict]]
    devices: tuple[str, ...]


REGISTRY: list[Case] = []


def case(suite: str, name: str, devices: tuple[str, ...] = ("cuda", "cpu")):
    """Register ``fn`` as benchmark ``suite/name``, runnable on the listed device types."""

    def register(fn: Callable[[BenchContext], list[dict]]) -> Callable[[BenchContext], list[dict]]:
        if any(c.suite == suite and c.name == name for c in REGISTRY):
            raise ValueError(f"benchmark case {suite}/{name} registered twice")
        REGISTRY.append(Case(suite, name, fn, devices))
        return fn

    return register
