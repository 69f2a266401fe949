"""What a training process ran with that changes its floating-point results: thread count,
library versions, the CPU model and the kernels PyTorch picked for it, the device type.

A run is deterministic on one machine, but float summation order depends on these, so
``--resume`` is bitwise exact only when they are the same. Each checkpoint records the
environment that wrote it (:func:`current`) and so does every row of ``metrics.jsonl``;
``--resume`` compares the checkpoint's with its own and logs one line when they differ
(:func:`difference`), then goes on.
"""

from __future__ import annotations

import platform
from typing import Any

from bnnkit import schema

#: The recorded fields, in the order a difference is listed.
FIELDS = ("threads", "device", "torch", "numpy", "python", "bnnkit", "cpu", "cpu_capability")


def current(device_type: str) -> dict[str, Any]:
    """This process's environment (``device_type``: the training device's type, e.g. ``"cpu"``)."""
    import numpy
    import torch

    from bnnkit.benchmarks.environment import cpu_name
    from bnnkit.version import __version__

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an older or unusual torch build: not worth failing a run for
        capability = "unknown"
    return {"threads": torch.get_num_threads(), "device": device_type, "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(), "bnnkit": __version__,
            "cpu": cpu_name()[:256], "cpu_capability": capability}


def check(value: Any, where: str) -> dict[str, Any] | None:
    """A recorded environment from a checkpoint header, checked (``None``: not recorded)."""
    if value is None:
        return None
    text = lambda v, w: schema.string(v, w, max_len=64)  # noqa: E731
    fields = {name: text for name in FIELDS[1:]}
    fields["cpu"] = lambda v, w: schema.string(v, w, max_len=256)
    return schema.record({"threads": lambda v, w: schema.integer(v, w, 1, 1 << 16)}, fields)(value, where)


def difference(recorded: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """One line saying how ``now`` differs from ``recorded`` (``None`` when it does not, or
    when nothing was recorded)."""
    if not recorded:
        return None
    changed = [f"{name} {schema.show(recorded.get(name))} -> {schema.show(now[name])}"
               for name in FIELDS if name in recorded and recorded[name] != now[name]]
    if not changed:
        return None
    return ("note: this run's last epoch ran with a different environment (" + ", ".join(changed)
            + "); training continues, but float results depend on these, so the remaining epochs may differ "
            "from a run never interrupted (resume in the same environment for bitwise equal results)")
