"""The o schedule of ReSTE: o grows from 1 (clipped STE) towards o_end along a cosine curve.

For epoch ``e`` of ``E``: ``beta = 1 - cos((e / E) * pi / 2)``, ``o = 1 + beta * (o_end - 1)``.
Epoch 0 gives o = 1; the last epoch is just below o_end (the paper's schedule; o_end = 3).
"""

from __future__ import annotations

import math

from torch import nn

from bnnkit.nn.layers import binary_layers


def o_at(epoch: int, epochs: int, o_end: float = 3.0, o_start: float = 1.0) -> float:
    """The value of o at ``epoch`` (0-based) of ``epochs``."""
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if not 0 <= epoch <= epochs:
        raise ValueError(f"epoch must be in [0, {epochs}], got {epoch}")
    beta = 1.0 - math.cos((epoch / epochs) * math.pi / 2)
    return o_start + beta * (o_end - o_start)


class OSchedule:
    """Sets ``o`` on every binary layer of ``model`` once per epoch.

    Example::

        schedule = OSchedule(model, epochs=200, o_end=3.0)
        for epoch in range(200):
            schedule.step(epoch)   # before the epoch's training steps
            ...
    """

    def __init__(self, model: nn.Module, epochs: int, o_end: float = 3.0, o_start: float = 1.0) -> None:
        if not (math.isfinite(o_end) and o_end >= 1.0):
            raise ValueError(f"o_end must be a finite number >= 1, got {o_end!r}")
        if not (math.isfinite(o_start) and 1.0 <= o_start <= o_end):
            raise ValueError(f"o_start must be in [1, o_end={o_end}], got {o_start!r}")
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        self.model = model
        self.epochs = epochs
        self.o_end = float(o_end)
        self.o_start = float(o_start)
        self.o = self.o_start

    def value(self, epoch: int) -> float:
        """o at ``epoch`` without changing the model."""
        return o_at(epoch, self.epochs, self.o_end, self.o_start)

    def step(self, epoch: int) -> float:
        """Set o for ``epoch`` on every binary layer; returns it."""
        self.o = self.value(epoch)
        for _, layer in binary_layers(self.model):
            layer.o = self.o
        return self.o
