"""The bounds bnnkit puts on what a file can make it do, and how to raise them.

A file bnnkit reads (an export, a run, an image) cannot make it use more than these:

- ``graph_nodes``: nodes of a packed graph (1,000; the zoo's largest has 48). Loading costs
  time linear in the nodes, most of it the meta-device dry run below (PyTorch's meta kernels
  cost a fraction of a millisecond per op), so this bound also bounds a load's time;
- ``activation_factor`` and ``activation_floor_bytes``: the tensors a packed graph holds
  alive at once during a forward pass of a batch of ``N`` may take at most
  ``activation_floor_bytes + activation_factor * (N * input bytes of one sample + bytes of the
  largest stored tensor)`` (64 MiB + 512x).
  Checked by running the graph on PyTorch's meta device (no memory) at load for a batch of 1
  of the manifest's ``input_shape`` and before the first real batch of every new input shape;
- ``image_pixels``: pixels of an image file, decoded and after the resize of the input spec
  (2**26 = 67,108,864, an 8192 x 8192 image), checked from the image header before
  decoding (Pillow's own limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 million, still
  applies above it).

Fixed bounds (not configurable): JSON files at most 16 MiB (:data:`bnnkit.reading.MAX_JSON_BYTES`),
a safetensors header at most 16 MiB, a graph literal (one node's arguments) at most 256 values
nested at most 6 deep, strings in a graph at most 256 characters.

Raise a bound for one process with ``BNNKIT_LIMITS`` (``BNNKIT_LIMITS=activation_factor=1024,image_pixels=150000000``)
or in Python with :func:`use_limits` (``with bnnkit.limits.use_limits(graph_nodes=5_000): ...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator

ENV_VAR = "BNNKIT_LIMITS"


@dataclasses.dataclass(frozen=True)
class Limits:
    """The configurable bounds (see the module docstring)."""

    graph_nodes: int = 1_000
    activation_factor: float = 512.0
    activation_floor_bytes: int = 64 << 20
    image_pixels: int = 1 << 26

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
                raise ValueError(f"limit {field.name} must be a finite number >= 1, got {value!r}")
            if field.type == "int" and value != int(value):
                raise ValueError(f"limit {field.name} must be an integer, got {value!r}")
            object.__setattr__(self, field.name, int(value) if field.type == "int" else float(value))

    def activation_bytes(self, batch: int, input_bytes_per_sample: int, largest_tensor_bytes: int) -> int:
        """The most bytes a packed graph may hold alive at once for a batch of ``batch``."""
        return int(self.activation_floor_bytes
                   + self.activation_factor * (batch * input_bytes_per_sample + largest_tensor_bytes))


_override: Limits | None = None


def _from_env() -> Limits:
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return Limits()
    names = {f.name for f in dataclasses.fields(Limits)}
    values = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"{ENV_VAR}={text!r}: expected NAME=VALUE items separated by commas, NAME one of "
                             f"{', '.join(sorted(names))}")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"{ENV_VAR}: {key}={value!r} is not a number") from None
    return Limits(**values)


def limits() -> Limits:
    """The bounds in force: those of :func:`use_limits`, else ``$BNNKIT_LIMITS``, else the defaults."""
    return _override if _override is not None else _from_env()


@contextlib.contextmanager
def use_limits(**changes: float) -> Iterator[Limits]:
    """Raise (or lower) bounds within a ``with`` block, e.g. ``use_limits(activation_factor=1024)``."""
    global _override
    previous = _override
    _override = dataclasses.replace(limits(), **changes)
    try:
        yield _override
    finally:
        _override = previous
